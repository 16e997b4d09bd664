"""`run`: apply a recipe's steps to a model, write the artifact atomically, then benchmark baseline vs result."""

from __future__ import annotations

import copy
import os
import sys
from typing import Optional

from .errors import ConfigError, UserError


class RunContext:
    """What steps may ask of the run: calibration clips, progress bars, errors naming the recipe."""

    def __init__(self, model, recipe, *, progress: bool = True):
        self.model = model
        self.recipe = recipe
        self.base_dir = recipe.base_dir
        self.show = progress
        self._calib = None
        self._teacher = None  # snapshot of the model before the first step, when a step needs a teacher

    def teacher(self, spec: Optional[str] = None):
        """The model as loaded, before the recipe's first step; or the model `spec` names (for distillation)."""
        if spec is not None:
            from .loaders import load_model

            path = os.path.join(self.base_dir, spec) if self.base_dir else spec
            return load_model(path if os.path.exists(path) else spec)
        if self._teacher is None:
            raise ConfigError(f"recipe {self.recipe.name!r}: no teacher snapshot was taken before the steps ran")
        return self._teacher

    def calibration(self) -> list:
        if self.recipe.calibration is None:
            raise ConfigError(f"recipe {self.recipe.name!r} has no calibration section")
        if self._calib is None:
            from .steps.calibration import load_calibration

            self._calib = load_calibration(self.recipe.calibration, self.base_dir)
        return self._calib

    def calibration_forward(self, sample) -> None:
        from .steps.calibration import full_forward

        c = self.recipe.calibration
        full_forward(self.model, sample, c.with_reference, c.inputs, c.speech_windows)

    def error(self, msg: str) -> ConfigError:
        return ConfigError(f"recipe {self.recipe.name!r}: {msg}")

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, disable=not self.show, leave=False)

    def progress(self, iterable, desc: str):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, file=sys.stderr, disable=not self.show, leave=False)


def source_info(spec: str, model) -> dict:
    """Provenance of the input model: preset name and seed, artifact file hashes, or checkpoint hash."""
    from .outputs import sha256_file

    info = {"spec": spec}
    if getattr(model, "manifest", None):
        info["artifact_files"] = {k: v["sha256"] for k, v in model.manifest.get("files", {}).items()}
    rep = getattr(model, "load_report", {}) or {}
    ckpt = rep.get("trainable", {}).get("source")
    if ckpt and os.path.isfile(ckpt):
        info["ckpt_sha256"] = sha256_file(ckpt)
    if model.cfg.extra.get("preset"):
        info["preset"] = model.cfg.extra["preset"]
        info["seed"] = model.cfg.extra.get("seed")
    info["sources"] = {p: r.get("source") for p, r in rep.items() if isinstance(r, dict) and "source" in r}
    return info


def run_recipe(recipe, spec: str, out: str, *, overwrite: bool = False, model_kwargs: Optional[dict] = None,
               progress: bool = True, bench: bool = True, storage: str = "sparse",
               weights_dtype: Optional[str] = "auto", device: Optional[str] = None, log=print) -> dict:
    """Apply `recipe` to the model of `spec` and write the artifact (or the terminal step's export) to `out`; then
    benchmark baseline and result side by side when the recipe has a benchmark section. `device` (cpu, cuda, cuda:N;
    None = the loader's default) holds the model while the steps run and both models while they are benchmarked."""
    from .loaders import load_model
    from .loaders.artifact import model_notes, save_artifact
    from .outputs import check_output
    from .trainloop import process

    out = os.path.abspath(out)
    check_output(out, overwrite)  # before any work: nothing is lost at the end
    if bench and recipe.benchmark is not None and os.path.lexists(out + "-bench") and not overwrite:
        raise UserError(f"benchmark folder {out + '-bench'!r} already exists; choose another --out or pass --overwrite")
    steps = recipe.build_steps()
    for step in steps:
        step.preflight()
    model = load_model(spec, **(model_kwargs or {}), **({"device": device} if device else {}))
    ctx = RunContext(model, recipe, progress=progress)
    if any(getattr(s, "needs_teacher", False) for s in steps):
        ctx._teacher = copy.deepcopy(model).eval()  # the teacher is the model before any step changed it
    reports = []
    notes = model_notes(model)
    extra = lambda: {"recipe": recipe.to_dict(), "recipe_sha256": recipe.sha256(),  # noqa: E731
                     "source": source_info(spec, model), "steps": list(reports), "created_by": "salmonn-compress run",
                     **({"source_notes": notes} if notes else {})}
    rank = process()[0]
    for i, step in enumerate(steps):
        log(f"[{i + 1}/{len(steps)}] {step.name} ...")
        if step.terminal and rank > 0:
            break
        if step.terminal:  # the last step writes the run's output itself (an export) instead of the artifact
            rep = step.write(model, ctx, out, overwrite=overwrite, manifest_extra=extra(), log=log)
        else:
            rep = step(model, ctx)
        reports.append(rep)
        log(f"[{i + 1}/{len(steps)}] {step.name}: {_summary(rep)}")
    if rank > 0:  # under a distributed launcher every process ran the steps; the main one writes
        return {"artifact": None, "steps": reports, "rank": rank}
    if steps[-1].terminal:
        log(f"{steps[-1].config.format} export written to {out}")
    else:
        if weights_dtype == "auto":  # keep the source's storage dtype unless the user cast the model on load
            weights_dtype = None if (model_kwargs or {}).get("dtype") else getattr(model, "stored_dtype", None)
        save_artifact(model, out, overwrite=overwrite, storage=storage, weights_dtype=weights_dtype,
                      manifest_extra=extra())
        from .outputs import read_manifest

        st = read_manifest(out)["storage"]
        log(f"artifact written to {out} ({st['mode']} storage, {st['weights_dtype']} weights: "
            f"{st['stored_tensor_bytes']:,} tensor bytes, dense would be {st['dense_tensor_bytes']:,})")
    result = {"artifact": out, "steps": reports}
    if bench and recipe.benchmark is not None:
        result["bench"] = bench_pair(recipe, spec, out, model_kwargs or {}, device=device, log=log)
    return result


def _summary(rep: dict) -> str:
    keys = ("measured_sparsity", "layers_removed", "layers_after", "pattern_holds", "seconds")
    return ", ".join(f"{k}={rep[k]:.4f}" if isinstance(rep[k], float) else f"{k}={rep[k]}" for k in keys if k in rep)


def bench_pair(recipe, spec: str, artifact: str, model_kwargs: dict, device: Optional[str] = None,
               log=print) -> dict:
    """Benchmark the baseline and the written artifact with the same settings (and on the same `device`); write
    results and the diff."""
    from tqdm import tqdm

    from .bench.harness import BenchSettings, run_benchmark
    from .bench.results import diff, diff_text, markdown_table, summary_row, write_json
    from .fileio import write_text
    from .steps.calibration import resolve_data_path

    b = recipe.benchmark
    data = resolve_data_path(b.data, recipe.base_dir)
    outdir = artifact.rstrip("/") + "-bench"
    os.makedirs(outdir, exist_ok=True)
    paths = {}
    results = {}
    for label, s in (("baseline", spec), ("result", artifact)):
        settings = BenchSettings(tasks=tuple(b.tasks), num_beams=b.num_beams, max_new_tokens=b.max_new_tokens,
                                 limit=b.limit, latency_tokens=b.latency_tokens, latency_warmup=b.warmup,
                                 latency_repeats=b.repeats, memory=b.memory)
        kw = dict(model_kwargs) if label == "baseline" else {}
        if device:
            kw["device"] = device
        r = run_benchmark(s, data, settings, model_kwargs=kw,
                          progress_factory=lambda n, label=label: tqdm(total=n, desc=f"bench {label}",
                                                                        file=sys.stderr, leave=False))
        paths[label] = os.path.join(outdir, f"{label}.json")
        write_json(r, paths[label])
        r["_path"] = paths[label]
        results[label] = r
    d = diff(results["baseline"], results["result"])
    write_json(d, os.path.join(outdir, "diff.json"))
    text = diff_text(d)
    write_text(os.path.join(outdir, "diff.txt"), text + "\n")
    table = markdown_table([summary_row(results["baseline"]), summary_row(results["result"])])
    write_text(os.path.join(outdir, "table.md"), table)
    log(table)
    log(text)
    return {"dir": outdir, **paths}
