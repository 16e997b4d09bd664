"""Pruning math as pure tensor functions: scores, masks (unstructured, per-row, N:M), OWL's layer sparsities, block
influence, counting."""

from __future__ import annotations

import torch


def magnitude_scores(w: torch.Tensor) -> torch.Tensor:
    return w.detach().abs().float()


def wanda_scores(w: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 (Wanda): w (out, in), input_sq_sum (in,) = sum over calibration tokens of x_j^2."""
    return w.detach().abs().float() * input_sq_sum.float().sqrt()[None, :]


def _prune_count(n: int, sparsity: float) -> int:
    return int(n * sparsity)


def _lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a 2-D score matrix without the `k` lowest scores of each row; ties at the k-th value are
    broken by index (as a stable sort would). The k-th value alone decides rows without such a tie (most rows of
    float scores): a selection, several times cheaper than sorting every row."""
    keep = scores > torch.kthvalue(scores, k, dim=1, keepdim=True).values
    tied = (~keep).sum(1) != k
    if tied.any():
        rows = tied.nonzero().flatten()
        idx = torch.argsort(scores[rows], dim=1, stable=True)[:, :k]
        keep[rows] = torch.ones_like(keep[rows]).scatter_(1, idx, False)
    return keep


def mask_layer(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the lowest-scoring `sparsity` fraction of the whole matrix (ties broken by index)."""
    k = _prune_count(scores.numel(), sparsity)
    if not k:
        return torch.ones_like(scores, dtype=torch.bool)
    return _lowest_k(scores.reshape(1, -1), k).view_as(scores)


def mask_rows(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the lowest `sparsity` fraction within each output row (Wanda's comparison group)."""
    k = _prune_count(scores.shape[1], sparsity)
    return _lowest_k(scores, k) if k else torch.ones_like(scores, dtype=torch.bool)


def mask_n_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the top `n` of every `m` consecutive inputs in each row (N:M semi-structured sparsity)."""
    out_f, in_f = scores.shape
    if in_f % m:
        raise ValueError(f"input width {in_f} is not a multiple of M={m}")
    groups = scores.reshape(out_f, in_f // m, m)  # (out, in/m, m)
    keep = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out_f, in_f)


def outlier_ratio(scores: list, m: float) -> float:
    """OWL's layerwise outlier share (Yin et al., 2024): the fraction of all the scores of a block's Linears
    (Wanda's |W| x ||X||) that exceed `m` times their mean."""
    flat = torch.cat([s.detach().flatten().float() for s in scores])
    return float((flat > flat.mean() * m).sum()) / flat.numel()


def owl_sparsities(ratios: list, target: float, lam: float) -> list:
    """OWL's non-uniform sparsity per block: the outlier shares rescaled to [0, 2 lam] and centred, so a block's
    sparsity is `target` minus its share's offset (more outliers: fewer zeros), within target +- lam, mean =
    target (the same weight count pruned when the blocks are equal in size). Equal shares give `target` each."""
    r = torch.tensor(ratios, dtype=torch.float64)
    span = float(r.max() - r.min()) if len(ratios) else 0.0
    if span == 0.0:
        return [float(target)] * len(ratios)
    offset = (r - r.min()) / span * 2 * lam
    offset = offset - offset.mean()
    return [float(target - x) for x in offset]


def global_threshold(all_scores: list, sparsity: float) -> float:
    """The score below which `sparsity` of all entries across several matrices fall (global pruning)."""
    flat = torch.cat([s.flatten() for s in all_scores])
    k = _prune_count(flat.numel(), sparsity)
    if k == 0:
        return float("-inf")
    return float(torch.kthvalue(flat, k).values)


def apply_mask(w: torch.Tensor, keep: torch.Tensor) -> None:
    with torch.no_grad():
        w.mul_(keep.to(w.dtype))


def zero_fraction(t: torch.Tensor) -> float:
    return float((t == 0).sum()) / t.numel() if t.numel() else 0.0


def is_n_m(w: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of m consecutive inputs in each row has at most n non-zeros."""
    out_f, in_f = w.shape
    if in_f % m:
        return False
    nz = (w.reshape(out_f, in_f // m, m) != 0).sum(-1)
    return bool((nz <= n).all())


def block_influence(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """ShortGPT's block influence per token: 1 - cos(x_in, x_out); (..., d) -> (...)."""
    cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
    return 1.0 - cos


def round_sparsities(final: float, rounds: int) -> list:
    """Iterative pruning schedule keeping a constant fraction per round: s_r = 1 - (1 - s)^(r / R)."""
    return [1.0 - (1.0 - final) ** (r / rounds) for r in range(1, rounds + 1)]


@torch.no_grad()
def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, sparsity: float = 0.5, n: int = 0, m: int = 0,
                    block_size: int = 128, damp_percent: float = 0.01, prune_mask=None) -> tuple:
    """SparseGPT (Frantar & Alistarh, 2023): prune w (out, in) and update the weights kept so that the layer's
    output on the calibration inputs (h = 2 X^T X / tokens, the GPTQ Hessian) changes as little as possible.

    Columns are visited in order; a pruned weight's error, scaled by the inverse Hessian's Cholesky factor, is
    pushed onto the columns not yet visited (the OBS update restricted to them). Unstructured: within each block
    of `block_size` columns, the weights with the smallest w^2 / [H^-1]_jj^2 across the block are pruned
    (adaptive mask selection). N:M (n, m > 0): in every m consecutive inputs of a row, the n smallest by the same
    score are pruned. `prune_mask` (out, in; True = prune) skips the selection and only reconstructs.
    Returns (new weight, keep mask, info)."""
    from .quant.gptq_math import drop_dead_inputs, inverse_cholesky

    out_f, in_f = w.shape
    if n and (in_f % m):
        raise ValueError(f"input width {in_f} is not a multiple of M={m}")
    W = w.detach().float().clone()
    H = h.detach().float().clone()
    dead = drop_dead_inputs(W, H)
    hinv, damp_used = inverse_cholesky(H, damp_percent)
    if n:
        block_size = max(m, (block_size // m) * m)  # N:M groups never straddle a block
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = W[:, i1:i2].clone()
        err1 = torch.zeros_like(W1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)
        pruned = torch.zeros_like(W1, dtype=torch.bool)
        if prune_mask is not None:
            pruned = prune_mask[:, i1:i2].to(torch.bool).clone()
        elif not n:
            score = W1.pow(2) / d.pow(2)[None, :]
            k = int(score.numel() * sparsity)
            if k:
                idx = torch.argsort(score.flatten(), stable=True)[:k]
                pruned.view(-1)[idx] = True
        for i in range(i2 - i1):
            if n and prune_mask is None and i % m == 0:
                score = W1[:, i:i + m].pow(2) / d[i:i + m].pow(2)[None, :]
                low = torch.topk(score, n, dim=1, largest=False).indices  # the n to prune
                pruned[:, i:i + m].scatter_(1, low, True)
            col = W1[:, i]
            q = torch.where(pruned[:, i], torch.zeros_like(col), col)
            e = (col - q) / hinv1[i, i]
            W1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            W1[:, i] = q
            err1[:, i] = e
        W[:, i1:i2] = W1
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        keep[:, i1:i2] = ~pruned
    W = W * keep
    return W.to(w.dtype), keep, {"damp_percent_used": damp_used, "dead_inputs": int(dead.sum())}
