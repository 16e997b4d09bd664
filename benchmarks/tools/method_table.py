"""Compression methods on the embedded demo's real LLM: ours (calibrated on audio through the whole SALMONN path)
beside the peers (llm-compressor's Wanda / SparseGPT and GPTQModel's GPTQ, each with its text calibration), all
benched on the same clips, in one table with paired-bootstrap intervals and each method's calibration cost.

    .venv/bin/python benchmarks/tools/method_table.py --out benchmarks/results/methods-v2 [--limit 100]
        [--methods wanda-50,llmc-wanda-50,...] [--data benchmarks/data/test.json]

- Ours: `salmonn-compress run RECIPE --no-bench` in a child process (recipes/NAME.yaml).
- Peers: the SALMONN's LLM base weights (LoRA kept aside) are written once as a plain HF folder; the peer runs in
  its own virtual environment (bash benchmarks/peers_env.sh) on the calibration split's sentences (text only);
  its weights are copied back under the same LoRA and saved as an artifact. GPTQModel's 4/3-bit weights come back
  as the float weights its own kernel computes (see peer_gptqmodel.py): accuracy is the quantized model's, the
  artifact's size and speed are not (the table says so). A peer whose environment is missing is skipped, noted.
- Cost: wall time and peak RSS (`os.wait4` on the child: that process alone) of the method's run, model load
  included; for the peers, their child only (the export of the plain LLM and the copy back are not counted).
- Every method and the baseline are benched with the same settings; the table gives WER and CIDEr-D with paired
  bootstrap intervals (over the shared clips) against the baseline and against the method's peer. Rows benched
  in other calls ran on other days and loads: the "benched" column says when, and TPOT compares only between rows
  benched together.
Resumable: a method whose bench JSON exists in --out is not run again (delete the file to rerun it). `--methods`
picks what to run; the table (methods.md / methods.json) holds every method benched in --out so far, in one order;
summary.md is its short form for the README (each of our methods beside its peer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

RECIPES = ("magnitude-50", "wanda-50", "owl-wanda-50", "sparsegpt-50", "wanda-2of4", "sparsegpt-2of4",
           "rtn-4bit-g128", "rtn-4bit-g32-offset", "gptq-4bit-g128", "gptq-4bit-g64", "gptq-4bit-g128-textcalib",
           "gptq-3bit-g128", "layer-drop-25", "layer-drop-25-distill", "layer-drop-30", "layer-drop-30-distill")
PEERS = {  # label -> (environment, arguments of its tool)
    "llmc-wanda-50": ("llmc", ["--method", "wanda", "--mask", "0:0"]),
    "llmc-sparsegpt-50": ("llmc", ["--method", "sparsegpt", "--mask", "0:0"]),
    "llmc-owl-wanda-50": ("llmc", ["--method", "wanda", "--mask", "0:0", "--owl", "5,0.08"]),
    # OWL's control: the same modifier targets (decoder layers) with one sparsity for all
    "llmc-wanda-50-bylayer": ("llmc", ["--method", "wanda", "--mask", "0:0", "--targets", "LlamaDecoderLayer"]),
    "llmc-wanda-2of4": ("llmc", ["--method", "wanda", "--mask", "2:4"]),
    "llmc-sparsegpt-2of4": ("llmc", ["--method", "sparsegpt", "--mask", "2:4"]),
    # SmolLM2's attention and MLP inputs are 576 wide: GPTQModel's CPU int4pack kernel needs K divisible by the
    # group, so g128 (and 3-bit, which int4pack cannot hold) reads its quantized weights back through GPTQModel's
    # plain PyTorch kernel
    "gptqmodel-4bit-g128": ("gptqmodel", ["--bits", "4", "--group-size", "128", "--backend", "gptq_torch"]),
    "gptqmodel-4bit-g64": ("gptqmodel", ["--bits", "4", "--group-size", "64"]),
    "gptqmodel-3bit-g128": ("gptqmodel", ["--bits", "3", "--group-size", "128", "--backend", "gptq_torch"]),
}
PEER_TOOL = {"llmc": "peer_llmc.py", "gptqmodel": "peer_gptqmodel.py"}
PEER_ENV = {"llmc": ".venv-llmc", "gptqmodel": ".venv-gptqmodel"}
VERSUS = {  # ours -> the methods it is compared with, beside the baseline
    "wanda-50": ["llmc-wanda-50", "magnitude-50"], "owl-wanda-50": ["llmc-owl-wanda-50", "wanda-50"],
    "llmc-owl-wanda-50": ["llmc-wanda-50-bylayer"], "llmc-wanda-50-bylayer": ["llmc-wanda-50"],
    "sparsegpt-50": ["llmc-sparsegpt-50", "wanda-50"],
    "wanda-2of4": ["llmc-wanda-2of4"], "sparsegpt-2of4": ["llmc-sparsegpt-2of4", "wanda-2of4"],
    "gptq-4bit-g128": ["gptqmodel-4bit-g128", "rtn-4bit-g128", "gptq-4bit-g128-textcalib"],
    "gptq-4bit-g64": ["gptqmodel-4bit-g64", "gptq-4bit-g128"], "gptq-3bit-g128": ["gptqmodel-3bit-g128"],
    "rtn-4bit-g32-offset": ["gptq-4bit-g128", "rtn-4bit-g128"],
    "layer-drop-25-distill": ["layer-drop-25"], "layer-drop-30-distill": ["layer-drop-30", "layer-drop-25-distill"],
}


# A small interpreter runs the command and reports its rusage: a child forked straight from this (large) process
# would count this process's pages, copied at fork time, in its own peak RSS.
_WRAP = ("import json, os, subprocess, sys\n"
         "p = subprocess.Popen(sys.argv[2:])\n"
         "_, status, usage = os.wait4(p.pid, 0)\n"
         "json.dump({'rc': os.waitstatus_to_exitcode(status), 'maxrss_kib': usage.ru_maxrss}, open(sys.argv[1], 'w'))\n")


def timed(cmd: list, log_path: str, env: dict | None = None, cwd: str | None = None) -> dict:
    """Run `cmd` (stdout and stderr to `log_path`); its wall time and its own peak RSS (wait4 in a small parent)."""
    report = os.path.abspath(log_path + ".rusage.json")
    t = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run([sys.executable, "-c", _WRAP, report] + cmd, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, **(env or {})}, cwd=cwd)
    seconds = round(time.perf_counter() - t, 1)
    with open(report) as f:
        r = json.load(f)
    return {"seconds": seconds, "peak_rss_mib": round(r["maxrss_kib"] / 1024, 1), "returncode": r["rc"],
            "log": log_path}


def export_plain_llm(model, out_dir: str) -> dict:
    """The LLM's base weights without the LoRA wrapper as a plain HF folder; returns plain name -> our name."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(model.cfg.llm)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    ours = dict(model.llama_model.named_parameters())
    names = {}
    for pn in plain.state_dict():
        on = "base_model.model." + pn
        wrapped = on.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        names[pn] = on if on in ours else wrapped
    plain.load_state_dict({pn: ours[on].detach() for pn, on in names.items() if on in ours}, strict=False)
    plain.save_pretrained(out_dir)
    model.tokenizer.save_pretrained(out_dir)
    return names


def copy_back(model, names: dict, weights: dict) -> int:
    """Copy the peer's Linear weights (plain names) into the SALMONN's LLM; returns how many."""
    import torch

    ours = dict(model.llama_model.named_parameters())
    n = 0
    with torch.no_grad():
        for pn, t in weights.items():
            on = names.get(pn)
            if on in ours and t.dim() == 2 and "embed" not in pn and "lm_head" not in pn:
                if tuple(t.shape) != tuple(ours[on].shape):
                    raise RuntimeError(f"peer weight {pn} has shape {tuple(t.shape)}, ours {tuple(ours[on].shape)}")
                ours[on].copy_(t.to(ours[on].dtype))
                n += 1
    return n


def run_peer(label: str, a, plain: dict) -> dict:
    from safetensors.torch import load_file

    from compress.loaders import load_model
    from compress.loaders.artifact import save_artifact

    env_name, args = PEERS[label]
    python = os.path.join(ROOT, PEER_ENV[env_name], "bin", "python")
    if not os.path.isfile(python):
        return {"skipped": f"{PEER_ENV[env_name]} missing: bash benchmarks/peers_env.sh {env_name}"}
    if "names" not in plain:
        model = load_model(a.model)
        plain["dir"] = os.path.join(a.out, "peers", "plain-llm")
        plain["names"] = export_plain_llm(model, plain["dir"])
        plain["texts"] = os.path.join(a.out, "peers", "calib-texts.json")
        from compress.data.annotations import read_annotations

        with open(plain["texts"], "w") as f:
            json.dump([s.text for s in read_annotations(a.calib)][: a.samples], f)
    out = os.path.join(a.out, "peers", label)
    cost = timed([python, os.path.join(ROOT, "benchmarks", "tools", PEER_TOOL[env_name]), "--model", plain["dir"],
                  "--texts", plain["texts"], "--out", out, "--samples", str(a.samples)] + args,
                 os.path.join(a.out, f"{label}.run.log"), env={"GPTQMODEL_CPU_WORKERS": "2"},
                 cwd=os.path.join(a.out, "peers"))  # GPTQModel writes a logs/ folder where it runs
    if cost["returncode"] != 0:
        return {"failed": f"exit {cost['returncode']}, see {cost['log']}", "cost": cost}
    weights = {}
    files = [os.path.join(out, "dequantized.safetensors")] if env_name == "gptqmodel" else [
        os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith(".safetensors")]
    for f in files:
        weights.update(load_file(f))
    model = load_model(a.model)
    copied = copy_back(model, plain["names"], weights)
    note = (f"{label}: the peer's weights under this model's LoRA; text calibration ({a.samples} sentences)"
            + ("; stored as the float weights GPTQModel's kernel computes (accuracy of the quantized model, not "
               "its size or speed)" if env_name == "gptqmodel" else ""))
    art = os.path.join(a.out, "artifacts", label)
    save_artifact(model, art, overwrite=True, storage="dense" if env_name == "gptqmodel" else "sparse",
                  manifest_extra={"peer": label, "note": note, "copied_matrices": copied})
    return {"artifact": art, "cost": cost, "copied_matrices": copied, "note": note}


def run_ours(label: str, a) -> dict:
    art = os.path.join(a.out, "artifacts", label)
    cost = timed([os.path.join(ROOT, ".venv", "bin", "salmonn-compress"), "run",
                  os.path.join(ROOT, "recipes", f"{label}.yaml"), "--model", a.model, "--out", art, "--overwrite",
                  "--no-bench"], os.path.join(a.out, f"{label}.run.log"))
    if cost["returncode"] != 0:
        return {"failed": f"exit {cost['returncode']}, see {cost['log']}", "cost": cost}
    return {"artifact": art, "cost": cost}


def bootstrap(results: dict, a_label: str, b_label: str, cider_resamples: int) -> dict:
    """Paired bootstrap of b - a over the clips both scored: WER (ASR clips) and CIDEr-D (caption clips)."""
    from compress.metrics import cider_d
    from compress.metrics.bootstrap import paired_bootstrap, wer_bootstrap

    out = {}
    by = {k: {(s["task"], s["id"]): s for s in results[k]["samples"] if s.get("error") is None}
          for k in (a_label, b_label)}
    for task in ("asr", "caption"):
        ids = sorted(i for i in by[a_label] if i[0] == task and i in by[b_label])
        if not ids:
            continue
        ha = [by[a_label][i]["hypothesis"] for i in ids]
        hb = [by[b_label][i]["hypothesis"] for i in ids]
        if task == "asr":
            out["wer"] = {**wer_bootstrap([by[a_label][i]["reference"] for i in ids], ha, hb), "clips": len(ids)}
        else:
            refs = [by[a_label][i]["references"] for i in ids]
            out["cider_d"] = {**paired_bootstrap(lambda c, r: cider_d(c, r)[0], ha, hb, refs,
                                                 resamples=cider_resamples), "clips": len(ids)}
    return out


def _sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _ci(b: dict | None, digits: int = 3) -> str:
    if not b:
        return "n/a"
    return f"{b['delta']:+.{digits}f} [{b['low']:+.{digits}f}, {b['high']:+.{digits}f}]"


def table(rows: list) -> str:
    head = ("| method | WER | ΔWER vs baseline [95% CI] | CIDEr-D | ΔCIDEr-D vs baseline | vs peer / control "
            "(ΔWER) | LLM MiB | TPOT ms | benched (UTC) | calib s | calib peak MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        vs = "; ".join(f"{k}: {_ci(v.get('wer'))}" for k, v in r["versus"].items()) or ""
        cost = r.get("cost") or {}
        lines.append("| " + " | ".join([
            r["label"], _f(r["wer"]), _ci(r["vs_baseline"].get("wer")), _f(r["cider_d"]),
            _ci(r["vs_baseline"].get("cider_d")), vs, _f(r["llm_mib"], 1), _f(r["tpot_ms"], 1),
            (r.get("benched") or "n/a"), _f(cost.get("seconds"), 0), _f(cost.get("peak_rss_mib"), 0)]) + " |")
    return "\n".join(lines) + "\n"


def summary(rows: list) -> str:
    """The short table for the README: each of our methods beside its text-calibrated peer (the first peer named in
    VERSUS), ours minus the peer's WER with its interval, and the calibration time as a ratio of the peer's."""
    by_label = {r["label"]: r for r in rows}
    head = ("| method | WER | CIDEr-D | LLM MiB | peer (text calibration) | peer WER | peer CIDEr-D | "
            "ours - peer ΔWER [95% CI] | calib time vs peer |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r["label"] in PEERS:
            continue
        peer = next((v for v in VERSUS.get(r["label"], []) if v in PEERS), None)
        p = by_label.get(peer)
        cells = [r["label"], _f(r["wer"]), _f(r["cider_d"]), _f(r["llm_mib"], 1)]
        if p is None:
            cells += [f"{peer} (not run)" if peer else "", "", "", "", ""]
        else:
            ours_s, peer_s = (r.get("cost") or {}).get("seconds"), (p.get("cost") or {}).get("seconds")
            ratio = f"{ours_s / peer_s:.2f}x" if ours_s and peer_s else "n/a"
            if ours_s and peer_s and (r.get("benched") or "")[:10] != (p.get("benched") or "")[:10]:
                ratio += " (other days)"  # wall times of two days: this machine's speed drifts between days
            cells += [peer, _f(p["wer"]), _f(p["cider_d"]), _ci(r["versus"][peer].get("wer")), ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _benched(result: dict) -> str | None:
    """When a row was benched, to the hour: timings (TPOT) compare only between rows benched together."""
    created = result.get("created")
    return created[:13].replace("T", " ") + "h" if created else None


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "test.json"))
    p.add_argument("--calib", default=os.path.join(ROOT, "benchmarks", "data", "calib.json"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "methods-v2"))
    p.add_argument("--limit", type=int, default=None, help="first N clips per task (default: all)")
    p.add_argument("--samples", type=int, default=32, help="calibration sentences for the peers (ours: the recipe's)")
    p.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(RECIPES + tuple(PEERS)))
    p.add_argument("--cider-resamples", type=int, default=300)
    p.add_argument("--latency-repeats", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the clean-process peak-memory run of each bench")
    a = p.parse_args(argv)
    a.out = os.path.abspath(a.out)  # the peers run in their own folder
    known = list(RECIPES) + list(PEERS)
    wanted = known if a.methods is None else [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in wanted if m not in known]
    if bad:
        print(f"error: unknown method(s) {bad}; valid: {', '.join(known)}", file=sys.stderr)
        return 2
    os.makedirs(os.path.join(a.out, "peers"), exist_ok=True)

    from compress.bench.harness import BenchSettings, run_benchmark
    from compress.bench.results import load_result, summary_row, write_json

    settings = BenchSettings(tasks=("asr", "caption"), limit=a.limit, latency_repeats=a.latency_repeats,
                             memory=not a.no_memory)
    runs_path = os.path.join(a.out, "runs.json")
    runs = json.load(open(runs_path)) if os.path.isfile(runs_path) else {}
    plain = {}
    for label in ["baseline"] + wanted:
        path = os.path.join(a.out, f"{label}.json")
        if os.path.isfile(path):
            continue
        if label == "baseline":
            spec = a.model
        else:
            print(f"== {label}: running", flush=True)
            runs[label] = run_peer(label, a, plain) if label in PEERS else run_ours(label, a)
            write_json(runs, runs_path)
            if "artifact" not in runs[label]:
                print(f"   {label}: {runs[label].get('skipped') or runs[label].get('failed')}", flush=True)
                continue
            spec = runs[label]["artifact"]
            print(f"   run {runs[label]['cost']['seconds']} s, peak {runs[label]['cost']['peak_rss_mib']} MiB",
                  flush=True)
        print(f"== {label}: bench", flush=True)
        write_json(run_benchmark(spec, a.data, settings), path)
    # the table: every method benched in --out, by this call or an earlier one
    results = {label: load_result(os.path.join(a.out, f"{label}.json")) for label in ["baseline"] + known
               if os.path.isfile(os.path.join(a.out, f"{label}.json"))}
    cache_path = os.path.join(a.out, "bootstraps.json")
    cache = json.load(open(cache_path)) if os.path.isfile(cache_path) else {}
    digest = {label: _sha256(os.path.join(a.out, f"{label}.json")) for label in results}

    def paired(a_label: str, b_label: str) -> dict:
        # a pair's intervals depend only on the two bench files and the resample count: kept in bootstraps.json, so
        # a call that adds one method computes only the new method's pairs
        key = f"{a_label}|{b_label}|{digest[a_label]}|{digest[b_label]}|{a.cider_resamples}"
        if key not in cache:
            cache[key] = bootstrap(results, a_label, b_label, a.cider_resamples)
        return cache[key]

    rows = []
    for label in results:
        row = summary_row(results[label])
        versus = {v: paired(v, label) for v in VERSUS.get(label, []) if v in results}
        rows.append({"label": label, "wer": row["wer"], "cider_d": row["cider_d"], "llm_mib": row["llm_mib"],
                     "tpot_ms": row["tpot_ms_p50"], "benched": _benched(results[label]),
                     "cost": (runs.get(label) or {}).get("cost"),
                     "note": (runs.get(label) or {}).get("note"),
                     "vs_baseline": {} if label == "baseline" else paired("baseline", label),
                     "versus": versus})
    write_json({k: v for k, v in cache.items() if k.split("|")[0] in results}, cache_path)
    skipped = {k: v.get("skipped") or v.get("failed") for k, v in runs.items() if "artifact" not in v}
    text = table(rows)
    text += "".join(f"\nNote: {r['note']}." for r in rows if r["note"])
    text += "".join(f"\nNot in the table: {k}: {why}." for k, why in skipped.items() if k not in results)
    notes = list(dict.fromkeys(n for r in results.values() for n in r["model"].get("notes", [])))
    text += "".join(f"\nNote: {n}." for n in notes) + "\n"
    write_json({"rows": rows, "skipped": skipped, "data": a.data, "limit": a.limit,
                "command": ["python", "benchmarks/tools/method_table.py"] + list(argv if argv is not None
                                                                                 else sys.argv[1:])},
               os.path.join(a.out, "methods.json"))
    with open(os.path.join(a.out, "methods.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(summary(rows))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
