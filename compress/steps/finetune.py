"""Teacher-forced training of SALMONN's trainable parts (LoRA, Q-Former, projection), shared by recovery steps."""

from __future__ import annotations

import random
from typing import Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from .calibration import CalibSample, llm_inputs, reference_ids

TRAINABLE_GROUPS = ("lora", "qformer", "proj", "beats")


class TrainConfig(BaseModel):
    """What to train, on which annotation file, for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str
    samples: int = Field(64, ge=1, le=100000)
    steps: int = Field(20, ge=1, le=100000)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    trainable: list[Literal["lora", "qformer", "proj", "beats"]] = ["lora", "qformer", "proj"]
    seed: int = 0


def trainable_params(model, groups) -> list:
    """Parameters SALMONN trains, by group; base LLM/encoder weights are never in these groups."""
    out = []
    for name, p in model.named_parameters():
        g = ("lora" if ".lora_" in name else
             "qformer" if name.startswith(("speech_Qformer.", "speech_query_tokens")) else
             "proj" if name.startswith("speech_llama_proj.") else
             "beats" if name.startswith(("beats.", "ln_audio.")) else None)
        if g in groups:
            out.append(p)
    return out


def sample_loss(model, s: CalibSample) -> torch.Tensor:
    """Cross-entropy on the reference tokens (and EOS) given the audio prompt, as SALMONN is trained."""
    emb, mask = llm_inputs(model, s, with_reference=True)
    ref_ids = reference_ids(model, s.reference)
    n_ref = len(ref_ids)
    logits = model.llama_model(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits  # (1, S, V)
    start = emb.shape[1] - n_ref
    pred = logits[0, start - 1: start - 1 + n_ref].float()  # position t predicts token t+1
    return torch.nn.functional.cross_entropy(pred, torch.tensor(ref_ids, device=pred.device))


def train_steps(model, samples: list, cfg: TrainConfig, *, after_step: Optional[Callable] = None,
                extra_params: Optional[list] = None, progress=None) -> list:
    """`cfg.steps` AdamW steps of one sample each (seeded order); returns the losses.

    after_step() runs after every optimizer step (e.g. to re-apply pruning masks).
    """
    params = trainable_params(model, cfg.trainable) + list(extra_params or [])
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    order = list(range(len(samples)))
    losses = []
    was_training = model.training
    model.train()
    try:
        for step in range(cfg.steps):
            if step % len(order) == 0:
                rng.shuffle(order)
            loss = sample_loss(model, samples[order[step % len(order)]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if after_step is not None:
                after_step()
            losses.append(loss.item())
            if progress is not None:
                progress.update(1)
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
    return losses
