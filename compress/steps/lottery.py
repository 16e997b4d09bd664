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
        lora_zeros_before = _lora_zeros(model)
        rounds = list(self.rounds(model, ctx))
        report = measure(model, self.targets(model, ctx))
        report.update(rounds=rounds, lora_new_zeros=_lora_zeros(model) - lora_zeros_before,
                      retrain_samples=rounds[-1]["retrain_samples"] if rounds else 0)
        return report

    def rounds(self, model, ctx):
        """Prune, rewind, retrain, round by round; yields each round's report once its weights are final (a
        caller may evaluate the model between rounds)."""
        c = self.config
        linears = self.targets(model, ctx)
        data = load_calibration(CalibrationConfig(data=c.retrain.data, samples=c.retrain.samples,
                                                  seed=c.retrain.seed), ctx.base_dir)
        rewind_to = {n: m.weight.detach().clone() for n, m in linears.items()} if c.rewind != "none" else None
        masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in linears.items()}

        def reapply():
            for n, m in linears.items():
                sp.apply_mask(m.weight, masks[n])

        plan = c.targets_per_round()
        for r, target in enumerate(plan):
            # Magnitude among survivors; pruned weights score -inf so they stay pruned.
            scores = {n: sp.magnitude_scores(m.weight).masked_fill(~masks[n], float("-inf"))
                      for n, m in linears.items()}
            if c.scope == "global":
                thr = sp.global_threshold([s for s in scores.values()], target)
                masks = {n: s > thr for n, s in scores.items()}
            else:
                masks = {n: sp.mask_layer(s, target) for n, s in scores.items()}
            with torch.no_grad():  # rewind the survivors (or keep them, rewind none)
                for n, m in linears.items():
                    src = rewind_to[n] if rewind_to is not None else m.weight.detach()
                    m.weight.copy_(src * masks[n].to(m.weight.dtype))
            extra = [m.weight for m in linears.values()] if c.train_base else []
            losses = []
            bar = ctx.bar(c.retrain.steps, f"lottery round {r + 1}/{len(plan)}")
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
            first, last = losses[:5], losses[-5:]  # one clip a step: means of five, as distillation reports
            yield {"round": r + 1, "target_sparsity": target, "measured_sparsity": m["measured_sparsity"],
                   "loss_first": sum(first) / len(first), "loss_last": sum(last) / len(last), "loss_curve": losses,
                   "retrain_samples": len(data)}
