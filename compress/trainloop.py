"""The one training loop: recovery fine-tuning, distillation and lottery-ticket retraining run through it, and
so do the demo factory's training stages.

Built on Hugging Face accelerate: the process group of `accelerate launch` (or none on one device), gradient
accumulation (`Accelerator.accumulate`), the optimizer wrapper (`Accelerator.prepare`), `Accelerator.backward`,
the mean of the gradients over processes, and writes on the main process only. The model itself is not
wrapped: SALMONN's forward passes call its parts one by one, so gradients are averaged explicitly
(`Accelerator.reduce`) after each accumulated step, which is what a DDP wrapper would do.

Resumption: accelerate's `save_state` / `load_state` unpickle custom objects and RNG states
(`weights_only=False`); this project loads every checkpoint with `weights_only=True`, so the loop writes its own:
the trained tensors, the optimizer state, the step and the curves, atomically, from the main process. Batches and
randomness must be functions of (seed, step) in the caller's `step_loss`, so that a resumed run takes the steps an
uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch


@dataclass
class LoopSettings:
    steps: int
    lr: float
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: Optional[float] = 1.0
    accumulate: int = 1  # micro-batches per optimizer step
    schedule: Optional[Callable[[int], float]] = None  # LR multiplier of step; None: constant
    checkpoint: Optional[str] = None  # file of the resumable state; None: no checkpoints
    checkpoint_every: Optional[int] = None  # steps between checkpoints
    checkpoint_minutes: Optional[float] = None  # or minutes between checkpoints
    max_minutes: Optional[float] = None  # stop (resumably) after this much training time in all invocations
    keep_checkpoint: bool = True  # False: the checkpoint file is removed when the loop finishes
    log_every: Optional[int] = None  # steps between log lines of the curves' recent means


# ------------------------------------------------------------------------------------------- math helpers
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
        decay = 0.0 if p.ndim < 2 or "norm" in name.lower() or name.endswith("bias") else weight_decay
        g_lr = lr_of(name) if lr_of is not None else lr
        groups.setdefault((decay, g_lr), {"params": [], "weight_decay": decay, "lr": g_lr})["params"].append(p)
    return list(groups.values())


def epoch_order(n: int, seed: int, epoch: int) -> list:
    """A seeded permutation of range(n) for one epoch: any step's sample is known without replaying history."""
    import numpy as np

    return [int(i) for i in np.random.default_rng([seed, epoch, 7]).permutation(n)]


@contextmanager
def only_trainable(model: torch.nn.Module, params: Iterable[torch.nn.Parameter]):
    """Within the block, only `params` require gradients (and the model is in train mode); restored after."""
    params = list(params)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.train()
    try:
        yield params
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])


# ------------------------------------------------------------------------------------------- the loop
_ACCELERATOR = None


def accelerator(accumulate: int = 1):
    """The process's Accelerator (one per process: accelerate keeps its state process-wide)."""
    global _ACCELERATOR
    from accelerate import Accelerator

    if _ACCELERATOR is None:
        # the caller places the model; the optimizer state stays beside its parameters
        _ACCELERATOR = Accelerator(gradient_accumulation_steps=max(1, accumulate), device_placement=False,
                                   cpu=_cpu_only())
    else:
        _ACCELERATOR.gradient_accumulation_steps = max(1, accumulate)
    _ACCELERATOR.step = 0  # micro-batch counter of the accumulation: each loop starts on a boundary
    return _ACCELERATOR


def _cpu_only() -> bool:
    """No accelerator device here. accelerate then needs `cpu=True` to join a launcher's process group (gloo):
    without it a CPU-only process under torchrun / `accelerate launch` without --cpu quietly runs alone, and
    every process would act as the main one."""
    return not torch.accelerator.is_available()


def process() -> tuple:
    """(rank, world size) of this process: (0, 1) outside a distributed launcher."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState

    s = PartialState(cpu=_cpu_only())
    return s.process_index, s.num_processes


def is_main_process() -> bool:
    return process()[0] == 0


def train(named: dict, step_loss: Callable[[int], tuple], cfg: LoopSettings, *, lr_of=None,
          after_step: Optional[Callable] = None, progress=None, log=None, on_checkpoint=None,
          resume_extra: Optional[Callable[[dict], None]] = None) -> dict:
    """Run (or continue) `cfg.steps` optimizer steps over the tensors in `named` ({name: Parameter}).

    `step_loss(micro)` returns (loss, {metric: float}) of micro-batch `micro` (= step * accumulate + j); the
    loss is divided by `accumulate` here. `after_step()` runs after each optimizer step (e.g. to re-apply
    pruning masks). `on_checkpoint()` returns extra tensors/values stored with each checkpoint, handed back to
    `resume_extra(extra)` when a run resumes. Returns the report: steps, where it resumed, curves per metric.
    """
    acc = accelerator(cfg.accumulate)
    rank, world = acc.process_index, acc.num_processes
    params = list(named.values())
    opt = torch.optim.AdamW(param_groups(named.items(), cfg.lr, cfg.weight_decay, lr_of), lr=cfg.lr,
                            betas=cfg.betas)
    base_lrs = [g["lr"] for g in opt.param_groups]
    start, curves, spent = 0, {}, 0.0
    if cfg.checkpoint and os.path.isfile(cfg.checkpoint):
        state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
        if set(state["params"]) != set(named):
            raise RuntimeError(f"{cfg.checkpoint} holds other trained tensors than this run; delete it to start afresh")
        with torch.no_grad():
            for n, t in state["params"].items():
                named[n].copy_(t)
        opt.load_state_dict(state["optimizer"])
        start, curves, spent = state["step"], state["curves"], state.get("seconds", 0.0)
        if resume_extra is not None:
            resume_extra(state.get("extra", {}))
        if log:
            log(f"resuming from step {start} of {cfg.steps} ({cfg.checkpoint})")
    opt = acc.prepare(opt)

    def save(step: int, seconds: float) -> None:
        if rank == 0:
            from .loaders import checkpoint

            checkpoint.atomic_torch_save({"step": step, "params": {n: p.detach().cpu().clone() for n, p in named.items()},
                               "optimizer": opt.optimizer.state_dict(), "curves": curves, "seconds": seconds,
                               "extra": on_checkpoint() if on_checkpoint else {}}, cfg.checkpoint)
        acc.wait_for_everyone()

    if progress is not None:
        progress.update(start)
    t0 = last = time.perf_counter()
    step, stopped, written = start, None, 0
    while step < cfg.steps:
        if cfg.max_minutes is not None and spent + time.perf_counter() - t0 > cfg.max_minutes * 60:
            stopped = f"max_minutes {cfg.max_minutes} reached at step {step}"
            break
        mult = cfg.schedule(step) if cfg.schedule is not None else 1.0
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * mult
        metrics: dict = {}
        for j in range(cfg.accumulate):
            with acc.accumulate():
                loss, m = step_loss(step * cfg.accumulate + j)
                acc.backward(loss / cfg.accumulate)
                for k, v in {"loss": loss.item(), **m}.items():
                    metrics[k] = metrics.get(k, 0.0) + v / cfg.accumulate
                if acc.sync_gradients:
                    if world > 1:
                        for p in params:
                            if p.grad is None:
                                p.grad = torch.zeros_like(p)
                            p.grad.copy_(acc.reduce(p.grad, reduction="mean"))
                    if cfg.grad_clip:
                        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                opt.step()
                opt.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
        step += 1
        for k, v in metrics.items():
            curves.setdefault(k, []).append(round(float(v), 5))
        if progress is not None:
            progress.update(1)
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{sum(curves['loss'][-20:]) / len(curves['loss'][-20:]):.3f}")
        if log and cfg.log_every and step % cfg.log_every == 0:
            log(f"step {step}: " + ", ".join(f"{k} {sum(v[-cfg.log_every:]) / len(v[-cfg.log_every:]):.4f}"
                                            for k, v in curves.items() if v))
        now = time.perf_counter()
        due = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or (
            cfg.checkpoint_minutes and now - last > cfg.checkpoint_minutes * 60)
        if cfg.checkpoint and due and step < cfg.steps:
            save(step, round(spent + now - t0, 1))
            last, written = now, written + 1
    seconds = round(spent + time.perf_counter() - t0, 1)
    if cfg.checkpoint and (stopped or cfg.keep_checkpoint):
        save(step, seconds)
        written += 1
    elif cfg.checkpoint and rank == 0 and os.path.isfile(cfg.checkpoint):
        os.remove(cfg.checkpoint)
    if log and stopped:
        log(stopped)
    return {"steps": step, "planned_steps": cfg.steps, "resumed_from_step": start, "steps_run_now": step - start,
            "stopped": stopped, "seconds": seconds, "curves": curves, "checkpoints_written": written,
            "world_size": world}
