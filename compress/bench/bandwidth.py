"""This machine's achievable memory bandwidth, and the decode-time lower bound it puts on TPOT.

Decoding one token at batch size 1 reads every LLM weight once, so
``TPOT >= LLM weight bytes / memory bandwidth`` (DESIGN.md section 2). Comparing a measured TPOT
with this bound says how far an implementation is from the physical limit. GB means 10^9 bytes.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

from compress.errors import ConfigError

MIB = 2**20

BOUND_ASSUMPTION = (
    "every LLM weight is read from memory exactly once per generated token (batch size 1); "
    "KV-cache reads, activations and the audio encoders are ignored, so the true floor is higher"
)


def _positive(name: str, value: Any, *, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def _time_op(op, device: torch.device) -> float:
    """Seconds one call of ``op`` takes: CUDA events on CUDA, perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        op()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    op()
    return time.perf_counter() - t0


def measure_bandwidth(size_mib: int = 256, repeats: int = 5,
                      device: str | torch.device = "cpu") -> dict[str, Any]:
    """Best-of-``repeats`` memory bandwidth in GB/s on ``device``::

        {"device", "size_mib", "repeats", "num_threads",
         "read_gbs":  bytes read by torch.sum over a float32 tensor / time,
         "copy_gbs":  (bytes read + bytes written) by y.copy_(x) / time,
         "bandwidth_gbs": read_gbs (decode reads weights, so this is the one to bound TPOT with),
         "method", "higher_is_better": True}

    Make ``size_mib`` well above the last-level cache (256 MiB is, on current CPUs and GPUs).
    """
    _positive("size_mib", size_mib, integer=True)
    _positive("repeats", repeats, integer=True)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested for measure_bandwidth but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"measure_bandwidth device must be one of 'cpu', 'cuda', got {str(device)!r}")
    n = size_mib * MIB // 4
    x = torch.ones(n, dtype=torch.float32, device=device)  # written, so every page is resident
    y = torch.empty_like(x)
    nbytes = x.element_size() * x.numel()
    y.copy_(x)  # warm-up: touch y, load kernels
    float(torch.sum(x))
    read = min(_time_op(lambda: torch.sum(x), device) for _ in range(repeats))
    copy = min(_time_op(lambda: y.copy_(x), device) for _ in range(repeats))
    read_gbs = nbytes / read / 1e9
    return {
        "device": str(device),
        "size_mib": size_mib,
        "repeats": repeats,
        "num_threads": torch.get_num_threads(),
        "read_gbs": read_gbs,
        "copy_gbs": 2 * nbytes / copy / 1e9,
        "bandwidth_gbs": read_gbs,
        "method": "best of repeats; torch.sum (read) and copy_ (read + write) of float32; "
                  + ("CUDA events" if device.type == "cuda" else "time.perf_counter"),
        "higher_is_better": True,
    }


def combine_probes(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """Several probes of one run (e.g. just before and just after a latency timing) as one reading: the last
    probe's fields, ``bandwidth_gbs`` = the median of their ``bandwidth_gbs``, ``readings_gbs`` = each probe's.

    On a shared machine one best-of-N probe can read far above the others (a neighbour idle for a moment); a
    bound taken from the readings around the timing, with their spread shown, is one a reader can weigh."""
    if not probes:
        raise ConfigError("combine_probes needs at least one bandwidth probe")
    readings = [p["bandwidth_gbs"] for p in probes]
    return {**probes[-1], "bandwidth_gbs": statistics.median(readings), "readings_gbs": readings,
            "method": probes[-1]["method"] + f"; bandwidth_gbs = the median of {len(readings)} probes"}


def decode_bound(llm_weight_bytes: float, bandwidth_gbs: float,
                 tpot_ms: float | None = None, readings_gbs: list[float] | None = None) -> dict[str, Any]:
    """The bandwidth bound on TPOT and, given a measured TPOT, the distance to it::

        {"llm_weight_bytes", "bandwidth_gbs",
         "bound_tpot_ms":       llm_weight_bytes / bandwidth (the fastest possible decode step),
         "bound_tokens_per_s":  1000 / bound_tpot_ms,
         "tpot_ms":             the measured TPOT (or None),
         "tpot_over_bound":     tpot_ms / bound_tpot_ms (1.0 = at the physical limit),
         "achieved_bandwidth_gbs": llm_weight_bytes / tpot (weights read per second),
         "tpot_over_bound_range": [lowest, highest] tpot_over_bound over ``readings_gbs`` (when given),
         "assumption"}

    Pass the LLM's bytes only (``model_bytes(model)["parts"]["llm"]["bytes"]``), not the encoders:
    the encoders run once per clip, in TTFT.
    """
    _positive("llm_weight_bytes", llm_weight_bytes)
    _positive("bandwidth_gbs", bandwidth_gbs)
    bound_ms = llm_weight_bytes / (bandwidth_gbs * 1e9) * 1e3
    out: dict[str, Any] = {
        "llm_weight_bytes": llm_weight_bytes,
        "bandwidth_gbs": bandwidth_gbs,
        "bound_tpot_ms": bound_ms,
        "bound_tokens_per_s": 1e3 / bound_ms,
        "tpot_ms": None,
        "tpot_over_bound": None,
        "achieved_bandwidth_gbs": None,
        "assumption": BOUND_ASSUMPTION,
    }
    if tpot_ms is not None:
        _positive("tpot_ms", tpot_ms)
        out.update(tpot_ms=tpot_ms, tpot_over_bound=tpot_ms / bound_ms,
                   achieved_bandwidth_gbs=llm_weight_bytes / (tpot_ms / 1e3) / 1e9)
        if readings_gbs:
            for g in readings_gbs:
                _positive("readings_gbs", g)
            out["tpot_over_bound_range"] = [tpot_ms * 1e6 * min(readings_gbs) / llm_weight_bytes,
                                            tpot_ms * 1e6 * max(readings_gbs) / llm_weight_bytes]
    return out
