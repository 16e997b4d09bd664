"""Integer weight grids as pure tensor functions: scale/zero per group, round-to-nearest, and the quantized result.

Conventions (those of the GPTQ reference and the GPTQ checkpoint format):
  W (out, in); codes q in [0, 2^bits - 1]; dequantized w = scale * (q - zero);
  per group of `group_size` input columns one (scale, zero) per output row; `g_idx[i]` is the group of column i;
  symmetric grids put zero at 2^(bits-1); scales are rounded to float16 because the format stores them so.
The float-offset grid (`zero_point="float"`) is llama.cpp's Q4_1 / Q5_1 scheme: per group the minimum is kept as a
float16 offset and scale = (max - min) / (2^bits - 1), so w = scale * q + offset with zero = 0. Weights that were
dequantized from such a file (the SmolLM2 GGUF the demo LLM comes from is Q4_1, groups of 32) come back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

BITS = (2, 3, 4, 8)


@dataclass
class QuantizedWeight:
    """The integer form of one weight matrix: everything the GPTQ format stores, unpacked."""

    codes: torch.Tensor  # (out, in) int32, in the original column order
    scales: torch.Tensor  # (groups, out) float32 holding float16-representable values
    zeros: torch.Tensor  # (groups, out) int32, true zero points (no storage offset)
    g_idx: torch.Tensor  # (in,) int32, group of each input column
    bits: int
    group_size: int  # -1 = one group per row
    offsets: Optional[torch.Tensor] = None  # (groups, out) float32 holding float16 values: the float-offset grid

    def dequantize(self) -> torch.Tensor:
        """(out, in) float32: scale[g_idx[i], o] * (codes[o, i] - zeros[g_idx[i], o]) (+ offsets[g_idx[i], o])."""
        g = self.g_idx.long()
        w = dequantize_codes(self.codes, self.scales[g].T, self.zeros[g].T)
        return w + self.offsets[g].T if self.offsets is not None else w


def maxq_of(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    return 2 ** bits - 1


def grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple:
    """Per-row (scale, zero) for w (rows, cols) so that [min(w, 0), max(w, 0)] maps onto [0, maxq].

    Returns scale (rows,) float32 rounded to float16 and zero (rows,) float32 holding integers.
    """
    maxq = maxq_of(bits)
    w = w.float()
    xmin = w.min(1).values.clamp(max=0)
    xmax = w.max(1).values.clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    dead = (xmin == 0) & (xmax == 0)
    xmin = torch.where(dead, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(dead, torch.full_like(xmax, 1.0), xmax)
    scale = ((xmax - xmin) / maxq).half().float()
    scale = torch.where(scale > 0, scale, torch.full_like(scale, float(torch.finfo(torch.float16).tiny)))
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Nearest codes in [0, maxq]; scale and zero broadcast against w."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q.float() - zero)


def group_index(in_features: int, group_size: int) -> torch.Tensor:
    """g_idx for columns in order: column i is in group i // group_size (one group if group_size is -1).

    A last group may be shorter when group_size does not divide in_features, as the GPTQ format allows
    (ceil(in / group_size) rows of scales); a group_size above in_features gives a single group."""
    gs = in_features if group_size == -1 else group_size
    return torch.arange(in_features, dtype=torch.int32) // gs


def offset_grid_params(w: torch.Tensor, bits: int) -> tuple:
    """Per-row (scale, offset) of the float-offset grid for w (rows, cols): offset = min(w), scale = (max - min) /
    maxq, both rounded to float16 (as Q4_1 stores them); a constant row gets the smallest scale and its value."""
    maxq = maxq_of(bits)
    w = w.float()
    lo, hi = w.min(1).values, w.max(1).values
    offset = lo.half().float()
    scale = ((hi - offset) / maxq).half().float()
    scale = torch.where(scale > 0, scale, torch.full_like(scale, float(torch.finfo(torch.float16).tiny)))
    return scale, offset


def _per_group(w: torch.Tensor, group_size: int, grid) -> tuple:
    """Apply grid(block) -> (scale, zero-or-offset, codes) to each group of columns; returns (codes (out, in),
    scales (groups, out), second (groups, out), groups)."""
    out_f, in_f = w.shape
    gs = in_f if group_size == -1 else group_size
    groups = -(-in_f // gs)
    codes = torch.empty(out_f, in_f, device=w.device)
    scales, second = torch.empty(groups, out_f, device=w.device), torch.empty(groups, out_f, device=w.device)
    for g in range(groups):
        cols = slice(g * gs, min((g + 1) * gs, in_f))
        scales[g], second[g], codes[:, cols] = grid(w[:, cols])
    return codes, scales, second, groups


def rtn_offset_quantize(w: torch.Tensor, bits: int, group_size: int = -1) -> QuantizedWeight:
    """Round-to-nearest on the float-offset grid (zero points 0, offsets per group)."""
    maxq = maxq_of(bits)
    w = w.detach().float()

    def grid(block):
        scale, offset = offset_grid_params(block, bits)
        return scale, offset, torch.clamp(torch.round((block - offset[:, None]) / scale[:, None]), 0, maxq)

    codes, scales, offsets, groups = _per_group(w, group_size, grid)
    zeros = torch.zeros(groups, w.shape[0], dtype=torch.int32, device=w.device)
    return QuantizedWeight(codes.to(torch.int32), scales, zeros, group_index(w.shape[1], group_size).to(w.device),
                           bits, group_size, offsets=offsets)


def rtn_quantize(w: torch.Tensor, bits: int, group_size: int = -1, sym: bool = True,
                 zero_point: str = "integer") -> QuantizedWeight:
    """Round-to-nearest on the same grid GPTQ uses: the baseline GPTQ is compared against (zero_point "float": the
    float-offset grid instead, see the module's first lines; sym does not apply to it)."""
    if zero_point == "float":
        return rtn_offset_quantize(w, bits, group_size)
    if zero_point != "integer":
        raise ValueError(f"zero_point must be 'integer' or 'float', got {zero_point!r}")
    maxq = maxq_of(bits)
    w = w.detach().float()

    def grid(block):
        scale, zero = grid_params(block, bits, sym)
        return scale, zero, quantize_codes(block, scale[:, None], zero[:, None], maxq)

    codes, scales, zeros, _ = _per_group(w, group_size, grid)
    return QuantizedWeight(codes.to(torch.int32), scales, zeros.to(torch.int32),
                           group_index(w.shape[1], group_size).to(w.device), bits, group_size)


def relative_error(w: torch.Tensor, q: torch.Tensor) -> float:
    """||W - Q||_F / ||W||_F."""
    w = w.detach().float()
    n = float(w.norm())
    return float((w - q.float()).norm()) / n if n else 0.0
