"""benchmarks/tools/paired_latency.py on the tiny preset: interleaved rounds, each model in a process of its own
(--processes) or all in one, and a clear error for a model that does not load."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "benchmarks", "tools", "paired_latency.py")
DEV = os.path.join(ROOT, "benchmarks", "data", "dev.json")


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args, "--data", DEV, "--rounds", "2", "--tokens", "3",
                           "--threads", "1"], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("processes", [True, False])
def test_paired_latency_on_tiny(tmp_path, processes):
    out = tmp_path / "paired.json"
    r = _run("tiny", "tiny", "--out", str(out), *(["--processes"] if processes else []))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["processes"] == ("one per model" if processes else "one for all models")
    assert len(res["rounds"]) == 2 and [m["model"] for m in res["models"]] == ["tiny", "tiny"]
    ref, other = res["models"]
    assert ref["ttft_ratio"] == {"median": 1.0, "min": 1.0, "max": 1.0}  # the reference against itself
    assert other["ttft_ms_median"] > 0 and other["tpot_ms_median"] > 0 and other["tpot_ratio"]["median"] > 0
    assert res["rounds"][1]["order"] == ["tiny", "tiny"] and "| tiny |" in r.stdout


def test_paired_latency_missing_model_is_one_line(tmp_path):
    r = _run("tiny", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json"), "--processes")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope" in r.stderr
    assert not (tmp_path / "x.json").exists()
