"""Export: ONNX graphs of the tiny preset, the ONNX Runtime backend against PyTorch, int8, TensorRT's clear error,
the terminal `export` step, and manifests that verify."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from builders import gptq_tiny, rtn_offset_tiny
from compress.audio import load_audio
from compress.cli import main
from compress.data.annotations import read_annotations
from compress.errors import CheckpointError, ConfigError, UserError
from compress.export.options import ExportOptions
from compress.loaders import load_model
from compress.outputs import read_manifest, verify_files

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = os.path.join(ROOT, "benchmarks", "data", "dev.json")


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_model("tiny")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    from compress.export import export_model

    out = str(tmp_path_factory.mktemp("onnx") / "tiny-onnx")
    export_model(tiny, out, check={"data": DEV, "limit": 2, "max_new_tokens": 6})
    return out


@pytest.fixture(scope="module")
def ort_model(exported):
    return load_model(exported)


def _clips(n_per_task=2):
    samples = read_annotations(DEV, check_files=False)
    return [s for t in ("asr", "caption") for s in [s for s in samples if s.task == t][:n_per_task]]


def test_load_model_gives_the_ort_backend(ort_model, exported):
    from compress.export.ort_backend import OrtSalmonn

    assert isinstance(ort_model, OrtSalmonn)
    assert ort_model.device == torch.device("cpu") and ort_model.tokenizer is not None
    assert ort_model.cfg.extra["preset"] == "tiny"
    files = sorted(os.listdir(exported))
    assert {"audio_front.onnx", "llm.onnx", "embed_tokens.npy", "config.json", "manifest.json",
            "tokenizer"} <= set(files)


def test_audio_front_matches_pytorch(tiny, ort_model):
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000 * 5, 16000 * 2 + 123)]
    waves.append(load_audio(_clips(1)[0].path))
    for batch in (waves[:2], waves[2:]):  # batch of two lengths (padding mask), and a real clip alone
        with torch.inference_mode():
            ref = tiny.encode_audio(**tiny.prepare_audio(batch))
        got = ort_model.encode_audio(**ort_model.prepare_audio(batch))
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-3)


def test_greedy_tokens_equal_pytorch(tiny, ort_model):
    for s in _clips(2):
        wav = load_audio(s.path)
        kw = dict(num_beams=1, max_new_tokens=8, ignore_eos=True)
        ref = tiny.generate([wav], s.task, **kw)[0]
        got = ort_model.generate([wav], s.task, **kw)[0]
        assert len(got.token_ids) == 8 and got.token_ids == ref.token_ids, s.id
        assert got.text == ref.text


def test_beam_search_and_batches(tiny, ort_model):
    waves = [load_audio(s.path) for s in _clips(1)]
    kw = dict(num_beams=3, max_new_tokens=5, ignore_eos=True)
    ref = [o.token_ids for o in tiny.generate(waves, "asr", **kw)]
    got = [o.token_ids for o in ort_model.generate(waves, "asr", **kw)]
    assert got == ref and all(len(g) == 5 for g in got)
    steps = []
    ort_model.generate(waves[:1], "asr", num_beams=1, max_new_tokens=4, ignore_eos=True, on_token=steps.append)
    assert steps == [0, 1, 2, 3]


def test_parity_result_and_manifest(exported):
    m = read_manifest(exported)
    assert m["kind"] == "onnx" and m["export"]["exporter"] == "torch.onnx.export(dynamo=True)"
    assert m["export"]["opset"] == 18 and m["packages"]["onnxruntime"] and m["packages"]["onnxscript"]
    assert "in the graph" in m["export"]["graphs"]["audio_front"]["beats_fbank"]
    files = m["files"]
    assert all(len(f["sha256"]) == 64 for f in files.values()) and "llm.onnx" in files
    verify_files(exported, m)
    c = m["check"]
    assert c["clips"] == 4 and c["identical"] == 4 and c["differences"] == [] and c["speech_embeds_max_abs_diff"] < 2e-3


def test_corrupt_export_is_refused(exported, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(exported, bad)
    with open(os.path.join(bad, "embed_tokens.npy"), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(bad)
    from compress.loaders.artifact import load_artifact

    with pytest.raises(CheckpointError, match="onnx export"):
        load_artifact(exported)


def test_harness_runs_on_the_export(ort_model, exported):
    from compress.bench.harness import BenchSettings, run_benchmark
    from compress.inspect_model import inspect_table, part_stats

    stats = part_stats(ort_model)
    assert set(stats) == {"audio_front", "llm", "embed_table"} and stats["llm"]["bytes"] > 0
    assert "llm.onnx" in inspect_table(ort_model)
    r = run_benchmark(exported, DEV, BenchSettings(tasks=("asr",), limit=1, num_beams=1, max_new_tokens=3,
                                                   latency_tokens=3, latency_warmup=0, latency_repeats=1,
                                                   memory=False, bandwidth_mib=16))
    assert r["summary"]["failures"] == 0 and r["model"]["parts"]["llm"]["bytes"] == stats["llm"]["bytes"]
    assert r["efficiency"]["latency"]["ttft_ms"]["p50"] > 0 and r["efficiency"]["decode_bound"]


def test_cli_int8_real_length_export_with_check(tmp_path, capsys):
    """One CLI export covers: an artifact SPEC, real-length encoding (dynamic mel frames), int8, --check."""
    from compress.loaders.artifact import save_artifact

    m = load_model("tiny")
    m.cfg.extra["runtime"] = {"real_length": True}
    save_artifact(m, str(tmp_path / "rl"))
    out = tmp_path / "int8"
    code = main(["export", "--model", str(tmp_path / "rl"), "--format", "onnx", "--int8", "--out", str(out),
                 "--check", DEV, "--check-limit", "1", "--check-tokens", "4"])
    assert code == 0
    text = capsys.readouterr().out
    assert "export written to" in text and "parity (greedy, 4 tokens)" in text
    man = read_manifest(str(out))
    q = man["export"]["quantization"]
    assert q["method"] == "onnxruntime.quantization.quantize_dynamic" and q["bytes_after"] < q["bytes_before"]
    assert man["export"]["graphs"]["audio_front"]["dynamic"]["mel_frames"] is True
    assert man["check"]["clips"] == 2 and man["check"]["speech_embeds_max_abs_diff"] < 2e-3  # the front is float32
    assert "artifact_files" in man["source"]
    model = load_model(str(out))
    assert model.real_length and "int8" in model.part_stats()["llm"]["dtype"]
    wav = load_audio(_clips(1)[0].path)
    assert model.prepare_audio([wav])["spectrogram"].shape[-1] < 3000
    outs = model.generate([wav], "asr", num_beams=2, max_new_tokens=4, ignore_eos=True)
    assert len(outs[0].token_ids) == 4
    assert main(["export", "--model", "tiny", "--format", "onnx", "--out", str(out)]) == 2  # exists


def test_int8_with_down_projections_float(tmp_path, capsys):
    """--int8-float down_proj: every layer's down projection stays a float MatMul, the rest is int8."""
    import onnx

    out = tmp_path / "fd"
    assert main(["export", "--model", "tiny", "--format", "onnx", "--int8", "--int8-float", "down_proj",
                 "--out", str(out)]) == 0
    q = read_manifest(str(out))["export"]["quantization"]
    layers = load_model("tiny").llm_base().config.num_hidden_layers
    assert q["kept_float"] == ["down_proj"] and q["nodes_kept_float"] == layers
    graph = onnx.load(str(out / "llm.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMul") >= layers and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    model = load_model(str(out))
    wav = load_audio(_clips(1)[0].path)
    assert len(model.generate([wav], "asr", max_new_tokens=3, ignore_eos=True)[0].token_ids) == 3
    capsys.readouterr()
    assert main(["export", "--model", "tiny", "--format", "onnx", "--int8-float", "down_proj", "--out",
                 str(tmp_path / "x")]) == 2  # needs --int8
    assert "--int8-float needs --int8" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_int8_front(tmp_path):
    """--int8-front: the audio front's weight MatMuls become int8 (per channel), the LLM graph stays float, and the
    export's speech tokens stay near the float export's."""
    import onnx

    out = tmp_path / "f8"
    assert main(["export", "--model", "tiny", "--format", "onnx", "--int8-front", "--out", str(out)]) == 0
    export = read_manifest(str(out))["export"]
    q = export["front_quantization"]
    assert q["graph"] == "audio_front.onnx" and q["per_channel"] and q["bytes_after"] < q["bytes_before"]
    assert export["quantization"] == "none (float32 weights)"
    front = onnx.load(str(out / "audio_front.onnx")).graph
    weights = {i.name for i in front.initializer}
    ops = [n.op_type for n in front.node]
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert not [n for n in front.node if n.op_type == "MatMul" and n.input[1] in weights]  # every weight MatMul
    llm_ops = {n.op_type for n in onnx.load(str(out / "llm.onnx"), load_external_data=False).graph.node}
    assert not llm_ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    ref_path = tmp_path / "float"
    assert main(["export", "--model", "tiny", "--format", "onnx", "--out", str(ref_path)]) == 0
    model, ref = load_model(str(out)), load_model(str(ref_path))
    wav = load_audio(_clips(1)[0].path)
    got = model.encode_audio(**model.prepare_audio([wav]))
    want = ref.encode_audio(**ref.prepare_audio([wav]))
    assert got.shape == want.shape and not torch.equal(got, want)
    assert float((got - want).norm() / want.norm()) < 0.1


def test_bad_format_lists_choices(capsys, tmp_path):
    from compress.export import export_model

    with pytest.raises(SystemExit) as e:
        main(["export", "--model", "tiny", "--format", "tflite", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "'onnx', 'tensorrt'" in capsys.readouterr().err
    with pytest.raises(UserError, match="format: Input should be 'onnx' or 'tensorrt'"):
        export_model(None, str(tmp_path / "x"), ExportOptions.build(format="tflite"))


@pytest.mark.parametrize("argv, message", [
    (["--format", "tensorrt", "--int8-front"], "int8_front applies to format 'onnx' only"),
    (["--format", "tensorrt", "--int8", "--llm-graph", "genai"], "int8, llm_graph apply to format 'onnx' only"),
    (["--format", "onnx", "--lm-head-bits", "8"], "lm_head_bits needs llm_graph: genai"),
    (["--format", "onnx", "--llm-graph", "genai", "--lm-head-block", "128"],
     "lm_head_block applies with lm_head_bits only"),
    (["--format", "onnx", "--opset", "9"], "opset: Input should be greater than or equal to 14"),
])
def test_export_options_refused_before_the_model_loads(capsys, tmp_path, argv, message):
    """One validation (ExportOptions) for the command line and the recipe step: a clear line, exit 2, nothing
    written, and the model is never loaded (the model path does not exist)."""
    assert main(["export", "--model", str(tmp_path / "missing"), *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "missing" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_tensorrt_without_cuda_is_one_clear_line(tmp_path):
    out = tmp_path / "trt"
    r = subprocess.run([sys.executable, "-m", "compress.cli", "export", "--model", "tiny", "--format", "tensorrt",
                        "--out", str(out)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "CUDA" in err[0] and "pip install torch-tensorrt" in err[0]
    assert not out.exists()


def test_export_step_is_terminal_and_validated():
    from compress.recipe import recipe_from_dict

    with pytest.raises(ConfigError, match="must be the last step"):
        recipe_from_dict({"name": "x", "steps": [{"type": "export"}, {"type": "magnitude", "sparsity": 0.3}]})
    with pytest.raises(ConfigError, match="format: Input should be 'onnx' or 'tensorrt'"):
        recipe_from_dict({"name": "x", "steps": [{"type": "export", "format": "tflite"}]})
    r = recipe_from_dict({"name": "x", "steps": [{"type": "magnitude", "sparsity": 0.3}, {"type": "export"}]})
    assert [c.type for c in r.steps] == ["magnitude", "export"]


@pytest.mark.parametrize("step,export", [
    ({"type": "rtn", "bits": 3}, {}), ({"type": "gptq", "group_size": -1}, {}), ({"type": "gptq"}, {"int8": True}),
    ({"type": "rtn"}, {"format": "tensorrt"}), ({"type": "bitsandbytes", "mode": "int8"}, {}), ({"type": "torchao"}, {}),
    ({"type": "liger"}, {})], ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) or "onnx")
def test_export_after_quantization_is_refused_before_loading(step, export):
    from compress.recipe import recipe_from_dict

    doc = {"name": "x", "calibration": {"data": DEV, "samples": 2}, "steps": [step, {"type": "export", **export}]}
    with pytest.raises(ConfigError, match=rf"cannot follow steps\[0\] \({step['type']}\).*MatMulNBits"):
        recipe_from_dict(doc)


def test_export_after_gptq_4bit_is_accepted():
    from compress.recipe import recipe_from_dict

    r = recipe_from_dict({"name": "x", "calibration": {"data": DEV, "samples": 2},
                          "steps": [{"type": "gptq", "bits": 4, "group_size": 32}, {"type": "export"}]})
    assert [c.type for c in r.steps] == ["gptq", "export"]


def test_exporting_a_quantized_artifact_is_one_clear_error(tmp_path, capsys):
    from compress.recipe import recipe_from_dict
    from compress.runner import run_recipe

    art = str(tmp_path / "rtn")
    run_recipe(recipe_from_dict({"name": "q", "steps": [{"type": "rtn", "bits": 3, "group_size": 32}]}), "tiny", art,
               progress=False, bench=False, log=lambda *a: None)
    out = tmp_path / "onnx"
    assert main(["export", "--model", art, "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot be written as ONNX Runtime MatMulNBits" in err and "3-bit" in err and "Traceback" not in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".onnx")]


def test_gptq_export_runs_the_models_own_codes_as_matmul_nbits(tmp_path):
    """GPTQ 4-bit with act-order on the tiny LLM -> every quantized Linear is one MatMulNBits node holding the same
    codes (a Gather puts the activations in group order); ONNX Runtime decodes the tokens PyTorch decodes."""
    import onnx

    from compress.export import export_model

    model = load_model(gptq_tiny(str(tmp_path / "gptq")))
    out = str(tmp_path / "onnx")
    export_model(model, out, check={"data": DEV, "limit": 2, "max_new_tokens": 6})
    graph = onnx.load(os.path.join(out, "llm.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    quantized = len(model.module_overrides)
    assert ops.count("MatMulNBits") == quantized > 0 and "Gather" in ops  # act order: activations permuted
    m = read_manifest(out)
    nb = m["export"]["quantization"]
    assert nb["layers"] == quantized and nb["bits"] == [4] and nb["block_sizes"] == [32]
    assert m["check"]["identical"] == m["check"]["clips"]  # greedy tokens equal PyTorch's on every clip
    assert m["export"]["graphs"]["llm"]["lora"].startswith("unmerged")


def test_float_offset_grid_exports_through_the_dynamo_graph(tmp_path):
    """RTN on the float-offset grid: MatMulNBits with zero points 0 plus the offsets' block-sum branch in plain ops;
    ONNX Runtime decodes the tokens PyTorch decodes."""
    import onnx

    from compress.export import export_model

    model = load_model(rtn_offset_tiny(str(tmp_path / "q41")))
    out = str(tmp_path / "onnx")
    export_model(model, out, check={"data": DEV, "limit": 2, "max_new_tokens": 6})
    ops = [n.op_type for n in onnx.load(os.path.join(out, "llm.onnx"), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == len(model.module_overrides) > 0 and "ReduceSum" in ops
    m = read_manifest(out)
    assert m["check"]["identical"] == m["check"]["clips"]


def test_export_after_layer_drop_matches_pytorch(tmp_path):
    """Export after a compression step: the dropped model's graphs give PyTorch's greedy tokens."""
    from compress.recipe import recipe_from_dict
    from compress.runner import run_recipe

    doc = {"name": "drop", "calibration": {"data": DEV, "samples": 2},
           "steps": [{"type": "layer_drop", "part": "llm", "count": 1}]}
    art = str(tmp_path / "dropped")
    run_recipe(recipe_from_dict(doc), "tiny", art, progress=False, bench=False, log=lambda *a: None)
    dropped = load_model(art)
    out = str(tmp_path / "onnx")
    assert main(["export", "--model", art, "--format", "onnx", "--out", out, "--check", DEV, "--check-limit", "1",
                 "--check-tokens", "5"]) == 0
    man = read_manifest(out)
    assert man["export"]["graphs"]["llm"]["num_layers"] == len(dropped.llm_base().model.layers)
    assert man["check"]["clips"] == 2 and man["check"]["identical"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_tensorrt_recipe_fails_before_loading(tmp_path):
    from compress.recipe import recipe_from_dict
    from compress.runner import run_recipe

    r = recipe_from_dict({"name": "t", "steps": [{"type": "export", "format": "tensorrt"}]})
    with pytest.raises(UserError, match="torch-tensorrt"):
        run_recipe(r, "/no/such/model.yaml", str(tmp_path / "o"), progress=False, bench=False, log=lambda *a: None)


def test_exporting_leaves_the_model_untouched(tiny, exported):
    fresh = load_model("tiny").state_dict()
    state = tiny.state_dict()
    assert any("lora_A" in n for n in state)  # still a PEFT model: LoRA was merged into a copy
    assert state.keys() == fresh.keys() and all(torch.equal(state[k], fresh[k]) for k in state)
