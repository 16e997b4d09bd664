"""Peak-memory truth tests (clean child process, CUDA), model bytes, and the bandwidth bound."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from compress.bench.bandwidth import combine_probes, decode_bound, measure_bandwidth
from compress.bench.memory import (
    cuda_peak_memory, hackathon_memory, model_bytes, peak_memory_cpu, run_in_clean_process,
)
from compress.errors import ConfigError, UserError

WORKLOAD = "compress.bench.memory:_alloc_workload"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# --- clean-process peak RSS ---------------------------------------------------------------

def test_clean_process_peak_matches_known_allocation():
    mib = 300
    rep = peak_memory_cpu(WORKLOAD, {"mib": mib})
    assert rep["result"] == {"allocated_mib": mib, "checksum": mib * 256}
    assert abs(rep["delta_peak_rss_mib"] - mib) <= max(0.05 * mib, 8), rep
    assert rep["interpreter_rss_mib"] < rep["baseline_rss_mib"] <= rep["peak_rss_mib"]
    assert rep["peak_rss_mib"] >= rep["baseline_rss_mib"] + 0.95 * mib
    assert rep["final_rss_mib"] < rep["baseline_rss_mib"] + 0.5 * mib  # freed before returning
    json.dumps(rep)


def test_parent_allocation_does_not_reach_the_child():
    parent = np.ones(768 * 2**20, dtype=np.uint8)  # 768 MiB, resident in the parent only
    try:
        rep = run_in_clean_process(WORKLOAD, {"mib": 50})
    finally:
        assert parent[-1] == 1
        del parent
    assert abs(rep["delta_peak_rss_mib"] - 50) <= 8, rep
    assert rep["peak_rss_mib"] < 768, rep  # the child never held the parent's buffer


def test_clean_process_errors():
    with pytest.raises(ConfigError, match="package.module:function"):
        run_in_clean_process("compress.bench.memory._alloc_workload")
    with pytest.raises(ConfigError, match="JSON"):
        run_in_clean_process(WORKLOAD, {"mib": object()})
    with pytest.raises(ConfigError, match="cannot import"):
        run_in_clean_process("no_such_module_for_bench:f")
    with pytest.raises(RuntimeError, match="unexpected keyword"):
        run_in_clean_process(WORKLOAD, {"nope": 1})


# --- CUDA ----------------------------------------------------------------------------------

@needs_cuda
def test_cuda_peak_memory_resets_then_measures():
    hog = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")  # before: not in the peak
    del hog

    def work():
        x = torch.ones(256 * 2**20, dtype=torch.uint8, device="cuda")
        return int(x[-1])

    rep = cuda_peak_memory(work)
    assert rep["result"] == 1
    assert abs(rep["delta_max_allocated_mib"] - 256) <= 2, rep
    assert rep["max_reserved_mib"] >= rep["max_allocated_mib"]
    assert hackathon_memory()["max_memory_allocated_mib"] >= rep["max_allocated_mib"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_functions_refuse_without_cuda():
    with pytest.raises(UserError, match="CUDA"):
        cuda_peak_memory(lambda: None)
    with pytest.raises(UserError, match="CUDA"):
        hackathon_memory()


# --- model bytes ---------------------------------------------------------------------------

def test_model_bytes_counts_params_and_buffers():
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    t = model_bytes(m)["total"]
    n_params = (4 * 3 + 3) + (3 + 3) + (3 * 2 + 2)  # 29
    assert t["n_params"] == n_params
    assert t["param_bytes"] == 4 * n_params
    assert t["buffer_bytes"] == 4 * 3 + 4 * 3 + 8  # running mean/var fp32, num_batches int64
    assert t["bytes"] == t["param_bytes"] + t["buffer_bytes"]
    assert t["bytes_by_dtype"] == {"float32": 4 * n_params + 24, "int64": 8}
    half = model_bytes(nn.Linear(10, 10).half())["total"]
    assert half["bytes"] == 2 * 110 and half["n_params"] == 110


def test_tied_weight_counted_once_within_and_across_parts():
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    assert model_bytes(nn.ModuleList([emb, head]))["total"]["bytes"] == 10 * 4 * 4
    rep = model_bytes({"speech_encoder": emb, "llm": head})
    assert rep["parts"]["speech_encoder"]["bytes"] == 160
    assert rep["parts"]["llm"]["bytes"] == 0
    assert rep["total"]["bytes"] == 160 and rep["total"]["n_params"] == 40


def test_sparsity_and_packed_storage_and_parts_protocol():
    lin = nn.Linear(8, 6)
    with torch.no_grad():
        lin.weight.view(-1)[::2] = 0.0  # half of the 48 weights
        lin.bias.fill_(0.0)  # biases are not weights: ignored by sparsity
    conv = nn.Conv1d(2, 2, 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)

    class Packed(nn.Module):  # int4 weights packed two per byte, fp16 scales
        def __init__(self):
            super().__init__()
            self.register_buffer("qweight", torch.zeros(100, dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(10, dtype=torch.float16))
            self.register_buffer("rope", torch.ones(4), persistent=False)

    class Model:
        def parts(self):
            return {"proj": lin, "beats": conv, "llm": Packed()}

    rep = model_bytes(Model())
    assert rep["parts"]["proj"]["sparsity"] == 0.5
    assert rep["parts"]["beats"]["sparsity"] == 0.0
    llm = rep["parts"]["llm"]
    assert (llm["bytes"], llm["n_params"], llm["sparsity"]) == (100 + 20 + 16, 0, None)
    assert rep["total"]["sparsity"] == pytest.approx(24 / (48 + 12))
    assert rep["total"]["sparsity_numel"] == 48 + 12
    json.dumps(rep)
    with pytest.raises(UserError):
        model_bytes(42)


# --- bandwidth and the decode bound -------------------------------------------------------

def test_measure_bandwidth_is_positive_and_finite():
    rep = measure_bandwidth(size_mib=32, repeats=2)
    for key in ("read_gbs", "copy_gbs", "bandwidth_gbs"):
        assert rep[key] > 0 and math.isfinite(rep[key])
    assert rep["device"] == "cpu" and rep["num_threads"] == torch.get_num_threads()
    with pytest.raises(ConfigError, match="size_mib"):
        measure_bandwidth(size_mib=0)


@needs_cuda
def test_measure_bandwidth_cuda():
    rep = measure_bandwidth(size_mib=256, repeats=3, device="cuda")
    assert rep["bandwidth_gbs"] > 0 and math.isfinite(rep["bandwidth_gbs"])


def test_decode_bound_arithmetic():
    # DESIGN.md reference: 3B variant, 7.9 GB fp16 in all, on a V100 (900 GB/s), TPOT 44.5 ms
    b = decode_bound(7.9e9, 900.0, tpot_ms=44.5)
    assert b["bound_tpot_ms"] == pytest.approx(7.9e9 / 900e9 * 1e3)  # 8.78 ms
    assert b["tpot_over_bound"] == pytest.approx(44.5 / (7.9e9 / 900e9 * 1e3))  # ~5.07
    assert b["achieved_bandwidth_gbs"] == pytest.approx(7.9e9 / 44.5e-3 / 1e9)
    assert b["bound_tokens_per_s"] == pytest.approx(900e9 / 7.9e9)
    # DESIGN's 7.1 ms (V100) and 1.9 ms (H100, 3.35 TB/s) are the LLM weights alone:
    # Llama-3.2-3B has ~3.21e9 parameters, 2 bytes each in fp16
    assert round(decode_bound(3.21e9 * 2, 900)["bound_tpot_ms"], 1) == 7.1
    assert round(decode_bound(3.21e9 * 2, 3350)["bound_tpot_ms"], 1) == 1.9
    assert decode_bound(1e9, 1.0)["tpot_over_bound"] is None
    with pytest.raises(ConfigError, match="bandwidth_gbs"):
        decode_bound(1e9, 0)
    with pytest.raises(ConfigError, match="tpot_ms"):
        decode_bound(1e9, 1.0, tpot_ms=float("nan"))


def test_several_probes_give_a_median_bound_and_its_range():
    """Probes just before and after a timing: the bound from their median, TPOT / bound over each reading."""
    probes = [{"bandwidth_gbs": g, "method": "best of repeats"} for g in (40.0, 80.0, 50.0)]
    bw = combine_probes(probes)
    assert bw["bandwidth_gbs"] == 50.0 and bw["readings_gbs"] == [40.0, 80.0, 50.0]
    assert "median of 3 probes" in bw["method"]
    assert combine_probes(probes[:2])["bandwidth_gbs"] == 60.0
    b = decode_bound(1e9, bw["bandwidth_gbs"], tpot_ms=30.0, readings_gbs=bw["readings_gbs"])
    assert b["tpot_over_bound"] == pytest.approx(30.0 / 20.0)  # bound 1e9 B / 50 GB/s = 20 ms
    assert b["tpot_over_bound_range"] == pytest.approx([30.0 / 25.0, 30.0 / 12.5])  # 40 and 80 GB/s
    with pytest.raises(ConfigError, match="at least one"):
        combine_probes([])
    with pytest.raises(ConfigError, match="readings_gbs"):
        decode_bound(1e9, 50.0, tpot_ms=30.0, readings_gbs=[0.0])
