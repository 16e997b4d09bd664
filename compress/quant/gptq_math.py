"""GPTQ (Frantar et al., 2022) as pure tensor functions: a weight matrix plus its input Hessian in, codes out.

Quantizes W (out, in) column by column; after each column the rounding error, scaled by the inverse
Hessian's Cholesky factor, is pushed onto the columns not yet quantized, so that the layer's output on the
calibration inputs (H = 2 X^T X / n) changes as little as possible. Errors are applied lazily in blocks of
`block_size` columns; `act_order` visits columns by decreasing diag(H) and records the groups in g_idx.
"""

from __future__ import annotations

import torch

from .rtn import QuantizedWeight, dequantize_codes, grid_params, group_index, maxq_of, quantize_codes


class HessianAccumulator:
    """Running H = 2 X^T X / n over every token a Linear sees (X rows are tokens)."""

    def __init__(self, in_features: int, device=None):
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(self.sum.device, torch.float32)
        self.sum.addmm_(x.T, x)
        self.n += x.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.n == 0:
            raise ValueError("no calibration tokens reached this layer")
        return self.sum * (2.0 / self.n)


def drop_dead_inputs(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Inputs that were always zero (diag H = 0): any weight works there, so it becomes 0, and H gets a 1 on the
    diagonal so it stays invertible. W and H (float copies) are changed in place; returns the dead mask."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    return dead


def inverse_cholesky(h: torch.Tensor, damp_percent: float, tries: int = 6) -> tuple:
    """Upper Cholesky factor of (H + damp I)^-1, damp = damp_percent * mean(diag H); damp grows x10 on failure.

    Returns (factor, damp_percent actually used)."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = float(torch.diag(h).mean())
    pct = damp_percent
    for _ in range(tries):
        chol, info = torch.linalg.cholesky_ex(h + pct * mean_diag * eye)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                return upper, pct
        pct = pct * 10 if pct > 0 else 1e-4
    raise ValueError(f"the Hessian is not positive definite even with damp_percent {pct / 10:g}")


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int = -1, sym: bool = True,
                  act_order: bool = False, damp_percent: float = 0.01, block_size: int = 128,
                  keep_zeros: bool = False) -> tuple:
    """GPTQ on one matrix. w (out, in), h (in, in). Returns (QuantizedWeight, info dict).

    keep_zeros: weights that are exactly 0 (pruned) get the code of the zero point, so they stay exactly 0
    after dequantization (every grid holds 0); their error is propagated like any other, as SparseGPT does.
    """
    maxq = maxq_of(bits)
    out_f, in_f = w.shape
    W = w.detach().float().clone()
    H = h.detach().float().clone()
    pruned = (w.detach() == 0) if keep_zeros else None
    dead = drop_dead_inputs(W, H)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
        if pruned is not None:
            pruned = pruned[:, perm]
    hinv, damp_used = inverse_cholesky(H, damp_percent)

    dev = W.device
    g_idx = group_index(in_f, group_size).to(dev)  # groups of positions in visiting order
    gs = in_f if group_size == -1 else group_size
    groups = -(-in_f // gs)
    scales = torch.empty(groups, out_f, device=dev)
    zeros = torch.empty(groups, out_f, device=dev)
    codes = torch.empty(out_f, in_f, device=dev)
    scale = zero = None
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = W[:, i1:i2].clone()
        err1 = torch.zeros(out_f, i2 - i1, device=dev)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:  # a new group starts: its grid from the current (error-updated) weights
                end = min(col + gs, in_f)
                grp = W1[:, i:end - i1]
                if end > i2:  # the group reaches past this block: apply this block's pending errors there
                    tail = W[:, i2:end] - err1[:, :i] @ hinv[i1:col, i2:end]
                    grp = torch.cat([grp, tail], dim=1)
                scale, zero = grid_params(grp, bits, sym)
                scales[col // gs], zeros[col // gs] = scale, zero
            wc = W1[:, i]
            q = quantize_codes(wc, scale, zero, maxq)
            if pruned is not None:
                q = torch.where(pruned[:, col], zero, q)
            codes[:, col] = q
            e = (wc - dequantize_codes(q, scale, zero)) / hinv1[i, i]
            W1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    if perm is not None:
        inv = torch.argsort(perm)
        codes, g_idx = codes[:, inv], g_idx[inv]
    qw = QuantizedWeight(codes.to(torch.int32), scales, zeros.to(torch.int32), g_idx.to(torch.int32), bits,
                         group_size)
    return qw, {"damp_percent_used": damp_used, "dead_inputs": int(dead.sum())}


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """Relative output error on the calibration inputs, from the Hessian alone:
    ||X (W - Q)^T||_F / ||X W^T||_F = sqrt(tr(D H D^T) / tr(W H W^T)), D = W - Q."""
    w, q, h = w.detach().float(), q.detach().float(), h.detach().float()
    d = w - q
    num = float(((d @ h) * d).sum())
    den = float(((w @ h) * w).sum())
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0
