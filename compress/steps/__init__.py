"""Recipe steps: `STEPS` maps each recipe `type` to its step class; `schema` holds their torch-free configs.

Importing this package (or `compress.steps.schema`) does not import torch, so a recipe is validated without it.
The step modules, which need torch, are imported on first use of `STEPS` or `load_steps()` (explicit imports:
an error is never silent).
"""

from .registry import Step, StepConfig, register


def load_steps() -> dict:
    """Import every step module (registering its step type) and return the registry, type -> step class."""
    from . import distill, export, layer_drop, lora, lottery, prune, quantize, runtime  # noqa: F401  (registration)
    from .registry import STEPS
    from .schema import CONFIGS

    missing = sorted(set(CONFIGS) - set(STEPS))
    if missing:
        raise RuntimeError(f"step config(s) {missing} in compress.steps.schema have no registered step class")
    return STEPS


def __getattr__(name: str):
    if name == "STEPS":
        return load_steps()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["STEPS", "Step", "StepConfig", "load_steps", "register"]
