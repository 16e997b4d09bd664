"""Train the embedded demo SALMONN from a seed and write it as an artifact.

    python -m compress.train.demo --out compress/assets/demo --seed 0 [--data-dir /tmp/salmonn-train]

Stages (each timed, wall clock, and recorded in the artifact's manifest under "training"):
  data       generate (or reuse) the train split with compress.data.build (TTS voices + procedural sounds)
  tokenizer  byte-level BPE trained on the training text (sentences + captions + the SALMONN prompts)
  lm         a small Llama trained as a text LM on that corpus (all weights), then frozen
  features   the frozen Whisper tiny.en encoder run once per training clip (cached), BEATs fbanks
  audio      a CTC warm-up of the audio front alone (Q-Former + projection spell the ASR transcripts onto the LM's
             word embeddings, no LM forward), then SALMONN's stage: BEATs (from scratch), Q-Former, projection
             and LoRA (every projection of the LM) on ASR + captioning with the SALMONN prompt, teacher forcing,
             loss on the target tokens only (+ the CTC term)
  save       weights of 2+ dimensions stored as float16 (loaded back as float32), tokenizer, manifest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Optional

import torch

from ..errors import ConfigError, UserError
from ..loaders.artifact import storable
from . import recipe
from .optim import seed_everything

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")
DEFAULT_DATA = "/tmp/salmonn-train"


class Stages:
    """Wall-clock time per stage, printed as it goes."""

    def __init__(self, log):
        self.log = log
        self.times: dict = {}
        self.info: dict = {}
        self.t0 = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        self.log(f"== stage {name}")
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - t, 1)
        self.log(f"== stage {name} done in {_hms(self.times[name])}")
        return out

    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 1)


def _hms(s: float) -> str:
    m, s = divmod(int(round(s)), 60)
    return f"{m}m{s:02d}s"


def _bar_factory(desc: str, enabled: bool):
    from tqdm import tqdm

    return lambda total: tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                              mininterval=2.0)


# ------------------------------------------------------------------------------------------ stages
def stage_data(tc: recipe.TrainConfig, data_dir: str, annotations: Optional[str], progress: bool) -> tuple:
    """(annotation path, samples) of the train split, generated when absent or made with other settings."""
    from ..data.annotations import read_annotations
    from ..data.build import GENERATOR_VERSION, build_split

    if annotations:
        return annotations, read_annotations(annotations)
    ann = os.path.join(data_dir, "train.json")
    want = {"seed": tc.seed, "asr": tc.n_asr, "caption": tc.n_caption, "chain": tc.n_chain or None,
            "generator": f"compress.data.build v{GENERATOR_VERSION}"}
    meta = None
    if os.path.isfile(ann):
        try:
            with open(ann) as f:
                meta = json.load(f).get("meta", {})
        except (OSError, json.JSONDecodeError):
            meta = None
    if meta is None or any(meta.get(k) != v for k, v in want.items()):
        build_split(data_dir, "train", tc.seed, tc.n_asr, tc.n_caption, progress=progress, n_chain=tc.n_chain)
    else:
        print(f"data: reusing {ann} (seed {tc.seed}, {tc.n_asr} ASR + {tc.n_chain} chain-sentence ASR + "
              f"{tc.n_caption} caption clips)")
    return ann, read_annotations(ann)


def stage_tokenizer(tc, samples, probe_cfg):
    from .text import build_corpus, train_tokenizer

    extra = None
    if tc.lm_sentence_pool:
        from ..data.sentences import normalise, sentences_for

        extra = [normalise(s) for s in sentences_for("train")]
    corpus = build_corpus(samples, extra)
    tok = train_tokenizer(corpus, probe_cfg, tc.vocab_size)
    return corpus, tok


def stage_lm(tc, cfg, corpus, tok, progress: bool, dev_texts: Optional[list], log):
    from ..models.build import llm_from_config
    from .text import lm_eval_loss, pretrain_lm

    seed_everything(tc.seed + 1)
    lm = llm_from_config(cfg.llm)
    report = pretrain_lm(lm, corpus, tok, cfg, epochs=tc.lm_epochs, batch=tc.lm_batch, lr=tc.lm_lr,
                         warmup=tc.lm_warmup, weight_decay=tc.lm_weight_decay, prompted_share=tc.lm_prompted_share,
                         slot_share=tc.lm_slot_share, n_slots=n_speech_tokens(cfg),
                         slot_full_share=tc.lm_slot_full_share, copy_share=tc.lm_copy_share,
                         answer_only=tc.lm_answer_only, copy_steps=tc.lm_copy_steps, seed=tc.seed,
                         progress=_bar_factory("lm", progress))
    report["parameters"] = sum(p.numel() for p in lm.parameters())
    if tc.lm_slot_share > 0:
        from .text import slot_reading

        report["slot_reading"] = slot_reading(lm, tok, cfg, corpus, n_speech_tokens(cfg), tc.seed)
        log("lm: answer loss with its own / another text in the speech slot: " + ", ".join(
            f"{t} {v['own_slot']:.3f} / {v['other_slot']:.3f}" for t, v in report["slot_reading"].items()))
    if dev_texts:
        report["dev_loss"] = round(lm_eval_loss(lm, tok, dev_texts), 4)
        log(f"lm: dev loss {report['dev_loss']} (selection only)")
    return lm, report


LM_FIELDS_PREFIXES = ("lm_", "llm_", "vocab_size", "seed", "window_seconds")


def lm_cache_key(tc, cfg, corpus, tok) -> str:
    """What the LM stage depends on: its options, the LLM shape, the speech slot's length, corpus and tokenizer."""
    import hashlib

    h = hashlib.sha256()
    opts = {k: v for k, v in sorted(tc.to_dict().items()) if k.startswith(LM_FIELDS_PREFIXES)}
    h.update(json.dumps([opts, cfg.llm, n_speech_tokens(cfg), corpus.asr, corpus.caption], sort_keys=True,
                        default=str).encode())
    h.update(tok.backend_tokenizer.to_str().encode())
    return h.hexdigest()[:16]


def cached_stage_lm(tc, cfg, corpus, tok, progress: bool, dev_texts: Optional[list], data_dir: str,
                    use_cache: bool, log):
    """`stage_lm`, or its earlier result with the same `lm_cache_key` from DATA_DIR/lm/ (the stage is
    deterministic from the seed, so a hit gives the weights a rerun would). Returns (lm, report)."""
    from safetensors.torch import load_file, save_file

    from ..models.build import llm_from_config

    key = lm_cache_key(tc, cfg, corpus, tok)
    folder = os.path.join(data_dir, "lm")
    w_p, r_p = os.path.join(folder, f"lm-{key}.safetensors"), os.path.join(folder, f"lm-{key}.json")
    if use_cache and os.path.isfile(w_p) and os.path.isfile(r_p):
        lm = llm_from_config(cfg.llm)
        try:
            res = lm.load_state_dict(load_file(w_p), strict=False)
            bad = res.unexpected_keys or sorted(set(res.missing_keys) - {"lm_head.weight"})
        except RuntimeError as exc:  # shape mismatch
            bad = str(exc).splitlines()[-1].strip()
        if bad:
            raise ConfigError(f"LM cache {w_p} does not match the LM ({str(bad)[:200]}); delete it or pass "
                              "--no-lm-cache")
        lm.tie_weights()  # a tied output layer is stored once, as the embedding
        with open(r_p) as f:
            report = json.load(f)
        report["reused_from"] = w_p
        log(f"lm: reusing {w_p} (same options, corpus and tokenizer; trained in {report.get('seconds')} s)")
        return lm, report
    lm, report = stage_lm(tc, cfg, corpus, tok, progress, dev_texts, log)
    os.makedirs(folder, exist_ok=True)
    tied = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    state = {k: v.detach().contiguous() for k, v in lm.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, w_p + ".part")
    os.replace(w_p + ".part", w_p)
    with open(r_p + ".part", "w") as f:
        json.dump(report, f)
    os.replace(r_p + ".part", r_p)
    return lm, report


def n_speech_tokens(cfg) -> int:
    """Speech tokens per clip: windows over the 1500 Whisper frames times the queries per window."""
    from ..models.salmonn import window_count

    frames = cfg.whisper.get("max_source_positions", 1500)
    return window_count(frames, cfg.window_kernel, cfg.window_stride) * cfg.num_speech_query_token


def assemble(tc, cfg, tok, lm):
    """The Salmonn module tree from its parts: Whisper (pretrained tiny.en or random), BEATs, LM + LoRA."""
    from ..models.build import add_lora, beats_from_cfg, whisper_encoder_from_config
    from ..models.salmonn import Salmonn

    seed_everything(tc.seed + 2)
    speech = whisper_encoder_from_config(cfg.whisper)
    source = "random (test preset)"
    if tc.whisper == "tiny.en":
        from ..models.whisper_convert import convert_tiny_en

        full = convert_tiny_en()
        speech.load_state_dict(full.model.encoder.state_dict())
        source = "pretrained Whisper tiny.en encoder (compress.models.whisper_convert.convert_tiny_en)"
        del full
    beats = beats_from_cfg(cfg.beats)
    model = Salmonn(cfg, speech, add_lora(lm, cfg.lora), beats, tok)
    torch.nn.init.normal_(model.speech_query_tokens, std=0.02)
    from .audio_stage import boost_cross_attention
    from .text import FILLER

    round_to_storage(model.speech_encoder)
    round_to_storage(model.llm_base(), skip="lora_")  # before anything reads the LM's weights
    boost_cross_attention(model, tc.qformer_cross_gain)
    match_embedding_scale(model, FILLER if tc.lm_slot_share > 0 else None, tc.proj_init_scale)
    return model, source


@torch.no_grad()
def match_embedding_scale(model, filler_id: Optional[int] = None, weight_scale: float = 1.0) -> None:
    """Initialise speech_llama_proj so speech tokens start at the scale of the LM's token embeddings.

    The Q-Former ends in a LayerNorm (outputs of norm ~sqrt(H)); a default Linear would give speech
    tokens ~10x the norm of the small LM's word embeddings. With `filler_id` the bias starts at that
    token's embedding: the LM, pretrained to read its speech slot, first sees an "empty" slot.
    """
    proj = model.speech_llama_proj
    h, d = proj.in_features, proj.out_features
    table = model.llama_model.get_input_embeddings().weight
    target = table.norm(dim=1).mean().item()
    torch.nn.init.normal_(proj.weight, std=weight_scale * target / (h * d) ** 0.5)
    if filler_id is None:
        torch.nn.init.zeros_(proj.bias)
    else:
        proj.bias.copy_(table[filler_id])


@torch.no_grad()
def round_to_storage(module: torch.nn.Module, skip: Optional[str] = None) -> None:
    """Round frozen weights to their float16 storage now, so training sees the weights that ship."""
    for n, p in module.named_parameters():
        if storable(n, p) and not (skip and skip in n):
            p.copy_(p.half().float())


def stage_features(tc, model, samples, data_dir, progress, log):
    from .features import build_cache

    return build_cache(model.speech_encoder, samples, os.path.join(data_dir, "cache"), batch=tc.cache_batch,
                       progress=_bar_factory("whisper", progress), log=log)


def stage_audio(tc, model, samples, cache, progress, log):
    import numpy as np

    from .audio_stage import init_projection_from_data, train_audio
    from .text import FILLER

    seed_everything(tc.seed + 3)
    init = None
    if tc.proj_init == "data":
        idx = np.random.default_rng([tc.seed, 33]).choice(len(samples), min(64, len(samples)), replace=False)
        init = init_projection_from_data(model, cache, [int(i) for i in idx], tc.proj_init_scale, FILLER)
        log(f"audio: projection initialised on {init['clips']} training clips: token norm {init['token_norm']}, "
            f"window-dependent share {init['window_dependent_share']}")
    report = train_audio(model, samples, cache, epochs=tc.epochs, batch=tc.batch, lr=tc.lr, lora_lr=tc.lora_lr,
                         warmup=tc.warmup, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip, seed=tc.seed,
                         ctc_weight=tc.ctc_weight, full_share=tc.full_share, max_minutes=tc.max_minutes,
                         proj_lr=tc.proj_lr, ctc_head=tc.ctc_head, ctc_caption=tc.ctc_caption,
                         whisper_drop=tc.whisper_drop, warmup_steps=tc.ctc_warmup_steps,
                         warmup_batch=tc.ctc_warmup_batch, warmup_lr=tc.ctc_warmup_lr,
                         chain_per_epoch=tc.chain_per_epoch,
                         warmup_augment={"feature_dropout": tc.ctc_warmup_feature_dropout,
                                         "time_masks": tc.ctc_warmup_time_masks,
                                         "mask_width": tc.ctc_warmup_mask_width},
                         progress=_bar_factory("audio", progress), warmup_progress=_bar_factory("ctc warm-up", progress),
                         log=log)
    report["projection_init"] = init or {"method": "random"}
    ctl = report["audio_control"]["after"]
    log("audio: loss with own / other clips' audio: " + ", ".join(
        f"{t} {v['own_audio']:.3f} / {v['other_audio']:.3f}" for t, v in ctl.items()))
    return report


def stage_save(model, out, manifest_extra, overwrite):
    from ..loaders.artifact import save_artifact

    return save_artifact(model, out, manifest_extra=manifest_extra, overwrite=overwrite, weights_dtype="float16")


def quick_eval(model, samples: list, limit: int, num_beams: int = 1) -> dict:
    """WER / CIDEr-D of `model.generate` (the bench's decoding) on the first `limit` clips per task."""
    from ..audio import load_audio
    from ..metrics import cider_d, wer

    out = {}
    for task in ("asr", "caption"):
        todo = [s for s in samples if s.task == task][:limit]
        if not todo:
            continue
        hyps = [model.generate([load_audio(s.path)], task, num_beams=num_beams)[0].text for s in todo]
        if task == "asr":
            out["wer"] = round(wer([s.text for s in todo], hyps), 4)
        else:
            out["cider_d"] = round(cider_d(hyps, [s.references or [s.text] for s in todo])[0], 4)
        out[f"{task}_examples"] = [[s.text, h] for s, h in list(zip(todo, hyps))[:3]]
    return out


# ------------------------------------------------------------------------------------------ the command
def train(tc: recipe.TrainConfig, out: str, *, data_dir: str = DEFAULT_DATA, annotations: Optional[str] = None,
          overwrite: bool = False, progress: bool = True, eval_data: Optional[str] = None, eval_limit: int = 20,
          command: Optional[list] = None, reuse_lm: bool = True, log=print) -> dict:
    """Run every stage; returns the summary (also stored in the artifact's manifest). `reuse_lm`: take the LM
    stage's result from `data_dir` when an identical one is there (see `cached_stage_lm`)."""
    from ..data.annotations import read_annotations
    from ..loaders.artifact import MANIFEST, dir_bytes, load_artifact

    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        mpath = os.path.join(out, MANIFEST)
        trained = False
        if os.path.isfile(mpath):
            with open(mpath) as f:
                trained = "training" in json.load(f)
        if not trained:
            raise UserError(f"output {out!r} exists and is not a demo artifact written by this command; "
                            "pass --overwrite to replace it")
    seed_everything(tc.seed)
    st = Stages(log)
    ann, samples = st.run("data", stage_data, tc, data_dir, annotations, progress)
    probe = recipe.salmonn_config(tc, tc.vocab_size, bos=1, eos=2, pad=0)
    corpus, tok = st.run("tokenizer", stage_tokenizer, tc, samples, probe)
    cfg = recipe.salmonn_config(tc, len(tok), bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id)
    dev = read_annotations(eval_data) if eval_data else None
    dev_texts = [s.text for s in dev if s.task == "asr"] if dev else None
    lm, lm_report = st.run("lm", cached_stage_lm, tc, cfg, corpus, tok, progress, dev_texts, data_dir, reuse_lm, log)
    model, whisper_source = assemble(tc, cfg, tok, lm)
    cache = st.run("features", stage_features, tc, model, samples, data_dir, progress, log)
    audio_report = st.run("audio", stage_audio, tc, model, samples, cache, progress, log)
    n_params = sum(p.numel() for p in model.parameters())
    summary = {
        "command": command or [],
        "seed": tc.seed,
        "config": tc.to_dict(),
        "data": {"annotations": os.path.abspath(ann), "clips": len(samples),
                 "asr": sum(s.task == "asr" for s in samples), "caption": sum(s.task == "caption" for s in samples),
                 "corpus": {"asr_texts": len(corpus.asr), "caption_texts": len(corpus.caption)}},
        "tokenizer": {"type": "byte-level BPE (tokenizers), trained on the training text", "vocab": len(tok)},
        "whisper": whisper_source,
        "beats": "trained from scratch in the audio stage (no pretrained BEATs weights are available here)",
        "lm": lm_report,
        "audio": audio_report,
        "parameters": n_params,
        "weights_storage": "float16 for tensors of 2+ dimensions, float32 for the rest; loaded as float32",
        "stage_seconds": dict(st.times),
        "seconds_before_save": st.total(),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
    }
    st.run("save", stage_save, model, out, {"training": summary}, True)
    summary["stage_seconds"] = dict(st.times)
    summary["total_seconds"] = st.total()
    loaded = load_artifact(out)
    bad = [n for n, p in loaded.named_parameters() if p.dtype != torch.float32]
    if bad:
        raise ConfigError(f"artifact loaded with non-float32 parameters: {bad[:3]}")
    if eval_data:
        summary["eval"] = quick_eval(loaded, dev, eval_limit)
    summary["artifact_bytes"] = dir_bytes(out)
    return summary


def _parse_set(items: list) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compress.train.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="artifact directory (default: compress/assets/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=DEFAULT_DATA, help="train split and feature cache (regenerated on demand)")
    ap.add_argument("--annotations", help="train on this annotation file instead of generating the train split")
    ap.add_argument("--preset", default="demo", choices=list(recipe.PRESETS))
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training option (JSON value)")
    ap.add_argument("--eval-data", help="after saving, decode the first --eval-limit clips per task of this file "
                                        "(greedy) and report WER / CIDEr-D; for selection on dev, never test")
    ap.add_argument("--eval-limit", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a demo artifact")
    ap.add_argument("--no-lm-cache", action="store_true",
                    help="train the LM even if --data-dir holds one trained with the same options, corpus and tokenizer")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        tc = recipe.preset(args.preset).replace(seed=args.seed, **_parse_set(args.set))
        summary = train(tc, args.out, data_dir=args.data_dir, annotations=args.annotations, overwrite=args.overwrite,
                        progress=not args.no_progress, eval_data=args.eval_data, eval_limit=args.eval_limit,
                        reuse_lm=not args.no_lm_cache,
                        command=["python", "-m", "compress.train.demo"] + list(argv if argv is not None else sys.argv[1:]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(_summary_text(summary, args.out))
    return 0


def _summary_text(s: dict, out: str) -> str:
    lines = ["", "== summary", f"artifact: {os.path.abspath(out)} ({s['artifact_bytes'] / 1e6:.1f} MB, "
             f"{s['parameters'] / 1e6:.2f} M parameters)"]
    for k, v in s["stage_seconds"].items():
        lines.append(f"  {k:<10} {_hms(v)}")
    lines.append(f"  {'total':<10} {_hms(s['total_seconds'])}")
    lines.append(f"lm: {s['lm']['steps']} steps, loss {s['lm']['first_loss']:.3f} -> {s['lm']['final_loss']:.3f}")
    a = s["audio"]
    lines.append(f"audio: {a['steps']} steps, loss {a['first_loss']:.3f} -> {a['final_loss']:.3f}")
    if "eval" in s:
        lines.append(f"eval: {json.dumps(s['eval'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
