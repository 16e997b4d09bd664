"""The README's main job: benchmark a baseline, run a default set of recipes on it, and compare them all."""

from __future__ import annotations

import os
import sys
import time

DEFAULT_RECIPES = ("magnitude-50", "wanda-50", "wanda-2of4", "layer-drop-25")


def find_recipe(name: str) -> str:
    from .errors import UserError
    from .recipe import shipped_recipes

    if os.path.isfile(name):
        return name
    by_name = {os.path.splitext(os.path.basename(p))[0]: p for p in shipped_recipes()}
    if name not in by_name:
        raise UserError(f"unknown recipe {name!r}; shipped: {', '.join(sorted(by_name))}")
    return by_name[name]


def run_demo(model: str, data: str, recipes: list, out: str, settings, log=print) -> dict:
    from tqdm import tqdm

    from .bench.harness import run_benchmark
    from .bench.results import csv_table, diff, diff_text, markdown_table, pareto_plot, summary_row, write_json
    from .fileio import write_text
    from .recipe import load_recipe
    from .runner import run_recipe

    paths = [find_recipe(r) for r in recipes]
    loaded = [load_recipe(p) for p in paths]  # all validated before any work starts
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()

    def bench(spec: str, label: str) -> dict:
        bar = lambda n: tqdm(total=n, desc=f"bench {label}", unit="clip", file=sys.stderr, leave=False)  # noqa: E731
        r = run_benchmark(spec, data, settings, progress_factory=bar)
        path = os.path.join(out, f"{label}.json")
        write_json(r, path)
        r["_path"] = path
        return r

    log(f"baseline: {model}")
    results = [bench(model, "baseline")]
    for recipe in loaded:
        art = os.path.join(out, "artifacts", recipe.name)
        log(f"recipe {recipe.name}: {recipe.description}")
        run_recipe(recipe, model, art, overwrite=True, bench=False, log=lambda *a: None)
        results.append(bench(art, recipe.name))
    rows = [summary_row(r) for r in results]
    table = markdown_table(rows)
    notes = list(dict.fromkeys(n for r in results for n in r["model"].get("notes", [])))
    if notes:
        table += "\n" + "".join(f"Note: {n}.\n" for n in notes)
    write_text(os.path.join(out, "table.md"), table)
    write_text(os.path.join(out, "table.csv"), csv_table(rows))
    pareto_plot(results, os.path.join(out, "pareto.png"))
    for r in results[1:]:
        d = diff(results[0], r)
        name = os.path.splitext(os.path.basename(r["_path"]))[0]
        write_json(d, os.path.join(out, f"diff-{name}.json"))
        write_text(os.path.join(out, f"diff-{name}.txt"), diff_text(d) + "\n")
    log(table)
    log(f"tables, Pareto plot and diffs in {out} ({time.perf_counter() - t0:.0f} s)")
    return {"results": [r["_path"] for r in results], "table": table}
