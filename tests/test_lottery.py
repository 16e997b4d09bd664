"""Lottery-ticket rounds: rewinding vs keeping the retrained survivors, and the Whisper curve tool on a tiny model."""

import json
import os
import subprocess
import sys

import pytest
import torch

from compress.loaders import load_model
from compress.recipe import recipe_from_dict
from compress.runner import RunContext
from compress.steps import load_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = os.path.join(ROOT, "benchmarks", "data", "calib.json")


def _rounds(rewind: str) -> tuple:
    r = recipe_from_dict({"name": "lt", "steps": [{
        "type": "lottery_ticket", "schedule": [0.3, 0.6], "rewind": rewind, "train_base": True,
        "retrain": {"data": CALIB, "samples": 2, "steps": 2, "lr": 0.05}, "targets": {"parts": ["speech_encoder"]}}]})
    torch.manual_seed(0)
    model = load_model("tiny")
    start = {n: p.detach().clone() for n, p in model.speech_encoder.named_parameters() if n.endswith("proj.weight")}
    step = load_steps()["lottery_ticket"](r.steps[0])
    reps = list(step.rounds(model, RunContext(model, r, progress=False)))
    now = {n: p.detach() for n, p in model.speech_encoder.named_parameters() if n in start}
    return reps, start, now


def test_rewind_none_keeps_retrained_survivors_and_start_rewinds_them():
    reps_s, start_s, after_s = _rounds("start")
    reps_n, start_n, after_n = _rounds("none")
    assert [r["measured_sparsity"] for r in reps_s] == pytest.approx([0.3, 0.6], abs=0.01)
    assert [r["measured_sparsity"] for r in reps_n] == pytest.approx([0.3, 0.6], abs=0.01)
    # round 1 is the same in both (the survivors' start values are the current ones)
    assert reps_s[0]["loss_last"] == pytest.approx(reps_n[0]["loss_last"], rel=1e-6)
    # after round 2 the weights differ: start rewound the round-1 training away before retraining, none did not
    assert any(not torch.allclose(after_s[n], after_n[n]) for n in after_s)
    # pruned entries are exactly zero in both
    assert all(((after_s[n] == 0).float().mean() > 0.2) for n in after_s)


def test_lottery_whisper_tool_on_tiny(tmp_path):
    out = tmp_path / "lt"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "tools", "lottery_whisper.py"), "--model", "tiny",
           "--data", os.path.join(ROOT, "benchmarks", "data", "dev.json"), "--limit", "1", "--modes",
           "one-shot", "--out", str(out), "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    curve = json.loads((out / "one-shot.json").read_text())
    assert [r["measured_sparsity"] for r in curve["rounds"]] == pytest.approx([0.3, 0.5, 0.7], abs=0.01)
    assert "| one-shot | 0.70 |" in (out / "lottery.md").read_text()
    bad = subprocess.run(cmd[:-5] + ["--modes", "sideways"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "valid: rewind, no-rewind, one-shot" in bad.stderr
    bad = subprocess.run(cmd + ["--retrain-trainable", "llm"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "lora, qformer, proj, beats" in bad.stderr
    # a second call for another curve keeps the first in the table; the retraining override reaches the step
    p = subprocess.run(cmd[:-5] + ["--modes", "no-rewind", "--out", str(out), "--no-progress", "--retrain-lr",
                                   "0.00002", "--retrain-trainable", "none"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    step = json.loads((out / "no-rewind.json").read_text())["step"]
    assert step["retrain"]["lr"] == 0.00002 and step["retrain"]["trainable"] == []
    table = (out / "lottery.md").read_text()
    assert "| one-shot | 0.70 |" in table and "| no-rewind | 0.70 |" in table
