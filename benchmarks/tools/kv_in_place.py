"""Decode steps of an onnxruntime-genai export with the KV cache extended in place (compress.export.lite.KvInPlace)
against the copying path (a new present array every step), interleaved round by round in one process.

    .venv/bin/python benchmarks/tools/kv_in_place.py EXPORT_DIR --out RESULT.json [--tokens 64,200] [--rounds 5]

The torch-free runtime greedy-decodes the first ASR clip of --data with EOS ignored; TPOT = (last - first token
time) / (tokens - 1), the order of the two paths alternating between rounds; the generated ids must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def tpot(engine, wav, n: int, in_place: bool) -> tuple:
    keep = engine.llm.in_place
    engine.llm.in_place = keep if in_place else None
    stamps: list = []
    try:
        _, ids = engine.generate(wav, "asr", max_new_tokens=n, ignore_eos=True,
                                 on_token=lambda step: stamps.append(time.perf_counter()))
    finally:
        engine.llm.in_place = keep
    return (stamps[-1] - stamps[0]) * 1e3 / (len(stamps) - 1), ids


def main(argv=None) -> int:
    from compress.data.annotations import read_annotations
    from compress.export.lite import LiteEngine, load_wav

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "test.json"))
    p.add_argument("--tokens", default="64,200")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    engine = LiteEngine(a.export, threads=a.threads)
    if engine.llm.in_place is None:
        raise SystemExit("this export's LLM graph has no in-place KV path (only the genai graph, on the CPU)")
    clip = next(s for s in read_annotations(a.data, check_files=False) if s.task == "asr")
    wav = load_wav(clip.path)
    out = {"export": a.export, "clip": clip.path, "threads": a.threads, "by_tokens": []}
    for n in (int(t) for t in a.tokens.split(",")):
        rows = []
        for r in range(a.rounds):
            order = (True, False) if r % 2 else (False, True)
            got = {mode: tpot(engine, wav, n, mode) for mode in order}
            if got[True][1] != got[False][1]:
                raise SystemExit(f"{n} tokens, round {r}: the two paths generated different ids")
            rows.append({"in_place_ms": got[True][0], "copying_ms": got[False][0],
                         "ratio": got[True][0] / got[False][0]})
            print(f"{n} tokens, round {r}: in place {got[True][0]:.2f} ms, copying {got[False][0]:.2f} ms")
        med = {k: statistics.median(x[k] for x in rows) for k in ("in_place_ms", "copying_ms", "ratio")}
        out["by_tokens"].append({"tokens": n, "rounds": rows, **{f"{k}_median": v for k, v in med.items()}})
        print(f"| {n} | {med['in_place_ms']:.2f} | {med['copying_ms']:.2f} | {med['ratio']:.2f} "
              f"({min(x['ratio'] for x in rows):.2f} .. {max(x['ratio'] for x in rows):.2f}) |")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
