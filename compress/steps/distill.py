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

Several processes (real checkpoints): the step trains through `compress.trainloop` (accelerate). Under
`accelerate launch` each process takes every WORLD_SIZE-th sample, gradients are averaged across processes, and
only the main process writes checkpoints and the artifact (tested with two CPU processes on gloo; not run on
several GPUs here):

    accelerate launch --multi_gpu --num_processes 8 -m compress.cli run \
        recipes/layer-drop-30-distill.yaml --model salmonn.yaml --out out/ld30-kd
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import torch
import torch.nn.functional as F

from .calibration import llm_inputs, load_calibration, reference_ids
from .finetune import trainable_params
from .registry import Step, register
from .schema import CalibrationConfig, DistillConfig


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


def _weights_sha256(params: dict) -> str:
    """Exact digest of the trained tensors (name, shape, bytes): equal digests mean equal weights."""
    h = hashlib.sha256()
    for n in sorted(params):
        t = params[n].detach().cpu().contiguous()
        h.update(f"{n}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fingerprint(params: dict) -> str:
    h = hashlib.sha256()
    for n, p in params.items():
        d = p.detach().double()
        h.update(f"{n}{tuple(p.shape)}{float(d.sum()):.10e}{float(d.abs().sum()):.10e}".encode())
    return h.hexdigest()[:16]


@register("distill")
class Distill(Step):
    """Trains the named groups of the student against the teacher's softened outputs; reports the loss curve."""

    Config = DistillConfig
    needs_teacher = True

    def run(self, model, ctx) -> dict:
        from ..trainloop import LoopSettings, epoch_order, only_trainable, process, train

        c = self.config
        teacher = ctx.teacher(c.teacher)
        teacher.eval()
        cal = CalibrationConfig(data=c.data, samples=c.samples, tasks=c.tasks, seed=c.seed)
        samples = load_calibration(cal, ctx.base_dir)
        rank, world = process()
        mine = samples[rank::world] or samples

        wanted = {id(p) for p in trainable_params(model, c.trainable)}
        named = {n: p for n, p in model.named_parameters() if id(p) in wanted}
        if not named:
            raise ctx.error(f"distill: the model has no parameters in trainable groups {c.trainable}")
        key = hashlib.sha256(json.dumps([ctx.recipe.sha256(), c.model_dump(), _fingerprint(named), world],
                                        sort_keys=True, default=str).encode()).hexdigest()[:16]
        ck_dir = (os.path.join(ctx.base_dir or "", c.checkpoint_dir) if c.checkpoint_dir
                  else os.path.join(tempfile.gettempdir(), "salmonn-compress-distill"))
        ck_path = os.path.join(ck_dir, f"distill-{key}.pt")

        def step_loss(step: int):
            epoch, k = divmod(step, len(mine))
            s = mine[epoch_order(len(mine), c.seed, epoch)[k]]
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
            return loss, {"ce": ce.item(), "kd": kd.item(), "feature": fl.item()}

        loop = LoopSettings(steps=c.steps, lr=c.lr, checkpoint=ck_path, checkpoint_every=c.checkpoint_every,
                            keep_checkpoint=c.keep_checkpoints)
        bar = ctx.bar(c.steps, "distill")
        try:
            with only_trainable(model, named.values()):
                r = train(named, step_loss, loop, progress=bar)
        finally:
            bar.close()
        cur = r["curves"]
        losses = cur["loss"]
        first, last = losses[:5], losses[-5:]
        return {"steps": c.steps, "steps_run_now": r["steps_run_now"], "resumed_from_step": r["resumed_from_step"],
                "trained_groups": list(c.trainable), "trained_params": sum(p.numel() for p in named.values()),
                "teacher": c.teacher or "model before the recipe's first step",
                "loss_first": sum(first) / len(first), "loss_last": sum(last) / len(last),
                "loss_curve": losses, "ce_curve": cur["ce"], "kd_curve": cur["kd"],
                "feature_curve": cur["feature"] if c.feature_loss else None,
                "trained_weights_sha256": _weights_sha256(named), "checkpoint_path": ck_path, "checkpoints_written": r["checkpoints_written"],
                "checkpoint_kept": bool(c.keep_checkpoints and rank == 0), "world_size": world,
                "samples": len(samples)}
