"""The standard GPTQ storage layout (qweight / qzeros / scales / g_idx), packed and unpacked with pure tensor ops.

Layout facts (as AutoGPTQ wrote it and GPTQModel / transformers read it, checkpoint_format "gptq"):
  qweight (ceil(in * bits / 32), out) int32: codes packed along the input dimension, value i of a column at
      bit offset i * bits of one little-endian bit stream cut into 32-bit words (for 3 bits this is the
      10 | 1 | 10 | 1 | 10 split across three words);
  qzeros (groups, ceil(out * bits / 32)) int32: zero points packed the same way along the output dimension,
      each stored minus one (the historical "v1" offset, undone by readers);
  scales (groups, out) float16;  g_idx (in,) int32.
In memory this project keeps qzeros without the offset ("v2", what GPTQModel converts to after loading),
because v1 cannot store a zero point of 0, which asymmetric grids can produce; `export` writes v1.
"""

from __future__ import annotations

import torch

WORD = 32
_MASK32 = (1 << 32) - 1


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """(n, m) integers in [0, 2^bits) -> (ceil(n * bits / 32), m) int32, packed along dim 0 as one bit stream."""
    v = values.to(torch.int64)
    n, m = v.shape
    words = (n * bits + WORD - 1) // WORD
    out = torch.zeros(words + 1, m, dtype=torch.int64, device=v.device)  # a spare word for spills past the end
    offset = torch.arange(n, dtype=torch.int64, device=v.device) * bits
    word, shift = offset // WORD, (offset % WORD)[:, None]
    out.index_add_(0, word, (v << shift) & _MASK32)
    spill = (v >> (WORD - shift)) * (shift + bits > WORD)
    out.index_add_(0, word + 1, spill)
    out = out[:words]
    return torch.where(out >= 2 ** 31, out - 2 ** 32, out).to(torch.int32)


def unpack_rows(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_rows: (words, m) int32 -> (n, m) int32 in [0, 2^bits)."""
    if WORD % bits == 0:  # 2/4/8 bits: no value spans two words; shift whole words at once in int32
        pf = WORD // bits
        shifts = torch.arange(0, WORD, bits, dtype=torch.int32, device=packed.device).view(1, pf, 1)
        v = (packed.unsqueeze(1) >> shifts) & ((1 << bits) - 1)  # (words, pf, m); masking drops sign bits
        return v.reshape(-1, packed.shape[1])[:n]
    # 3/5/6/7 bits: every `bits` words hold 32 values, so value j of each such period starts in word
    # (j * bits) // 32 of it at a fixed shift; a value that crosses into the next word takes its high bits from
    # there. int32 throughout (masks drop the sign bits arithmetic shifts bring in): five passes over the codes.
    m = packed.shape[1]
    periods = -(-n // WORD)
    p = packed
    if p.shape[0] < periods * bits:  # a partial last period: pad it with zero words
        p = torch.cat([p, p.new_zeros(periods * bits - p.shape[0], m)])
    p = p[: periods * bits].view(periods, bits, m)
    j = torch.arange(WORD, dtype=torch.int64, device=packed.device)
    first, shift = (j * bits) // WORD, (j * bits) % WORD
    spill = shift + bits > WORD
    low = (p[:, first] >> shift.to(torch.int32).view(1, WORD, 1)) & (
        (1 << (WORD - shift)).clamp(max=1 << bits).sub(1).to(torch.int32).view(1, WORD, 1))
    high_shift = (WORD - shift).clamp(max=WORD - 1).to(torch.int32).view(1, WORD, 1)
    high = (p[:, (first + 1).clamp(max=bits - 1)] << high_shift) * spill.to(torch.int32).view(1, WORD, 1)
    v = (low | high) & ((1 << bits) - 1)
    return v.reshape(periods * WORD, m)[:n]


def pack_qweight(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (out, in) -> qweight (ceil(in * bits / 32), out)."""
    return pack_rows(codes.T, bits)


def unpack_qweight(qweight: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """qweight -> codes (out, in)."""
    return unpack_rows(qweight, bits, in_features).T


def pack_qzeros(zeros: torch.Tensor, bits: int, v1_offset: bool) -> torch.Tensor:
    """zeros (groups, out) true zero points -> qzeros (groups, ceil(out * bits / 32)); v1 stores zero - 1."""
    z = zeros.to(torch.int64)
    if v1_offset:
        if bool((z == 0).any()):
            raise ValueError("a zero point of 0 cannot be stored in the v1 ('gptq') format (it stores zero - 1); "
                             "use sym: true or checkpoint_format gptq_v2")
        z = z - 1
    return pack_rows(z.T, bits).T.contiguous()


def unpack_qzeros(qzeros: torch.Tensor, bits: int, out_features: int, v1_offset: bool) -> torch.Tensor:
    z = unpack_rows(qzeros.T, bits, out_features).T
    return z + 1 if v1_offset else z


def dequantize_packed(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                      bits: int, v1_offset: bool = False) -> torch.Tensor:
    """(out, in) float32 weight from the packed buffers."""
    out_f, in_f = scales.shape[1], g_idx.shape[0]
    codes = unpack_rows(qweight, bits, in_f)  # (in, out)
    zeros = unpack_qzeros(qzeros, bits, out_f, v1_offset)  # (groups, out)
    groups = scales.shape[0]
    gs = -(-in_f // groups)
    if in_f == groups * gs and torch.equal(g_idx, torch.arange(in_f, device=g_idx.device, dtype=g_idx.dtype) // gs):
        # groups in column order (no act-order): broadcast per group instead of gathering per column
        w = (codes.view(groups, gs, out_f) - zeros[:, None, :]).float() * scales.float()[:, None, :]
        return w.view(in_f, out_f).T
    g = g_idx.long()
    return (scales.float()[g] * (codes.float() - zeros.float()[g])).T
