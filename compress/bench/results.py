"""Result files: atomic writing, version checks, Markdown/CSV tables, the diff, and the Pareto plot."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Optional

from ..errors import UserError
from .harness import SCHEMA, SCHEMA_VERSION

MIB = 1024 * 1024


def write_json(obj: dict, path: str) -> None:
    """A result file, written atomically (compress.fileio)."""
    from ..fileio import write_json as _write

    _write(path, obj)


def load_result(path: str) -> dict:
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read result {path!r}: {e}") from None
    if not isinstance(r, dict) or r.get("schema") != SCHEMA:
        raise UserError(f"{path!r} is not a salmonn-compress result (schema {SCHEMA!r})")
    r["_path"] = path
    return r


def _metric(r: dict, task: str, name: str):
    return r.get("tasks", {}).get(task, {}).get("metrics", {}).get(name, {}).get("value")


def _eff(r: dict, *keys):
    cur = r.get("efficiency", {})
    for k in keys:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


def _group(r: dict, name: str):
    g = r.get("tasks", {}).get("asr", {}).get("by_voice_group", {}).get(name)
    return g["value"] if g else None


def summary_row(r: dict) -> dict:
    """One flat row per result; units in the column names."""
    parts = r["model"]["parts"]
    mem = _eff(r, "memory", "peak_rss_mib")
    return {
        "result": os.path.splitext(os.path.basename(r.get("_path", "result")))[0],
        "model": r["model"]["spec"],
        "wer": _metric(r, "asr", "wer"),
        "cider_d": _metric(r, "caption", "cider_d"),
        "spider": _metric(r, "caption", "spider"),
        "wer_seen": _group(r, "seen_voices"),
        "wer_heldout": _group(r, "heldout_voice"),
        "ttft_ms_p50": _eff(r, "latency", "ttft_ms", "p50"),
        "front_ms_p50": _eff(r, "latency", "front_ms", "p50"),  # TTFT = speech front + prefill
        "prefill_ms_p50": _eff(r, "latency", "prefill_ms", "p50"),
        "tpot_ms_p50": _eff(r, "latency", "tpot_ms", "p50"),
        "tokens_per_s_p50": _eff(r, "latency", "tokens_per_s", "p50"),
        "peak_rss_mib": mem,
        "model_rss_mib": _eff(r, "memory", "delta_peak_rss_mib"),  # peak minus libraries-loaded baseline
        "model_mib": sum(p["bytes"] for p in parts.values()) / MIB,
        "llm_mib": parts.get("llm", {}).get("bytes", 0) / MIB,
        "artifact_mib": (r["model"].get("artifact_bytes") or 0) / MIB or None,  # on disk; None: not an artifact
        "tpot_over_bound": _eff(r, "decode_bound", "tpot_over_bound"),
        "failures": r["summary"]["failures"],
    }


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: list) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def check_comparable(a: dict, b: dict) -> None:
    if a.get("schema_version") != b.get("schema_version"):
        raise UserError(f"cannot compare results of schema versions {a.get('schema_version')} and "
                        f"{b.get('schema_version')}; re-run bench with the same salmonn-compress")
    if a.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"results use schema version {a.get('schema_version')}, this tool reads {SCHEMA_VERSION}")
    for task in set(a["tasks"]) & set(b["tasks"]):
        va, vb = a["tasks"][task].get("version"), b["tasks"][task].get("version")
        if va != vb:
            raise UserError(f"task {task!r} has version {va} in the baseline and {vb} in the other result; "
                            "their metrics are not comparable")
    if a["data"].get("sha256") != b["data"].get("sha256"):
        raise UserError("the two results were measured on different data files (sha256 differs)")


def _word_edits(a: str, b: str) -> int:
    x, y = (a or "").split(), (b or "").split()
    prev = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        cur = [i] + [0] * len(y)
        for j, wy in enumerate(y, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wx != wy))
        prev = cur
    return prev[-1]


def diff(base: dict, other: dict, top: int = 5) -> dict:
    """Metric deltas (better/worse), recovery, efficiency ratios, per-part changes, most-changed samples."""
    check_comparable(base, other)
    metrics = []
    for task in sorted(set(base["tasks"]) & set(other["tasks"])):
        mb, mo = base["tasks"][task]["metrics"], other["tasks"][task]["metrics"]
        for name in sorted(set(mb) & set(mo)):
            b, o, hib = mb[name]["value"], mo[name]["value"], mb[name]["higher_is_better"]
            delta = o - b
            verdict = "same" if delta == 0 else ("better" if (delta > 0) == hib else "worse")
            # Recovery: the share of baseline quality kept (for error rates: baseline / other).
            if hib:
                rec = o / b if b else None
            else:
                rec = b / o if o else (1.0 if b == 0 else None)
            metrics.append({"task": task, "metric": name, "baseline": b, "other": o, "delta": delta,
                            "verdict": verdict, "higher_is_better": hib, "recovery": rec})
    eff = []
    for label, keys in (("ttft_ms_p50", ("latency", "ttft_ms", "p50")),
                        ("front_ms_p50", ("latency", "front_ms", "p50")),
                        ("prefill_ms_p50", ("latency", "prefill_ms", "p50")), ("tpot_ms_p50", ("latency", "tpot_ms", "p50")),
                        ("e2e_ms_p50", ("latency", "e2e_ms", "p50")), ("load_s", ("memory", "phases", "load", "seconds")),
                        ("peak_rss_mib", ("memory", "peak_rss_mib"))):
        b, o = _eff(base, *keys), _eff(other, *keys)
        eff.append({"measure": label, "baseline": b, "other": o,
                    "ratio": (o / b) if (b and o is not None) else None, "higher_is_better": False})
    parts = []
    for p in sorted(set(base["model"]["parts"]) | set(other["model"]["parts"])):
        pb, po = base["model"]["parts"].get(p, {}), other["model"]["parts"].get(p, {})
        parts.append({"part": p, "baseline_bytes": pb.get("bytes"), "other_bytes": po.get("bytes"),
                      "bytes_ratio": (po["bytes"] / pb["bytes"]) if pb.get("bytes") and "bytes" in po else None,
                      "baseline_sparsity": pb.get("sparsity"), "other_sparsity": po.get("sparsity")})
    ob = {(s["task"], s["id"]): s for s in other["samples"]}
    changed = []
    for s in base["samples"]:
        o = ob.get((s["task"], s["id"]))
        if o is None or s["hypothesis"] is None or o["hypothesis"] is None:
            continue
        d = _word_edits(s["hypothesis"], o["hypothesis"])
        if d:
            changed.append({"id": s["id"], "task": s["task"], "reference": s["reference"],
                            "baseline": s["hypothesis"], "other": o["hypothesis"], "word_edits": d})
    changed.sort(key=lambda c: -c["word_edits"])
    return {"baseline": base.get("_path"), "other": other.get("_path"), "metrics": metrics, "efficiency": eff,
            "parts": parts, "changed_samples": changed[:top], "n_changed": len(changed)}


def diff_text(d: dict) -> str:
    out = [f"baseline: {d['baseline']}", f"other:    {d['other']}", "", "accuracy"]
    for m in d["metrics"]:
        rec = "n/a" if m["recovery"] is None else f"{m['recovery']:.1%}"
        out.append(f"  {m['task']:8s} {m['metric']:20s} {_fmt(m['baseline']):>10s} -> {_fmt(m['other']):>10s}  "
                   f"delta {m['delta']:+.4g}  {m['verdict']:6s} recovery {rec}")
    out.append("efficiency (other / baseline; lower is better)")
    for e in d["efficiency"]:
        ratio = "n/a" if e["ratio"] is None else f"x{e['ratio']:.3f}"
        out.append(f"  {e['measure']:14s} {_fmt(e['baseline']):>10s} -> {_fmt(e['other']):>10s}  {ratio}")
    out.append("parts (bytes, sparsity)")
    for p in d["parts"]:
        ratio = "n/a" if p["bytes_ratio"] is None else f"x{p['bytes_ratio']:.3f}"
        out.append(f"  {p['part']:14s} {_fmt(p['baseline_bytes']):>12s} -> {_fmt(p['other_bytes']):>12s} {ratio}  "
                   f"sparsity {_fmt(p['baseline_sparsity'])} -> {_fmt(p['other_sparsity'])}")
    out.append(f"samples whose output changed: {d['n_changed']}; most changed:")
    for c in d["changed_samples"]:
        out.append(f"  [{c['task']}] {c['id']} ({c['word_edits']} word edits)\n    ref:   {c['reference']}\n"
                   f"    base:  {c['baseline']}\n    other: {c['other']}")
    return "\n".join(out)


def pareto_plot(results: list, path: str, accuracy: Optional[str] = None) -> str:
    """Accuracy against TPOT and against peak memory, one point per result, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [summary_row(r) for r in results]
    acc = accuracy or ("wer" if any(r["wer"] is not None for r in rows) else "cider_d")
    lower_better = acc == "wer"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, xkey, xlabel in ((axes[0], "tpot_ms_p50", "TPOT p50 (ms)"), (axes[1], "peak_rss_mib", "peak memory (MiB)")):
        pts = [(r[xkey], r[acc], r["result"]) for r in rows if r[xkey] is not None and r[acc] is not None]
        for x, y, name in pts:
            ax.scatter(x, y)
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best = [], None
        for x, y, _ in sorted(pts):
            if best is None or (y < best if lower_better else y > best):
                front.append((x, y))
                best = y
        if len(front) > 1:
            ax.plot(*zip(*front), "--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{acc} ({'lower' if lower_better else 'higher'} is better)")
        ax.grid(alpha=0.3)
    fig.suptitle("salmonn-compress: accuracy vs cost (dashed: Pareto front)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
