"""Hostile or mistaken input is refused before any work: recipes (duplicates, aliases, depth, size), output
paths that are not this tool's, and out-of-range command-line numbers. Exit code 2, one screen, nothing lost;
recipe validation imports no torch."""

import os
import resource
import subprocess
import sys
import time

import pytest

from compress.cli import MAX_ERROR_CHARS, main
from compress.errors import ConfigError
from compress.recipe import load_recipe, shipped_recipes
from compress.steps.schema import CONFIGS
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
    assert time.perf_counter() - t < 10.0  # refused at once, not after a runaway parse (generous: loaded CI machines)


def test_too_many_steps_are_refused(tmp_path, capsys):
    for n, why in ((100, "at most 32"), (15_000, "larger than")):  # a 990 KB recipe stops at its size
        p = tmp_path / f"many{n}.yaml"
        p.write_text("name: many\nsteps:\n" + "  - {type: magnitude, sparsity: 0.1}\n" * n)
        t = time.perf_counter()
        assert main(["run", str(p), "--model", "tiny", "--out", str(tmp_path / "o")]) == 2
        assert time.perf_counter() - t < 20.0  # refused before any model loads (generous: loaded CI machines)
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


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that fails if torch was imported by the end."""
    code += "\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE)


def test_recipes_validate_without_importing_torch():
    """Validation uses the step schemas only: every shipped recipe validates, and a bad one is refused, in a process
    that never imports torch (so refusing a recipe costs no torch import)."""
    code = (
        "import os\n"
        "import compress.recipe as R\n"
        "from compress.errors import ConfigError\n"
        f"R.parse_recipe(open({RECIPE!r}).read())\n"
        "paths = R.shipped_recipes()\n"
        "for p in paths:\n"
        "    R.load_recipe(p)\n"
        "try:\n"
        "    R.parse_recipe('name: x\\nsteps:\\n  - {type: magnitude, sparsityy: 0.5}\\n')\n"
        "except ConfigError as e:\n"
        "    assert 'unknown field' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('bad recipe accepted')\n"
        "print(len(paths))\n"
    )
    r = _run_without_torch(code)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) == len(shipped_recipes()) > 0


@pytest.mark.parametrize("steps", ["  - {type: magnitude, sparsity: 0.5,\n     sparsity: 0.9}\n",
                                   "  - {type: no_such_step}\n", "  - {type: magnitude, sparsityy: 0.5}\n"],
                         ids=["duplicate-key", "unknown-type", "unknown-field"])
def test_cli_run_refuses_a_bad_recipe_without_importing_torch(tmp_path, steps):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nsteps:\n" + steps)
    out = tmp_path / "o"
    r = _run_without_torch("from compress.cli import main\n"
                           f"assert main(['run', {str(p)!r}, '--model', 'tiny', '--out', {str(out)!r}]) == 2\n")
    assert r.returncode == 0, r.stderr
    assert "error:" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("path", shipped_recipes(), ids=os.path.basename)
def test_shipped_recipe_validates(path):
    r = load_recipe(path)
    assert r.steps and all(type(c) is CONFIGS[c.type] for c in r.steps)


def test_step_classes_take_their_config_and_flags_from_the_schema(monkeypatch):
    from compress.steps import STEPS
    from compress.steps.registry import Step, register

    assert set(STEPS) == set(CONFIGS)
    for name, cls in STEPS.items():
        assert cls.Config is CONFIGS[name]
        assert (cls.terminal, cls.exportable) == (CONFIGS[name].terminal, CONFIGS[name].exportable)
    assert [n for n, c in STEPS.items() if c.terminal] == ["export"]
    assert STEPS["layer_drop"].needs_calibration(CONFIGS["layer_drop"](count=1))
    assert not STEPS["layer_drop"].needs_calibration(CONFIGS["layer_drop"](layers=[1]))
    monkeypatch.delitem(STEPS, "wanda")  # restored after the test
    with pytest.raises(RuntimeError, match="MagnitudeConfig.*WandaConfig"):
        register("wanda")(type("Wrong", (Step,), {"Config": CONFIGS["magnitude"]}))
    with pytest.raises(RuntimeError, match="declare it on"):
        register("wanda")(type("Wrong", (Step,), {"Config": CONFIGS["wanda"], "terminal": True}))
    with pytest.raises(RuntimeError, match="calibrates"):
        register("wanda")(type("Wrong", (Step,), {"Config": CONFIGS["wanda"],
                                                  "needs_calibration": classmethod(lambda cls, c: True)}))
    assert "wanda" not in STEPS
