"""benchmarks/tools/method_table.py end to end on the tiny preset: one of our recipes run in a child process (its
cost measured), a peer whose environment is missing reported as skipped, bench results reused on a rerun."""

import json
import os

from builders import load_tool


def _tool():
    return load_tool("method_table")


def test_method_table_on_tiny(tmp_path, monkeypatch, capsys):
    mt = _tool()
    monkeypatch.setitem(mt.PEER_ENV, "llmc", ".venv-not-here")
    args = ["--model", "tiny", "--limit", "1", "--methods", "magnitude-50,llmc-wanda-50", "--out", str(tmp_path),
            "--latency-repeats", "1", "--cider-resamples", "5", "--no-memory"]
    assert mt.main(args) == 0
    out = json.loads((tmp_path / "methods.json").read_text())
    rows = {r["label"]: r for r in out["rows"]}
    assert set(rows) == {"baseline", "magnitude-50"}
    cost = rows["magnitude-50"]["cost"]
    assert cost["returncode"] == 0 and cost["seconds"] > 0 and cost["peak_rss_mib"] > 50
    assert "wer" in rows["magnitude-50"]["vs_baseline"]
    created = json.loads((tmp_path / "magnitude-50.json").read_text())["created"]  # when the bench ran, to the hour
    assert rows["magnitude-50"]["benched"] == created[:10] + " " + created[11:13] + "h"
    assert "bash benchmarks/peers_env.sh llmc" in out["skipped"]["llmc-wanda-50"]
    text = (tmp_path / "methods.md").read_text()
    assert "| magnitude-50 |" in text and "Not in the table: llmc-wanda-50" in text
    assert f"| {rows['magnitude-50']['benched']} |" in text
    summary = (tmp_path / "summary.md").read_text()
    assert "| magnitude-50 |" in summary and "llmc-wanda-50" not in summary  # magnitude has no peer
    before = os.path.getmtime(tmp_path / "magnitude-50.json")
    calls = []
    monkeypatch.setattr(mt, "bootstrap", lambda *x: calls.append(x))
    assert mt.main(args) == 0  # resumed: nothing run, benched or bootstrapped again
    assert os.path.getmtime(tmp_path / "magnitude-50.json") == before and calls == []
    assert json.loads((tmp_path / "methods.json").read_text())["rows"] == out["rows"]
    # a call for other methods keeps the rows benched before in the one table
    assert mt.main(args[:5] + ["llmc-wanda-50"] + args[6:]) == 0
    assert {r["label"] for r in json.loads((tmp_path / "methods.json").read_text())["rows"]} == {"baseline",
                                                                                                 "magnitude-50"}


def test_method_table_refuses_unknown_methods(capsys):
    assert _tool().main(["--methods", "nope"]) == 2
    assert "valid:" in capsys.readouterr().err


def test_summary_puts_each_method_beside_its_peer():
    mt = _tool()
    ci = {"delta": -0.5, "low": -0.7, "high": -0.3}
    rows = [{"label": "baseline", "wer": 0.26, "cider_d": 1.1, "llm_mib": 522.5, "cost": None, "versus": {}},
            {"label": "wanda-50", "wer": 0.37, "cider_d": 0.4, "llm_mib": 522.5, "cost": {"seconds": 24},
             "versus": {"llmc-wanda-50": {"wer": ci}}},
            {"label": "sparsegpt-50", "wer": 0.31, "cider_d": 0.6, "llm_mib": 522.5, "cost": {"seconds": 67},
             "versus": {}},
            {"label": "llmc-wanda-50", "wer": 0.84, "cider_d": 0.3, "llm_mib": 522.5, "cost": {"seconds": 16},
             "versus": {}}]
    lines = {line.split(" | ")[0].lstrip("| "): line for line in mt.summary(rows).splitlines()}
    assert "| llmc-wanda-50 | 0.840 | 0.300 | -0.500 [-0.700, -0.300] | 1.50x |" in lines["wanda-50"]
    assert "llmc-sparsegpt-50 (not run)" in lines["sparsegpt-50"]
    # wall times from two days are flagged: the machine's speed drifts between them
    rows[1]["benched"], rows[3]["benched"] = "2026-12-07 00h", "2026-12-06 09h"
    assert "| 1.50x (other days) |" in mt.summary(rows)
    rows[3]["benched"] = "2026-12-07 05h"
    assert "| 1.50x |" in mt.summary(rows)
    assert "llmc-wanda-50" not in lines  # a peer is a column, not a row
