"""Pruning steps `magnitude` and `wanda`: glue around compress.sparsity, reporting the sparsity they measured."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, field_validator

from .. import sparsity as sp
from ..models.salmonn import part_of
from .calibration import by_blocks, collect_hessians, collect_input_norms
from .registry import Step, StepConfig, register
from .targets import Targets, select_linears

UNSTRUCTURED_NOTE = ("unstructured zeros are stored densely: the artifact and the running model are as large and "
                     "as slow as before; only N:M patterns on sparse kernels, or sparse storage, save anything")


def parse_pattern(p: Optional[str]):
    if p is None:
        return None
    try:
        n, m = (int(x) for x in p.split(":"))
    except ValueError:
        raise ValueError(f"pattern must look like 'N:M' (e.g. '2:4'), got {p!r}") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {p!r}: need 0 < N < M")
    return n, m


class PruneConfig(StepConfig):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    pattern: Optional[str] = None  # "N:M" semi-structured; then `sparsity` is implied (1 - N/M)
    targets: Targets = Targets()

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v):
        parse_pattern(v)
        return v


def measure(model, linears: dict, pattern=None) -> dict:
    """Zeros counted in the weights after acting: per targeted part, and over all targeted weights."""
    per_part: dict = {}
    for name, m in linears.items():
        p = per_part.setdefault(part_of(name), [0, 0])
        p[0] += int((m.weight == 0).sum())
        p[1] += m.weight.numel()
    zeros = sum(z for z, _ in per_part.values())
    total = sum(n for _, n in per_part.values())
    out = {
        "layers_pruned": len(linears),
        "measured_sparsity": zeros / total if total else 0.0,
        "measured_sparsity_per_part": {p: z / n for p, (z, n) in per_part.items()},
        "storage_note": UNSTRUCTURED_NOTE,
    }
    if pattern is not None:
        out["pattern_holds"] = all(sp.is_n_m(m.weight, *pattern) for m in linears.values())
    return out


def _mask(scores: torch.Tensor, sparsity: float, pattern, per_row: bool) -> torch.Tensor:
    if pattern is not None:
        return sp.mask_n_m(scores, *pattern)
    return sp.mask_rows(scores, sparsity) if per_row else sp.mask_layer(scores, sparsity)


class PruneStep(Step):
    def targets(self, model, ctx) -> dict:
        linears = select_linears(model, self.config.targets)
        if not linears:
            raise ctx.error(f"no Linear matches the targets {self.config.targets.model_dump()}")
        return linears


class CalibratedPruneStep(PruneStep):
    """A pruning step whose scores come from real-audio calibration through the model."""

    @classmethod
    def needs_calibration(cls, config) -> bool:
        return True


class MagnitudeConfig(PruneConfig):
    type: Literal["magnitude"] = "magnitude"
    scope: Literal["layer", "row", "global"] = "layer"


@register("magnitude")
class Magnitude(PruneStep):
    """|W| pruning: per layer, per output row, or one global threshold over all targeted layers; or N:M."""

    Config = MagnitudeConfig

    def run(self, model, ctx) -> dict:
        c = self.config
        pattern = parse_pattern(c.pattern)
        linears = self.targets(model, ctx)
        if c.scope == "global" and pattern is None:
            thr = sp.global_threshold([sp.magnitude_scores(m.weight) for m in linears.values()], c.sparsity)
            for m in linears.values():
                sp.apply_mask(m.weight, sp.magnitude_scores(m.weight) > thr)
        else:
            for m in ctx.progress(linears.values(), "magnitude"):
                sp.apply_mask(m.weight, _mask(sp.magnitude_scores(m.weight), c.sparsity, pattern, c.scope == "row"))
        return measure(model, linears, pattern)


class WandaConfig(PruneConfig):
    type: Literal["wanda"] = "wanda"
    sequential: bool = True  # prune block by block; later blocks calibrate on the pruned earlier ones
    # comparison group of the scores: each output row (the Wanda paper's choice for LLMs) or the whole layer
    scope: Literal["row", "layer"] = "row"


@register("wanda")
class Wanda(CalibratedPruneStep):
    """Wanda: |W| x ||X||_2 compared within each output row (or layer), activations from real audio through the model."""

    Config = WandaConfig

    def run(self, model, ctx) -> dict:
        c = self.config
        pattern = parse_pattern(c.pattern)
        linears = self.targets(model, ctx)
        def prune(group: dict, norms: dict) -> None:
            for n, m in group.items():
                sp.apply_mask(m.weight, _mask(sp.wanda_scores(m.weight, norms[n]), c.sparsity, pattern,
                                              c.scope == "row"))

        by_blocks(model, linears, ctx, collect_input_norms, prune, sequential=c.sequential, label="wanda")
        report = measure(model, linears, pattern)
        report["calibration_samples"] = len(ctx.calibration())
        return report


class SparseGptConfig(PruneConfig):
    type: Literal["sparsegpt"] = "sparsegpt"
    sequential: bool = True  # prune block by block; later blocks calibrate on the pruned earlier ones
    damp_percent: float = Field(0.01, ge=0.0, lt=1.0)
    block_size: int = Field(128, ge=1)


@register("sparsegpt")
class SparseGpt(CalibratedPruneStep):
    """SparseGPT: OBS-style pruning with reconstruction of the kept weights, from the GPTQ Hessian of each Linear's
    inputs (real audio through the model), block by block; unstructured or N:M."""

    Config = SparseGptConfig

    def run(self, model, ctx) -> dict:
        from ..quant.gptq_math import output_error

        c = self.config
        pattern = parse_pattern(c.pattern)
        n, m = pattern or (0, 0)
        linears = self.targets(model, ctx)
        errors: dict = {}

        def prune(group: dict, accs: dict) -> None:
            for name, lin in group.items():
                if accs[name].n == 0:
                    raise ctx.error(f"sparsegpt: no calibration token reached {name}; it cannot be calibrated")
                h = accs[name].hessian()
                w = lin.weight.detach().float()
                new, keep, _ = sp.sparsegpt_prune(w, h, c.sparsity, n, m, c.block_size, c.damp_percent)
                errors[name] = {"output_rel_error": output_error(w, new, h),
                                "mask_only_output_rel_error": output_error(w, w * keep, h)}
                with torch.no_grad():
                    lin.weight.copy_(new.to(lin.weight.dtype))

        by_blocks(model, linears, ctx, collect_hessians, prune, sequential=c.sequential, label="sparsegpt")
        report = measure(model, linears, pattern)
        vals = list(errors.values())
        report["output_rel_error_mean"] = sum(v["output_rel_error"] for v in vals) / max(1, len(vals))
        report["mask_only_output_rel_error_mean"] = (sum(v["mask_only_output_rel_error"] for v in vals)
                                                     / max(1, len(vals)))
        report["calibration_samples"] = len(ctx.calibration())
        return report
