"""The step registry: a dict from recipe `type` to step class, filled by a decorator, plus the Step base class.

A step's config class is declared once, in `compress.steps.schema` (`CONFIGS`); `register` checks that the step
class uses that one, and the step's `terminal`, `exportable` and `needs_calibration` are read from it.
"""

from __future__ import annotations

import inspect
import time
from typing import ClassVar

from .schema import CONFIGS, StepConfig

__all__ = ["STEPS", "Step", "StepConfig", "register"]

STEPS: dict = {}


class _FromConfig:
    """A Step class attribute whose value is the same-named class attribute of the step's Config."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        owner = owner if owner is not None else type(obj)
        return getattr(getattr(owner, "Config", StepConfig), self.name)


class Step:
    """A recipe step: `run(model, ctx)` changes the model in place and returns what it measured after acting."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    Config: ClassVar[type]
    saves_artifact: ClassVar[bool] = True  # False for steps whose effect cannot be stored (e.g. compile)
    terminal = _FromConfig()  # True for steps that must come last (export); declared on the Config
    exportable = _FromConfig()  # False for steps the ONNX / TensorRT export cannot follow; declared on the Config

    @classmethod
    def needs_calibration(cls, config) -> bool:
        """Whether this configuration of the step calibrates on real audio (the recipe must then say on what)."""
        return config.calibrates()

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
    """Class decorator: make a Step subclass the step of recipe type `name`, whose config is CONFIGS[name]."""

    def deco(cls):
        if name in STEPS:
            raise RuntimeError(f"step type {name!r} registered twice")
        config = getattr(cls, "Config", None)
        expected = CONFIGS.get(name)
        if expected is None or config is not expected:
            raise RuntimeError(f"step {cls.__name__} ({name!r}) has Config {getattr(config, '__name__', config)}, "
                               f"but schema.CONFIGS[{name!r}] is {getattr(expected, '__name__', expected)}")
        for attr in ("terminal", "exportable"):
            if not isinstance(inspect.getattr_static(cls, attr), _FromConfig):
                raise RuntimeError(f"step {cls.__name__} ({name!r}) sets {attr!r}; declare it on {config.__name__}")
        if inspect.getattr_static(cls, "needs_calibration") is not inspect.getattr_static(Step, "needs_calibration"):
            raise RuntimeError(f"step {cls.__name__} ({name!r}) overrides needs_calibration; "
                               f"define {config.__name__}.calibrates instead")
        cls.name = name
        STEPS[name] = cls
        return cls

    return deco
