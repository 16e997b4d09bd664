"""Lottery tickets on the Whisper encoder: the WER curve of iterative magnitude pruning with and without rewinding.

    .venv/bin/python benchmarks/tools/lottery_whisper.py --out benchmarks/results/lottery-whisper [--limit 100]

The claim tested (the field's conference talks): iterative magnitude pruning of the speech encoder with rewinding,
LoRA adapters kept, holds accuracy up to about 50% sparsity. The recipe (recipes/lottery-whisper-70.yaml) prunes
the encoder's Linears globally to each sparsity of its schedule (30, 50, 70%), rewinds the survivors, and retrains
them together with LoRA, Q-Former and projection between rounds. Three curves on the same model and clips:

- `rewind`: the recipe as shipped (survivors back to their pretrained values each round, then retrained);
- `no-rewind`: the same with `rewind: none` (survivors keep their retrained values: pruning with fine-tuning);
- `one-shot`: global magnitude pruning of the pretrained encoder to each sparsity, no retraining (the floor).

After each round the model transcribes the first --limit ASR clips of --data; WER and its paired-bootstrap 95%
interval against the unpruned model go to the table (lottery.md: every curve in --out, by this call or an earlier
one). Resumable: a curve whose JSON exists in --out is not rerun. `--retrain-lr` / `--retrain-trainable` change the
recipe's retraining between rounds (write to another --out): what the retraining itself does to the curve.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

MODES = ("rewind", "no-rewind", "one-shot")


def transcribe(model, samples: list, limit: int) -> dict:
    from compress.bench.harness import BenchSettings, run_accuracy, score

    settings = BenchSettings(tasks=("asr",), limit=limit)
    records = run_accuracy(model, samples, settings)
    tasks = score(records, settings)
    return {"wer": tasks["asr"]["metrics"]["wer"]["value"], "by_voice_group": {
        k: v["value"] for k, v in (tasks["asr"].get("by_voice_group") or {}).items()},
        "references": [r["reference"] for r in records], "hypotheses": [r["hypothesis"] or "" for r in records]}


def one_shot(model, step, ctx, schedule: list, evaluate) -> list:
    """Global magnitude pruning of the original weights to each sparsity, no retraining."""
    import torch

    from compress import sparsity as sp
    from compress.steps.prune import measure

    linears = step.targets(model, ctx)
    original = {n: m.weight.detach().clone() for n, m in linears.items()}
    out = []
    for k, target in enumerate(schedule):
        scores = {n: sp.magnitude_scores(w) for n, w in original.items()}
        thr = sp.global_threshold(list(scores.values()), target)
        with torch.no_grad():
            for n, m in linears.items():
                m.weight.copy_(original[n] * (scores[n] > thr).to(m.weight.dtype))
        out.append({"round": k + 1, "target_sparsity": target,
                    "measured_sparsity": measure(model, linears)["measured_sparsity"], **evaluate()})
    return out


def run_mode(mode: str, a, samples: list) -> dict:
    from compress.loaders import load_model
    from compress.recipe import load_recipe
    from compress.runner import RunContext
    from compress.steps import load_steps

    recipe = load_recipe(a.recipe)
    cfg = recipe.steps[0]
    if cfg.type != "lottery_ticket":
        raise SystemExit(f"error: {a.recipe} must have one lottery_ticket step, has {cfg.type!r}")
    if mode == "no-rewind":
        cfg = cfg.model_copy(update={"rewind": "none"})
    if a.retrain:  # checked against the step's schema in main()
        cfg = cfg.model_copy(update={"retrain": cfg.retrain.model_copy(update=a.retrain)})
    model = load_model(a.model)
    ctx = RunContext(model, recipe, progress=not a.no_progress)
    step = load_steps()[cfg.type](cfg)
    t0 = time.perf_counter()

    def evaluate() -> dict:
        return transcribe(model, samples, a.limit)

    if mode == "one-shot":
        rounds = one_shot(model, step, ctx, cfg.targets_per_round(), evaluate)
    else:
        rounds = []
        for rep in step.rounds(model, ctx):
            rep.update(evaluate())
            rounds.append(rep)
            print(f"{mode}: round {rep['round']} sparsity {rep['measured_sparsity']:.3f} WER {rep['wer']:.3f}",
                  flush=True)
    return {"mode": mode, "recipe": os.path.relpath(a.recipe, ROOT), "step": cfg.model_dump(),
            "seconds": time.perf_counter() - t0, "rounds": rounds}


def table(base: dict, curves: dict) -> str:
    from compress.metrics.bootstrap import wer_bootstrap

    lines = [f"unpruned: WER {base['wer']:.3f} (seen voices {base['by_voice_group'].get('seen_voices', float('nan')):.3f}, "
             f"held-out voice {base['by_voice_group'].get('heldout_voice', float('nan')):.3f}), "
             f"{len(base['references'])} clips", "",
             "| curve | encoder sparsity | WER | WER - unpruned [95% CI] | retrain loss, first 5 -> last 5 steps |",
             "|---|---|---|---|---|"]
    for mode, c in curves.items():
        for r in c["rounds"]:
            b = wer_bootstrap(base["references"], base["hypotheses"], r["hypotheses"])
            loss = (f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else "none")
            lines.append(f"| {mode} | {r['measured_sparsity']:.2f} | {r['wer']:.3f} | {b['delta']:+.3f} "
                         f"[{b['low']:+.3f}, {b['high']:+.3f}] | {loss} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--recipe", default=os.path.join(ROOT, "recipes", "lottery-whisper-70.yaml"))
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "test.json"))
    p.add_argument("--limit", type=int, default=100, help="first N ASR clips of --data")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "lottery-whisper"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--retrain-lr", type=float, default=None, help="the retraining's learning rate (default: recipe's)")
    p.add_argument("--retrain-trainable", default=None,
                   help="comma-separated parts retrained beside the encoder (lora, qformer, proj, ...) or 'none'")
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        print(f"error: unknown curve(s) {bad}; valid: {', '.join(MODES)}", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from compress.steps.finetune import TRAINABLE_GROUPS
    from compress.steps.schema import TrainConfig

    a.retrain = {}
    if a.retrain_lr is not None:
        a.retrain["lr"] = a.retrain_lr
    if a.retrain_trainable is not None:  # "none": only the encoder's surviving weights (train_base) learn
        a.retrain["trainable"] = [] if a.retrain_trainable == "none" else a.retrain_trainable.split(",")
    try:  # the overrides go through the retraining's own schema (its bounds and part names)
        TrainConfig.model_validate({"data": "-", **a.retrain})
    except ValidationError as e:
        print(f"error: --retrain-lr {a.retrain_lr} / --retrain-trainable {a.retrain_trainable!r}: "
              f"{e.errors()[0]['msg']}; trainable parts: 'none' or a comma-separated subset of "
              f"{', '.join(TRAINABLE_GROUPS)}", file=sys.stderr)
        return 2
    if a.limit < 1:
        print(f"error: --limit must be >= 1, got {a.limit}", file=sys.stderr)
        return 2
    import torch

    from compress.data.annotations import read_annotations
    from compress.loaders import load_model

    torch.set_num_threads(a.threads)
    samples = read_annotations(a.data)
    os.makedirs(a.out, exist_ok=True)

    def cached(name: str, make) -> dict:
        path = os.path.join(a.out, f"{name}.json")
        if not os.path.isfile(path):
            torch.manual_seed(0)
            result = make()
            with open(path + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(path + ".tmp", path)
        with open(path) as f:
            return json.load(f)

    base = cached("unpruned", lambda: transcribe(load_model(a.model), samples, a.limit))
    curves = {m: cached(m, lambda m=m: run_mode(m, a, samples)) for m in MODES
              if m in modes or os.path.isfile(os.path.join(a.out, f"{m}.json"))}
    text = table(base, curves)
    with open(os.path.join(a.out, "lottery.md"), "w") as f:
        f.write(f"`python benchmarks/tools/lottery_whisper.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
                f"\n\n{text}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
