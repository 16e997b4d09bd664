"""Seeding, AdamW parameter groups and the warm-up + cosine schedule shared by both training stages."""

from __future__ import annotations

import math
import random
from typing import Iterable

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.05) -> float:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine down to `floor` at `total`."""
    if total <= 0:
        return 1.0
    warmup = min(warmup, max(total - 1, 0))
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    t = min(1.0, (step - warmup) / max(total - warmup, 1))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(named: Iterable, lr: float, weight_decay: float, lr_of=None) -> list:
    """AdamW groups: no decay on biases, norms and 1-D tensors; `lr_of(name)` may override the LR."""
    groups: dict = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        decay = 0.0 if p.ndim < 2 or "norm" in name.lower() or name.endswith("bias") else weight_decay
        g_lr = lr_of(name) if lr_of is not None else lr
        key = (decay, g_lr)
        groups.setdefault(key, {"params": [], "weight_decay": decay, "lr": g_lr})["params"].append(p)
    return list(groups.values())


def make_optimizer(named, lr: float, weight_decay: float, lr_of=None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(named, lr, weight_decay, lr_of), lr=lr, betas=(0.9, 0.98), eps=1e-8)


def set_lr(opt: torch.optim.Optimizer, base_lrs: list, mult: float) -> None:
    for g, base in zip(opt.param_groups, base_lrs):
        g["lr"] = base * mult
