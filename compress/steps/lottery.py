"""Lottery-ticket pruning: iterative magnitude rounds, rewinding surviving base weights, retraining SALMONN's trainable parts."""

from __future__ import annotations

import torch

from .. import sparsity as sp
from .calibration import load_calibration
from .finetune import train_steps
from .prune import PruneStep, measure
from .registry import register
from .schema import CalibrationConfig, LotteryConfig


def _lora_zeros(model) -> int:
    return sum(int((p == 0).sum()) for n, p in model.named_parameters() if ".lora_" in n)


@register("lottery_ticket")
class LotteryTicket(PruneStep):
    Config = LotteryConfig

    def run(self, model, ctx) -> dict:
        c = self.config
        linears = self.targets(model, ctx)
        data = load_calibration(CalibrationConfig(data=c.retrain.data, samples=c.retrain.samples,
                                                  seed=c.retrain.seed), ctx.base_dir)
        lora_zeros_before = _lora_zeros(model)
        start = {n: m.weight.detach().clone() for n, m in linears.items()}
        rewind_to = start
        masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in linears.items()}

        def reapply():
            for n, m in linears.items():
                sp.apply_mask(m.weight, masks[n])

        rounds = []
        for r, target in enumerate(sp.round_sparsities(c.sparsity, c.rounds)):
            # Magnitude among survivors; pruned weights score -inf so they stay pruned.
            scores = {n: sp.magnitude_scores(m.weight).masked_fill(~masks[n], float("-inf"))
                      for n, m in linears.items()}
            if c.scope == "global":
                thr = sp.global_threshold([s for s in scores.values()], target)
                masks = {n: s > thr for n, s in scores.items()}
            else:
                masks = {n: sp.mask_layer(s, target) for n, s in scores.items()}
            with torch.no_grad():  # rewind the survivors
                for n, m in linears.items():
                    m.weight.copy_(rewind_to[n] * masks[n].to(m.weight.dtype))
            extra = [m.weight for m in linears.values()] if c.train_base else []
            losses = []
            bar = ctx.bar(c.retrain.steps, f"lottery round {r + 1}/{c.rounds}")
            if c.rewind == "early" and r == 0:
                first = c.retrain.model_copy(update={"steps": c.rewind_steps})
                losses += train_steps(model, data, first, after_step=reapply, extra_params=extra, progress=bar)
                rewind_to = {n: m.weight.detach().clone() for n, m in linears.items()}
                rest = c.retrain.model_copy(update={"steps": max(c.retrain.steps - c.rewind_steps, 1)})
                losses += train_steps(model, data, rest, after_step=reapply, extra_params=extra, progress=bar)
            else:
                losses += train_steps(model, data, c.retrain, after_step=reapply, extra_params=extra, progress=bar)
            bar.close()
            reapply()
            m = measure(model, linears)
            rounds.append({"round": r + 1, "target_sparsity": target, "measured_sparsity": m["measured_sparsity"],
                           "loss_first": losses[0], "loss_last": losses[-1]})
        report = measure(model, linears)
        report.update(rounds=rounds, lora_new_zeros=_lora_zeros(model) - lora_zeros_before,
                      retrain_samples=len(data))
        return report
