"""The command line: inspect and generate on presets, per-file audio errors, bad arguments exit 2."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from compress.cli import main
from compress.inspect_model import part_stats
from compress.models.build import build_modules
from compress.models.presets import preset_config
from compress.models.tokenizer import byte_tokenizer


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("name,llm_params", [("sized-1b", 1_235_814_400), ("sized-3b", 3_212_749_824)])
def test_sized_presets_have_real_shapes(name, llm_params):
    m = build_modules(preset_config(name), byte_tokenizer(), device="meta")  # shapes only, no memory
    s = part_stats(m)
    assert s["speech_encoder"]["params"] == 636_968_960 + 2 * 1280  # whisper-large-v3-turbo encoder + ln_speech
    assert s["beats"]["params"] > 90_000_000
    assert s["llm"]["params"] - s["llm"]["lora_params"] == llm_params  # Llama-3.2-1B / -3B
    assert s["llm"]["sparsity"] is None  # meta tensors: not measurable


def test_inspect_tiny(capsys):
    assert main(["inspect", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "speech_encoder" in out and "seeded random weights" in out


def test_generate_good_and_bad_audio(tmp_path, capsys):
    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], 1) * 0.3
    good = tmp_path / "stereo44k.wav"
    sf.write(good, stereo, sr)
    bad = {
        "empty.wav": b"",
        "garbage.wav": b"not audio at all" * 50,
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    nan = tmp_path / "nan.wav"
    x = np.zeros(16000, dtype=np.float32)
    x[5] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    long = tmp_path / "long45.wav"
    sf.write(long, np.zeros(45 * 16000, dtype=np.float32), 16000)
    files = [str(good)] + [str(tmp_path / n) for n in bad] + [str(nan), str(long)]
    code = main(["generate", "--model", "tiny", "--audio", *files, "--beams", "1", "--max-new-tokens", "3"])
    out, err = capsys.readouterr()
    assert code == 3  # done, but some inputs failed (exit 3, with the count)
    assert "4 of 5 audio files failed" in err
    assert "stereo44k.wav\t" in out  # the good clip still ran
    assert "note: audio" in err and "2 channels downmixed to mono" in err and "44100 -> 16000 Hz" in err
    for name in ("empty.wav", "garbage.wav", "nan.wav", "long45.wav"):
        assert name in err
    assert "30" in err and "non-finite" in err and "Traceback" not in err
    assert "--too-long cut" in err  # the option's CLI spelling, not the Python one
    code = main(["generate", "--model", "tiny", "--audio", str(long), "--too-long", "cut", "--beams", "1",
                 "--max-new-tokens", "2"])
    assert code == 0


def test_bad_arguments_exit_2_without_traceback():
    for args in (["inspect"], ["inspect", "--model", "nonexistent-model"], ["frobnicate"],
                 ["generate", "--model", "tiny", "--audio", "x.wav", "--task", "translate"],
                 ["inspect", "--model", "tiny", "--dtype", "int3"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and "error" in r.stderr


def test_device_errors_name_the_problem_and_the_choices(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    r = run_cli("generate", "--model", "tiny", "--audio", str(wav), "--device", "tpu")
    assert r.returncode == 2 and "unknown device 'tpu'" in r.stderr and "cpu, cuda, cuda:N" in r.stderr
    assert "Traceback" not in r.stderr
    if not torch.cuda.is_available():
        r = run_cli("bench", "--model", "tiny", "--data", "benchmarks/data/dev.json", "--out",
                    str(tmp_path / "r.json"), "--device", "cuda")
        assert r.returncode == 2 and "CUDA is not available here" in r.stderr and "valid here: cpu" in r.stderr
        assert not (tmp_path / "r.json").exists()
        r = run_cli("run", "recipes/gptq-4bit-g128.yaml", "--model", "tiny", "--out", str(tmp_path / "a"),
                    "--device", "cuda")
        assert r.returncode == 2 and "CUDA is not available here" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "a").exists()


def test_generate_on_cpu_device_matches_default(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32), 16000)
    args = ["generate", "--model", "tiny", "--audio", str(wav), "--beams", "1", "--max-new-tokens", "3"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--device", "cpu"]) == 0
    assert capsys.readouterr().out == plain


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda_uses_events_and_cuda_memory(tmp_path):
    from compress.bench.harness import BenchSettings, run_benchmark

    data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "data",
                        "dev.json")
    res = run_benchmark("tiny", data, BenchSettings(limit=1, latency_tokens=4, latency_repeats=2),
                        model_kwargs={"device": "cuda"})
    eff = res["efficiency"]
    assert res["environment"]["cuda_device"] and eff["latency"]["config"]["device"].startswith("cuda")
    assert "e2e_ms_cuda_events" in eff["latency"]
    assert eff["bandwidth"]["device"].startswith("cuda") and eff["bandwidth"]["method"].endswith("CUDA events")
    assert eff["memory"]["phases"]["decode"]["cuda_max_allocated_mib"] > 0


def test_set_decoding_changes_the_default_and_logs_it(tmp_path, capsys):
    import json
    import os

    from compress.loaders import load_model
    from compress.loaders.artifact import save_artifact
    from compress.outputs import sha256_file

    art = save_artifact(load_model("tiny"), str(tmp_path / "art"), manifest_extra={"training": {"seed": 0}})
    weights = sha256_file(os.path.join(art, "model.safetensors"))
    assert main(["set-decoding", art, "--set", "repetition_penalty=1.2", "--set", "num_beams=2",
                 "--note", "tuned on dev"]) == 0
    back = load_model(art)  # the manifest's file table still verifies
    assert back.cfg.generate.repetition_penalty == 1.2 and back.cfg.generate.num_beams == 2
    m = back.manifest
    assert m["training"] == {"seed": 0}  # other manifest fields kept
    assert m["decoding_changes"][-1]["before"] == {"repetition_penalty": 1.0, "num_beams": 4}
    assert m["decoding_changes"][-1]["after"] == {"repetition_penalty": 1.2, "num_beams": 2}
    assert m["decoding_changes"][-1]["note"] == "tuned on dev"
    assert sha256_file(os.path.join(art, "model.safetensors")) == weights
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    capsys.readouterr()
    before = open(os.path.join(art, "manifest.json")).read()
    for bad, msg in ((["--set", "beams=2"], "valid:"), (["--set", "repetition_penalty=0"], "> 0"),
                     (["--set", "num_beams=1.5"], "takes a whole number"), (["--set", "num_beams"], "KEY=VALUE"),
                     (["--set", "num_beams=two"], "not a number")):
        assert main(["set-decoding", art] + bad) == 2, bad
        assert msg in capsys.readouterr().err, bad
        assert open(os.path.join(art, "manifest.json")).read() == before  # nothing changed
    assert json.loads(before)["decoding_changes"][-1]["after"]["num_beams"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_run_on_cuda_calibrates_and_benches_there(tmp_path):
    """A recipe's calibrated steps (Wanda, then GPTQ) and its benchmark on the GPU, end to end."""
    import json

    from compress.recipe import recipe_from_dict
    from compress.runner import run_recipe

    dev = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "data", "dev.json")
    r = recipe_from_dict({"name": "cuda", "calibration": {"data": dev, "samples": 2},
                          "steps": [{"type": "wanda", "sparsity": 0.5}, {"type": "gptq", "bits": 4, "group_size": 32}],
                          "benchmark": {"data": dev, "tasks": ["asr"], "limit": 1, "max_new_tokens": 2,
                                        "latency_tokens": 4, "warmup": 0, "repeats": 1, "memory": False}})
    res = run_recipe(r, "tiny", str(tmp_path / "a"), progress=False, device="cuda", log=lambda *a: None)
    assert all(rep.get("seconds", 0) >= 0 for rep in res["steps"])
    with open(res["bench"]["result"]) as f:
        bench = json.load(f)
    assert bench["efficiency"]["latency"]["config"]["device"].startswith("cuda")
