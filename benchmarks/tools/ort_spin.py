"""ONNX Runtime thread spinning and TTFT: one export loaded three times (both sessions spinning, the audio front not
spinning, neither spinning), timed interleaved round by round in one process.

    .venv/bin/python benchmarks/tools/ort_spin.py EXPORT_DIR --out F.json [--rounds 9] [--tokens 32]

Why: the audio front's session runs once per request; with ONNX Runtime's default its idle worker threads busy-wait
after the call, on the same two cores the LLM's prefill needs. Each variant is an OrtSalmonn whose sessions get
`session.intra_op.allow_spinning` set as named; the timing is compress.bench.latency.measure_latency (greedy, EOS
ignored) on the first ASR clip of the test split; medians over rounds.
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

VARIANTS = {"both spin": (True, True), "front does not spin": (False, True), "neither spins": (False, False)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", help="an ONNX export folder (salmonn-compress export --format onnx)")
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import compress.export.ort_backend as ob
    from compress.audio import load_audio
    from compress.bench.latency import measure_latency, set_threads
    from compress.data.annotations import read_annotations
    from compress.export.lite import session

    set_threads(a.threads)
    clip = next(s.path for s in read_annotations(os.path.join(ROOT, "benchmarks", "data", "test.json"))
                if s.task == "asr")
    audio = load_audio(clip)
    models = {}
    for name, (front, llm) in VARIANTS.items():
        def make(path, providers=None, threads=None, spin=None, front=front, llm=llm):
            return session(path, providers, threads, spin=front if path.endswith("audio_front.onnx") else llm)
        ob.session = make
        models[name] = ob.load_onnx_export(a.export)
        measure_latency(models[name], audio, "asr", n_tokens=8, warmup=1, repeats=1)
    got = {n: {"ttft_ms": [], "front_ms": [], "prefill_ms": [], "tpot_ms": []} for n in models}
    names = list(models)
    for r in range(a.rounds):
        for i in range(len(names)):
            n = names[(r + i) % len(names)]
            lat = measure_latency(models[n], audio, "asr", n_tokens=a.tokens, warmup=0, repeats=1)
            got[n]["ttft_ms"].append(lat.ttft_ms[0])
            got[n]["tpot_ms"].append(lat.tpot_ms[0])
            got[n]["front_ms"].append(lat.front_ms[0])
            got[n]["prefill_ms"].append(lat.ttft_ms[0] - lat.front_ms[0])
    med = {n: {k: round(statistics.median(v), 2) for k, v in d.items()} for n, d in got.items()}
    out = {"export": a.export, "clip": clip, "rounds": a.rounds, "tokens": a.tokens, "threads": a.threads,
           "medians": med, "samples": got, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "command": ["python", "benchmarks/tools/ort_spin.py"] + list(argv if argv is not None else sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print("| sessions | TTFT ms (front + prefill) | TPOT ms |")
    for n, m in med.items():
        print(f"| {n} | {m['ttft_ms']:.1f} ({m['front_ms']:.1f} + {m['prefill_ms']:.1f}) | {m['tpot_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
