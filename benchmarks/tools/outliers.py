"""Activation outliers of a model's LLM: per Linear, the largest and median L2 norm of its input columns over real
calibration inputs (audio through the whole SALMONN path), and the share of the squared norm in the top 1% of
columns. Wanda's advantage over magnitude pruning comes from such outlier features (large-norm input channels).

    python benchmarks/tools/outliers.py --model demo --recipe recipes/wanda-50.yaml \
        --out benchmarks/results/demo-llm-outliers.json

The calibration section (data, clip count, speech_windows) is the recipe's, so the statistics are what that
recipe's Wanda step sees.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, HERE)


def column_stats(sq_sum: torch.Tensor) -> dict:
    """Per-Linear statistics from the sum over tokens of x_j^2 for each input column j."""
    norms = sq_sum.double().clamp_min(0).sqrt()
    med = float(norms.median())
    top = max(1, norms.numel() // 100)
    share = float(sq_sum.double().topk(top).values.sum() / sq_sum.double().sum().clamp_min(1e-30))
    return {"max_over_median": float(norms.max()) / med if med > 0 else float("inf"),
            "top1pct_share_of_squared_norm": share, "columns": norms.numel()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--recipe", default=os.path.join(HERE, "recipes", "wanda-50.yaml"))
    ap.add_argument("--out")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from compress.loaders import load_model
    from compress.recipe import load_recipe
    from compress.runner import RunContext
    from compress.steps.calibration import collect_input_norms, forward_all
    from compress.steps.targets import Targets, select_linears

    recipe = load_recipe(args.recipe)
    model = load_model(args.model)
    ctx = RunContext(model, recipe, progress=True)
    linears = select_linears(model, Targets(parts=["llm"], ignore=["lm_head"]))
    with torch.no_grad():
        sums = collect_input_norms(linears, forward_all(ctx.calibration_forward, ctx.calibration()))
    rows = {n: column_stats(s) for n, s in sums.items()}
    ratios = sorted(r["max_over_median"] for r in rows.values())
    kinds: dict = {}
    for n, r in rows.items():
        kinds.setdefault(n.rsplit(".", 1)[-1], []).append(r["max_over_median"])
    print(f"{len(rows)} Linears; max/median input-column norm: median {ratios[len(ratios) // 2]:.2f}, "
          f"max {ratios[-1]:.1f}")
    for k, v in sorted(kinds.items()):
        v = sorted(v)
        print(f"  {k:<10} median {v[len(v) // 2]:6.2f}  max {v[-1]:7.1f}")
    worst = sorted(rows.items(), key=lambda kv: -kv[1]["max_over_median"])[:5]
    for n, r in worst:
        print(f"  {n}: {r['max_over_median']:.1f}x, top 1% of columns hold {r['top1pct_share_of_squared_norm']:.0%}")
    if args.out:
        doc = {"command": "python benchmarks/tools/outliers.py " + " ".join(argv or sys.argv[1:]),
               "model": args.model, "recipe": args.recipe, "calibration_clips": len(ctx.calibration()),
               "per_linear": rows}
        from compress.bench.results import write_json

        write_json(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
