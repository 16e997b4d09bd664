"""OWL's non-uniform layer sparsity in the Wanda and SparseGPT steps, on the tiny preset."""

import os

import pytest
import torch

from compress.errors import ConfigError
from compress.loaders import load_model
from compress.recipe import recipe_from_dict
from compress.runner import RunContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = os.path.join(ROOT, "benchmarks", "data", "calib.json")


def run_step(step: dict):
    torch.manual_seed(0)
    model = load_model("tiny").eval()
    r = recipe_from_dict({"name": "t", "calibration": {"data": CALIB, "samples": 2}, "steps": [step]})
    ctx = RunContext(model, r, progress=False)
    return model, [s(model, ctx) for s in r.build_steps()][0]


def block_zeros(model, targets: list) -> list:
    """(zeros, the zeros Wanda's per-row rule gives at the block's sparsity, weights) of each LLM block."""
    out = []
    for layer, s in zip(model.llm_base().model.layers, targets):
        ws = [m.weight for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n]
        out.append((sum(int((w == 0).sum()) for w in ws), sum(w.shape[0] * int(w.shape[1] * s) for w in ws),
                    sum(w.numel() for w in ws)))
    return out


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_owl_prunes_each_block_to_its_own_sparsity(method):
    model, rep = run_step({"type": method, "sparsity": 0.5, "owl": {"m": 3.0, "lam": 0.1}})
    blocks = rep["owl"]["blocks"]
    assert list(blocks) == [f"llm.{i}" for i in range(4)]
    targets = [b["sparsity"] for b in blocks.values()]
    ratios = [b["outlier_ratio"] for b in blocks.values()]
    assert len(set(ratios)) > 1  # the tiny LLM's blocks differ, so the sparsities do
    assert sum(targets) / 4 == pytest.approx(0.5) and max(targets) - min(targets) == pytest.approx(0.2)
    assert targets.index(min(targets)) == ratios.index(max(ratios))
    for (zeros, per_row_rule, total), want in zip(block_zeros(model, targets), targets):
        if method == "wanda":
            assert zeros == per_row_rule
        else:  # SparseGPT picks int(share x weights) of each column block
            assert zeros / total == pytest.approx(want, abs=0.005)
    assert rep["measured_sparsity"] == pytest.approx(0.5, abs=0.02)


def test_wanda_and_sparsegpt_get_the_same_owl_sparsities():
    _, a = run_step({"type": "wanda", "owl": {}})
    _, b = run_step({"type": "sparsegpt", "owl": {}})
    assert a["owl"] == b["owl"] and a["owl"]["m"] == 5.0 and a["owl"]["lam"] == 0.08


@pytest.mark.parametrize("step,msg", [
    ({"type": "wanda", "pattern": "2:4", "owl": {}}, "cannot be combined with pattern"),
    ({"type": "sparsegpt", "sparsity": 0.05, "owl": {"lam": 0.08}}, "inside (0, 1)"),
    ({"type": "wanda", "owl": {"lamda": 0.1}}, "lamda"),
])
def test_bad_owl_configs(step, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        recipe_from_dict({"name": "t", "calibration": {"data": CALIB, "samples": 2}, "steps": [step]})
