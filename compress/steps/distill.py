"""Knowledge distillation: recover a compressed student from the uncompressed teacher on its own output tokens.

Loss per sample (teacher-forced on the reference answer, as SALMONN is trained):

    alpha * CE(student, reference) + (1 - alpha) * T^2 * KL(teacher_T || student_T)  [+ beta * MSE(features)]

where `_T` is the softmax at temperature T over the answer positions (Hinton et al.; T = 2, alpha = 0.5
as the hackathon teams used), and the optional feature term matches the student's projected speech
tokens (`proj`) or Q-Former outputs (`qformer`) to the teacher's. The teacher is the model as loaded
before the recipe's first step (the runner snapshots it) or a model spec named in the step.

Checkpoints: every `checkpoint_every` steps the trainable tensors, the optimizer state and the loss
curve are written atomically to `checkpoint_dir` (default: under the system temp dir, keyed by the
recipe, the step config and the student's starting weights). A run that finds a checkpoint for the
same key resumes from it; a finished run deletes it unless `keep_checkpoints`.

Multi-GPU (real checkpoints): under a distributed launcher (`WORLD_SIZE` > 1 in the environment), each
rank takes every WORLD_SIZE-th sample, gradients of the trained tensors are all-reduced (averaged) and
only rank 0 writes checkpoints:

    accelerate launch --multi_gpu --num_processes 8 -m compress.cli run \
        recipes/layer-drop-30-distill.yaml --model salmonn.yaml --out out/ld30-kd

This path has NOT been run here (CPU-only machine); note also that `run` writes the artifact from every
rank, so give rank > 0 a throw-away `--out` or run the write on rank 0 only before relying on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from .calibration import CalibrationConfig, llm_inputs, load_calibration, reference_ids
from .finetune import trainable_params
from .registry import Step, StepConfig, register


# ------------------------------------------------------------------------------------ the math
def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 alpha: float = 0.5, temperature: float = 2.0) -> tuple:
    """(N, V) student / teacher logits at the N answer positions, (N,) label ids ->
    (total, ce, kd) with total = alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T), KL averaged over N."""
    s = student_logits.float()
    ce = F.cross_entropy(s, labels)
    t = temperature
    log_p_s = F.log_softmax(s / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()  # KL(teacher || student) per position, mean
    return alpha * ce + (1.0 - alpha) * t * t * kd, ce, kd


# ------------------------------------------------------------------------------------ glue
class DistillConfig(StepConfig):
    type: Literal["distill"] = "distill"
    data: str  # annotation file of the training clips (with references)
    samples: int = Field(64, ge=1, le=100000)
    tasks: list = ["asr", "caption"]
    steps: int = Field(20, ge=1, le=1000000)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    seed: int = 0
    trainable: list[Literal["lora", "qformer", "proj", "beats"]] = ["lora", "qformer", "proj"]
    teacher: Optional[str] = None  # model spec; None = the model before the recipe's first step
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(2.0, gt=0.0)
    feature_loss: Optional[Literal["proj", "qformer"]] = None
    feature_weight: float = Field(1.0, ge=0.0)
    checkpoint_every: int = Field(50, ge=1)
    checkpoint_dir: Optional[str] = None
    keep_checkpoints: bool = False


def _features(model, s, where: str) -> tuple:
    """LLM inputs plus the speech features the feature loss compares: projection or Q-Former output."""
    captured = {}
    mod = model.speech_Qformer if where == "qformer" else model.speech_llama_proj
    h = mod.register_forward_hook(lambda m, a, out: captured.__setitem__("x", out))
    try:
        emb, mask = llm_inputs(model, s, with_reference=True)
    finally:
        h.remove()
    return emb, mask, captured["x"]


def _answer_logits(model, emb, mask, n_ref: int) -> torch.Tensor:
    logits = model.llama_model(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits  # (1, S, V)
    start = emb.shape[1] - n_ref
    return logits[0, start - 1: start - 1 + n_ref]  # position t predicts token t+1: (n_ref, V)


def _fingerprint(params: dict) -> str:
    h = hashlib.sha256()
    for n, p in params.items():
        d = p.detach().double()
        h.update(f"{n}{tuple(p.shape)}{float(d.sum()):.10e}{float(d.abs().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def _dist():
    """(rank, world) under a distributed launcher, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


@register("distill")
class Distill(Step):
    """Trains the named groups of the student against the teacher's softened outputs; reports the loss curve."""

    Config = DistillConfig
    needs_teacher = True

    def run(self, model, ctx) -> dict:
        c = self.config
        teacher = ctx.teacher(c.teacher)
        teacher.eval()
        cal = CalibrationConfig(data=c.data, samples=c.samples, tasks=c.tasks, seed=c.seed)
        samples = load_calibration(cal, ctx.base_dir)
        rank, world = _dist()
        mine = samples[rank::world] or samples

        wanted = {id(p) for p in trainable_params(model, c.trainable)}
        named = {n: p for n, p in model.named_parameters() if id(p) in wanted}
        if not named:
            raise ctx.error(f"distill: the model has no parameters in trainable groups {c.trainable}")
        key = hashlib.sha256(json.dumps([ctx.recipe.sha256(), c.model_dump(), _fingerprint(named)],
                                        sort_keys=True, default=str).encode()).hexdigest()[:16]
        ck_dir = (os.path.join(ctx.base_dir or "", c.checkpoint_dir) if c.checkpoint_dir
                  else os.path.join(tempfile.gettempdir(), "salmonn-compress-distill"))
        ck_path = os.path.join(ck_dir, f"distill-{key}.pt")

        flags = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in named.values():
            p.requires_grad_(True)
        params = list(named.values())
        opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=0.0)
        losses, ce_curve, kd_curve, feat_curve = [], [], [], []
        start, written = 0, 0
        if os.path.isfile(ck_path):
            ck = torch.load(ck_path, map_location=model.device, weights_only=True)
            with torch.no_grad():
                for n, t in ck["params"].items():
                    named[n].copy_(t)
            opt.load_state_dict(ck["optimizer"])
            start = ck["step"]
            losses, ce_curve, kd_curve, feat_curve = ck["losses"], ck["ce"], ck["kd"], ck["feature"]
        resumed_from = start

        rng = random.Random(c.seed)
        order = list(range(len(mine)))
        for step in range(start):  # replay the seeded shuffles so a resumed run sees the same sample order
            if step % len(order) == 0:
                rng.shuffle(order)
        was_training = model.training
        model.train()
        bar = ctx.bar(c.steps, "distill")
        bar.update(start)
        try:
            for step in range(start, c.steps):
                if step % len(order) == 0:
                    rng.shuffle(order)
                s = mine[order[step % len(order)]]
                n_ref = len(reference_ids(model, s.reference))
                with torch.no_grad():
                    if c.feature_loss:
                        t_emb, t_mask, t_feat = _features(teacher, s, c.feature_loss)
                    else:
                        t_emb, t_mask = llm_inputs(teacher, s, with_reference=True)
                    t_logits = _answer_logits(teacher, t_emb, t_mask, n_ref)
                if c.feature_loss:
                    emb, mask, feat = _features(model, s, c.feature_loss)
                else:
                    emb, mask = llm_inputs(model, s, with_reference=True)
                s_logits = _answer_logits(model, emb, mask, n_ref)
                labels = torch.tensor(reference_ids(model, s.reference), device=s_logits.device)
                loss, ce, kd = distill_loss(s_logits, t_logits.to(s_logits.device), labels, c.alpha, c.temperature)
                fl = torch.zeros((), device=loss.device)
                if c.feature_loss:
                    fl = F.mse_loss(feat.float(), t_feat.to(feat.device).float())
                    loss = loss + c.feature_weight * fl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:
                    import torch.distributed as dist

                    for p in params:
                        if p.grad is not None:
                            dist.all_reduce(p.grad)
                            p.grad /= world
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(loss.item())
                ce_curve.append(ce.item())
                kd_curve.append(kd.item())
                feat_curve.append(fl.item())
                bar.update(1)
                if (step + 1) % c.checkpoint_every == 0 and step + 1 < c.steps and rank == 0:
                    _save(ck_path, named, opt, step + 1, losses, ce_curve, kd_curve, feat_curve)
                    written += 1
        finally:
            bar.close()
            model.train(was_training)
            for p in model.parameters():
                p.requires_grad_(flags[id(p)])
        if not c.keep_checkpoints and os.path.isfile(ck_path) and rank == 0:
            os.remove(ck_path)
        elif c.keep_checkpoints and rank == 0:
            _save(ck_path, named, opt, c.steps, losses, ce_curve, kd_curve, feat_curve)
        first, last = losses[:5], losses[-5:]
        return {"steps": c.steps, "steps_run_now": c.steps - resumed_from, "resumed_from_step": resumed_from,
                "trained_groups": list(c.trainable), "trained_params": sum(p.numel() for p in params),
                "teacher": c.teacher or "model before the recipe's first step",
                "loss_first": sum(first) / len(first), "loss_last": sum(last) / len(last),
                "loss_curve": [round(x, 5) for x in losses], "ce_curve": [round(x, 5) for x in ce_curve],
                "kd_curve": [round(x, 5) for x in kd_curve],
                "feature_curve": [round(x, 5) for x in feat_curve] if c.feature_loss else None,
                "checkpoint_path": ck_path, "checkpoints_written": written,
                "checkpoint_kept": bool(c.keep_checkpoints and rank == 0), "world_size": world,
                "samples": len(samples)}


def _save(path, named, opt, step, losses, ce, kd, feat) -> None:
    """Atomic write: a crash mid-write never leaves a checkpoint that looks complete."""
    from ..loaders.checkpoint import atomic_torch_save

    atomic_torch_save({"params": {n: p.detach().cpu() for n, p in named.items()}, "optimizer": opt.state_dict(),
                       "step": step, "losses": losses, "ce": ce, "kd": kd, "feature": feat}, path)
