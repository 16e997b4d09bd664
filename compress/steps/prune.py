"""Pruning steps `magnitude`, `wanda` and `sparsegpt`: glue around compress.sparsity, reporting measured sparsity."""

from __future__ import annotations

import torch

from .. import sparsity as sp
from ..models.salmonn import part_of
from .calibration import (by_blocks, collect_hessians, collect_input_norms, counted, forward_all, linears_by_block,
                          part_blocks)
from .registry import Step, register
from .schema import MagnitudeConfig, PruneConfig, SparseGptConfig, WandaConfig, parse_pattern  # noqa: F401
from .targets import select_linears

UNSTRUCTURED_NOTE = ("unstructured zeros are stored densely: the artifact and the running model are as large and "
                     "as slow as before; only N:M patterns on sparse kernels, or sparse storage, save anything")


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


def owl_sparsity(model, linears: dict, ctx, c, label: str) -> tuple:
    """OWL: ({Linear name: its block's sparsity}, report). The outlier share of each block's Wanda scores is
    measured on the unpruned model (one pass of full forwards over the calibration clips, every targeted Linear
    observed at once); blocks are the repeated layers of each part, normalised part by part; a targeted Linear
    outside the blocks is a group of its own."""
    from ..models.salmonn import PARTS

    samples = ctx.calibration()
    fwd = counted(ctx.calibration_forward, ctx.bar(len(samples), f"{label} owl: calibration forwards"))
    norms = collect_input_norms(linears, forward_all(fwd, samples))
    of, blocks_report = {}, {}
    for part in PARTS:
        mine = {n: m for n, m in linears.items() if part_of(n) == part}
        if not mine:
            continue
        groups = [(f"{part}.{i}", list(group)) for i, group in
                  enumerate(linears_by_block(part_blocks(model, part) or [], mine)) if group]
        grouped = {n for _, names in groups for n in names}
        groups += [(n, [n]) for n in mine if n not in grouped]
        ratios = [sp.outlier_ratio([sp.wanda_scores(linears[n].weight, norms[n]) for n in names], c.owl.m)
                  for _, names in groups]
        for (name, names), ratio, target in zip(groups, ratios, sp.owl_sparsities(ratios, c.sparsity, c.owl.lam)):
            of.update({n: target for n in names})
            blocks_report[name] = {"outlier_ratio": ratio, "sparsity": target}
    return of, {"m": c.owl.m, "lam": c.owl.lam, "blocks": blocks_report}


class PruneStep(Step):
    def targets(self, model, ctx) -> dict:
        linears = select_linears(model, self.config.targets)
        if not linears:
            raise ctx.error(f"no Linear matches the targets {self.config.targets.model_dump()}")
        return linears


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


@register("wanda")
class Wanda(PruneStep):
    """Wanda: |W| x ||X||_2 compared within each output row (or layer), activations from real audio through the model."""

    Config = WandaConfig

    def run(self, model, ctx) -> dict:
        c = self.config
        pattern = parse_pattern(c.pattern)
        linears = self.targets(model, ctx)
        sparsity_of, owl = owl_sparsity(model, linears, ctx, c, "wanda") if c.owl else ({}, None)

        def prune(group: dict, norms: dict) -> None:
            for n, m in group.items():
                sp.apply_mask(m.weight, _mask(sp.wanda_scores(m.weight, norms[n]), sparsity_of.get(n, c.sparsity),
                                              pattern, c.scope == "row"))

        by_blocks(model, linears, ctx, collect_input_norms, prune, sequential=c.sequential, label="wanda")
        report = measure(model, linears, pattern)
        report["calibration_samples"] = len(ctx.calibration())
        if owl:
            report["owl"] = owl
        return report


@register("sparsegpt")
class SparseGpt(PruneStep):
    """SparseGPT: OBS-style pruning with reconstruction of the kept weights, from the GPTQ Hessian of each Linear's
    inputs (real audio through the model), block by block; unstructured or N:M."""

    Config = SparseGptConfig

    def run(self, model, ctx) -> dict:
        from ..quant.gptq_math import output_error

        c = self.config
        pattern = parse_pattern(c.pattern)
        n, m = pattern or (0, 0)
        linears = self.targets(model, ctx)
        sparsity_of, owl = owl_sparsity(model, linears, ctx, c, "sparsegpt") if c.owl else ({}, None)
        errors: dict = {}

        def prune(group: dict, accs: dict) -> None:
            for name, lin in group.items():
                if accs[name].n == 0:
                    raise ctx.error(f"sparsegpt: no calibration token reached {name}; it cannot be calibrated")
                h = accs[name].hessian()
                w = lin.weight.detach().float()
                new, keep, _ = sp.sparsegpt_prune(w, h, sparsity_of.get(name, c.sparsity), n, m, c.block_size,
                                                  c.damp_percent)
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
        if owl:
            report["owl"] = owl
        return report
