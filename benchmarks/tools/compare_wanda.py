"""Wanda with audio calibration (ours) vs llm-compressor's Wanda with text-only calibration, same LLM, same harness.

    .venv/bin/python benchmarks/tools/compare_wanda.py --model demo --data benchmarks/data/test.json \\
        --out benchmarks/results/wanda-compare

Runs: our wanda-50 and magnitude-50 recipes, their comparison-group controls (Wanda over the whole layer,
magnitude per output row: which of "activation-weighted" and "per row" matters) and two calibration
controls of wanda-50 (all 30 s of speech windows in the LLM's calibration inputs, as before the recipe
used `speech_windows: clip`; ASR clips only); llm-compressor Wanda 50% on the model's LLM (LoRA kept
aside, base weights only) calibrated on the text of the calibration split; then benchmarks baseline
and the results with `salmonn-compress bench` settings given here, and writes a table, diffs, and a
paired bootstrap over clips of each result's WER against magnitude-50's and the baseline's (wer-bootstrap.json).
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from method_table import export_plain_llm  # noqa: E402  (the LLM's base weights as a plain HF folder)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="demo")
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "test.json"))
    p.add_argument("--calib", default=os.path.join(ROOT, "benchmarks", "data", "calib.json"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "wanda-compare"))
    p.add_argument("--llmc-python", default=os.path.join(ROOT, ".venv-llmc", "bin", "python"))
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args()

    import torch
    from safetensors.torch import load_file

    from compress.bench.harness import BenchSettings, run_benchmark
    from compress.bench.results import diff, diff_text, markdown_table, summary_row, write_json
    from compress.data.annotations import read_annotations
    from compress.loaders import load_model
    from compress.loaders.artifact import save_artifact
    from compress.recipe import load_recipe, recipe_from_dict
    from compress.runner import run_recipe

    os.makedirs(a.out, exist_ok=True)
    arts = {}
    variants = (("wanda-50", None, {}, {}), ("magnitude-50", None, {}, {}),
                ("wanda-50", "layer", {"scope": "layer"}, {}), ("magnitude-50", "row", {"scope": "row"}, {}),
                ("wanda-50", "all-windows", {}, {"speech_windows": "all"}),
                ("wanda-50", "asr-calib", {}, {"tasks": ["asr"]}))
    for name, suffix, step, calib in variants:
        recipe = load_recipe(os.path.join(ROOT, "recipes", f"{name}.yaml"))
        if suffix:
            doc = recipe.to_dict()
            doc["steps"][0].update(step)
            if calib:
                doc["calibration"] = {**(doc.get("calibration") or {}), **calib}
            doc["name"] = name = f"{name}-{suffix}"
            recipe = recipe_from_dict(doc, name, recipe.base_dir)
        arts[name] = os.path.join(a.out, "artifacts", name)
        run_recipe(recipe, a.model, arts[name], overwrite=True, bench=False)
    # llm-compressor: text-only calibration on the same calibration split's sentences.
    model = load_model(a.model)
    plain_dir, pruned_dir = os.path.join(a.out, "plain-llm"), os.path.join(a.out, "llmc-llm")
    names = export_plain_llm(model, plain_dir)
    texts = [s.text for s in read_annotations(a.calib)][: a.samples]
    with open(os.path.join(a.out, "calib-texts.json"), "w") as f:
        json.dump(texts, f)
    subprocess.run([a.llmc_python, os.path.join(ROOT, "benchmarks", "tools", "peer_llmc.py"), "--method", "wanda", "--model", plain_dir,
                    "--texts", os.path.join(a.out, "calib-texts.json"), "--out", pruned_dir,
                    "--samples", str(a.samples)], check=True)
    pruned = {}
    for f in os.listdir(pruned_dir):
        if f.endswith(".safetensors"):
            pruned.update(load_file(os.path.join(pruned_dir, f)))
    ours = dict(model.llama_model.named_parameters())
    with torch.no_grad():
        n = 0
        for pn, t in pruned.items():
            if pn in names and names[pn] in ours and t.dim() == 2 and "embed" not in pn and "lm_head" not in pn:
                ours[names[pn]].copy_(t)
                n += 1
    print(f"copied {n} pruned matrices from llm-compressor into the model (LoRA adapters kept)")
    arts["llmc-wanda-50-text"] = os.path.join(a.out, "artifacts", "llmc-wanda-50-text")
    save_artifact(model, arts["llmc-wanda-50-text"], overwrite=True, storage="sparse",
                  manifest_extra={"source": {"spec": a.model}, "note": "llm-compressor 0.14 Wanda 50%, text calibration"})
    settings = dict(tasks=("asr", "caption"), limit=a.limit)
    results = []
    for label, spec in [("baseline", a.model)] + list(arts.items()):
        r = run_benchmark(spec, a.data, BenchSettings(**settings))
        path = os.path.join(a.out, f"{label}.json")
        write_json(r, path)
        r["_path"] = path
        results.append(r)
    table = markdown_table([summary_row(r) for r in results])
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table)
    for r in results[1:]:
        with open(r["_path"].replace(".json", ".diff.txt"), "w") as f:
            f.write(diff_text(diff(results[0], r)) + "\n")
    print(table)
    boot = wer_versus(results, ("baseline", "magnitude-50"))
    with open(os.path.join(a.out, "wer-bootstrap.json"), "w") as f:
        json.dump(boot, f, indent=1)
    for line in boot["lines"]:
        print(line)


def wer_versus(results: list, against: tuple) -> dict:
    """Paired bootstrap (over the ASR clips all results share) of each result's WER minus each `against` one's."""
    from compress.metrics.bootstrap import wer_bootstrap

    def asr(r):
        return {s["id"]: s for s in r["samples"] if s["task"] == "asr" and s.get("error") is None}

    by = {os.path.basename(r["_path"])[:-5]: asr(r) for r in results}  # label (file name) -> id -> sample
    ids = sorted(set.intersection(*(set(v) for v in by.values())))
    refs = [by["baseline"][i]["reference"] for i in ids]
    out = {"clips": len(ids), "comparisons": {}, "lines": []}
    for ref_name in against:
        for name, samples in by.items():
            if name == ref_name:
                continue
            b = wer_bootstrap(refs, [by[ref_name][i]["hypothesis"] for i in ids], [samples[i]["hypothesis"] for i in ids])
            out["comparisons"][f"{name} - {ref_name}"] = b
            out["lines"].append(f"WER {name} - {ref_name}: {b['delta']:+.4f} (95% interval {b['low']:+.4f} .. "
                                f"{b['high']:+.4f}, {len(ids)} clips)")
    return out


if __name__ == "__main__":
    main()
