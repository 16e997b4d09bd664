"""Hostile or mistaken input is refused before any work: recipes (duplicates, aliases, depth, size), output
paths that are not this tool's, and out-of-range command-line numbers. Exit code 2, one screen, nothing lost."""

import os
import resource
import time

import pytest

from compress.cli import MAX_ERROR_CHARS, main
from compress.errors import ConfigError
from compress.yamlsafe import MAX_DEPTH, parse_yaml

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(HERE, "recipes", "magnitude-50.yaml")


def test_duplicate_keys_are_refused_with_both_lines():
    with pytest.raises(ConfigError, match=r"duplicate key 'sparsity' on lines 3 and 4"):
        parse_yaml("name: x\nsteps:\n  - {type: magnitude, sparsity: 0.5,\n     sparsity: 0.9}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'steps' on lines 2 and 3"):
        parse_yaml("name: x\nsteps: [{type: magnitude}]\nsteps: [{type: wanda}]\n")


def _alias_bomb(width: int, levels: int) -> str:
    lines = ["a0: &a0 [x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("width,levels", [(9, 8), (3, 20), (70, 1)])
def test_generated_hostile_yaml_is_refused_fast_and_small(width, levels):
    """Alias bombs of several shapes, deep nesting and many steps: each refused in under a second, with a short
    message, without growing the process by more than 100 MB."""
    text = _alias_bomb(width, levels)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        parse_yaml(text)
    assert time.perf_counter() - t < 1.0
    assert len(str(e.value)) < 500
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 30_000])
def test_deep_nesting_is_refused_without_a_recursion_error(depth):
    t = time.perf_counter()
    with pytest.raises(ConfigError, match="nest"):
        parse_yaml("a: " + "[" * depth + "]" * depth + "\n")
    assert time.perf_counter() - t < 1.0


def test_too_many_steps_are_refused(tmp_path, capsys):
    for n, why in ((100, "at most 32"), (15_000, "larger than")):  # a 990 KB recipe stops at its size
        p = tmp_path / f"many{n}.yaml"
        p.write_text("name: many\nsteps:\n" + "  - {type: magnitude, sparsity: 0.1}\n" * n)
        t = time.perf_counter()
        assert main(["run", str(p), "--model", "tiny", "--out", str(tmp_path / "o")]) == 2
        assert time.perf_counter() - t < 5.0
        err = capsys.readouterr().err
        assert why in err and len(err) <= MAX_ERROR_CHARS + 100
        assert not (tmp_path / "o").exists()


def test_overwrite_never_deletes_a_folder_this_tool_did_not_write(tmp_path, capsys):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    assert main(["run", RECIPE, "--model", "tiny", "--out", str(mine), "--overwrite", "--no-bench"]) == 2
    assert "not an artifact written by salmonn-compress" in capsys.readouterr().err
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    assert main(["run", RECIPE, "--model", "tiny", "--out", str(f), "--overwrite", "--no-bench"]) == 2
    assert f.read_text() == "keep"


def test_overwrite_replaces_an_artifact_and_cleans_what_killed_runs_left(tmp_path):
    out = tmp_path / "art"
    assert main(["run", RECIPE, "--model", "tiny", "--out", str(out), "--no-bench"]) == 0
    stale = tmp_path / ".art.tmp-999999999"  # a pid that does not exist
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert main(["run", RECIPE, "--model", "tiny", "--out", str(out), "--no-bench", "--overwrite"]) == 0
    assert (out / "manifest.json").is_file() and not stale.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".art.")]


def test_bench_out_directory_is_refused_before_the_work(tmp_path, capsys):
    t = time.perf_counter()
    data = os.path.join(HERE, "benchmarks", "data", "dev.json")
    assert main(["bench", "--model", "tiny", "--data", data, "--out", str(tmp_path)]) == 2
    assert time.perf_counter() - t < 5.0
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["generate", "--model", "tiny", "--audio", "x.wav", "--max-new-tokens", "-1"],
    ["generate", "--model", "tiny", "--audio", "x.wav", "--max-new-tokens", "0"],
    ["generate", "--model", "tiny", "--audio", "x.wav", "--beams", "0"],
    ["generate", "--model", "tiny", "--audio", "x.wav", "--threads", "-2"],
    ["bench", "--model", "tiny", "--data", "d.json", "--out", "r.json", "--limit", "0"],
    ["bench", "--model", "tiny", "--data", "d.json", "--out", "r.json", "--repeats", "zero"],
])
def test_out_of_range_numbers_exit_2_with_the_rule(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "must be >= 1" in err or "expected a whole number" in err


def test_qformer_config_that_does_not_exist_or_does_not_apply(capsys):
    assert main(["inspect", "--model", "tiny", "--qformer-config", "/nonexistent"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["inspect", "--model", "tiny", "--qformer-config", RECIPE]) == 2
    assert "official SALMONN config YAMLs only" in capsys.readouterr().err


def test_defaulted_step_fields_are_printed(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("name: r\nsteps:\n  - {type: magnitude}\n")
    assert main(["run", str(p), "--model", "tiny", "--out", str(tmp_path / "o"), "--no-bench"]) == 0
    err = capsys.readouterr().err
    assert "note: default used: steps[0] (magnitude):" in err and "sparsity=" in err


def test_malformed_targets_lists_the_valid_fields():
    from compress.recipe import parse_recipe

    with pytest.raises(ConfigError, match=r"steps\[0\] \(magnitude\)\.targets: expected a mapping with the fields "
                                          r"ignore, include, parts"):
        parse_recipe("name: t\nsteps:\n  - {type: magnitude, targets: llm}\n")
    with pytest.raises(ConfigError) as e:
        parse_recipe("name: t\nsteps:\n  - {type: magnitude, sparsity: '" + "9" * 5000 + "'}\n")
    assert len(str(e.value)) < 400  # the value is quoted as a short excerpt
