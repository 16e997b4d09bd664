"""TTFT and TPOT of several models as ratios to the first, measured interleaved round by round.

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

`--processes`: each model lives in a process of its own (started with spawn, driven over a pipe); the rounds still
interleave, but no model's allocator, thread pools or sessions share a process with another's.
`--gap`: idle seconds before each timing (default 0.5). A model timed right after another starts while the other's
thread pools still spin (ONNX Runtime's and OpenMP's workers busy-wait a while after each call): without the gap the
PyTorch demo's speech front read 44 ms beside an ONNX export instead of 19, in one process or in two
(benchmarks/results/cpu-formats-v7/ttft-paired-processes*.json).
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


def _load(spec: str, keep_prefix: bool, settings: dict):
    """The model of `spec`, warmed up once; an ONNX export with `keep_prefix` False forgets its prompt prefixes."""
    from compress.audio import load_audio
    from compress.bench.latency import measure_latency
    from compress.export.layout import KIND as ONNX_KIND
    from compress.loaders import load_model

    model = load_model(spec)
    if hasattr(model, "eval"):  # PyTorch models; an ONNX export (OrtSalmonn) is inference-only already
        model.eval()
    onnx = getattr(model, "kind", None) == ONNX_KIND
    if onnx and not keep_prefix:
        model.lm.llm.keep_prefixes([])
    audio = load_audio(settings["clip"])

    def measure() -> tuple:
        lat = measure_latency(model, audio, settings["task"], n_tokens=settings["tokens"], warmup=0, repeats=1)
        return lat.ttft_ms[0], lat.tpot_ms[0], lat.front_ms[0] if lat.front_ms else None

    measure()  # warm-up
    return onnx, measure


def _label(spec: str, keep_prefix: bool) -> str:
    return spec if keep_prefix else f"{spec} (prompt prefix not kept)"


class InProcess:
    """A model loaded in this process."""

    def __init__(self, spec: str, keep_prefix: bool, settings: dict):
        self.name = _label(spec, keep_prefix)
        self.onnx, self.measure = _load(spec, keep_prefix, settings)

    def close(self) -> None:
        pass


def _serve(conn, spec: str, keep_prefix: bool, settings: dict) -> None:
    """A worker process: load one model, then time it on each request until told to stop."""
    from compress.bench.latency import set_threads
    from compress.errors import UserError

    set_threads(settings["threads"])
    try:
        onnx, measure = _load(spec, keep_prefix, settings)
    except UserError as e:
        conn.send(("error", str(e)))
        return
    conn.send(("ready", onnx))
    while conn.recv() == "measure":
        conn.send(measure())


class Worker:
    """A model in a process of its own (spawned: nothing of this process's state is inherited)."""

    def __init__(self, spec: str, keep_prefix: bool, settings: dict):
        import multiprocessing as mp

        from compress.errors import UserError

        self.name = _label(spec, keep_prefix)
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, spec, keep_prefix, settings), daemon=True)
        self.proc.start()
        try:
            status, value = self.conn.recv()
        except EOFError:
            status, value = "error", f"the worker process for {spec!r} exited (code {self.proc.exitcode})"
        if status == "error":
            self.close()
            raise UserError(value)
        self.onnx = value

    def measure(self) -> tuple:
        self.conn.send("measure")
        return self.conn.recv()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


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
    p.add_argument("--processes", action="store_true", help="each model in a process of its own")
    p.add_argument("--gap", type=float, default=0.5,
                   help="seconds of idle before each timing (default 0.5), so the thread pools the previous model "
                        "left spinning (ONNX Runtime's, OpenMP's) are asleep when the next one starts")
    a = p.parse_args(argv)
    if len(a.models) < 2 and not a.without_prefix:
        print("error: give at least two models (the first is the reference), or one ONNX export with "
              "--without-prefix", file=sys.stderr)
        return 2
    if a.rounds < 1 or a.tokens < 2 or a.threads < 1 or a.gap < 0:
        print("error: --rounds and --threads must be >= 1, --tokens >= 2, --gap >= 0", file=sys.stderr)
        return 2

    from compress.data.annotations import read_annotations
    from compress.errors import UserError

    timers = []
    try:
        clip = next((s.path for s in read_annotations(a.data) if s.task == a.task), None)
        if clip is None:
            raise UserError(f"{a.data} has no clip of task {a.task!r}")
        settings = dict(clip=clip, task=a.task, tokens=a.tokens, threads=a.threads)
        kind = Worker if a.processes else InProcess
        if not a.processes:
            from compress.bench.latency import set_threads

            set_threads(a.threads)
        for spec in a.models:
            timers.append(kind(spec, True, settings))
            if a.without_prefix and timers[-1].onnx:
                timers.append(kind(spec, False, settings))
    except UserError as e:
        for t in timers:
            t.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [t.name for t in timers]
    rounds = []
    n = len(timers)
    for r in range(a.rounds):
        order = [(r + i) % n for i in range(n)]
        got = {}
        for i in order:
            time.sleep(a.gap)
            got[i] = timers[i].measure()
        rounds.append({"round": r, "order": [names[i] for i in order],
                       "ttft_ms": [got[i][0] for i in range(n)], "tpot_ms": [got[i][1] for i in range(n)],
                       "front_ms": [got[i][2] for i in range(n)]})
        print(f"round {r}: " + ", ".join(f"{names[i]} TPOT {got[i][1]:.1f} ms" for i in range(n)), flush=True)
    for t in timers:
        t.close()

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
           "processes": "one per model" if a.processes else "one for all models", "gap_s": a.gap,
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
