"""Sparse storage for pruned weights: a packed bitmask plus the non-zero values, used when it is smaller on disk."""

from __future__ import annotations

import numpy as np
import torch

MASK, VALUES = ".__sparse_mask", ".__sparse_values"


def encoded_bytes(t: torch.Tensor) -> int:
    nnz = int((t != 0).sum())
    return (t.numel() + 7) // 8 + nnz * t.element_size()


def encode(state: dict) -> tuple:
    """Replace each floating matrix whose mask+values encoding is smaller than dense; returns (state, index)."""
    out, index = {}, {}
    for name, t in state.items():
        if t.is_floating_point() and t.dim() >= 2 and encoded_bytes(t) < t.numel() * t.element_size():
            nz = (t != 0).flatten()
            out[name + MASK] = torch.from_numpy(np.packbits(nz.numpy().astype(np.uint8)))
            out[name + VALUES] = t.flatten()[nz].contiguous()
            index[name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
        else:
            out[name] = t
    return out, index


def decode_one(mask: torch.Tensor, values: torch.Tensor, info: dict) -> torch.Tensor:
    """The dense tensor of one entry: `info` is its index record (shape, dtype)."""
    n = int(np.prod(info["shape"]))
    nz = np.unpackbits(mask.numpy())[:n].astype(bool)
    dense = torch.zeros(n, dtype=getattr(torch, info["dtype"]))
    dense[torch.from_numpy(nz)] = values
    return dense.view(info["shape"])


def decode(state: dict, index: dict) -> dict:
    for name, info in index.items():
        state[name] = decode_one(state.pop(name + MASK), state.pop(name + VALUES), info)
    return state
