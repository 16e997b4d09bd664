"""The bench harness end to end on the tiny preset: result schema, per-sample errors, tables, plot, diff."""

import copy
import json
import os

import numpy as np
import pytest
import soundfile as sf

from compress.bench.hackathon import validate_submission, write_submission
from compress.bench.harness import SCHEMA_VERSION, BenchSettings, run_benchmark
from compress.bench.results import (csv_table, diff, diff_text, load_result, markdown_table, pareto_plot,
                                    summary_row, write_json)
from compress.cli import main
from compress.errors import UserError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    sr = 16000
    t = np.arange(int(1.5 * sr)) / sr
    ann = []
    for i, f in enumerate((220.0, 440.0)):
        sf.write(d / f"a{i}.wav", 0.3 * np.sin(2 * np.pi * f * t), sr)
        ann.append({"path": f"a{i}.wav", "text": "hello world", "task": "asr", "voice": f"v{i}"})
        sf.write(d / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * 2 * f * t), sr)
        ann.append({"path": f"c{i}.wav", "text": "a tone", "task": "audiocaption",
                    "references": ["a tone", "a steady beep", "a pure tone plays"]})
    (d / "broken.wav").write_bytes(b"RIFF garbage")
    ann.append({"path": "broken.wav", "text": "x", "task": "asr"})
    p = d / "ann.json"
    p.write_text(json.dumps({"annotation": ann}))
    return str(p)


SETTINGS = dict(num_beams=1, max_new_tokens=4, latency_tokens=4, latency_warmup=1, latency_repeats=2,
                bandwidth_mib=32)


@pytest.fixture(scope="module")
def result(data, tmp_path_factory):
    r = run_benchmark("tiny", data, BenchSettings(**SETTINGS))
    path = str(tmp_path_factory.mktemp("res") / "tiny.json")
    write_json(r, path)
    return load_result(path)


def test_result_schema(result):
    assert result["schema_version"] == SCHEMA_VERSION and result["mode"] == "standard"
    asr, cap = result["tasks"]["asr"], result["tasks"]["caption"]
    assert asr["n"] == 3 and asr["failures"] == 1  # the broken clip is a per-sample error, the run went on
    assert asr["metrics"]["wer"]["higher_is_better"] is False
    assert set(asr["by_voice"]) == {"v0", "v1"}
    assert cap["metrics"]["cider_d"]["higher_is_better"] is True
    assert "spider" in cap["unavailable"] and "spider" not in cap["metrics"]  # never a substitute number
    broken = [s for s in result["samples"] if s["error"]]
    assert len(broken) == 1 and "broken.wav" in broken[0]["error"]
    eff = result["efficiency"]
    assert eff["latency"]["ttft_ms"]["unit"] == "ms" and eff["latency"]["ttft_ms"]["p50"] > 0
    assert eff["latency"]["config"]["n_tokens"] == 4
    assert eff["memory"]["peak_rss_mib"] > eff["memory"]["baseline_rss_mib"] > 0
    lat, phases = eff["latency"], eff["memory"]["phases"]  # TTFT in phases; each phase's own time and peak
    assert lat["front_ms"]["p50"] > 0 and lat["prefill_ms"]["p50"] > 0
    assert lat["front_ms"]["p50"] + lat["prefill_ms"]["p50"] == pytest.approx(lat["ttft_ms"]["p50"], rel=0.25)
    assert list(phases) == ["load", "audio_read", "speech_front", "prefill", "decode"]
    assert all(p["seconds"] >= 0 and p["peak_rss_mib"] > 0 for p in phases.values())
    assert eff["memory"]["workload_peak_rss_mib"] >= max(p["peak_rss_mib"] for p in phases.values())
    bound = eff["decode_bound"]
    assert len(eff["bandwidth"]["readings_gbs"]) == 2  # probed just before and just after the timing
    assert bound["tpot_over_bound_range"][0] <= bound["tpot_over_bound"] <= bound["tpot_over_bound_range"][1]
    assert result["environment"]["torch_threads"] >= 1 and result["environment"]["packages"]["torch"]
    assert set(result["model"]["parts"]) == {"speech_encoder", "beats", "qformer", "proj", "llm"}
    assert result["model"]["artifact_bytes"] is None  # a preset has no artifact on disk


def test_artifact_bytes_counts_the_directory(tmp_path):
    from compress.bench.harness import artifact_bytes

    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert artifact_bytes(str(tmp_path)) == 15 and artifact_bytes("tiny") is None


def test_tables_and_plot(result, tmp_path):
    rows = [summary_row(result)]
    md = markdown_table(rows)
    assert md.startswith("| result | model | wer |") and "tiny" in md
    assert csv_table(rows).splitlines()[0].startswith("result,model,wer,cider_d")
    other = copy.deepcopy(result)
    other["_path"] = "other.json"
    other["efficiency"]["latency"]["tpot_ms"]["p50"] *= 0.5
    png = pareto_plot([result, other], str(tmp_path / "p.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_diff(result):
    other = copy.deepcopy(result)
    other["_path"] = "other.json"
    other["tasks"]["caption"]["metrics"]["cider_d"]["value"] = result["tasks"]["caption"]["metrics"]["cider_d"]["value"] + 0.5
    other["tasks"]["asr"]["metrics"]["wer"]["value"] = result["tasks"]["asr"]["metrics"]["wer"]["value"] + 0.1
    other["efficiency"]["latency"]["tpot_ms"]["p50"] = result["efficiency"]["latency"]["tpot_ms"]["p50"] / 2
    other["model"]["parts"]["llm"]["bytes"] //= 4
    s0 = next(s for s in other["samples"] if s["hypothesis"] is not None)
    s0["hypothesis"] = "completely different words here"
    d = diff(result, other)
    by = {(m["task"], m["metric"]): m for m in d["metrics"]}
    assert by[("caption", "cider_d")]["verdict"] == "better"
    assert by[("asr", "wer")]["verdict"] == "worse"
    assert by[("asr", "wer")]["recovery"] < 1
    tpot = next(e for e in d["efficiency"] if e["measure"] == "tpot_ms_p50")
    assert tpot["ratio"] == pytest.approx(0.5)
    llm = next(p for p in d["parts"] if p["part"] == "llm")
    assert llm["bytes_ratio"] == pytest.approx(0.25, rel=1e-3)
    assert d["n_changed"] >= 1 and d["changed_samples"][0]["other"] == "completely different words here"
    assert "worse" in diff_text(d)


def test_diff_refuses_other_versions(result):
    other = copy.deepcopy(result)
    other["tasks"]["asr"]["version"] = 99
    with pytest.raises(UserError, match="version"):
        diff(result, other)
    other = copy.deepcopy(result)
    other["schema_version"] = 99
    with pytest.raises(UserError, match="schema"):
        diff(result, other)


def test_hackathon_submission(result, tmp_path):
    p = str(tmp_path / "sub.csv")
    write_submission(result["samples"], p)
    ids = [s["id"] for s in result["samples"]]
    assert validate_submission(p, ids) == []
    assert any("missing" in x for x in validate_submission(p, ids + ["extra-id"]))
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,a\n")
    assert "header" in validate_submission(str(bad), ["1"])[0]


def test_cli_bench_table_diff(data, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    code = main(["bench", "--model", "tiny", "--data", data, "--tasks", "caption", "--out", out, "--beams", "1",
                 "--max-new-tokens", "3", "--latency-tokens", "3", "--warmup", "1", "--repeats", "2",
                 "--no-memory", "--hackathon"])
    assert code == 0
    r = load_result(out)
    assert set(r["tasks"]) == {"caption"}
    assert "hackathon_spider" in r["tasks"]["caption"]["metrics"]
    assert r["efficiency"]["hackathon_latency"]["method"] == "hackathon"
    assert os.path.exists(out.replace(".json", ".submission.csv"))
    md, png = str(tmp_path / "t.md"), str(tmp_path / "t.png")
    assert main(["table", out, "--md", md, "--plot", png]) == 0
    assert os.path.getsize(md) > 0 and os.path.getsize(png) > 0
    assert main(["diff", out, out]) == 0
    assert "samples whose output changed: 0" in capsys.readouterr().out


def test_cli_bench_bad_input(tmp_path, capsys):
    assert main(["bench", "--model", "tiny", "--data", str(tmp_path / "nope.json"), "--out", "x.json"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"annotation": [{"path": "a.wav", "task": "translate", "text": "x"}]}')
    assert main(["bench", "--model", "tiny", "--data", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "translate" in err and not os.path.exists(tmp_path / "x.json")


def test_wer_by_seen_and_heldout_voice():
    from compress.bench.harness import BenchSettings, score

    def rec(ref, hyp, held):
        return {"task": "asr", "reference": ref, "hypothesis": hyp, "error": None,
                "extra": {"voice": "rms" if held else "kal", "heldout_voice": held}}

    recs = [rec("a b c d", "a b c d", False), rec("a b c d", "a x c d", True), rec("e f", "e f", True)]
    out = score(recs, BenchSettings(tasks=("asr",)))["asr"]
    groups = out["by_voice_group"]
    assert groups["seen_voices"]["value"] == 0.0 and groups["seen_voices"]["n"] == 1
    assert abs(groups["heldout_voice"]["value"] - 1 / 6) < 1e-9 and groups["heldout_voice"]["n"] == 2
    row = summary_row({"_path": "x.json", "model": {"spec": "m", "parts": {}}, "tasks": {"asr": out},
                       "efficiency": {}, "summary": {"failures": 0}})
    assert row["wer_seen"] == 0.0 and abs(row["wer_heldout"] - 1 / 6) < 1e-9
