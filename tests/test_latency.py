"""The latency timers measured against a fake generator whose delays are known exactly."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from compress.bench import latency
from compress.bench.latency import (
    hackathon_latency, measure_latency, percentile, set_threads, summarize,
)
from compress.errors import AudioError, ConfigError

AUDIO = np.zeros(16000, dtype=np.float32)
REL = 0.05  # the truth tests' tolerance


@dataclass
class GenerationOutput:
    text: str
    token_ids: list[int]


class FakeGenerator:
    """Sleeps like a model would: encoders + prefill before token 0, then one sleep per step.

    Event times are deadlines anchored at the start of ``generate``, so sleep overshoot does not
    accumulate over steps: token k is on the host at start + encode + prefill + sum(step[1..k]).
    """

    def __init__(self, encode_s=0.20, prefill_s=0.05, step_s=0.05, cold_extra_s=0.0,
                 device="cpu", stop_after=None):
        self.encode_s, self.prefill_s, self.step_s = encode_s, prefill_s, step_s
        self.cold_extra_s = cold_extra_s  # added to the first call only (a cold start)
        self.device = torch.device(device)
        self.stop_after = stop_after  # misbehave: stop early although ignore_eos=True
        self.calls = []

    def _step(self, k: int) -> float:
        return self.step_s(k) if callable(self.step_s) else self.step_s

    def generate(self, audios, task, *, max_new_tokens, num_beams=1, ignore_eos=False,
                 on_token=None, on_phase=None):
        self.calls.append(dict(n=len(audios), task=task, max_new_tokens=max_new_tokens,
                               num_beams=num_beams, ignore_eos=ignore_eos))
        deadline = time.perf_counter() + self.encode_s
        if len(self.calls) == 1:
            deadline += self.cold_extra_s
        time.sleep(max(0.0, deadline - time.perf_counter()))
        if on_phase is not None:
            on_phase("speech_front")
        deadline += self.prefill_s
        n = min(max_new_tokens, self.stop_after or max_new_tokens)
        for k in range(n):
            if k:
                deadline += self._step(k)
            time.sleep(max(0.0, deadline - time.perf_counter()))
            on_token(k)
        return [GenerationOutput("x " * n, list(range(n))) for _ in audios]


def close(measured: float, expected: float, rel: float = REL) -> bool:
    return abs(measured - expected) <= rel * expected


def test_percentile_is_numpy_linear():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([7], 99) == 7
    xs = np.random.default_rng(0).normal(size=37)
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    s = summarize([3, 1, 2])
    assert (s["p50"], s["mean"], s["min"], s["max"]) == (2, 2, 1, 3)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_ttft_tpot_match_injected_delays_and_warmup_is_discarded():
    n, encode, prefill, step, cold = 8, 0.20, 0.05, 0.05, 0.30
    gen = FakeGenerator(encode, prefill, step, cold_extra_s=cold)
    res = measure_latency(gen, AUDIO, "asr", n_tokens=n, warmup=1, repeats=3)

    ttft_ms, tpot_ms = (encode + prefill) * 1e3, step * 1e3
    e2e_ms = ttft_ms + (n - 1) * tpot_ms
    d = res.to_dict()
    assert close(d["ttft_ms"]["p50"], ttft_ms), d["ttft_ms"]
    assert d["ttft_ms"]["max"] < ttft_ms + cold * 1e3 / 2, "the cold warm-up run was timed"
    assert close(d["tpot_ms"]["p50"], tpot_ms), d["tpot_ms"]
    assert close(d["e2e_ms"]["p50"], e2e_ms), d["e2e_ms"]
    assert close(d["step_ms"]["p50"], tpot_ms), d["step_ms"]
    assert close(d["tokens_per_s"]["p50"], n / (e2e_ms / 1e3))
    assert close(d["decode_tokens_per_s"]["p50"], 1e3 / tpot_ms)
    assert close(d["front_ms"]["p50"], encode * 1e3), d["front_ms"]  # TTFT in its two phases
    assert close(d["prefill_ms"]["p50"], prefill * 1e3), d["prefill_ms"]

    assert len(gen.calls) == 1 + 3
    assert all(c == dict(n=1, task="asr", max_new_tokens=n, num_beams=1, ignore_eos=True)
               for c in gen.calls)
    assert len(res.ttft_ms) == 3 and len(res.step_ms) == 3 * (n - 1)
    cfg = d["config"]
    assert (cfg["n_tokens"], cfg["warmup"], cfg["repeats"]) == (n, 1, 3)
    assert cfg["num_threads"] == torch.get_num_threads()
    assert (cfg["device"], cfg["clock"], d["method"]) == ("cpu", "time.perf_counter", "default")


def test_hackathon_tpot_is_one_step_and_includes_cold_start():
    # step 1 is fast, the later steps slow: one step misrepresents the mean decode step
    n, encode, prefill, first_step, later_step, cold = 4, 0.20, 0.05, 0.10, 0.25, 0.30
    steps = lambda k: first_step if k == 1 else later_step  # noqa: E731
    mean_step_ms = (first_step + (n - 2) * later_step) / (n - 1) * 1e3  # 200 ms

    correct = measure_latency(FakeGenerator(encode, prefill, steps), AUDIO, "asr", n_tokens=n,
                              warmup=0, repeats=3).to_dict()
    hack = hackathon_latency(FakeGenerator(encode, prefill, steps, cold_extra_s=cold), AUDIO,
                             "asr", n_tokens=n, repeats=3).to_dict()

    assert close(correct["tpot_ms"]["p50"], mean_step_ms)
    assert close(correct["step_ms"]["p50"], later_step * 1e3)  # the median step
    # one interval (first -> second token) has no averaging: 10 % for scheduler jitter
    assert close(hack["tpot_ms"]["p50"], first_step * 1e3, rel=0.10)
    assert hack["tpot_ms"]["p50"] < 0.6 * correct["tpot_ms"]["p50"]
    # no warm-up: the cold first run is one of the samples
    ttft_ms = (encode + prefill) * 1e3
    assert close(hack["ttft_ms"]["max"], ttft_ms + cold * 1e3)
    assert close(hack["ttft_ms"]["min"], ttft_ms)
    assert hack["method"] == "hackathon" and "time.time()" in hack["note"]
    assert (hack["config"]["clock"], hack["config"]["sync"], hack["config"]["warmup"]) == (
        "time.time", "none", 0)


def test_sync_called_before_and_after_every_run():
    calls = []
    res = measure_latency(FakeGenerator(0, 0, 0.001), AUDIO, "asr", n_tokens=3, warmup=2,
                          repeats=3, sync=lambda: calls.append(1))
    assert len(calls) == 3 * (2 + 3)  # before, at the end of the speech front, after
    assert res.sync.startswith("user")


def test_cuda_device_synchronises_with_torch_cuda(monkeypatch):
    # exercises the CUDA wiring without a GPU: torch.cuda.synchronize is replaced by a counter
    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(device))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no CUDA events
    res = measure_latency(FakeGenerator(0, 0, 0.001, device="cuda"), AUDIO, "asr", n_tokens=3,
                          warmup=1, repeats=2)
    assert len(seen) == 3 * 3 and all(d == torch.device("cuda") for d in seen)
    assert (res.sync, res.device) == ("torch.cuda.synchronize", "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_cross_check():
    class CudaGen(FakeGenerator):
        def generate(self, audios, task, *, max_new_tokens, on_token=None, **kw):
            x = torch.randn(2048, 2048, device="cuda")
            for k in range(max_new_tokens):
                x = torch.tanh(x @ x)
                int(x[0, 0].isfinite())  # token id to the host
                on_token(k)
            return [GenerationOutput("", list(range(max_new_tokens)))]

    res = measure_latency(CudaGen(device="cuda"), AUDIO, "asr", n_tokens=8, warmup=1, repeats=3)
    d = res.to_dict()
    assert d["config"]["sync"] == "torch.cuda.synchronize"
    assert res.e2e_ms_cuda_events is not None
    assert close(d["e2e_ms_cuda_events"]["p50"], d["e2e_ms"]["p50"], rel=0.2)


def test_dtype_of_llm_part_is_recorded():
    gen = FakeGenerator(0, 0, 0.001)
    gen.parts = lambda: {"llm": torch.nn.Linear(2, 2).to(torch.bfloat16),
                         "speech_encoder": torch.nn.Linear(2, 2)}
    res = measure_latency(gen, AUDIO, "asr", n_tokens=2, warmup=0, repeats=1)
    assert res.dtype == "torch.bfloat16"
    assert measure_latency(FakeGenerator(0, 0, 0.001), AUDIO, "asr", n_tokens=2, warmup=0,
                           repeats=1).dtype is None


def test_to_dict_is_json_with_units_and_direction():
    res = measure_latency(FakeGenerator(0, 0.002, 0.002), AUDIO, "asr", n_tokens=4, warmup=0,
                          repeats=2)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["schema_version"] == latency.SCHEMA_VERSION
    for name in ("ttft_ms", "tpot_ms", "e2e_ms", "step_ms", "tokens_per_s", "decode_tokens_per_s"):
        assert set(d[name]) == {"unit", "higher_is_better", *latency.STAT_NAMES}
        assert d[name]["higher_is_better"] == name.endswith("_per_s")
        assert len(d["samples"][name]) == (2 * 3 if name == "step_ms" else 2)
    assert d["tokens_per_s"]["max"] == pytest.approx(4 / (d["e2e_ms"]["min"] / 1e3))


def test_bad_arguments_and_misbehaving_generator():
    gen = FakeGenerator(0, 0, 0)
    with pytest.raises(ConfigError, match="n_tokens"):
        measure_latency(gen, AUDIO, "asr", n_tokens=1)
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency(gen, AUDIO, "asr", repeats=0)
    with pytest.raises(AudioError):
        measure_latency(gen, [AUDIO], "asr")
    with pytest.raises(RuntimeError, match="ignore_eos"):
        measure_latency(FakeGenerator(0, 0, 0, stop_after=3), AUDIO, "asr", n_tokens=5, warmup=0)


def test_set_threads_returns_previous_and_validates():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == before
        assert torch.get_num_threads() == 1
        res = measure_latency(FakeGenerator(0, 0, 0), AUDIO, "asr", n_tokens=2, warmup=0, repeats=1)
        assert res.num_threads == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads"):
        set_threads(0)
