"""Where the demo's WER goes: the audio front's own transcript (greedy CTC read-out of its speech tokens) beside the
LLM's, on held-out clips and on training clips.

    python -m demo_factory.train.readout --model ARTIFACT --state RUN_DIR/train-state.pt \
        --data benchmarks/data/test.json [--train-data DATA_DIR/train.json] [--limit 100] --out F.json

The training's CTC head (loop.CtcHead: a blank vector and a temperature, kept in the run's state file, not in the
artifact) scores each speech token against the LLM's input embedding table; the greedy read-out takes each token's
best class, merges repeats and drops blanks. `--state` may also be the front warm-up's state (front-warmup.pt): its
front weights are then loaded over the artifact's, which shows what the warm-up alone reached. A warm-up of
other training settings (window, query count) is read with `--set key=value` in place of `--model`: the model is
then built from those settings (frozen Whisper and LLM from their sources) and the state's front loaded into it.
A front read-out near the LLM's WER says the LLM mostly copies the pieces the front spells; a read-out much better
on training clips than on held-out ones says the front remembers its training utterances.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys

import torch

from compress.errors import UserError


def load_head(model, state_path: str, load_front: bool):
    """The CtcHead of a run state (and, with `load_front`, that state's front weights copied into `model`)."""
    from .loop import CtcHead

    try:
        params = torch.load(state_path, map_location="cpu", weights_only=True)["params"]
    except (OSError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot read a training state from {state_path}: {e}") from None
    head = CtcHead(model.llama_model.get_input_embeddings().weight)
    mine = {k[len("ctc_head."):]: v for k, v in params.items() if k.startswith("ctc_head.")}
    if set(mine) != set(head.state_dict()):
        raise UserError(f"{state_path} holds no CTC head (trained with ctc_weight 0 and no front warm-up?)")
    head.load_state_dict(mine)
    if load_front:
        own = dict(model.named_parameters())
        bad = [f"{k} {tuple(v.shape)} in the state, {tuple(own[k].shape)} in the model" for k, v in params.items()
               if k in own and own[k].shape != v.shape]
        if bad:
            raise UserError(f"{state_path} was trained with other settings ({'; '.join(bad[:3])}): read it with the "
                            "--set options of its training")
        with torch.no_grad():
            for k, v in params.items():
                if k in own and "lora_" not in k:
                    own[k].copy_(v)
    return head


def settings_model(items: list, preset: str = "demo"):
    """The untrained model of the training settings `items` (KEY=VALUE overrides of the preset)."""
    from . import settings as S
    from .pipeline import _parse_set, assemble, stage_llm

    ts = S.preset(preset).replace(**_parse_set(items))
    tok, folder = stage_llm(ts, progress=False)
    model, _ = assemble(ts, S.salmonn_config(ts), tok, folder)
    model.real_length = ts.real_length
    return model


@torch.inference_mode()
def read_out(model, head, waveforms: list) -> list:
    """Greedy CTC transcript of each clip's speech tokens."""
    table = model.llama_model.get_input_embeddings().weight
    texts = []
    for wav in waveforms:
        speech = model.encode_audio(**model.prepare_audio([wav]))[0]
        ids, prev, pieces = head(speech, table).argmax(-1).tolist(), None, []
        for i in ids:
            if i != prev and i != 0:  # class 0 = blank, class v + 1 = token v
                pieces.append(i - 1)
            prev = i
        texts.append(model.tokenizer.decode(pieces).strip())
    return texts


def evaluate(model, head, samples: list, llm: bool, progress: bool = True) -> dict:
    from tqdm import tqdm

    from compress.audio import load_audio
    from compress.metrics.asr import wer

    refs, front, answers = [], [], []
    for s in tqdm(samples, desc="read-out", unit="clip", disable=not progress, file=sys.stderr):
        wav = load_audio(s.path)
        refs.append(s.text)
        front += read_out(model, head, [wav])
        if llm:
            answers.append(model.generate([wav], "asr")[0].text)
    out = {"clips": len(refs), "front_readout_wer": round(wer(refs, front), 4),
           "samples": [{"path": s.path, "reference": r, "front": f, **({"llm": a} if llm else {})}
                       for s, r, f, a in zip(samples, refs, front, answers or [None] * len(refs))]}
    if llm:
        out["llm_wer"] = round(wer(refs, answers), 4)
    return out


def against(result: dict, earlier_path: str) -> dict:
    """Paired bootstrap of the front read-out WER, this result against an earlier read-out of the same clips
    (per split: delta = this - earlier; negative = this front reads better)."""
    from compress.metrics.bootstrap import rounded, wer_bootstrap

    try:
        with open(earlier_path) as f:
            earlier = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the earlier read-out {earlier_path}: {e}") from None
    out = {}
    for name, r in result.items():
        old = earlier.get(name, {}).get("samples")
        if old is None:
            continue
        if [s["path"] for s in old] != [s["path"] for s in r["samples"]]:
            raise UserError(f"{earlier_path} read other clips than this run in split {name!r}")
        refs = [s["reference"] for s in r["samples"]]
        out[name] = rounded(wer_bootstrap(refs, [s["front"] for s in old], [s["front"] for s in r["samples"]]))
    if not out:
        raise UserError(f"{earlier_path} holds no per-clip read-out of the same splits")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="demo artifact folder (or 'demo')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="build the model of these training settings instead of --model (needs --load-front)")
    p.add_argument("--preset", default="demo", help="the training preset --set overrides (default: demo)")
    p.add_argument("--state", required=True, help="train-state.pt or front-warmup.pt of the run that made it")
    p.add_argument("--load-front", action="store_true", help="copy the state's front weights into the model "
                                                              "(for front-warmup.pt)")
    p.add_argument("--data", required=True, help="held-out annotation file (its ASR clips)")
    p.add_argument("--train-data", default=None, help="the run's train.json: the same read-out on training clips")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--no-llm", action="store_true", help="front read-out only (skip the LLM's transcripts)")
    p.add_argument("--against", default=None, help="an earlier read-out JSON of the same clips: paired bootstrap "
                                                   "of the difference")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    problem = ("--limit must be >= 1" if a.limit < 1 else
               "give --model or --set, not both" if a.model and a.set else
               "give --model (an artifact) or --set (training settings)" if not (a.model or a.set) else
               "--set builds an untrained front: add --load-front" if a.set and not a.load_front else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from compress.data.annotations import read_annotations
    from compress.loaders import load_model

    try:
        model = (settings_model(a.set, a.preset) if a.set else load_model(a.model)).eval()
        head = load_head(model, a.state, a.load_front)
        splits = {"held_out": a.data, **({"train": a.train_data} if a.train_data else {})}
        result = {}
        for name, path in splits.items():
            samples = [s for s in read_annotations(path) if s.task == "asr"][: a.limit]
            if not samples:
                raise UserError(f"{path} has no ASR clips")
            result[name] = evaluate(model, head, samples, llm=not a.no_llm, progress=not a.no_progress)
        versus = against(result, a.against) if a.against else None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = {"model": a.model, "settings": a.set, "state": a.state, "load_front": a.load_front, "data": splits,
           "limit": a.limit,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": ["python", "-m", "demo_factory.train.readout"] + list(argv if argv is not None
                                                                              else sys.argv[1:]),
           **result, **({"against": {"path": a.against, **versus}} if versus else {})}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    for name in result:
        r = result[name]
        llm = f", LLM {r['llm_wer']:.3f}" if "llm_wer" in r else ""
        vs = ""
        if versus and name in versus:
            v = versus[name]
            vs = f"; against the earlier read-out {v['delta']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"
        print(f"{name}: {r['clips']} clips, front read-out WER {r['front_readout_wer']:.3f}{llm}{vs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
