"""The benchmark run: accuracy over an annotation file, then latency, peak memory and the decode bound, as one result."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..errors import AudioError, UserError, choices

SCHEMA = "salmonn-compress.result"
SCHEMA_VERSION = 1
# Bump a task's version when its data handling, prompt or metric definition changes.
TASK_VERSIONS = {"asr": 1, "caption": 1}


@dataclass
class BenchSettings:
    tasks: tuple = ("asr", "caption")
    num_beams: Optional[int] = None  # None: the model's generate config
    max_new_tokens: Optional[int] = None
    batch_size: int = 1
    limit: Optional[int] = None  # first N samples per task
    latency_tokens: int = 32
    latency_warmup: int = 2
    latency_repeats: int = 5
    threads: Optional[int] = None
    memory: bool = True  # peak RSS of a clean process (costs one more model load)
    bandwidth_mib: int = 1024  # well above any last-level cache
    corenlp_dir: Optional[str] = None
    hackathon: bool = False
    dtype: Optional[str] = None
    extra: dict = field(default_factory=dict)


def git_revision() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device: str) -> dict:
    import torch

    from ..outputs import package_versions

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": package_versions(),
        "git_revision": git_revision(),
    }


def _batches(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def run_accuracy(model, samples: list, settings: BenchSettings, progress=None) -> tuple:
    """Generate for every sample; a clip that cannot be read is a per-sample error, the run goes on."""
    from ..audio import load_audio

    records = []
    for task in settings.tasks:
        todo = [s for s in samples if s.task == task][: settings.limit]
        for batch in _batches(todo, settings.batch_size):
            waves, ok = [], []
            for s in batch:
                try:
                    waves.append(load_audio(s.path))
                    ok.append(s)
                except AudioError as e:
                    records.append(_record(s, None, str(e)))
            if waves:
                try:
                    outs = model.generate(waves, task, num_beams=settings.num_beams,
                                          max_new_tokens=settings.max_new_tokens)
                except UserError as e:
                    outs = None
                    for s in ok:
                        records.append(_record(s, None, str(e)))
                for s, o in zip(ok, outs or []):
                    records.append(_record(s, o.text, None))
            if progress is not None:
                progress.update(len(batch))
    return records


def _record(s, hyp, error) -> dict:
    r = {"id": s.id, "task": s.task, "path": s.path, "reference": s.text,
         "references": list(s.references) or [s.text], "hypothesis": hyp, "error": error}
    if s.extra:
        r["extra"] = dict(s.extra)
    return r


def score(records: list, settings: BenchSettings) -> dict:
    """Per-task metrics with higher_is_better and versions; failures counted, never silently dropped."""
    from ..metrics import METRICS, MetricUnavailable, cider_d, hackathon_spider, sentence_similarity, spice, wer

    def entry(name, value, **kw):
        info = METRICS[name]
        return {"value": value, "higher_is_better": info.higher_is_better, "version": info.version, **kw}

    tasks = {}
    for task in settings.tasks:
        recs = [r for r in records if r["task"] == task]
        good = [r for r in recs if r["error"] is None]
        out = {"version": TASK_VERSIONS[task], "n": len(recs), "failures": len(recs) - len(good), "metrics": {},
               "unavailable": {}}
        tasks[task] = out
        if not good:
            out["unavailable"]["all"] = "no sample of this task produced output"
            continue
        hyps = [r["hypothesis"] for r in good]
        if task == "asr":
            out["metrics"]["wer"] = entry("wer", wer([r["reference"] for r in good], hyps))
            groups = sorted({r.get("extra", {}).get("voice") for r in good} - {None})
            if groups:
                out["by_voice"] = {
                    g: entry("wer", wer([r["reference"] for r in good if r.get("extra", {}).get("voice") == g],
                                        [r["hypothesis"] for r in good if r.get("extra", {}).get("voice") == g]))
                    for g in groups}
            held = [r for r in good if r.get("extra", {}).get("heldout_voice") is not None]
            if held:  # the dataset generator marks the voice kept out of training
                out["by_voice_group"] = {
                    name: entry("wer", wer([r["reference"] for r in rs], [r["hypothesis"] for r in rs]), n=len(rs))
                    for name, rs in (("seen_voices", [r for r in held if not r["extra"]["heldout_voice"]]),
                                     ("heldout_voice", [r for r in held if r["extra"]["heldout_voice"]])) if rs}
        else:
            refs = [r["references"] for r in good]
            c, per = cider_d(hyps, refs)
            out["metrics"]["cider_d"] = entry("cider_d", c)
            for r, p in zip(good, per):
                r["cider_d"] = p
            try:
                sp, _ = spice(hyps, refs, corenlp_dir=settings.corenlp_dir)
                out["metrics"]["spice"] = entry("spice", sp)
                out["metrics"]["spider"] = entry("spider", (c + sp) / 2)
            except MetricUnavailable as e:
                out["unavailable"]["spice"] = out["unavailable"]["spider"] = e.reason
            try:
                sim, _ = sentence_similarity(hyps, refs)
                out["metrics"]["sentence_similarity"] = entry("sentence_similarity", sim)
            except MetricUnavailable as e:
                out["unavailable"]["sentence_similarity"] = e.reason
            if settings.hackathon:
                hs, _ = hackathon_spider(hyps, refs)
                out["metrics"]["hackathon_spider"] = entry(
                    "hackathon_spider", hs, label="hackathon evaluator's 'SPIDEr' = CIDEr-D x 100, first reference only")
    return tasks


def artifact_bytes(spec: str) -> Optional[int]:
    """Bytes on disk of the model's artifact directory (None for presets and official checkpoints)."""
    from ..outputs import dir_bytes
    from ..loaders.spec import DEMO_DIR

    path = DEMO_DIR if spec == "demo" else spec
    return dir_bytes(path) if os.path.isdir(path) else None


def _first_clip(records: list) -> Optional[dict]:
    return next((r for r in records if r["error"] is None), None)


def run_efficiency(model, spec: str, records: list, settings: BenchSettings, model_kwargs: dict) -> dict:
    """TTFT/TPOT on one real clip, peak memory in a clean process, bandwidth and the decode bound."""
    from ..audio import load_audio
    from ..inspect_model import part_stats
    from .bandwidth import combine_probes, decode_bound, measure_bandwidth
    from .latency import hackathon_latency, measure_latency

    clip = _first_clip(records)
    out: dict = {"unavailable": {}}
    if clip is None:
        out["unavailable"]["latency"] = "no readable clip"
        return out
    audio = load_audio(clip["path"])
    dev = str(model.device)

    def probe() -> dict:
        return measure_bandwidth(settings.bandwidth_mib, device="cuda" if dev.startswith("cuda") else "cpu")

    before = probe()  # the bandwidth probed just before and just after the timing that TPOT comes from
    lat = measure_latency(model, audio, clip["task"], n_tokens=settings.latency_tokens,
                          warmup=settings.latency_warmup, repeats=settings.latency_repeats)
    bw = combine_probes([before, probe()])
    out["latency"] = lat.to_dict()
    out["latency"]["config"]["clip"] = clip["id"]
    if settings.hackathon:
        out["hackathon_latency"] = hackathon_latency(model, audio, clip["task"],
                                                     n_tokens=settings.latency_tokens).to_dict()
    out["bandwidth"] = bw
    llm_bytes = part_stats(model)["llm"]["bytes"]
    out["decode_bound"] = decode_bound(llm_bytes, bw["bandwidth_gbs"], out["latency"]["tpot_ms"]["p50"],
                                       readings_gbs=bw["readings_gbs"])
    if settings.memory:
        from .memory import run_in_clean_process

        mem = run_in_clean_process("compress.bench.workload:memory_workload", {
            "spec": spec, "audio_path": clip["path"], "task": clip["task"], "n_tokens": settings.latency_tokens,
            "threads": settings.threads, **model_kwargs})
        out["memory"] = {k: v for k, v in mem.items() if k != "result"}
        out["memory"]["phases"] = (mem.get("result") or {}).get("phases")  # time and peak RSS of each phase
        out["memory"]["method"] = ("peak RSS (VmHWM) of a clean process that loads the model and generates; "
                                   "baseline_rss_mib = interpreter + torch/transformers/peft imported, before the model")
    else:
        out["unavailable"]["memory"] = "disabled (--no-memory)"
    return out


def run_benchmark(spec: str, data: str, settings: BenchSettings, *, model_kwargs: Optional[dict] = None,
                  progress_factory=None) -> dict:
    import torch

    from ..data.annotations import read_annotations
    from ..inspect_model import part_stats
    from ..loaders import load_model
    from ..models.config import resolve_task

    bad = [t for t in settings.tasks if t not in TASK_VERSIONS]
    if bad:
        raise UserError(f"unknown task(s) {bad}; valid: {choices(TASK_VERSIONS)}")
    settings.tasks = tuple(resolve_task(t) for t in settings.tasks)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    samples = read_annotations(data, check_files=False)
    if not any(s.task in settings.tasks for s in samples):
        raise UserError(f"{data}: no samples for task(s) {list(settings.tasks)}")
    model_kwargs = dict(model_kwargs or {}, dtype=settings.dtype)
    model = load_model(spec, **model_kwargs)
    total = sum(min(len([s for s in samples if s.task == t]), settings.limit or 10**9) for t in settings.tasks)
    bar = progress_factory(total) if progress_factory else None
    records = run_accuracy(model, samples, settings, bar)
    if bar is not None:
        bar.close()
    tasks = score(records, settings)
    eff = run_efficiency(model, spec, records, settings, model_kwargs)
    from ..loaders.artifact import model_notes
    from ..outputs import sha256_file

    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "mode": "hackathon-compatible (extra fields labelled hackathon_*)" if settings.hackathon else "standard",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"spec": spec, "parts": part_stats(model), "load_report": getattr(model, "load_report", {}),
                  "manifest_created": getattr(model, "manifest", {}).get("created"),
                  "artifact_bytes": artifact_bytes(spec), "notes": model_notes(model)},
        "data": {"path": os.path.abspath(data), "sha256": sha256_file(data), "samples": len(records)},
        "settings": asdict(settings),
        "environment": environment(str(model.device)),
        "tasks": tasks,
        "efficiency": eff,
        "summary": {"samples": len(records), "failures": sum(1 for r in records if r["error"])},
        "samples": records,
    }
