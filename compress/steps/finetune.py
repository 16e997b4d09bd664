"""Teacher-forced training of SALMONN's trainable parts (LoRA, Q-Former, projection), shared by recovery steps."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .calibration import CalibSample, llm_inputs, reference_ids
from .schema import TrainConfig

TRAINABLE_GROUPS = ("lora", "qformer", "proj", "beats")


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
    """`cfg.steps` AdamW steps of one sample each (seeded order, this process's share of the samples under a
    distributed launcher) through the one training loop; returns the losses.

    after_step() runs after every optimizer step (e.g. to re-apply pruning masks).
    """
    from ..trainloop import LoopSettings, epoch_order, only_trainable, process, train

    named = {f"p{i}": p for i, p in enumerate(trainable_params(model, cfg.trainable) + list(extra_params or []))}
    rank, world = process()
    mine = samples[rank::world] or samples

    def step_loss(step: int):
        epoch, k = divmod(step, len(mine))
        return sample_loss(model, mine[epoch_order(len(mine), cfg.seed, epoch)[k]]), {}

    with only_trainable(model, named.values()):
        report = train(named, step_loss, LoopSettings(steps=cfg.steps, lr=cfg.lr), after_step=after_step,
                       progress=progress)
    return report["curves"]["loss"]
