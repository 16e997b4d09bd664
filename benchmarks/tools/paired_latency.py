"""TTFT and TPOT of several models as ratios to the first, measured interleaved round by round in one process.

    .venv/bin/python benchmarks/tools/paired_latency.py demo ARTIFACT [ARTIFACT ...] --out F.json
        [--rounds 7] [--tokens 32] [--threads 2] [--data benchmarks/data/test.json] [--task asr]

This machine's speed drifts by 20% and more within minutes (a shared host), so latencies measured by separate runs
(the method table's TPOT column: one benchmark process per row) do not make reliable ratios. Here all models are
loaded once, warmed up, and every round times each of them once (compress.bench.latency.measure_latency: greedy,
EOS ignored, --tokens tokens, the first --task clip of --data) in an order rotated by one each round; the result is,
per model, the median over rounds of its TTFT and TPOT divided by the first model's in the same round, with the range,
and the medians of its TTFT's two phases (speech front, prefill).

`--without-prefix`: each ONNX export among the models is also timed a second time, loaded again with its prompt
prefix not kept (every prefill runs BOS and the text before the speech again; see compress.export.lite.LlmSession).
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model specs (demo, a preset, an artifact folder); the first is the "
                                             "reference of every ratio")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "test.json"))
    p.add_argument("--task", default="asr")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--without-prefix", action="store_true",
                   help="time each ONNX export also without its kept prompt prefix")
    a = p.parse_args(argv)
    if len(a.models) < 2 and not a.without_prefix:
        print("error: give at least two models (the first is the reference), or one ONNX export with "
              "--without-prefix", file=sys.stderr)
        return 2
    if a.rounds < 1 or a.tokens < 2 or a.threads < 1:
        print("error: --rounds and --threads must be >= 1, --tokens >= 2", file=sys.stderr)
        return 2

    from compress.audio import load_audio
    from compress.bench.latency import measure_latency, set_threads
    from compress.data.annotations import read_annotations
    from compress.errors import UserError
    from compress.export.layout import KIND as ONNX_KIND
    from compress.loaders import load_model

    set_threads(a.threads)
    try:
        clip = next((s.path for s in read_annotations(a.data) if s.task == a.task), None)
        if clip is None:
            raise UserError(f"{a.data} has no clip of task {a.task!r}")
        audio = load_audio(clip)
        models, names = [], []
        for spec in a.models:
            model = load_model(spec)
            if hasattr(model, "eval"):  # PyTorch models; an ONNX export (OrtSalmonn) is inference-only already
                model.eval()
            variants = [(spec, model)]
            if a.without_prefix and getattr(model, "kind", None) == ONNX_KIND:
                variants.append((f"{spec} (prompt prefix not kept)", load_model(spec)))
                variants[-1][1].lm.llm.keep_prefix(None)
            for name, m in variants:
                models.append(m)
                names.append(name)
                measure_latency(m, audio, a.task, n_tokens=a.tokens, warmup=1, repeats=1)  # warm-up
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    rounds = []
    n = len(models)
    for r in range(a.rounds):
        order = [(r + i) % n for i in range(n)]
        got = {}
        for i in order:
            lat = measure_latency(models[i], audio, a.task, n_tokens=a.tokens, warmup=0, repeats=1)
            got[i] = (lat.ttft_ms[0], lat.tpot_ms[0], lat.front_ms[0] if lat.front_ms else None)
        rounds.append({"round": r, "order": [names[i] for i in order],
                       "ttft_ms": [got[i][0] for i in range(n)], "tpot_ms": [got[i][1] for i in range(n)],
                       "front_ms": [got[i][2] for i in range(n)]})
        print(f"round {r}: " + ", ".join(f"{names[i]} TPOT {got[i][1]:.1f} ms" for i in range(n)), flush=True)

    per_model = []
    for i, spec in enumerate(names):
        row = {"model": spec}
        for key in ("ttft_ms", "tpot_ms"):
            vals = [x[key][i] for x in rounds]
            ratios = [x[key][i] / x[key][0] for x in rounds]
            row[key + "_median"] = statistics.median(vals)
            row[key.replace("_ms", "") + "_ratio"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                     "max": max(ratios)}
        fronts = [x["front_ms"][i] for x in rounds]
        if all(f is not None for f in fronts):  # TTFT = speech front + prefill
            row["front_ms_median"] = statistics.median(fronts)
            row["prefill_ms_median"] = statistics.median(x["ttft_ms"][i] - x["front_ms"][i] for x in rounds)
        per_model.append(row)
    out = {"reference": a.models[0], "clip": clip, "task": a.task, "tokens": a.tokens, "threads": a.threads,
           "rounds": rounds, "models": per_model, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "method": "compress.bench.latency.measure_latency, one repeat per model per round, order rotated; "
                     "ratios per round to the first model, then the median and range over rounds",
           "command": ["python", "benchmarks/tools/paired_latency.py"] + list(argv if argv is not None
                                                                           else sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print("| model | TTFT ms (front + prefill) | TTFT / ref (range) | TPOT ms | TPOT / ref (range) |")
    for row in per_model:
        t, d = row["ttft_ratio"], row["tpot_ratio"]
        parts = (f" ({row['front_ms_median']:.1f} + {row['prefill_ms_median']:.1f})" if "front_ms_median" in row
                 else "")
        print(f"| {row['model']} | {row['ttft_ms_median']:.1f}{parts} | {t['median']:.2f} ({t['min']:.2f}.."
              f"{t['max']:.2f}) | {row['tpot_ms_median']:.1f} | {d['median']:.2f} ({d['min']:.2f}..{d['max']:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
