"""Per-part accounting of a loaded model: parameters, dtypes, bytes, measured sparsity and weight source."""

from __future__ import annotations

from collections import Counter

from torch import nn

from .models.salmonn import PARTS, part_of


def part_stats(model) -> dict:
    """Part -> {params, bytes, dtypes, sparsity, lora_params}, counting each storage once (tied weights)."""
    if not isinstance(model, nn.Module) and callable(getattr(model, "part_stats", None)):
        return model.part_stats()  # an exported model (ONNX Runtime): its graphs' weights, per graph
    stats = {p: {"params": 0, "bytes": 0, "dtypes": Counter(), "zeros": 0, "weight_elems": 0, "lora_params": 0}
             for p in PARTS}
    # named_parameters/named_buffers yield each shared tensor once (tied embeddings, BEATs' shared bias table).
    tensors = [(n, t, True) for n, t in model.named_parameters()] + [(n, t, False) for n, t in model.named_buffers()]
    for name, t, is_param in tensors:
        s = stats[part_of(name)]
        n = t.numel()
        s["bytes"] += n * t.element_size()
        s["dtypes"][str(t.dtype).replace("torch.", "")] += n
        if is_param:
            s["params"] += n
        if "lora_" in name:
            s["lora_params"] += n
        elif t.is_floating_point() and t.dim() >= 2 and name.endswith("weight"):
            s["zeros"] += 0 if t.is_meta else int((t == 0).sum())
            s["weight_elems"] += 0 if t.is_meta else n
    out = {}
    for p, s in stats.items():
        if s["params"] == 0 and s["bytes"] == 0:
            continue
        out[p] = {
            "params": s["params"],
            "bytes": s["bytes"],
            "dtype": "/".join(d for d, _ in s["dtypes"].most_common()),
            "sparsity": s["zeros"] / s["weight_elems"] if s["weight_elems"] else None,
            "lora_params": s["lora_params"],
        }
    return out


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def inspect_table(model) -> str:
    stats = part_stats(model)
    report = getattr(model, "load_report", {}) or {}
    rows = [("part", "params", "dtype", "bytes", "sparsity", "lora params", "source")]
    tot_p = tot_b = 0
    for p, s in stats.items():
        src = report.get(p, {}).get("source", "?")
        rows.append((p, f"{s['params']:,}", s["dtype"], _fmt_bytes(s["bytes"]), "n/a" if s["sparsity"] is None else f"{s['sparsity']:.2%}",
                     f"{s['lora_params']:,}", src))
        tot_p += s["params"]
        tot_b += s["bytes"]
    rows.append(("total", f"{tot_p:,}", "", _fmt_bytes(tot_b), "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if "trainable" in report:
        t = report["trainable"]
        lines.append(f"trainable tensors: {t['tensors_loaded']} loaded from {t['source']}; "
                     f"missing {len(t['missing'])}; unexpected {len(t['unexpected'])}"
                     + (f" (e.g. {', '.join(t['unexpected'][:3])})" if t["unexpected"] else ""))
    for p, r in report.items():
        for note in r.get("notes", []) if isinstance(r, dict) else []:
            lines.append(f"note ({p}): {note}")
    return "\n".join(lines)


def total_bytes(model) -> int:
    return sum(s["bytes"] for s in part_stats(model).values())
