"""Which modules a step acts on: parts plus include/ignore regular expressions; LoRA adapters are never targets."""

from __future__ import annotations

import re

from torch import nn

from ..models.salmonn import PARTS, part_of
from . import schema
from .schema import Targets

if schema.PARTS != PARTS:
    raise RuntimeError(f"compress.steps.schema.PARTS {schema.PARTS} differs from the model's parts {PARTS}")

LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_", ".lora_magnitude_vector")


def display_name(name: str) -> str:
    """PEFT wraps targeted Linears: `...q_proj.base_layer` is shown and matched as `...q_proj`."""
    return name[: -len(".base_layer")] if name.endswith(".base_layer") else name


def is_lora(name: str) -> bool:
    return any(m in name + "." for m in LORA_MARKERS)


def select_linears(model: nn.Module, targets: Targets) -> dict:
    """Display name -> nn.Linear for every targeted Linear, in module order (data-flow order within a part)."""
    inc = re.compile(targets.include) if targets.include else None
    ign = [re.compile(p) for p in targets.ignore]
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or is_lora(name):
            continue
        shown = display_name(name)
        if part_of(shown) not in targets.parts:
            continue
        if inc is not None and not inc.search(shown):
            continue
        if any(p.search(shown) for p in ign):
            continue
        out[shown] = mod
    return out
