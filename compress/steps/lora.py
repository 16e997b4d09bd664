"""Step `merge_lora`: the LLM's LoRA adapters folded into its base Linears (PEFT's merge_and_unload).

A quantizer after it codes W + B A * scaling, so inference holds one weight per projection: an exported graph then
runs one MatMulNBits per projection instead of it plus the adapter's two small MatMuls and an Add, which on a CPU
cost a quarter of a decode step in ONNX Runtime's profiler (the demo's LoRA sits on all seven projections). The
price: the quantization error now covers the adapter too, and weights that were exactly on a grid (the demo's
Q4_1-dequantized SmolLM2) are no longer on it; the step reports how far the merge moved the adapted layers' weights.
"""

from __future__ import annotations

import torch

from .registry import Step, register
from .schema import MergeLoraConfig


@register("merge_lora")
class MergeLora(Step):
    """Folds the LoRA adapters into the base weights; the artifact then has no adapter (config lora: null)."""

    Config = MergeLoraConfig

    def run(self, model, ctx) -> dict:
        lm = model.llama_model
        if not hasattr(lm, "merge_and_unload"):
            raise ctx.error("merge_lora: the LLM has no LoRA adapters to merge (its config has lora: null)")
        done = [n for n in getattr(model, "module_overrides", {}) if n.startswith("llama_model.")]
        if done:
            raise ctx.error(f"merge_lora: {len(done)} LLM modules were already replaced (e.g. {done[0]!r}, by a "
                            "quantization step); LoRA merges into float Linears only: put merge_lora before it")
        adapted = [m for m in lm.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
        moved = norm = 0.0
        zeros_before = 0
        with torch.no_grad():  # layer by layer: the change is each adapter's own delta, no copy of the LLM kept
            for m in adapted:
                w = m.base_layer.weight
                for name in m.active_adapters:
                    if name in m.lora_A:
                        moved += float(m.get_delta_weight(name).float().pow(2).sum())
                norm += float(w.float().pow(2).sum())
                zeros_before += int((w == 0).sum())
            bases = [m.base_layer for m in adapted]  # merge_and_unload puts these, merged in place, into the tree
            merged = lm.merge_and_unload()
            zeros_after = sum(int((b.weight == 0).sum()) for b in bases)
        model.llama_model = merged
        model.cfg.lora = None
        notes = []
        if zeros_before > zeros_after:
            notes.append(f"{zeros_before - zeros_after:,} zero weights (a pruning's pattern) became non-zero: the "
                         "adapters are dense; prune after merging to keep a sparsity pattern")
        return {"adapters_merged": len(adapted), "weight_rel_change": (moved / norm) ** 0.5 if norm else 0.0,
                "zero_weights_before": zeros_before, "zero_weights_after": zeros_after, "notes": notes}
