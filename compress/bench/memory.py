"""Peak memory measured honestly: clean-process peak RSS on CPU, reset-then-peak on CUDA, model bytes.

- CPU: the workload (load the model, run it) runs in a fresh interpreter started with
  ``subprocess`` (fork + exec, so nothing of the parent's memory is inherited). The child reads its
  own ``VmRSS``/``VmHWM`` from ``/proc/self/status``: once with the interpreter bare, once after
  importing the target's module (the baseline), then resets the high-water mark
  (``/proc/self/clear_refs``, value 5) and reads ``VmHWM`` again after the workload.
  ``getrusage(RUSAGE_CHILDREN)`` is not used: it is the maximum over every child ever waited for.
- CUDA: ``reset_peak_memory_stats`` + ``empty_cache`` first, then ``max_memory_allocated`` and
  ``max_memory_reserved``, plus the process's memory as NVML sees it when ``pynvml`` is importable.
- ``model_bytes``: bytes actually stored per part (shared tensors once, packed tensors by storage).

``hackathon_memory`` reproduces the hackathon evaluator (``max_memory_allocated`` with no reset, so
model loading is included) for comparison only.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import ConfigError, UserError

MIB = 2**20
_TARGET_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

# Runs in the child: argv = target, JSON args, path of the JSON report. Stdlib only before the
# target's import, so "interpreter_rss_mib" is the bare interpreter.
_CHILD = r"""
import importlib, json, sys, traceback

def _mem():
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024.0  # kB -> MiB
    except OSError:
        import resource  # no /proc: peak only (ru_maxrss is KiB on Linux, bytes on macOS)
        scale = 2**20 if sys.platform == "darwin" else 2**10
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    return out

def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

target, args, path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
report = {"stage": "import", "interpreter_rss_mib": _mem().get("VmRSS")}
try:
    module_name, _, fn_name = target.partition(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    mem = _mem()
    report.update(baseline_rss_mib=mem.get("VmRSS"), import_peak_rss_mib=mem.get("VmHWM"),
                  hwm_reset=_reset_hwm(), stage="run")
    result = fn(**args)
    mem = _mem()
    report.update(final_rss_mib=mem.get("VmRSS"), workload_peak_rss_mib=mem.get("VmHWM"))
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        report["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        report["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    json.dumps(result)
    report.update(result=result, stage="done")
except BaseException:
    report["error"] = traceback.format_exc()
with open(path, "w") as f:
    json.dump(report, f)
"""


def _child_pythonpath() -> str:
    """The parent's sys.path entries outside the interpreter's own prefix (repo root, tests)."""
    prefixes = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    entries = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        inside = any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes)
        if os.path.exists(path) and not inside and path not in entries:
            entries.append(path)
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join(entries + ([existing] if existing else []))


def run_in_clean_process(target: str, args: Mapping[str, Any] | None = None, *,
                         timeout_s: float | None = None, env: Mapping[str, str] | None = None
                         ) -> dict[str, Any]:
    """Call ``target(**args)`` (``"package.module:function"``, JSON-able args) in a fresh Python
    process and return its memory report::

        {"result": <the function's JSON-able return value>,
         "interpreter_rss_mib":  RSS of the bare interpreter,
         "baseline_rss_mib":     RSS after importing the target's module (before the call),
         "import_peak_rss_mib":  peak RSS up to the call (interpreter start + imports),
         "workload_peak_rss_mib": peak RSS during the call (whole process if hwm_reset is False),
         "peak_rss_mib":         peak RSS over the child's whole life,
         "delta_peak_rss_mib":  workload_peak_rss_mib - baseline_rss_mib (model + workload),
         "final_rss_mib", "hwm_reset", and "cuda_max_{allocated,reserved}_mib" if CUDA was used}

    A workload that splits its run into phases and resets the high-water mark between them returns
    ``{"phases": {name: {"peak_rss_mib": ...}, ...}}``; the workload's peak is then the largest phase peak.

    The child inherits the environment plus ``env`` and the parent's non-stdlib ``sys.path``.
    """
    if not isinstance(target, str) or not _TARGET_RE.match(target):
        raise ConfigError(f"target must look like 'package.module:function', got {target!r}")
    try:
        args_json = json.dumps(dict(args or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"args for {target} must be JSON-serialisable: {exc}") from None
    child_env = {**os.environ, **(env or {}), "PYTHONPATH": _child_pythonpath()}
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        path = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-c", _CHILD, target, args_json, path]
        try:
            proc = subprocess.run(cmd, env=child_env, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{target} did not finish within {timeout_s} s in the clean process") from None
        if not os.path.exists(path):
            rc = proc.returncode
            why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            hint = " (SIGKILL: possibly out of memory)" if rc == -signal.SIGKILL else ""
            raise RuntimeError(f"clean process for {target} died without a report: {why}{hint}")
        with open(path) as f:
            report = json.load(f)
    if "error" in report:
        if report["stage"] == "import":
            last = report["error"].strip().splitlines()[-1]
            raise ConfigError(f"cannot import target {target!r}: {last}")
        raise RuntimeError(f"{target} failed in the clean process:\n{report['error']}")
    del report["stage"]
    result = report.get("result")
    phases = result.get("phases") if isinstance(result, dict) else None
    if isinstance(phases, dict):  # the workload reset the high-water mark between its phases: the peak is theirs
        peaks = [p.get("peak_rss_mib") for p in phases.values() if isinstance(p, dict)]
        report["workload_peak_rss_mib"] = max([report["workload_peak_rss_mib"]] + [p for p in peaks if p is not None])
    peaks = [p for p in (report.get("import_peak_rss_mib"), report["workload_peak_rss_mib"]) if p is not None]
    report["peak_rss_mib"] = max(peaks)
    base = report.get("baseline_rss_mib")
    report["delta_peak_rss_mib"] = None if base is None else report["workload_peak_rss_mib"] - base
    return report


def peak_memory_cpu(target: str, args: Mapping[str, Any] | None = None, *,
                    timeout_s: float | None = None, env: Mapping[str, str] | None = None
                    ) -> dict[str, Any]:
    """Peak resident set of a clean process that runs ``target(**args)`` (which should load the
    model and run the workload); same report as :func:`run_in_clean_process`."""
    return run_in_clean_process(target, args, timeout_s=timeout_s, env=env)


def _alloc_workload(mib: int, fill: int = 1) -> dict[str, Any]:
    """Test workload: allocate and touch ``mib`` MiB (every page written), then free it."""
    buf = np.full(int(mib) * MIB, fill, dtype=np.uint8)
    checksum = int(buf[:: 4096].sum())
    del buf
    return {"allocated_mib": mib, "checksum": checksum}


def _require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise UserError(f"{what} needs a CUDA device, but torch.cuda.is_available() is False")


def _nvml_process_mib(device: torch.device) -> float | None:
    """This process's memory on ``device`` as NVML reports it; None when unavailable (no pynvml,
    no permission, or a PID namespace that hides host PIDs)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        uuid = "GPU-" + str(torch.cuda.get_device_properties(device).uuid)
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            nv_uuid = pynvml.nvmlDeviceGetUUID(handle)
            if isinstance(nv_uuid, bytes):
                nv_uuid = nv_uuid.decode()
            if nv_uuid != uuid:
                continue
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    return proc.usedGpuMemory / MIB
        return None
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def cuda_peak_memory(fn: Callable[..., Any], *args: Any, device: str | torch.device | None = None,
                     **kwargs: Any) -> dict[str, Any]:
    """Run ``fn(*args, **kwargs)`` after resetting CUDA peak stats; return peaks in MiB::

        {"device", "max_allocated_mib", "max_reserved_mib", "allocated_before_mib",
         "reserved_before_mib", "delta_max_allocated_mib", "nvml_process_mib" (or None),
         "result": fn's return value (not serialised)}
    """
    _require_cuda("cuda_peak_memory")
    device = torch.device(device if device is not None else "cuda")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    allocated_before = torch.cuda.memory_allocated(device)
    reserved_before = torch.cuda.memory_reserved(device)
    result = fn(*args, **kwargs)
    torch.cuda.synchronize(device)
    max_allocated = torch.cuda.max_memory_allocated(device)
    return {
        "device": str(device),
        "max_allocated_mib": max_allocated / MIB,
        "max_reserved_mib": torch.cuda.max_memory_reserved(device) / MIB,
        "allocated_before_mib": allocated_before / MIB,
        "reserved_before_mib": reserved_before / MIB,
        "delta_max_allocated_mib": (max_allocated - allocated_before) / MIB,
        "nvml_process_mib": _nvml_process_mib(device),
        "result": result,
    }


def hackathon_memory(device: str | torch.device | None = None) -> dict[str, Any]:
    """The hackathon evaluator's number, for comparison only: ``max_memory_allocated()`` read
    with no reset, so it includes model loading and everything the process did before."""
    _require_cuda("hackathon_memory")
    return {
        "method": "hackathon",
        "note": "torch.cuda.max_memory_allocated() without reset_peak_memory_stats: "
                "includes model loading and all earlier work in this process",
        "max_memory_allocated_mib": torch.cuda.max_memory_allocated(device) / MIB,
    }


def _parts_of(model: Any) -> dict[str, nn.Module]:
    if isinstance(model, Mapping):
        parts = dict(model)
    elif callable(getattr(model, "parts", None)):
        parts = dict(model.parts())
    elif isinstance(model, nn.Module):
        parts = {"model": model}
    else:
        raise UserError(f"model_bytes needs an nn.Module, a dict of them or an object with "
                        f"parts(), got {type(model).__name__}")
    for name, module in parts.items():
        if not isinstance(module, nn.Module):
            raise UserError(f"part {name!r} is a {type(module).__name__}, not an nn.Module")
    return parts


def _storage_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold ``t``'s data: itself, or the inner tensors of a tensor
    subclass (e.g. torchao quantized weights) found through ``__tensor_flatten__``."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is None:
        return [t]
    names, _ = flatten()
    out: list[torch.Tensor] = []
    for name in names:
        inner = getattr(t, name, None)
        if isinstance(inner, torch.Tensor):
            out.extend(_storage_tensors(inner))
    return out


def _tensors_in(value: Any) -> list[torch.Tensor]:
    """Tensors in a state_dict value (packed params can be tuples of tensors)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors_in(v)]
    return []


def _key(t: torch.Tensor) -> tuple:
    if t.device.type == "meta" or t.numel() == 0:
        return ("id", id(t))
    return (t.device.type, t.device.index, t.data_ptr())


def _part_bytes(module: nn.Module, seen: set) -> dict[str, Any]:
    stats: dict[str, Any] = {"bytes": 0, "param_bytes": 0, "buffer_bytes": 0, "n_params": 0,
                             "n_tensors": 0, "bytes_by_dtype": {}}
    params = {id(p) for p in module.parameters()}
    named = list(module.state_dict(keep_vars=True).values())
    named += [p for _, p in module.named_parameters()] + [b for _, b in module.named_buffers()]
    for value in named:
        for outer in _tensors_in(value):
            is_param = id(outer) in params or isinstance(outer, nn.Parameter)
            for t in _storage_tensors(outer):
                key = _key(t)
                if key in seen:
                    continue
                seen.add(key)
                nbytes = t.element_size() * t.numel()
                stats["bytes"] += nbytes
                stats["param_bytes" if is_param else "buffer_bytes"] += nbytes
                stats["n_params"] += t.numel() if is_param else 0
                stats["n_tensors"] += 1
                dtype = str(t.dtype).removeprefix("torch.")
                stats["bytes_by_dtype"][dtype] = stats["bytes_by_dtype"].get(dtype, 0) + nbytes
    zeros = total = 0
    with torch.no_grad():
        for m in module.modules():
            w = getattr(m, "weight", None)
            if not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or not isinstance(w, torch.Tensor):
                continue
            if not w.is_floating_point() or w.device.type == "meta" or hasattr(w, "__tensor_flatten__"):
                continue
            key = ("sparsity",) + _key(w)
            if key in seen:
                continue
            seen.add(key)
            total += w.numel()
            zeros += w.numel() - int(torch.count_nonzero(w))
    stats["sparsity"] = zeros / total if total else None
    stats["sparsity_numel"] = total
    stats["_zeros"] = zeros
    return stats


def model_bytes(model: Any) -> dict[str, Any]:
    """Stored bytes, parameter count and weight sparsity, per part and in total::

        {"parts": {name: {"bytes", "param_bytes", "buffer_bytes", "n_params", "n_tensors",
                          "bytes_by_dtype": {dtype: bytes}, "sparsity", "sparsity_numel"}},
         "total": {same keys}}

    ``model`` is an nn.Module, a ``{name: module}`` dict, or an object with ``parts()``. Bytes are
    ``element_size * numel`` of every tensor in ``state_dict()`` plus non-persistent buffers, so
    packed/quantized storage counts as stored; a tensor shared by several modules or parts (same
    data_ptr, e.g. tied embeddings) is counted once, in the first part that holds it.
    ``sparsity`` is the fraction of exact zeros in the floating weights of Linear and Conv layers
    (None when there are none); ``sparsity_numel`` is how many weights it was taken over.
    """
    seen: set = set()
    parts = {name: _part_bytes(module, seen) for name, module in _parts_of(model).items()}
    total: dict[str, Any] = {"bytes": 0, "param_bytes": 0, "buffer_bytes": 0, "n_params": 0,
                             "n_tensors": 0, "bytes_by_dtype": {}, "sparsity_numel": 0}
    zeros = 0
    for stats in parts.values():
        zeros += stats.pop("_zeros")
        for k in ("bytes", "param_bytes", "buffer_bytes", "n_params", "n_tensors", "sparsity_numel"):
            total[k] += stats[k]
        for dtype, n in stats["bytes_by_dtype"].items():
            total["bytes_by_dtype"][dtype] = total["bytes_by_dtype"].get(dtype, 0) + n
    total["sparsity"] = zeros / total["sparsity_numel"] if total["sparsity_numel"] else None
    return {"parts": parts, "total": total}
