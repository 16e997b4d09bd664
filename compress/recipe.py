"""Recipe files: YAML -> validated Recipe, completely checked (without importing torch) before any model is loaded."""

from __future__ import annotations

import hashlib
import os
import typing
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, choices
from .steps.schema import CONFIGS, CalibrationConfig
from .yamlsafe import parse_yaml, read_yaml

RECIPE_VERSION = 1
MAX_STEPS = 32  # a compression chain is a handful of steps; thousands are a mistake or an attack


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str
    tasks: list = ["asr", "caption"]
    limit: Optional[int] = Field(None, ge=1)
    num_beams: Optional[int] = Field(None, ge=1)
    max_new_tokens: Optional[int] = Field(None, ge=1)
    latency_tokens: int = Field(32, ge=2)
    repeats: int = Field(5, ge=1)
    warmup: int = Field(2, ge=0)
    memory: bool = True


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    name: str = Field(min_length=1)
    description: str = ""
    version: int = RECIPE_VERSION
    calibration: Optional[CalibrationConfig] = None
    benchmark: Optional[BenchmarkConfig] = None
    steps: list = Field(min_length=1)
    base_dir: Optional[str] = None  # where relative data paths resolve (the recipe file's folder)

    def to_dict(self) -> dict:
        d = self.model_dump(exclude={"base_dir"}, exclude_none=True)
        d["steps"] = [s.model_dump(exclude_none=True) for s in self.steps]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()

    def build_steps(self) -> list:
        from .steps import load_steps  # the step classes import torch; validation does not need them

        classes = load_steps()
        return [classes[c.type](c) for c in self.steps]

    def defaulted(self) -> list:
        """'steps[i] (type): field=value' for every step field the recipe left to its default (printed by `run`,
        so a forgotten `sparsity` or `bits` is never silent)."""
        out = []
        for i, c in enumerate(self.steps):
            filled = [f"{k}={getattr(c, k)!r}" for k in type(c).model_fields
                      if k != "type" and k not in c.model_fields_set]
            if filled:
                out.append(f"steps[{i}] ({c.type}): {', '.join(filled)}")
        return out


def _loc(err: dict) -> str:
    return ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-"))


def _fields_at(cls, loc: tuple) -> list:
    """Valid field names of the (nested) model that owns the last element of `loc`."""
    for key in loc[:-1]:
        f = getattr(cls, "model_fields", {}).get(key)
        ann = getattr(f, "annotation", None)
        models = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models:
            return []
        cls = models[0]
    return sorted(getattr(cls, "model_fields", {}))


def _excerpt(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _fmt(e: ValidationError, where: str, cls=None) -> str:
    parts = []
    for err in e.errors():
        loc = _loc(err)
        val = err.get("input")
        shown = "" if isinstance(val, dict) else f" (got {_excerpt(val)})"
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and cls is not None:
            valid = [f for f in _fields_at(cls, err["loc"]) if f != "base_dir"]
            msg = f"unknown field; valid fields: {', '.join(valid)}"
        elif err["type"] in ("model_type", "dict_type", "model_attributes_type") and cls is not None:
            valid = _fields_at(cls, tuple(err["loc"]) + ("?",))  # the fields of the mapping expected here
            if valid:
                msg = f"expected a mapping with the fields {', '.join(valid)}"
        parts.append(f"{where}{'.' + loc if loc else ''}: {msg}{shown}")
    return "; ".join(parts)


def recipe_from_dict(doc: dict, name: str = "<recipe>", base_dir: Optional[str] = None) -> Recipe:
    doc = dict(doc)
    raw_steps = doc.pop("steps", None)
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError(f"{name}: `steps` must be a non-empty list of steps")
    if len(raw_steps) > MAX_STEPS:
        raise ConfigError(f"{name}: {len(raw_steps)} steps; a recipe holds at most {MAX_STEPS}")
    steps = []
    for i, raw in enumerate(raw_steps):
        where = f"{name}: steps[{i}]"
        if not isinstance(raw, dict) or "type" not in raw:
            raise ConfigError(f"{where}: each step is a mapping with a `type`; valid types: {choices(CONFIGS)}")
        t = raw["type"]
        if t not in CONFIGS:
            raise ConfigError(f"{where}: unknown step type {t!r}; valid: {choices(CONFIGS)}")
        try:
            steps.append(CONFIGS[t](**raw))
        except ValidationError as e:
            raise ConfigError(_fmt(e, f"{where} ({t})", CONFIGS[t])) from None
    terminal = [i for i, c in enumerate(steps) if c.terminal]
    if terminal and terminal[0] != len(steps) - 1:
        raise ConfigError(f"{name}: step {terminal[0]} ({steps[terminal[0]].type}) must be the last step; "
                          f"nothing may follow it")
    if terminal and steps[-1].type == "export":
        last = steps[-1]
        blocked = [f"steps[{i}] ({c.type})" for i, c in enumerate(steps[:-1])
                   if not c.exportable_to(last.format, last.int8)]
        if blocked:
            raise ConfigError(f"{name}: the export step (format {last.format}{', int8' if last.int8 else ''}) cannot "
                              f"follow {', '.join(blocked)}: it puts in quantized or custom-kernel modules that have "
                              "no mapping there. ONNX takes gptq / rtn at 2, 4 or 8 bits with a group_size other than "
                              "-1 (as MatMulNBits, without `int8: true`); otherwise export the unquantized model and "
                              "set `int8: true` for an int8 ONNX graph (steps any export may follow: "
                              f"{choices(t for t, s in CONFIGS.items() if s.exportable and not s.terminal)})")
    try:
        r = Recipe(steps=steps, base_dir=base_dir, **doc)
    except ValidationError as e:
        raise ConfigError(_fmt(e, name, Recipe)) from None
    needs = [c.type for c in steps if c.calibrates()]
    if needs and r.calibration is None:
        raise ConfigError(f"{name}: step(s) {needs} calibrate on real audio: add a `calibration:` section "
                          "with `data:` (an annotation file) and `samples:`")
    if needs and r.calibration is not None and r.calibration.inputs == "text":
        other = sorted({p for c in steps if c.calibrates()
                        for p in getattr(getattr(c, "targets", None), "parts", ["llm"]) if p != "llm"})
        if other:
            raise ConfigError(f"{name}: calibration.inputs 'text' feeds the LLM only, but steps target {other}; "
                              "use inputs 'audio' (valid: audio, text)")
    if r.version > RECIPE_VERSION:
        raise ConfigError(f"{name}: recipe version {r.version} is newer than this tool's {RECIPE_VERSION}")
    return r


def load_recipe(path: str) -> Recipe:
    doc = read_yaml(path)
    return recipe_from_dict(doc, os.path.basename(path), os.path.dirname(os.path.abspath(path)))


def parse_recipe(text: str, name: str = "<recipe>", base_dir: Optional[str] = None) -> Recipe:
    return recipe_from_dict(parse_yaml(text, name), name, base_dir)


def shipped_recipes_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def shipped_recipes() -> list:
    d = shipped_recipes_dir()
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith((".yaml", ".yml")))
