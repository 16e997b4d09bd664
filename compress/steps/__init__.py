"""Recipe steps. Importing this package registers every step type (explicit imports: an error is never silent)."""

from . import distill, export, layer_drop, lottery, prune, quantize, runtime  # noqa: F401  (registration side effects)
from .registry import STEPS, Step, StepConfig, register

__all__ = ["STEPS", "Step", "StepConfig", "register"]
