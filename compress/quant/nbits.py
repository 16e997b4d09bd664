"""The project's GPTQ / RTN codes in the layout of ONNX Runtime's MatMulNBits (com.microsoft), as pure tensor functions.

MatMulNBits computes y = x dequant(B)^T with B block-quantized along K (the input dimension):
  B            (N, k_blocks, block_size * bits / 8) uint8, codes packed low bits first along K;
  scales       (N, k_blocks) float;  zero_points (N, ceil(k_blocks * bits / 8)) uint8, packed the same way
               (absent: 2^(bits - 1), the symmetric grid's zero);  w = (code - zero_point) * scale.
Blocks are contiguous runs of K. The float-offset grid (rtn.py) has zero points 0 and a float offset per block,
which MatMulNBits cannot hold (its float zero points turn off the packed kernels): `offsets` (N, k_blocks) rides
beside the codes and the exporters add x's per-block sums times the offsets (a rank-k_blocks product).
GPTQ with act-order puts the columns of a group anywhere along K (g_idx); sorting the columns by group makes every
group a contiguous block, so the same product is x[..., perm] times the sorted weight. The conversion is exact: no
code, scale or zero point changes. ONNX Runtime's own quantizer (matmul_nbits_quantizer) re-quantizes float
weights; no installable library converts existing GPTQ codes, hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .packing import unpack_qweight, unpack_qzeros

BITS = (2, 4, 8)


@dataclass
class NBitsWeight:
    b: torch.Tensor  # (N, k_blocks, blob) uint8
    scales: torch.Tensor  # (N, k_blocks) float32
    zero_points: Optional[torch.Tensor]  # (N, ceil(k_blocks * bits / 8)) uint8, or None (= 2^(bits-1))
    perm: Optional[torch.Tensor]  # (K,) int64 column order (None: identity)
    k: int
    n: int
    bits: int
    block_size: int
    offsets: Optional[torch.Tensor] = None  # (N, k_blocks) float32, blocks in sorted column order


def pack_low_first(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., L) integers in [0, 2^bits) -> (..., ceil(L * bits / 8)) uint8, element i at bit offset i * bits."""
    per = 8 // bits
    c = codes.to(torch.int32)
    pad = (-c.shape[-1]) % per
    if pad:
        c = torch.cat([c, c.new_zeros(c.shape[:-1] + (pad,))], dim=-1)
    c = c.reshape(c.shape[:-1] + (-1, per))
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (c << shifts).sum(-1).to(torch.uint8)


def unpack_low_first(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of pack_low_first: (..., bytes) uint8 -> (..., length) int32."""
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    vals = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return vals.reshape(packed.shape[:-1] + (-1,))[..., :length]


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, bits: int,
              in_features: int, offsets: Optional[torch.Tensor] = None) -> NBitsWeight:
    """Packed GPTQ buffers (this project's layout, zeros without the v1 offset) -> MatMulNBits inputs.

    Needs bits in (2, 4, 8) and groups that become whole blocks once sorted: every group but the last of the
    same power-of-two size >= 16 (what GPTQ and RTN with a power-of-two group_size give)."""
    if bits not in BITS:
        raise ValueError(f"MatMulNBits takes {BITS} bits, not {bits}")
    out_features = scales.shape[1]
    codes = unpack_qweight(qweight, bits, in_features)  # (N, K)
    zeros = unpack_qzeros(qzeros, bits, out_features, v1_offset=False)  # (groups, N)
    g = g_idx.to(torch.int64)
    perm = torch.argsort(g, stable=True)
    sizes = torch.bincount(g, minlength=scales.shape[0])
    block = int(sizes[0])
    if block < 16 or block & (block - 1) or bool((sizes[:-1] != block).any()) or int(sizes[-1]) > block:
        raise ValueError(f"groups of {sizes.tolist()[:4]}... columns are not whole power-of-two blocks (>= 16)")
    k_blocks = scales.shape[0]
    sorted_codes = codes[:, perm]
    pad = k_blocks * block - in_features
    if pad:  # the last block's missing columns: any code works, their activations are never read
        sorted_codes = torch.cat([sorted_codes, sorted_codes.new_zeros(out_features, pad)], dim=1)
    b = pack_low_first(sorted_codes.reshape(out_features, k_blocks, block), bits)
    zt = zeros.T.contiguous()  # (N, k_blocks)
    zp = None if bool((zt == 2 ** (bits - 1)).all()) else pack_low_first(zt, bits)
    identity = bool((perm == torch.arange(in_features)).all())
    return NBitsWeight(b=b, scales=scales.T.float().contiguous(), zero_points=zp, perm=None if identity else perm,
                       k=in_features, n=out_features, bits=bits, block_size=block,
                       offsets=None if offsets is None else offsets.T.float().contiguous())


def dequantize(w: NBitsWeight) -> torch.Tensor:
    """(N, K) float32 weight in the ORIGINAL column order: what y = x W^T with MatMulNBits computes."""
    k_blocks = w.scales.shape[1]
    codes = unpack_low_first(w.b, w.bits, w.block_size).reshape(w.n, k_blocks * w.block_size)[:, : w.k].float()
    if w.zero_points is None:
        zeros = torch.full((w.n, k_blocks), float(2 ** (w.bits - 1)))
    else:
        zeros = unpack_low_first(w.zero_points, w.bits, k_blocks).float()
    col_block = torch.arange(w.k) // w.block_size
    dense = (codes - zeros[:, col_block]) * w.scales[:, col_block]
    if w.offsets is not None:
        dense = dense + w.offsets[:, col_block]
    if w.perm is None:
        return dense
    out = torch.empty_like(dense)
    out[:, w.perm] = dense
    return out


def concat_outputs(ws: list) -> NBitsWeight:
    """Several weights read by the same input (same K, column order, bits and block) as one: outputs stacked along
    N in the given order, so one MatMulNBits computes what the separate ones would, side by side."""
    first = ws[0]
    for w in ws[1:]:
        same_perm = (w.perm is None and first.perm is None) or (
            w.perm is not None and first.perm is not None and torch.equal(w.perm, first.perm))
        if (w.k, w.bits, w.block_size) != (first.k, first.bits, first.block_size) or not same_perm:
            raise ValueError("weights stacked along N need the same K, bits, block size and column order")
    if all(w.zero_points is None for w in ws):
        zp = None
    else:
        k_blocks = first.scales.shape[1]
        mid = torch.full((1, k_blocks), 2 ** (first.bits - 1), dtype=torch.int32)
        zp = torch.cat([w.zero_points if w.zero_points is not None else pack_low_first(mid, first.bits).expand(w.n, -1)
                        for w in ws])
    offsets = None
    if any(w.offsets is not None for w in ws):
        offsets = torch.cat([w.offsets if w.offsets is not None else torch.zeros_like(w.scales) for w in ws])
    return NBitsWeight(b=torch.cat([w.b for w in ws]), scales=torch.cat([w.scales for w in ws]), zero_points=zp,
                       perm=first.perm, k=first.k, n=sum(w.n for w in ws), bits=first.bits,
                       block_size=first.block_size, offsets=offsets)


def block_sums(x: torch.Tensor, w: NBitsWeight) -> torch.Tensor:
    """(..., k_blocks): the sums of x over each block of w's columns (in w's sorted order); with w.offsets,
    x W^T = MatMulNBits(x) + block_sums(x) @ offsets^T."""
    if w.perm is not None:
        x = x[..., w.perm]
    k_blocks = w.scales.shape[1]
    pad = k_blocks * w.block_size - w.k
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(x.shape[:-1] + (k_blocks, w.block_size)).sum(-1)


def block_indicator(w: NBitsWeight) -> torch.Tensor:
    """(K, k_blocks) float32 E with x @ E = block_sums(x, w): 1 where column perm[j] lies in sorted block j // size."""
    k_blocks = w.scales.shape[1]
    cols = w.perm if w.perm is not None else torch.arange(w.k)
    e = torch.zeros(w.k, k_blocks)
    e[cols, torch.arange(w.k) // w.block_size] = 1.0
    return e
