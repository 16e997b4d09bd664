"""Module overrides: steps that replace modules (quantized Linears, ...) record how to rebuild them from an artifact.

A step that swaps `model.<name>` for another module calls `record_override(model, name, kind, spec)`;
the artifact stores `{name: {"kind": kind, **spec}}` in config.json; loading builds the plain model,
then `restore_modules` asks the rebuilder of each kind (the table REBUILDERS below: one per quantized module
class of compress/quant) for an empty module with the right shapes and buffers, puts it in place, and the state
dict is loaded on top as usual.
"""

from __future__ import annotations

from torch import nn

from ..errors import CheckpointError, choices


def _gptq(old, spec: dict) -> nn.Module:
    from ..quant.qlinear import GPTQLinear

    return GPTQLinear.from_spec(spec)


def _bitsandbytes(old, spec: dict) -> nn.Module:
    from ..quant import bnb  # imports bitsandbytes: only when an artifact holds such modules

    return bnb.rebuild(spec)


def _torchao(old, spec: dict) -> nn.Module:
    from ..quant.ao import TorchaoInt8Linear

    return TorchaoInt8Linear.from_spec(spec)


# override kind -> (replaced module, its spec) -> an empty module of the kind, ready for load_state_dict
REBUILDERS = {"gptq": _gptq, "bitsandbytes": _bitsandbytes, "torchao": _torchao}


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def record_override(model, name: str, kind: str, spec: dict) -> None:
    if not hasattr(model, "module_overrides"):
        model.module_overrides = {}
    model.module_overrides[name] = {"kind": kind, **spec}


def restore_modules(model, overrides: dict) -> None:
    for name, spec in overrides.items():
        kind = spec.get("kind")
        if kind not in REBUILDERS:
            raise CheckpointError(f"artifact module {name!r} has kind {kind!r}, which this installation cannot "
                                  f"rebuild; known kinds: {choices(REBUILDERS) or 'none'}")
        old = model.get_submodule(name)
        set_module(model, name, REBUILDERS[kind](old, spec))
    model.module_overrides = dict(overrides)
