"""Module overrides: steps that replace modules (quantized Linears, ...) record how to rebuild them from an artifact.

A step that swaps `model.<name>` for another module calls `record_override(model, name, kind, spec)`;
the artifact stores `{name: {"kind": kind, **spec}}` in config.json; loading builds the plain model,
then `restore_modules` asks the registered rebuilder of each kind for an empty module with the right
shapes and buffers, puts it in place, and the state dict is loaded on top as usual.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import CheckpointError, choices

REBUILDERS: dict = {}


def register_rebuilder(kind: str):
    def deco(fn: Callable):
        REBUILDERS[kind] = fn
        return fn

    return deco


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def record_override(model, name: str, kind: str, spec: dict) -> None:
    if not hasattr(model, "module_overrides"):
        model.module_overrides = {}
    model.module_overrides[name] = {"kind": kind, **spec}


def restore_modules(model, overrides: dict) -> None:
    from . import load_steps

    load_steps()  # the step modules register the rebuilders of the modules they put in
    for name, spec in overrides.items():
        kind = spec.get("kind")
        if kind not in REBUILDERS:
            raise CheckpointError(f"artifact module {name!r} has kind {kind!r}, which this installation cannot "
                                  f"rebuild; known kinds: {choices(REBUILDERS) or 'none'}")
        old = model.get_submodule(name)
        set_module(model, name, REBUILDERS[kind](old, spec))
    model.module_overrides = dict(overrides)
