"""The LLM graph written by onnxruntime-genai's builder (export --llm-graph genai): same logits as PyTorch for a
float model with LoRA merged and for a GPTQ model whose own codes are swapped in (LoRA beside them), ONNX Runtime's
fused operators in the graph, and clear errors (padded batches, builder missing)."""

import os

import numpy as np
import pytest
import torch

from builders import DEV, SessionRecorder, gptq_tiny, random_lora, rtn_offset_tiny
from compress.errors import UserError
from compress.loaders import load_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai")


def _logits_side_by_side(model, ort_model, steps: int = 3) -> float:
    """Max |logit difference| between the PyTorch LLM (whole sequence each time) and the ONNX Runtime graph
    (prefill, then one position at a time through its KV cache), over a prompt of random embeddings."""
    torch.manual_seed(0)
    hidden = model.cfg.llm["hidden_size"]
    seq = torch.randn(1, 5 + steps, hidden) * 0.5
    worst, cache = 0.0, None
    for t in range(5, 5 + steps + 1):
        with torch.no_grad():
            ref = model.llama_model(inputs_embeds=seq[:, :t], attention_mask=torch.ones(1, t, dtype=torch.long),
                                    position_ids=torch.arange(t)[None]).logits[0, -1]
        new = seq[:, :t] if cache is None else seq[:, t - 1:t]
        out = ort_model.lm(inputs_embeds=new, attention_mask=torch.ones(1, t, dtype=torch.long),
                           position_ids=torch.arange(t - new.shape[1], t)[None], past_key_values=cache)
        cache = out.past_key_values
        worst = max(worst, float((out.logits[0, -1] - ref).abs().max()))
    return worst


def _ops(path: str) -> list:
    import onnx

    return [n.op_type for n in onnx.load(os.path.join(path, "llm.onnx"), load_external_data=False).graph.node]


def test_float_model_with_lora_matches_pytorch(tmp_path):
    from compress.export import export_model
    from compress.export.options import ExportOptions
    from compress.outputs import read_manifest

    torch.set_num_threads(1)
    model = load_model("tiny")
    assert random_lora(model) > 0
    out = str(tmp_path / "genai")
    export_model(model, out, ExportOptions(llm_graph="genai"), check={"data": DEV, "limit": 1, "max_new_tokens": 5})
    ops = _ops(out)
    layers = model.cfg.llm["num_hidden_layers"]
    assert ops.count("GroupQueryAttention") == layers and "SkipSimplifiedLayerNormalization" in ops
    assert load_model(out).conf["llm"]["weights_file"] == "llm.onnx.data"  # weights beside the graph, mapped
    assert os.path.getsize(os.path.join(out, "llm.onnx.data")) > 10 * os.path.getsize(os.path.join(out, "llm.onnx"))
    assert "Pow" not in ops and "Softmax" not in ops  # the norms and attention are fused operators
    ort_model = load_model(out)
    assert _logits_side_by_side(model, ort_model) < 1e-3
    m = read_manifest(out)
    assert m["export"]["llm_graph"].startswith("onnxruntime-genai")
    assert m["check"]["identical"] == m["check"]["clips"] == 2
    assert m["export"]["graphs"]["llm"]["lora"] == "merged into the base weights"
    with pytest.raises(UserError, match="padded batches"):  # positions come from the mask: no left padding
        ort_model.lm(inputs_embeds=torch.zeros(2, 3, model.cfg.llm["hidden_size"]),
                     attention_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]), position_ids=torch.zeros(2, 3).long())


def test_gptq_codes_are_swapped_in_with_lora_beside_them(tmp_path):
    """GPTQ 4-bit act-order: q, k and v share their input, hence their column order, and become one MatMulNBits
    node per layer beside o, gate, up and down; LoRA is added back as a branch; logits equal the PyTorch model's."""
    import onnx

    from compress.export import export_model
    from compress.export.options import ExportOptions
    from compress.quant.nbits import from_gptq

    torch.set_num_threads(1)
    model = load_model(gptq_tiny(str(tmp_path / "gptq")))
    n_lora = random_lora(model)
    out = str(tmp_path / "genai")
    export_model(model, out, ExportOptions(llm_graph="genai"))
    ops = _ops(out)
    layers = model.cfg.llm["num_hidden_layers"]
    assert ops.count("MatMulNBits") == 5 * layers and ops.count("Gather") >= 5 * layers  # act order: permuted
    assert ops.count("GroupQueryAttention") == layers
    # the codes in the graph are the model's own: the stacked q/k/v blob starts with q_proj's
    graph = onnx.load(os.path.join(out, "llm.onnx")).graph
    blob = next(onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name == "/model/layers.0/attn/qkv_proj.B")
    q = dict(model.named_modules())["llama_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer"]
    want = from_gptq(q.qweight, q.qzeros, q.scales, q.g_idx, q.bits, q.in_features).b.numpy()
    assert np.array_equal(blob[: want.shape[0]], want)
    spec = load_model(out).conf["llm"]["matmul_nbits"]
    assert spec["matmul_nbits_nodes"] == 5 * layers and spec["side_branches"] == n_lora // 2 > 0
    assert _logits_side_by_side(model, load_model(out)) < 2e-3


def test_float_offset_grid_runs_as_matmulnbits_plus_a_side_branch(tmp_path):
    """RTN on the float-offset grid (Q4_1's): zero points 0 in MatMulNBits (the packed kernels' layout) and the
    offsets in each projection's side branch with its LoRA; logits equal the PyTorch model's."""
    from compress.export import export_model
    from compress.export.options import ExportOptions

    torch.set_num_threads(1)
    model = load_model(rtn_offset_tiny(str(tmp_path / "q41")))
    random_lora(model)
    out = str(tmp_path / "genai")
    export_model(model, out, ExportOptions(llm_graph="genai"))
    layers = model.cfg.llm["num_hidden_layers"]
    ops = _ops(out)
    assert ops.count("MatMulNBits") == 5 * layers
    spec = load_model(out).conf["llm"]["matmul_nbits"]
    assert spec["float_offsets"] is True and spec["side_branches"] == 5 * layers  # every projection has offsets
    assert _logits_side_by_side(model, load_model(out)) < 2e-3


def test_merged_adapter_leaves_one_matmulnbits_per_projection(tmp_path):
    """merge_lora then RTN 4-bit (integer zero points): no branch beside any projection, only the MatMulNBits
    nodes and the float head's MatMul; logits equal the PyTorch model's."""
    from compress.export import export_model
    from compress.export.options import ExportOptions
    from compress.recipe import recipe_from_dict
    from compress.runner import RunContext

    torch.set_num_threads(1)
    model = load_model("tiny")
    random_lora(model)
    rtn = {"type": "rtn", "bits": 4, "group_size": 32, "sym": False,
           "targets": {"parts": ["llm"], "ignore": ["lm_head"]}}
    r = recipe_from_dict({"name": "m", "steps": [{"type": "merge_lora"}, rtn]})
    ctx = RunContext(model, r, progress=False)
    for step in r.build_steps():
        step(model, ctx)
    out = str(tmp_path / "genai")
    export_model(model, out, ExportOptions(llm_graph="genai"))
    layers = model.cfg.llm["num_hidden_layers"]
    ops = _ops(out)
    assert ops.count("MatMulNBits") == 5 * layers and ops.count("MatMul") == 1  # the output layer
    ort_model = load_model(out)
    assert ort_model.conf["llm"]["matmul_nbits"]["side_branches"] == 0
    assert _logits_side_by_side(model, ort_model) < 2e-3


def test_missing_builder_names_the_install_command(monkeypatch):
    import importlib.util

    from compress.export import genai_graph

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime_genai" else real(n, *a))
    with pytest.raises(UserError, match="pip install -c constraints.txt onnxruntime-genai"):
        genai_graph.require_builder()


@pytest.mark.parametrize("block", [32, 128])
def test_output_layer_at_8_bits(tmp_path, block):
    """--lm-head-bits 8: the output layer becomes a MatMulNBits node (ONNX Runtime's quantizer) in blocks of
    --lm-head-block input columns; logits stay close; the option is refused without the genai graph, before
    anything loads."""
    import onnx

    from compress.errors import ConfigError
    from compress.export import export_model
    from compress.export.options import ExportOptions
    from compress.recipe import recipe_from_dict

    torch.set_num_threads(1)
    model = load_model("tiny")
    out = str(tmp_path / "genai8")
    export_model(model, out, ExportOptions(llm_graph="genai", lm_head_bits=8, lm_head_block=block))
    ops = _ops(out)
    assert ops.count("MatMulNBits") == 1 and "MatMul" in ops  # the head only; the projections stay float
    head = next(n for n in onnx.load(os.path.join(out, "llm.onnx"), load_external_data=False).graph.node
                if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in head.attribute}["block_size"] == block
    ort_model = load_model(out)
    assert "8-bit" in ort_model.conf["llm"]["lm_head"] and f"blocks of {block}," in ort_model.conf["llm"]["lm_head"]
    assert 0 < _logits_side_by_side(model, ort_model) < 0.05
    with pytest.raises(ConfigError, match="lm_head_bits needs llm_graph: genai"):
        recipe_from_dict({"name": "x", "steps": [{"type": "export", "format": "onnx", "lm_head_bits": 8}]})


def test_prefill_graph_shares_the_weights_and_runs_the_prompt(tmp_path):
    """--prefill-accuracy-level 4: a second LLM graph, the same nodes with the MatMulNBits compute mode (only)
    changed, reading the one weights file the decode graph reads; the runtime sends every multi-position call to it
    and the one-position steps to the decode graph; int8 activations in the prefill move the logits a little, not
    more. Refused for a float LLM and beside int8."""
    import onnx

    from compress.errors import ConfigError
    from compress.export import export_model
    from compress.export.lite import LlmSession
    from compress.export.options import ExportOptions
    from compress.recipe import recipe_from_dict

    torch.set_num_threads(1)
    model = load_model(rtn_offset_tiny(str(tmp_path / "q41")))
    random_lora(model)
    out = str(tmp_path / "pf4")
    export_model(model, out, ExportOptions(llm_graph="genai", prefill_accuracy_level=4))
    assert {"llm.onnx", "llm_prefill.onnx", "llm.onnx.data"} <= set(os.listdir(out))
    graphs = {n: onnx.load(os.path.join(out, n), load_external_data=False).graph
              for n in ("llm.onnx", "llm_prefill.onnx")}
    for g in graphs.values():  # every weight over 1 KiB lives once, in the shared file
        big = [t for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) > 1024]
        assert big and all(t.data_location == onnx.TensorProto.EXTERNAL and
                           {e.key: e.value for e in t.external_data}["location"] == "llm.onnx.data" for t in big)
    stored = sum(int({e.key: e.value for e in t.external_data}["length"]) for t in graphs["llm.onnx"].initializer
                 if t.data_location == onnx.TensorProto.EXTERNAL)
    assert os.path.getsize(os.path.join(out, "llm.onnx.data")) < 1.5 * stored  # written once, not appended twice
    levels = {n: {next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)  # absent: 0
                  for node in g.node if node.op_type == "MatMulNBits"} for n, g in graphs.items()}
    assert levels == {"llm.onnx": {0}, "llm_prefill.onnx": {4}}
    assert [n.op_type for n in graphs["llm.onnx"].node] == [n.op_type for n in graphs["llm_prefill.onnx"].node]

    ort_model = load_model(out)
    spec = ort_model.conf["llm"]
    assert spec["prefill_accuracy_level"] == 4
    llm = ort_model.lm.llm
    decode_only = LlmSession(llm.session, spec)
    llm.prefill, llm.session = SessionRecorder(llm.prefill), SessionRecorder(llm.session)
    assert 0 < _logits_side_by_side(model, ort_model) < 0.1
    # the prompt through the prefill graph; the three one-position steps in place on the decode graph's session
    assert llm.prefill.lengths == [5] and llm.session.lengths == []
    assert llm.in_place.sess is decode_only.session and llm.in_place.length == 8
    rng = np.random.default_rng(0)
    prompt = (0.5 * rng.standard_normal((1, 7, model.cfg.llm["hidden_size"]))).astype(np.float32)
    args = (prompt, np.ones((1, 7), np.int64), np.arange(7)[None])
    fast, exact = llm.run(*args)[0], decode_only.run(*args)[0]
    assert 0 < np.abs(fast - exact).max() < 0.1  # the int8-activation graph did run, and stays close

    with pytest.raises(UserError, match="this LLM graph has none"):
        export_model(load_model("tiny"), str(tmp_path / "float"), ExportOptions(prefill_accuracy_level=4))
    assert not os.path.exists(tmp_path / "float")
    with pytest.raises(ConfigError, match="not with int8"):
        recipe_from_dict({"name": "x", "steps": [{"type": "export", "int8": True, "prefill_accuracy_level": 4}]})


def _levels_by_projection(graph) -> dict:
    """{projection name in the node name: {accuracy levels}} of a graph's MatMulNBits nodes."""
    out: dict = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            proj = next((p for p in ("qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
                         if p in node.name), node.name)
            out.setdefault(proj, set()).add(next((a.i for a in node.attribute if a.name == "accuracy_level"), 0))
    return out


def test_nbits_float_keeps_the_named_projections_at_float_activations(tmp_path):
    """nbits_float: the named projections' MatMulNBits keep level 0 while the rest take nbits_accuracy_level;
    q/k/v (one node in the builder's graph) go together; the option needs an accuracy level; the CLI takes it."""
    import onnx

    from compress.cli import main
    from compress.errors import ConfigError
    from compress.export import export_model
    from compress.export.options import ExportOptions
    from compress.recipe import recipe_from_dict

    torch.set_num_threads(1)
    q41 = rtn_offset_tiny(str(tmp_path / "q41"))
    out = str(tmp_path / "mixed")
    assert main(["export", "--model", q41, "--format", "onnx", "--llm-graph", "genai", "--nbits-accuracy-level", "4",
                 "--nbits-float", "down_proj", "--out", out]) == 0
    levels = _levels_by_projection(onnx.load(os.path.join(out, "llm.onnx"), load_external_data=False).graph)
    assert levels == {"qkv_proj": {4}, "o_proj": {4}, "gate_proj": {4}, "up_proj": {4}, "down_proj": {0}}
    ort_model = load_model(out)
    assert ort_model.conf["llm"]["matmul_nbits"]["float_activations"] == ["mlp/down_proj"]
    assert 0 < _logits_side_by_side(load_model(q41), ort_model) < 0.1

    model = load_model(q41)
    with pytest.raises(UserError, match="in one MatMulNBits node"):
        export_model(model, str(tmp_path / "qonly"), ExportOptions(llm_graph="genai", nbits_accuracy_level=4,
                                                                   nbits_float=["q_proj"]))
    assert not os.path.exists(tmp_path / "qonly")
    # the dynamo graph has one node per projection: q_proj alone is fine there
    export_model(model, str(tmp_path / "dyn"), ExportOptions(nbits_accuracy_level=4, nbits_float=["q_proj"]))
    dyn = load_model(str(tmp_path / "dyn"))
    assert dyn.conf["llm"]["matmul_nbits"]["accuracy_levels"] == [0, 4]
    with pytest.raises(ConfigError, match="nbits_float .* needs nbits_accuracy_level > 0"):
        recipe_from_dict({"name": "x", "steps": [{"type": "export", "nbits_float": ["down_proj"]}]})
