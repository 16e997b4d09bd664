"""TTFT / TPOT of one model under eager attention, SDPA, SDPA + real-length encoding and SDPA + torch.compile,
measured in one process on one clip, as ratios to eager (issue 7).

    .venv/bin/python benchmarks/tools/runtime_ratios.py --model sized-1b --tokens 16 --warmup 1 --repeats 3 \\
        --out benchmarks/results/runtime-ratios-sized-1b.json

Order: eager -> sdpa -> sdpa + real_length -> sdpa + compile (speech encoder + Q-Former, inductor). The compiled
configuration is last because compilation cannot be undone in place; real-length encoding runs the Whisper
modules outside the compiled forward, so it is measured before compiling. Compile time is the first compiled
generate minus a steady one, reported apart from the latencies.
"""

import argparse
import datetime as _dt
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sized-1b")
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "dev.json"))
    p.add_argument("--task", default="asr")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile-parts", default="speech_encoder,qformer")
    p.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="cast the model: float32 / float16 / bfloat16")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    import torch

    from compress.audio import load_audio
    from compress.bench.harness import environment
    from compress.bench.latency import measure_latency, set_threads
    from compress.bench.results import write_json
    from compress.data.annotations import read_annotations
    from compress.errors import UserError
    from compress.loaders import load_model
    from compress.runtime import SDPA_PARTS, compile_parts, set_attention

    set_threads(a.threads)
    t0 = time.perf_counter()
    try:
        model = load_model(a.model, dtype=a.dtype, device=a.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0
    clip = next(s for s in read_annotations(a.data) if s.task == a.task)
    audio = load_audio(clip.path)
    runs, extra = {}, {}

    def measure(name):
        r = measure_latency(model, audio, a.task, n_tokens=a.tokens, warmup=a.warmup, repeats=a.repeats).to_dict()
        runs[name] = {"ttft_ms_p50": r["ttft_ms"]["p50"], "tpot_ms_p50": r["tpot_ms"]["p50"], "latency": r}
        print(f"{name:<22} TTFT {r['ttft_ms']['p50']:9.1f} ms   TPOT {r['tpot_ms']['p50']:8.2f} ms", flush=True)

    set_attention(model, SDPA_PARTS, "eager")
    measure("eager")
    set_attention(model, SDPA_PARTS, "sdpa")
    measure("sdpa")
    model.real_length = True
    with torch.inference_mode():
        extra["speech_tokens_real_length"] = model.encode_audio(**model.prepare_audio([audio])).shape[1]
    measure("sdpa+real_length")
    model.real_length = False
    with torch.inference_mode():
        extra["speech_tokens_full"] = model.encode_audio(**model.prepare_audio([audio])).shape[1]
    parts = [x for x in a.compile_parts.split(",") if x]
    try:
        compile_parts(model, parts, "default")
        t = time.perf_counter()
        model.generate([audio], a.task, max_new_tokens=a.tokens, num_beams=1, ignore_eos=True)
        first = time.perf_counter() - t
        t = time.perf_counter()
        model.generate([audio], a.task, max_new_tokens=a.tokens, num_beams=1, ignore_eos=True)
        steady = time.perf_counter() - t
        extra["compile_seconds"] = round(first - steady, 2)
        measure("sdpa+compile")
    except Exception as e:  # inductor needs a C compiler
        extra["compile_error"] = f"{type(e).__name__}: {e}"[:500]
        print("compile failed:", extra["compile_error"])
    base = runs["eager"]
    ratios = {k: {"ttft_vs_eager": v["ttft_ms_p50"] / base["ttft_ms_p50"],
                  "tpot_vs_eager": v["tpot_ms_p50"] / base["tpot_ms_p50"]} for k, v in runs.items()}
    for k, v in ratios.items():
        print(f"{k:<22} TTFT x{v['ttft_vs_eager']:.3f}   TPOT x{v['tpot_vs_eager']:.3f} (vs eager)")
    doc = {"what": "TTFT/TPOT p50 of eager / sdpa / sdpa+real_length / sdpa+compile in one process, ratios to eager",
           "command": "python benchmarks/tools/runtime_ratios.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "model": a.model, "clip": clip.id, "clip_seconds": round(len(audio) / 16000, 3), "task": a.task,
           "n_tokens": a.tokens, "warmup": a.warmup, "repeats": a.repeats, "compile_parts": parts,
           "dtype": a.dtype,
           "load_seconds": round(load_s, 1), "environment": environment(str(model.device)),
           "ratios": ratios, "extra": extra, "runs": runs}
    if str(model.device) == "cpu":
        doc["not_run_here"] = "CUDA (compile with CUDA graphs, Liger kernels): run with --device cuda on a GPU"
    write_json(doc, a.out)  # atomic: never half a result file
    return 0


if __name__ == "__main__":
    sys.exit(main())
