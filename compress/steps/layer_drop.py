"""Structured depth pruning: drop whole LLM / Whisper-encoder layers chosen by block influence on real audio."""

from __future__ import annotations

import torch
from torch import nn

from ..sparsity import block_influence
from .calibration import block_output, forward_all, part_blocks, run_hooked
from .registry import Step, register
from .schema import LayerDropConfig


@torch.no_grad()
def measure_block_influence(blocks: nn.ModuleList, samples: list, forward) -> list:
    """Mean over calibration tokens of 1 - cos(block input, block output), per block (ShortGPT)."""
    sums = [0.0] * len(blocks)
    counts = [0] * len(blocks)
    handles = []
    for i, b in enumerate(blocks):
        def hook(mod, args, kwargs, out, i=i):
            bi = block_influence(args[0], block_output(out))
            sums[i] += float(bi.sum())
            counts[i] += bi.numel()

        handles.append(b.register_forward_hook(hook, with_kwargs=True))
    run_hooked(handles, forward_all(forward, samples))
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]


def remove_layers(model, part: str, drop: list) -> int:
    """Remove layers in place, renumber cache indices, and update every config that counts layers."""
    blocks = part_blocks(model, part)
    keep = [b for i, b in enumerate(blocks) if i not in set(drop)]
    for new_i, layer in enumerate(keep):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
    if part == "llm":
        parent = model.llm_base().model
        parent.layers = nn.ModuleList(keep)
        cfgs = [model.llm_base().config]
        model.cfg.llm["num_hidden_layers"] = len(keep)
        if model.cfg.llm.get("layer_types"):
            model.cfg.llm["layer_types"] = [t for i, t in enumerate(model.cfg.llm["layer_types"]) if i not in drop]
        for c in cfgs:
            c.num_hidden_layers = len(keep)
            if getattr(c, "layer_types", None):
                c.layer_types = [t for i, t in enumerate(c.layer_types) if i not in drop]
    else:
        model.speech_encoder.layers = nn.ModuleList(keep)
        model.speech_encoder.config.encoder_layers = len(keep)
        model.cfg.whisper["encoder_layers"] = len(keep)
    return len(keep)


@register("layer_drop")
class LayerDrop(Step):
    """Drops the blocks that change their input least; the model really gets smaller and faster."""

    Config = LayerDropConfig

    def run(self, model, ctx) -> dict:
        c = self.config
        blocks = part_blocks(model, c.part)
        n = len(blocks)
        before = sum(p.numel() for p in blocks.parameters())
        scores = None
        if c.layers is not None:
            bad = [i for i in c.layers if not 0 <= i < n]
            if bad:
                raise ctx.error(f"layer_drop.layers {bad} out of range: {c.part} has layers 0..{n - 1}")
            drop = sorted(set(c.layers))
        else:
            k = c.count if c.count is not None else int(round(c.fraction * n))
            candidates = list(range(c.keep_first, n - c.keep_last))
            if not 0 < k <= len(candidates):
                raise ctx.error(f"layer_drop: cannot drop {k} of {n} {c.part} layers while keeping the first "
                                f"{c.keep_first} and last {c.keep_last}")
            scores = measure_block_influence(blocks, ctx.calibration(), ctx.calibration_forward)
            drop = sorted(sorted(candidates, key=lambda i: scores[i])[:k])
        left = remove_layers(model, c.part, drop)
        after = sum(p.numel() for p in part_blocks(model, c.part).parameters())
        return {"part": c.part, "layers_before": n, "layers_after": left, "layers_removed": drop,
                "block_influence": scores, "block_params_removed": before - after}
