"""The step registry: a dict from recipe `type` to step class, filled by a decorator, plus the base classes."""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

STEPS: dict = {}


class StepConfig(BaseModel):
    """One validated, versioned config per step type; unknown keys fail when the recipe is loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


class Step:
    """A recipe step: `run(model, ctx)` changes the model in place and returns what it measured after acting."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    Config: ClassVar[type]
    saves_artifact: ClassVar[bool] = True  # False for steps whose effect cannot be stored (e.g. compile)
    terminal: ClassVar[bool] = False  # True for steps that must come last (export)
    exportable: ClassVar[bool] = True  # False for steps whose modules the ONNX / TensorRT export cannot trace

    @classmethod
    def needs_calibration(cls, config) -> bool:
        """Whether this configuration of the step calibrates on real audio (the recipe must then say on what)."""
        return False

    def __init__(self, config):
        self.config = config

    def preflight(self) -> None:
        """Checks that need no model (e.g. a CUDA-only backend is installed); the runner calls them before loading."""

    def run(self, model, ctx) -> dict:
        raise NotImplementedError

    def __call__(self, model, ctx) -> dict:
        t0 = time.perf_counter()
        report = self.run(model, ctx)
        return {"type": self.name, "version": self.version, "config": self.config.model_dump(),
                "seconds": round(time.perf_counter() - t0, 3), **report}


def register(name: str):
    def deco(cls):
        if name in STEPS:
            raise RuntimeError(f"step type {name!r} registered twice")
        cls.name = name
        STEPS[name] = cls
        return cls

    return deco
