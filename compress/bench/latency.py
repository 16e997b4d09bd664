"""Latency of a generator (TTFT, TPOT, E2E) measured the correct way, beside the hackathon's way.

Definitions (DESIGN.md section 2), for one audio clip, greedy decoding, EOS ignored, fixed n:

- TTFT: from the start of ``generate`` (raw waveform in host memory) to the first generated token
  id on the host, i.e. the first ``on_token(0)`` callback. It covers feature extraction, both audio
  encoders, Q-Former, projection and the LLM prefill.
- E2E: from the start of ``generate`` to its return, after a device synchronisation.
- TPOT: ``(E2E - TTFT) / (n - 1)``, the mean decode step (this includes whatever ``generate`` does
  after the last token, e.g. detokenisation). The per-step intervals between consecutive
  ``on_token`` callbacks are reported separately as ``step_ms`` (its p50 is the median step).
- tokens/s = ``n / E2E``; decode tokens/s = ``(n - 1) / (E2E - TTFT)``.
- TTFT in phases: ``front_ms`` from the start to the end of the speech front (features, Whisper, BEATs,
  Q-Former, projection, prompt embeddings: ``generate``'s ``on_phase("speech_front")``, after a device
  synchronisation), ``prefill_ms`` from there to the first token id (the LLM prefill and the first sampling).

Clock: ``time.perf_counter``. On CUDA the device is synchronised before the start and after the
end of each run (the callback fires once the token id is on the host, so the host clock is valid
there without a sync); E2E is also taken with CUDA events as a cross-check. Warm-up runs are
discarded; every statistic is over the ``repeats`` timed runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from compress.errors import AudioError, ConfigError

SCHEMA_VERSION = 1
STAT_NAMES = ("p50", "p90", "p99", "mean", "min", "max")

# metric name -> (unit, higher_is_better)
_METRICS = {
    "ttft_ms": ("ms", False),
    "tpot_ms": ("ms", False),
    "e2e_ms": ("ms", False),
    "step_ms": ("ms", False),
    "front_ms": ("ms", False),
    "prefill_ms": ("ms", False),
    "tokens_per_s": ("tokens/s", True),
    "decode_tokens_per_s": ("tokens/s", True),
}

HACKATHON_NOTE = (
    "hackathon evaluator definitions, for comparison with published team numbers only: "
    "time.time() with no device synchronisation, no warm-up (the cold first run is included), "
    "TPOT from a single decode step (interval between the first and second token)"
)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    This is numpy's default method ('linear', Hyndman & Fan type 7): with the values sorted
    ``x[0] <= ... <= x[n-1]``, take rank ``h = (n - 1) * q / 100`` and return
    ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``.
    """
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max of a non-empty sample."""
    vals = [float(v) for v in values]
    return {
        "p50": percentile(vals, 50),
        "p90": percentile(vals, 90),
        "p99": percentile(vals, 99),
        "mean": sum(vals) / len(vals),
        "min": min(vals),
        "max": max(vals),
    }


def set_threads(n: int) -> int:
    """Fix torch's intra-op CPU thread count to ``n``; returns the previous count.

    Latency on CPU depends strongly on the thread count, so callers fix it before measuring and
    the result records ``torch.get_num_threads()``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"threads must be a positive integer, got {n!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


@dataclass
class LatencyResult:
    """Raw per-run samples (milliseconds) plus the settings they were measured under."""

    method: str  # "default" (correct definitions) or "hackathon"
    task: str
    n_tokens: int
    warmup: int
    repeats: int
    num_threads: int
    device: str
    dtype: str | None
    clock: str
    sync: str
    ttft_ms: list[float]
    tpot_ms: list[float]
    e2e_ms: list[float]
    step_ms: list[float]  # every decode interval of every timed run, pooled
    e2e_ms_cuda_events: list[float] | None = None
    front_ms: list[float] = field(default_factory=list)  # TTFT = front + prefill (empty: not measured)
    prefill_ms: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> list[float]:
        return [self.n_tokens / (e / 1e3) for e in self.e2e_ms]

    @property
    def decode_tokens_per_s(self) -> list[float]:
        return [(self.n_tokens - 1) / ((e - t) / 1e3) for e, t in zip(self.e2e_ms, self.ttft_ms)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able report: config, one ``{unit, higher_is_better, p50, ...}`` block per metric,
        and the raw samples."""
        samples: dict[str, list[float]] = {
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "e2e_ms": self.e2e_ms,
            "step_ms": self.step_ms,
            "front_ms": self.front_ms,
            "prefill_ms": self.prefill_ms,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "note": self.note,
            "config": {
                "task": self.task,
                "n_tokens": self.n_tokens,
                "warmup": self.warmup,
                "repeats": self.repeats,
                "num_beams": 1,
                "ignore_eos": True,
                "num_threads": self.num_threads,
                "device": self.device,
                "dtype": self.dtype,
                "clock": self.clock,
                "sync": self.sync,
                "percentile_method": "linear interpolation (numpy default)",
                **self.extra,
            },
        }
        for name, values in samples.items():
            unit, higher = _METRICS[name]
            stats = summarize(values) if values else dict.fromkeys(STAT_NAMES)
            out[name] = {"unit": unit, "higher_is_better": higher, **stats}
        if self.e2e_ms_cuda_events:
            out["e2e_ms_cuda_events"] = {"unit": "ms", "higher_is_better": False,
                                         **summarize(self.e2e_ms_cuda_events)}
            samples = {**samples, "e2e_ms_cuda_events": self.e2e_ms_cuda_events}
        out["samples"] = samples
        return out


@dataclass
class _Run:
    t_start: float
    t_tokens: list[float]  # clock at on_token(step), step = 0..n-1
    t_end: float
    cuda_e2e_ms: float | None
    t_front: float | None = None  # clock at the end of the speech front


def _model_device(model) -> torch.device:
    return torch.device(getattr(model, "device", "cpu"))


def _llm_dtype(model) -> str | None:
    """dtype of the LLM's first floating parameter if discoverable, else of the model."""
    modules = []
    parts = getattr(model, "parts", None)
    if callable(parts):
        llm = parts().get("llm")
        if isinstance(llm, torch.nn.Module):
            modules.append(llm)
    dtype = getattr(model, "dtype", None)
    if not modules and isinstance(dtype, torch.dtype):
        return str(dtype)
    if isinstance(model, torch.nn.Module):
        modules.append(model)
    for module in modules:
        for p in module.parameters():
            if p.is_floating_point():
                return str(p.dtype)
    return str(dtype) if isinstance(dtype, torch.dtype) else None


def _default_sync(device: torch.device) -> tuple[Callable[[], None], str]:
    if device.type == "cuda":
        return (lambda: torch.cuda.synchronize(device)), "torch.cuda.synchronize"
    if device.type == "mps":
        return torch.mps.synchronize, "torch.mps.synchronize"
    return (lambda: None), "none (cpu)"


def _check_args(audio, n_tokens: int, warmup: int, repeats: int) -> None:
    if not isinstance(audio, np.ndarray):
        raise AudioError(f"audio must be a numpy waveform (16 kHz float32), got {type(audio).__name__}")
    for name, value, low in (("n_tokens", n_tokens, 2), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _timed_generate(model, audio, task: str, n_tokens: int, clock: Callable[[], float],
                    sync: Callable[[], None], device: torch.device, events: bool) -> _Run:
    stamps: dict[int, float] = {}

    def on_token(step: int) -> None:
        if step not in stamps:  # first sequence of the batch to report this step
            stamps[step] = clock()

    front: list = []

    def on_phase(name: str) -> None:
        if name == "speech_front":
            sync()
            front.append(clock())

    start = end = None
    if events:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync()
    if start is not None:
        start.record(torch.cuda.current_stream(device))
    t_start = clock()
    outputs = model.generate([audio], task, max_new_tokens=n_tokens, num_beams=1,
                             ignore_eos=True, on_token=on_token, on_phase=on_phase)
    if end is not None:
        end.record(torch.cuda.current_stream(device))
    sync()
    t_end = clock()

    if sorted(stamps) != list(range(n_tokens)):
        raise RuntimeError(
            f"generator reported on_token steps {sorted(stamps)[:8]}... ({len(stamps)} steps), "
            f"expected 0..{n_tokens - 1}: it must call on_token once per step and honour "
            "ignore_eos=True with max_new_tokens")
    for out in outputs:
        ids = getattr(out, "token_ids", None)
        if ids is not None and len(ids) != n_tokens:
            raise RuntimeError(f"generator returned {len(ids)} tokens with ignore_eos=True, "
                               f"expected exactly {n_tokens}")
    cuda_ms = None
    if start is not None:
        end.synchronize()
        cuda_ms = float(start.elapsed_time(end))
    return _Run(t_start, [stamps[i] for i in range(n_tokens)], t_end, cuda_ms, front[0] if front else None)


def measure_latency(model, audio: np.ndarray, task: str, *, n_tokens: int = 32, warmup: int = 2,
                    repeats: int = 5, sync: Callable[[], None] | None = None) -> LatencyResult:
    """Measure TTFT/TPOT/E2E of ``model.generate`` on one clip (see the module docstring).

    ``sync`` replaces the device synchronisation (default: ``torch.cuda.synchronize`` on CUDA,
    nothing on CPU). Fix the CPU thread count with :func:`set_threads` beforehand.
    """
    _check_args(audio, n_tokens, warmup, repeats)
    device = _model_device(model)
    if sync is None:
        sync, sync_name = _default_sync(device)
    else:
        sync_name = f"user ({getattr(sync, '__qualname__', type(sync).__name__)})"
    events = device.type == "cuda" and torch.cuda.is_available()
    clock = time.perf_counter

    for _ in range(warmup):
        _timed_generate(model, audio, task, n_tokens, clock, sync, device, events)
    runs = [_timed_generate(model, audio, task, n_tokens, clock, sync, device, events)
            for _ in range(repeats)]

    ttft, tpot, e2e, steps, front, prefill = [], [], [], [], [], []
    for r in runs:
        t_first = (r.t_tokens[0] - r.t_start) * 1e3
        total = (r.t_end - r.t_start) * 1e3
        if r.t_front is not None:
            front.append((r.t_front - r.t_start) * 1e3)
            prefill.append((r.t_tokens[0] - r.t_front) * 1e3)
        ttft.append(t_first)
        e2e.append(total)
        tpot.append((total - t_first) / (n_tokens - 1))
        steps.extend((b - a) * 1e3 for a, b in zip(r.t_tokens, r.t_tokens[1:]))
    cuda = [r.cuda_e2e_ms for r in runs] if events else None
    return LatencyResult(
        method="default", task=task, n_tokens=n_tokens, warmup=warmup, repeats=repeats,
        num_threads=torch.get_num_threads(), device=str(device), dtype=_llm_dtype(model),
        clock="time.perf_counter", sync=sync_name, ttft_ms=ttft, tpot_ms=tpot, e2e_ms=e2e,
        step_ms=steps, e2e_ms_cuda_events=cuda, front_ms=front if len(front) == len(runs) else [],
        prefill_ms=prefill if len(prefill) == len(runs) else [],
        note="TTFT to the first token id on the host; TPOT = (E2E - TTFT) / (n - 1)")


def hackathon_latency(model, audio: np.ndarray, task: str, *, n_tokens: int = 32,
                      repeats: int = 5) -> LatencyResult:
    """The hackathon evaluator's latency, reproduced for comparison (NOT the correct method).

    time.time() without synchronisation, no warm-up, and TPOT taken from one decode step: the
    interval between the first and the second generated token. On a GPU the unsynchronised clock
    can stop before queued kernels finish; a single step says nothing about the other n - 2.
    """
    _check_args(audio, n_tokens, 0, repeats)
    device = _model_device(model)
    runs = [_timed_generate(model, audio, task, n_tokens, time.time, lambda: None, device, False)
            for _ in range(repeats)]
    ttft = [(r.t_tokens[0] - r.t_start) * 1e3 for r in runs]
    return LatencyResult(
        method="hackathon", task=task, n_tokens=n_tokens, warmup=0, repeats=repeats,
        num_threads=torch.get_num_threads(), device=str(device), dtype=_llm_dtype(model),
        clock="time.time", sync="none", ttft_ms=ttft,
        tpot_ms=[(r.t_tokens[1] - r.t_tokens[0]) * 1e3 for r in runs],
        e2e_ms=[(r.t_end - r.t_start) * 1e3 for r in runs],
        step_ms=[(b - a) * 1e3 for r in runs for a, b in zip(r.t_tokens, r.t_tokens[1:])],
        note=HACKATHON_NOTE)
