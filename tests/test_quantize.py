"""Quantization steps on the tiny preset: reports, artifact round trips, per-part bytes, HF GPTQ export."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from compress import sparsity as sp
from compress.errors import ConfigError, UserError
from compress.inspect_model import part_stats
from compress.loaders import load_model
from compress.loaders.artifact import save_artifact
from compress.quant.hf_gptq import export_hf_gptq
from compress.quant.qlinear import GPTQLinear
from compress.recipe import recipe_from_dict
from compress.runner import RunContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = os.path.join(ROOT, "benchmarks", "data", "calib.json")
AUDIO = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
HAS_AO = importlib.util.find_spec("torchao") is not None


def apply(model, steps: list, samples: int = 4) -> list:
    model.eval()  # as loaded artifacts are (bitsandbytes int8 computes differently in training mode)
    r = recipe_from_dict({"name": "t", "calibration": {"data": CALIB, "samples": samples}, "steps": steps})
    ctx = RunContext(model, r, progress=False)
    return [s(model, ctx) for s in r.build_steps()]


def tokens(model) -> list:
    return model.generate([AUDIO], "asr", num_beams=1, max_new_tokens=5, ignore_eos=True)[0].token_ids


def llm_logits(model) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        return model.llama_model(input_ids=ids).logits


def round_trip(model, tmp_path, name="art"):
    out = str(tmp_path / name)
    save_artifact(model, out, storage="sparse")
    return load_model(out), out


def check_smaller_and_measured(rep: dict, reloaded, max_bits: float):
    assert rep["layers_quantized"] == 28  # 4 LLM layers x 7 Linears (lm_head ignored)
    assert rep["original_bits_per_param"] == 32.0 and rep["measured_bits_per_param"] < max_bits
    assert rep["part_bytes_after"]["llm"] < rep["part_bytes_before"]["llm"]
    for p in ("speech_encoder", "qformer", "proj"):
        assert rep["part_bytes_after"][p] == rep["part_bytes_before"][p]
    assert part_stats(reloaded)["llm"]["bytes"] == rep["part_bytes_after"]["llm"]
    assert len(rep["per_layer"]) == 28 and 0 < rep["weight_rel_error_max"] < 1


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("step,msg", [
    ({"type": "gptq", "bits": 5}, "bits: Input should be 2, 3, 4 or 8"),
    ({"type": "gptq", "group_size": 100}, "group_size: Input should be -1, 16, 32, 64, 128"),
    ({"type": "gptq", "damp_percent": 0}, "damp_percent: Input should be greater than 0"),
    ({"type": "gptq", "desc_act": True}, "desc_act: unknown field; valid fields: act_order"),
    ({"type": "rtn", "bits": 1}, "bits: Input should be"),
    ({"type": "bitsandbytes", "mode": "int4"}, "mode: Input should be 'int8', 'nf4' or 'fp4'"),
    ({"type": "bitsandbytes", "mode": "nf4", "threshold": 6.0}, "threshold applies to mode int8 only"),
    ({"type": "bitsandbytes", "mode": "int8", "double_quant": True}, "apply to modes nf4 and fp4"),
    ({"type": "torchao", "mode": "int4_weight_only"}, "mode: Input should be 'int8_weight_only' or 'int8_dynamic'"),
])
def test_bad_quant_configs(step, msg):
    with pytest.raises(ConfigError, match=msg):
        recipe_from_dict({"name": "x", "calibration": {"data": CALIB}, "steps": [step]})


def test_gptq_needs_calibration():
    with pytest.raises(ConfigError, match="calibrate on real audio"):
        recipe_from_dict({"name": "x", "steps": [{"type": "gptq"}]})
    recipe_from_dict({"name": "x", "steps": [{"type": "rtn"}]})  # RTN does not


# ----------------------------------------------------------------------------------------------- GPTQ / RTN
@pytest.fixture(scope="module")
def gptq_tiny():
    torch.manual_seed(0)
    m = load_model("tiny")
    before = part_stats(m)["llm"]["bytes"]
    rep = apply(m, [{"type": "gptq", "bits": 4, "group_size": 32, "act_order": True}])[0]
    return m, rep, before


def test_gptq_step_reports_and_beats_rtn(gptq_tiny):
    m, rep, before = gptq_tiny
    assert rep["part_bytes_before"]["llm"] == before
    # 4-bit codes + fp16 scales per 32 inputs + int32 g_idx + fp32 biases (none in Llama) -> about 5 bits
    assert 4.0 < rep["measured_bits_per_param"] < 6.0
    assert rep["output_rel_error_mean"] < rep["rtn_output_rel_error_mean"]
    assert rep["layers_gptq_beats_rtn"] >= 24
    lay = rep["per_layer"]["llama_model.base_model.model.model.layers.0.self_attn.q_proj"]
    assert lay["calibration_tokens"] > 100 and lay["damp_percent_used"] == 0.01
    assert rep["calibration_samples"] == 4 and rep["notes"] == []
    q = m.llm_base().model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, GPTQLinear) and q.lora_A  # LoRA kept on top of the quantized base


def test_gptq_artifact_round_trip(gptq_tiny, tmp_path):
    m, rep, _ = gptq_tiny
    again, out = round_trip(m, tmp_path)
    check_smaller_and_measured(rep, again, 6.0)
    assert tokens(again) == tokens(m)
    assert torch.equal(llm_logits(again), llm_logits(m))
    conf = json.load(open(os.path.join(out, "config.json")))["modules"]
    name = "llama_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer"
    assert conf[name]["kind"] == "gptq" and conf[name]["bits"] == 4 and conf[name]["act_order"] is True


def test_rtn_step_and_group_notes(tmp_path):
    m = load_model("tiny")
    rep = apply(m, [{"type": "rtn", "bits": 8, "group_size": 128}])[0]
    assert any("one group per output row" in n for n in rep["notes"])  # tiny widths are 64 / 128
    assert 8.0 < rep["measured_bits_per_param"] < 9.0 and rep["weight_rel_error_max"] < 0.01
    again, _ = round_trip(m, tmp_path)
    check_smaller_and_measured(rep, again, 9.0)
    assert tokens(again) == tokens(m)


def test_gptq_sequential_calibrates_on_quantized_blocks():
    reps = {}
    for seq in (True, False):
        m = load_model("tiny")
        reps[seq] = apply(m, [{"type": "gptq", "bits": 2, "group_size": 32, "sequential": seq}], samples=2)[0]
    l0 = "llama_model.base_model.model.model.layers.0.mlp.down_proj"
    l2 = "llama_model.base_model.model.model.layers.2.mlp.down_proj"
    err = {seq: {n: r["output_rel_error"] for n, r in rep["per_layer"].items()} for seq, rep in reps.items()}
    assert err[True][l0] == pytest.approx(err[False][l0])  # the first block sees the same inputs either way
    assert err[True][l2] != pytest.approx(err[False][l2])  # later ones see quantized earlier blocks


def test_wanda_2of4_then_gptq_keeps_the_pattern(tmp_path):
    m = load_model("tiny")
    reps = apply(m, [{"type": "wanda", "pattern": "2:4"},
                     {"type": "gptq", "bits": 4, "group_size": 32, "act_order": True, "keep_zeros": True}], samples=2)
    assert reps[0]["pattern_holds"] is True
    rep = reps[1]
    assert rep["zero_weights_after"] >= rep["zero_weights_before"] > 0
    again, _ = round_trip(m, tmp_path)
    qs = [mod for mod in again.modules() if isinstance(mod, GPTQLinear)]
    assert len(qs) == 28 and all(sp.is_n_m(q.dequantize(), 2, 4) for q in qs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gptq_step_on_cuda(tmp_path):
    m = load_model("tiny").to("cuda")
    rep = apply(m, [{"type": "gptq", "bits": 4, "group_size": 32}], samples=2)[0]
    assert rep["output_rel_error_mean"] < rep["rtn_output_rel_error_mean"]
    q = m.llm_base().model.layers[0].self_attn.q_proj.base_layer
    assert q.qweight.is_cuda and len(tokens(m)) == 5
    again, _ = round_trip(m, tmp_path)
    assert tokens(again.to("cuda")) == tokens(m)


# ----------------------------------------------------------------------------------------------- HF GPTQ export
HF_CHECK = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    d = sys.argv[1]
    ref = torch.load(d + "/../ref.pt")
    m = AutoModelForCausalLM.from_pretrained(d, device_map="cpu", dtype=torch.float16)
    kind = type(m.model.layers[0].self_attn.q_proj).__module__
    assert kind.startswith("gptqmodel"), kind
    with torch.no_grad():
        base = m(input_ids=ref["ids"]).logits.float()
    from peft import PeftModel
    with torch.no_grad():
        lora = PeftModel.from_pretrained(m, d + "/lora")(input_ids=ref["ids"]).logits.float()
    print("RESULT", float((base - ref["base"]).abs().max()), float((lora - ref["lora"]).abs().max()),
          float((ref["lora"] - ref["base"]).abs().max()), float(ref["base"].abs().max()))
""")


def _gptqmodel_pythonpath():
    """gptqmodel is not a dependency (installed, PEFT imports it whenever it builds LoRA layers, which costs seconds
    and sets allocator environment variables): use it from the venv if there, else from SALMONN_COMPRESS_GPTQMODEL_PATH
    or <venv>/gptq-interop (a `pip install --target` directory)."""
    if importlib.util.find_spec("gptqmodel") is not None:
        return ""
    for d in (os.environ.get("SALMONN_COMPRESS_GPTQMODEL_PATH"), os.path.join(sys.prefix, "gptq-interop")):
        if d and os.path.isdir(os.path.join(d, "gptqmodel")) and os.path.isdir(os.path.join(d, "optimum")):
            return d
    return None


def test_export_hf_gptq_files(gptq_tiny, tmp_path):
    m, _, _ = gptq_tiny
    out = export_hf_gptq(m, str(tmp_path / "hf"))
    cfg = json.load(open(os.path.join(out, "config.json")))
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 32 and qc["sym"] is True
    assert qc["desc_act"] is True and qc["checkpoint_format"] == "gptq"
    assert "modules_in_block_to_quantize" not in qc  # every Linear of every block is quantized
    from safetensors.torch import load_file

    st = load_file(os.path.join(out, "model.safetensors"))
    k = "model.layers.0.self_attn.q_proj."
    assert st[k + "qweight"].dtype == torch.int32 and st[k + "qweight"].shape == (64 * 4 // 32, 64)
    assert st[k + "qzeros"].shape == (2, 64 * 4 // 32) and st[k + "scales"].shape == (2, 64)
    assert st[k + "g_idx"].shape == (64,) and not any("lora" in n or "base_layer" in n for n in st)
    # v1 offset: symmetric 4-bit zero 8 is stored as 7 in every nibble
    assert bool((st[k + "qzeros"] == 0x77777777).all())
    assert os.path.isfile(os.path.join(out, "lora", "adapter_config.json"))
    with pytest.raises(UserError, match="no GPTQ/RTN-quantized Linear"):
        export_hf_gptq(load_model("tiny"), str(tmp_path / "none"))


def test_export_hf_gptq_partial_targets_name_the_quantized_modules(tmp_path):
    m = load_model("tiny")
    apply(m, [{"type": "rtn", "bits": 4, "group_size": 32,
               "targets": {"parts": ["llm"], "include": r"layers\.(0|3)\.mlp\."}}])
    qc = json.load(open(os.path.join(export_hf_gptq(m, str(tmp_path / "hf")), "config.json")))["quantization_config"]
    assert qc["desc_act"] is False and qc["modules_in_block_to_quantize"] == [
        [f".layers.{i}.mlp.{p}" for i in (0, 3) for p in ("gate_proj", "up_proj", "down_proj")]]


def test_export_hf_gptq_loads_in_transformers_gptqmodel(gptq_tiny, tmp_path):
    path = _gptqmodel_pythonpath()
    if path is None:
        pytest.skip("gptqmodel not importable (not a dependency; see _gptqmodel_pythonpath)")
    m, _, _ = gptq_tiny
    out = export_hf_gptq(m, str(tmp_path / "hf"))
    ids = torch.tensor([[1, 5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        lora = m.llama_model(input_ids=ids).logits
        with m.llama_model.disable_adapter():
            base = m.llama_model(input_ids=ids).logits
    torch.save({"ids": ids, "base": base, "lora": lora}, str(tmp_path / "ref.pt"))
    script = tmp_path / "check.py"
    script.write_text(HF_CHECK)
    env = dict(os.environ, GPTQMODEL_CPU_WORKERS="2", TORCH_COMPILE_DISABLE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH", "")) if p))
    r = subprocess.run([sys.executable, str(script), out], capture_output=True, text=True, env=env, timeout=500)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    assert r.returncode == 0 and line, r.stdout[-2000:] + r.stderr[-4000:]
    d_base, d_lora, lora_effect, scale = map(float, line[0].split()[1:])
    assert d_base < 0.02 * scale and d_lora < 0.02 * scale  # float16 kernels vs our float32 dequantization
    assert lora_effect > 10 * d_lora  # the adapters matter, and they are applied the same way


# ----------------------------------------------------------------------------------------------- bitsandbytes
@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes not installed")
@pytest.mark.parametrize("step,max_bits", [  # tiny layers (4-16 K weights): bitsandbytes' fixed ~1.3 KB of
    ({"type": "bitsandbytes", "mode": "int8"}, 8.7),  # 4-bit quant maps per layer add ~1.3 bits; on real
    ({"type": "bitsandbytes", "mode": "nf4"}, 6.5),  # layers nf4 + double quant is ~4.13 bits
    ({"type": "bitsandbytes", "mode": "fp4", "double_quant": False}, 5.0),
])
def test_bitsandbytes_round_trip(step, max_bits, tmp_path, monkeypatch):
    import compress.loaders.materialize as mat

    monkeypatch.setattr(mat, "CHUNK_BYTES", 1)  # every module its own chunk: a module's keys must stay together
    m = load_model("tiny")
    rep = apply(m, [step])[0]
    assert rep["bytes_not_in_part_stats"] > 0
    again, out = round_trip(m, tmp_path)
    check_smaller_and_measured(rep, again, max_bits)
    assert rep["weight_rel_error_max"] < (0.02 if step["mode"] == "int8" else 0.2)
    assert torch.equal(llm_logits(again), llm_logits(m))
    assert tokens(again) == tokens(m)
    kind = json.load(open(os.path.join(out, "config.json")))["modules"]
    assert {v["kind"] for v in kind.values()} == {"bitsandbytes"} and len(kind) == 28


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes not installed")
@pytest.mark.parametrize("step,msg", [
    ({"type": "bitsandbytes", "mode": "int8", "targets": {"parts": ["proj"]}}, "cannot quantize the projection"),
    ({"type": "bitsandbytes", "mode": "nf4", "targets": {"parts": ["beats"]}}, "divisible by its block size 64"),
])
def test_bitsandbytes_refuses_what_would_break(step, msg):
    with pytest.raises(ConfigError, match=msg):
        apply(load_model("tiny"), [step])


def test_other_parts_quantize_and_keep_running(tmp_path):
    """gptq on every non-LLM part (widths 16..192: short last groups reported), torchao on the projection."""
    m = load_model("tiny")
    steps = [{"type": "gptq", "bits": 4, "group_size": 32, "act_order": True,
              "targets": {"parts": ["speech_encoder", "beats", "qformer"], "ignore": []}}]
    if HAS_AO:
        steps.append({"type": "torchao", "mode": "int8_dynamic", "targets": {"parts": ["proj"], "ignore": []}})
    reps = apply(m, steps, samples=2)
    assert reps[0]["layers_gptq_beats_rtn"] == reps[0]["layers_quantized"] > 30
    assert any("last group is shorter" in n for n in reps[0]["notes"])
    assert m.speech_llama_proj.weight.dtype == torch.float32  # what the model casts its features to
    again, _ = round_trip(m, tmp_path)
    assert tokens(again) == tokens(m)


@pytest.mark.skipif(not (HAS_BNB and torch.cuda.is_available()), reason="needs bitsandbytes and CUDA")
def test_bitsandbytes_on_cuda(tmp_path):
    m = load_model("tiny").to("cuda")
    apply(m, [{"type": "bitsandbytes", "mode": "nf4"}])
    assert len(tokens(m)) == 5
    again, _ = round_trip(m.to("cpu"), tmp_path)
    assert len(tokens(again.to("cuda"))) == 5


# ----------------------------------------------------------------------------------------------- torchao
@pytest.mark.skipif(not HAS_AO, reason="torchao not installed")
@pytest.mark.parametrize("mode", ["int8_weight_only", "int8_dynamic"])
def test_torchao_round_trip(mode, tmp_path):
    m = load_model("tiny")
    rep = apply(m, [{"type": "torchao", "mode": mode}])[0]
    again, _ = round_trip(m, tmp_path)
    check_smaller_and_measured(rep, again, 8.6)
    assert rep["weight_rel_error_max"] < 0.02
    assert torch.equal(llm_logits(again), llm_logits(m))
    assert tokens(again) == tokens(m)
    from torchao.quantization import Int8Tensor

    q = again.llm_base().model.layers[0].mlp.down_proj
    assert isinstance(q.weight_tensor(), Int8Tensor)
    assert (q._act_quant_kwargs is not None) == (mode == "int8_dynamic")
