"""The clean-process memory workload. Heavy libraries are imported at module level on purpose: the child's
baseline RSS is taken after this import, so the measured delta is the model and its workload, not the libraries."""

import logging
import time

for _name in ("torchao", "bitsandbytes", "torch.utils._pytree"):  # optional-kernel probes, not user news
    logging.getLogger(_name).setLevel(logging.ERROR)

import peft  # noqa: E402,F401
import torch  # noqa: E402
import transformers  # noqa: E402,F401

from ..audio import load_audio  # noqa: E402
from ..loaders import load_model  # noqa: E402
from ..models import build  # noqa: E402,F401  (imports the model code before the baseline)


def _proc_mib() -> dict:
    """This process's VmRSS and VmHWM (peak since start or since the last reset), MiB; {} without /proc."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class _Phases:
    """Time and peak RSS of consecutive phases: each `end(name)` closes the phase begun by the previous one."""

    def __init__(self):
        self.out: dict = {}
        self.t = time.perf_counter()

    def end(self, name: str) -> None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.synchronize()  # the phase's kernels have run before its clock stops
        now, mem = time.perf_counter(), _proc_mib()
        self.out[name] = {"seconds": round(now - self.t, 4), "peak_rss_mib": mem.get("VmHWM"),
                          "rss_mib_at_end": mem.get("VmRSS")}
        if cuda:
            self.out[name]["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            self.out[name]["cuda_allocated_mib_at_end"] = torch.cuda.memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        _reset_peak()
        self.t = time.perf_counter()


def memory_workload(spec: str, audio_path: str, task: str, n_tokens: int, threads=None, **model_kwargs) -> dict:
    """Load the model and generate once; the child's peak RSS is the model's peak memory. Also each phase's own
    time and peak RSS (`phases`: load, audio_read, speech_front, prefill, decode; the peak is reset between
    phases, so each is that phase's high-water mark, not a running one); on CUDA also each phase's
    torch.cuda.max_memory_allocated, reset the same way (`device` in model_kwargs: see loaders.load_model)."""
    if threads:
        torch.set_num_threads(threads)
    ph = _Phases()
    model = load_model(spec, **model_kwargs)
    ph.end("load")
    audio = load_audio(audio_path)
    ph.end("audio_read")

    def on_token(step: int) -> None:
        if step == 0:  # the first token id is on the host: the prefill ends
            ph.end("prefill")

    out = model.generate([audio], task, num_beams=1, max_new_tokens=n_tokens, ignore_eos=True,
                         on_token=on_token, on_phase=ph.end)
    ph.end("decode")
    return {"tokens": len(out[0].token_ids), "phases": ph.out}
