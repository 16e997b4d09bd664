"""Step merge_lora: the LLM's adapters folded into its base weights, the same logits, an artifact without LoRA, a
quantizer after it coding the merged weights, and clear refusals (after a quantizer, without adapters)."""

import pytest
import torch

from builders import random_lora
from compress.errors import ConfigError
from compress.loaders import load_model
from compress.loaders.artifact import save_artifact
from compress.recipe import recipe_from_dict
from compress.runner import RunContext

RTN8 = {"type": "rtn", "bits": 8, "group_size": 32, "sym": True, "targets": {"parts": ["llm"], "ignore": ["lm_head"]}}


def apply(model, steps: list) -> list:
    r = recipe_from_dict({"name": "t", "steps": steps})
    ctx = RunContext(model, r, progress=False)
    return [s(model, ctx) for s in r.build_steps()]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.llama_model(input_ids=torch.tensor([[1, 5, 17, 42, 99, 3, 250, 7]])).logits


def test_merge_keeps_the_logits_and_the_artifact_has_no_adapter(tmp_path):
    torch.manual_seed(0)
    model = load_model("tiny")
    n_b = random_lora(model)
    before = logits(model)
    rep = apply(model, [{"type": "merge_lora"}])[0]
    assert rep["adapters_merged"] == n_b == 8  # 4 layers x q_proj, v_proj
    assert rep["weight_rel_change"] > 0.01 and rep["notes"] == []
    assert model.cfg.lora is None and not any("lora_" in n for n, _ in model.named_parameters())
    assert torch.allclose(logits(model), before, atol=1e-4)
    out = str(tmp_path / "merged")
    save_artifact(model, out, storage="sparse")
    again = load_model(out)
    assert again.cfg.lora is None and torch.allclose(logits(again), before, atol=1e-4)
    with pytest.raises(ConfigError, match="no LoRA adapters to merge"):
        apply(again, [{"type": "merge_lora"}])


def test_a_quantizer_after_it_codes_the_merged_weights(tmp_path):
    """RTN 8-bit after the merge: every projection quantized as one plain Linear (no adapter beside it), and the
    logits stay within 8-bit rounding of the float model with its adapter."""
    torch.manual_seed(0)
    model = load_model("tiny")
    random_lora(model)
    before = logits(model)
    merged, rtn = apply(model, [{"type": "merge_lora"}, RTN8])
    assert rtn["layers_quantized"] == 28 and all(".base_layer" not in n for n in model.module_overrides)
    out = str(tmp_path / "q8")
    save_artifact(model, out, storage="sparse")
    err = float((logits(load_model(out)) - before).abs().max())
    assert 0 < err < 0.05 * float(before.abs().max())


def test_refused_after_a_quantizer_and_noted_after_pruning():
    model = load_model("tiny")
    with pytest.raises(ConfigError, match="put merge_lora before it"):
        apply(model, [RTN8, {"type": "merge_lora"}])
    model = load_model("tiny")
    random_lora(model)
    rep = apply(model, [{"type": "magnitude", "sparsity": 0.5, "scope": "layer",
                         "targets": {"parts": ["llm"], "ignore": ["lm_head"]}}, {"type": "merge_lora"}])[1]
    assert rep["zero_weights_after"] < rep["zero_weights_before"]
    assert "prune after merging" in rep["notes"][0]
