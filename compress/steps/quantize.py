"""Quantization steps `gptq`, `rtn`, `bitsandbytes`, `torchao`: swap targeted Linears for quantized modules.

Each replaced module is recorded as a module override (loaders/overrides.py) so that artifacts rebuild it on
load, and each step reports what it measured after acting: bits per parameter from the stored tensors,
bytes per part, and the reconstruction error per layer (weight, and for GPTQ the output on the calibration
inputs next to what round-to-nearest would give on the same inputs). Nothing here claims speed: on CPU the
dequantizing modules are slower than dense ones; the benchmark harness measures that.
"""

from __future__ import annotations

from typing import Optional

from ..inspect_model import part_stats
from ..loaders.overrides import record_override, set_module
from ..models.salmonn import part_of
from ..quant.gptq_math import gptq_quantize, output_error
from ..quant.qlinear import GPTQLinear
from ..quant.rtn import relative_error, rtn_quantize
from .calibration import by_blocks, collect_hessians
from .registry import Step, register
from .schema import BitsandbytesConfig, GptqConfig, RtnConfig, TorchaoConfig  # noqa: F401
from .targets import select_linears


def _state_bytes(m) -> int:
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


def _part_bytes(model) -> dict:
    return {p: s["bytes"] for p, s in part_stats(model).items()}


def _mean(xs) -> Optional[float]:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


class QuantStep(Step):
    """Shared glue: target selection, replacing a module (with its override record), measuring afterwards."""

    def targets(self, model, ctx) -> dict:
        linears = select_linears(model, self.config.targets)
        if not linears:
            raise ctx.error(f"no Linear matches the targets {self.config.targets.model_dump()}")
        self._real = {id(m): n for n, m in model.named_modules()}
        self._replaced: dict = {}
        self._before = _part_bytes(model)
        return linears

    def replace(self, model, shown: str, old, new, kind: str, spec: dict) -> None:
        real = self._real[id(old)]  # `...q_proj.base_layer` under PEFT; shown as `...q_proj`
        params = sum(p.numel() for p in old.parameters(recurse=False))
        new.train(old.training)
        set_module(model, real, new)
        record_override(model, real, kind, spec)
        self._replaced[shown] = (new, params, _state_bytes(old))

    def measure(self, model, per_layer: dict, notes: list) -> dict:
        stored = sum(_state_bytes(m) for m, _, _ in self._replaced.values())
        params = sum(p for _, p, _ in self._replaced.values())
        orig = sum(b for _, _, b in self._replaced.values())
        errs = [r["weight_rel_error"] for r in per_layer.values()]
        return {
            "layers_quantized": len(self._replaced),
            "measured_bits_per_param": 8 * stored / params,
            "original_bits_per_param": 8 * orig / params,
            "quantized_state_bytes": stored,
            "original_state_bytes": orig,
            "part_bytes_before": self._before,
            "part_bytes_after": _part_bytes(model),
            "weight_rel_error_mean": _mean(errs),
            "weight_rel_error_max": max(errs) if errs else None,
            "per_layer": per_layer,
            "notes": notes,
        }


def group_notes(linears: dict, group_size: int) -> list:
    """Layers whose width the group size does not divide: the GPTQ format then has a shorter last group, or a
    single group per row when the layer is narrower than one group (said, not silently changed)."""
    if group_size == -1:
        return []
    narrow = sorted({m.in_features for m in linears.values() if m.in_features <= group_size})
    ragged = sorted({m.in_features for m in linears.values()
                     if m.in_features > group_size and m.in_features % group_size})
    notes = []
    if narrow:
        notes.append(f"in_features {narrow} <= group_size {group_size}: one group per output row there")
    if ragged:
        notes.append(f"in_features {ragged} not divisible by group_size {group_size}: the last group is shorter")
    return notes


# ----------------------------------------------------------------------------------------------- GPTQ / RTN
@register("rtn")
class Rtn(QuantStep):
    """Round-to-nearest on GPTQ's grid and storage format: the no-calibration baseline GPTQ is compared with."""

    Config = RtnConfig

    def run(self, model, ctx) -> dict:
        c = self.config
        linears = self.targets(model, ctx)
        per_layer = {}
        for n, m in ctx.progress(list(linears.items()), "rtn"):
            w = m.weight.detach().float()
            qw = rtn_quantize(w, c.bits, c.group_size, c.sym, zero_point=c.zero_point)
            new = GPTQLinear.from_quantized(qw, m.bias, sym=c.sym, method="rtn", weight_dtype=m.weight.dtype)
            new = new.to(m.weight.device)
            deq = new.dequantize()  # what the stored module computes (scales / offsets as float16)
            worst = float((w - deq).abs().max())
            per_layer[n] = {"weight_rel_error": relative_error(w, deq), "weight_max_abs_error": worst,
                            "exact": worst == 0.0}
            self.replace(model, n, m, new, "gptq", new.spec())
        notes = group_notes(linears, c.group_size)
        exact = sum(r["exact"] for r in per_layer.values())
        if c.zero_point == "float":
            notes.append(f"float-offset grid: {exact} of {len(per_layer)} layers come back bit-exact (weights that "
                         "were dequantized from a Q4_1 / Q5_1 file with these groups do; a natively 16-bit model does "
                         "not)")
        return {"bits": c.bits, "group_size": c.group_size, "zero_point": c.zero_point, "exact_layers": exact,
                **self.measure(model, per_layer, notes)}


@register("gptq")
class Gptq(QuantStep):
    """GPTQ with Hessians from real audio through the whole SALMONN path, block by block; RTN measured alongside."""

    Config = GptqConfig

    def run(self, model, ctx) -> dict:
        c = self.config
        linears = self.targets(model, ctx)
        per_layer: dict = {}
        zeros_before = sum(int((m.weight == 0).sum()) for m in linears.values())

        def quantize(group: dict, accs: dict) -> None:
            for n, m in group.items():
                if accs[n].n == 0:
                    raise ctx.error(f"gptq: no calibration token reached {n}; it cannot be calibrated")
                h = accs[n].hessian()
                w = m.weight.detach().float()
                qw, info = gptq_quantize(w, h, c.bits, c.group_size, c.sym, act_order=c.act_order,
                                         damp_percent=c.damp_percent, block_size=c.block_size,
                                         keep_zeros=c.keep_zeros)
                q = qw.dequantize()
                r = rtn_quantize(w, c.bits, c.group_size, c.sym).dequantize()
                per_layer[n] = {
                    "weight_rel_error": relative_error(w, q),
                    "output_rel_error": output_error(w, q, h),
                    "rtn_weight_rel_error": relative_error(w, r),
                    "rtn_output_rel_error": output_error(w, r, h),
                    "calibration_tokens": accs[n].n,
                    **info,
                }
                new = GPTQLinear.from_quantized(qw, m.bias, sym=c.sym, act_order=c.act_order,
                                                weight_dtype=m.weight.dtype).to(m.weight.device)
                self.replace(model, n, m, new, "gptq", new.spec())

        by_blocks(model, linears, ctx, collect_hessians, quantize, sequential=c.sequential, label="gptq")

        report = {"bits": c.bits, "group_size": c.group_size,
                  **self.measure(model, per_layer, group_notes(linears, c.group_size))}
        out_g = [r["output_rel_error"] for r in per_layer.values()]
        out_r = [r["rtn_output_rel_error"] for r in per_layer.values()]
        report.update(output_rel_error_mean=_mean(out_g), rtn_output_rel_error_mean=_mean(out_r),
                      layers_gptq_beats_rtn=sum(g <= r for g, r in zip(out_g, out_r)),
                      calibration_samples=len(ctx.calibration()))
        if zeros_before:
            zeros_after = sum(int((m.dequantize() == 0).sum()) for m, _, _ in self._replaced.values())
            report["zero_weights_before"] = zeros_before
            report["zero_weights_after"] = zeros_after  # >= before when keep_zeros (codes at the zero point)
        return report


# ----------------------------------------------------------------------------------------------- bitsandbytes
@register("bitsandbytes")
class Bitsandbytes(QuantStep):
    """bitsandbytes LLM.int8 (Linear8bitLt) or nf4/fp4 (Linear4bit), on whatever device the model is on."""

    Config = BitsandbytesConfig

    def run(self, model, ctx) -> dict:
        from ..quant import bnb

        c = self.config
        linears = self.targets(model, ctx)
        if any(part_of(n) == "proj" for n in linears):
            raise ctx.error("bitsandbytes cannot quantize the projection (part 'proj'): the model casts its input to "
                            "speech_llama_proj.weight.dtype, which bitsandbytes makes int8/uint8; use gptq, rtn or "
                            "torchao there, or add `ignore: [speech_llama_proj]`")
        odd = [n for n, m in linears.items() if c.mode != "int8" and m.weight.device.type == "cpu"
               and m.in_features % 64]
        if odd:
            raise ctx.error(f"bitsandbytes {c.mode} on CPU needs in_features divisible by its block size 64 (its CPU "
                            f"kernel repacks weights per block); not so for {odd[:3]} ({len(odd)} layers): "
                            "narrow the targets or use another method there")
        per_layer, outside = {}, 0
        for n, m in ctx.progress(list(linears.items()), f"bitsandbytes {c.mode}"):
            w = m.weight.detach().float()
            new, spec, deq = bnb.quantize_linear(m, c.mode, threshold=6.0 if c.threshold is None else c.threshold,
                                                 double_quant=True if c.double_quant is None else c.double_quant,
                                                 compute_dtype=c.compute_dtype or "auto")
            per_layer[n] = {"weight_rel_error": relative_error(w, deq)}
            outside += bnb.state_outside_buffers(new)
            self.replace(model, n, m, new, "bitsandbytes", spec)
        report = {"mode": c.mode, **self.measure(model, per_layer, [])}
        report["bytes_not_in_part_stats"] = outside
        report["notes"].append("bitsandbytes keeps part of its state (int8 SCB, 4-bit absmax / quant maps) outside "
                               "parameters and buffers: part_bytes_after leaves out bytes_not_in_part_stats; "
                               "measured_bits_per_param counts everything stored")
        return report


# ----------------------------------------------------------------------------------------------- torchao
@register("torchao")
class Torchao(QuantStep):
    """torchao `quantize_` with Int8WeightOnlyConfig / Int8DynamicActivationInt8WeightConfig; plain-tensor storage."""

    Config = TorchaoConfig

    def run(self, model, ctx) -> dict:
        from ..quant.ao import TorchaoInt8Linear

        c = self.config
        linears = self.targets(model, ctx)
        per_layer = {}
        for n, m in ctx.progress(list(linears.items()), f"torchao {c.mode}"):
            w = m.weight.detach().float()
            new = TorchaoInt8Linear.from_linear(m, c.mode)
            per_layer[n] = {"weight_rel_error": relative_error(w, new.dequantize())}
            self.replace(model, n, m, new, "torchao", new.spec())
        return {"mode": c.mode, **self.measure(model, per_layer, [])}
