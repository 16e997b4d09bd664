"""Recipes: every shipped recipe validates, round-trips and runs; bad recipes fail before any model loads."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from compress.cli import main
from compress.errors import ConfigError
from compress.loaders import load_model
from compress.recipe import load_recipe, parse_recipe, recipe_from_dict, shipped_recipes
from compress.runner import run_recipe
from compress.steps.targets import Targets, select_linears

RECIPES = shipped_recipes()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = os.path.join(ROOT, "benchmarks", "data", "calib.json")


def test_there_are_shipped_recipes():
    names = {os.path.basename(p) for p in RECIPES}
    assert {"magnitude-50.yaml", "wanda-50.yaml", "wanda-2of4.yaml", "lottery-50-3rounds.yaml",
            "layer-drop-25.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_round_trips(path):
    r = load_recipe(path)
    again = parse_recipe(r.to_yaml(), "again", r.base_dir)
    assert again.to_dict() == r.to_dict() and again.sha256() == r.sha256()


def _zeros_in_saved(out: str, names: list) -> float:
    """Sparsity counted independently, from the saved tensors (dense, or bitmask + values)."""
    st = load_file(os.path.join(out, "model.safetensors"))
    sparse = json.load(open(os.path.join(out, "config.json")))["sparse"]
    wanted = {k for n in names for k in (n + ".weight", n + ".base_layer.weight")}
    zeros = total = found = 0
    for k in wanted:
        if k in st:
            zeros, total, found = zeros + int((st[k] == 0).sum()), total + st[k].numel(), found + 1
        elif k in sparse:
            n = int(np.prod(sparse[k]["shape"]))
            kept = int(np.unpackbits(st[k + ".__sparse_mask"].numpy())[:n].sum())
            assert kept == st[k + ".__sparse_values"].numel()
            zeros, total, found = zeros + n - kept, total + n, found + 1
    assert found == len(names)
    return zeros / total


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_runs_on_tiny(path, tmp_path):
    r = load_recipe(path)
    out = str(tmp_path / "art")
    res = run_recipe(r, "tiny", out, progress=False, bench=False, log=lambda *a: None)
    m = load_model(out)
    manifest = m.manifest
    assert manifest["recipe_sha256"] == r.sha256() and manifest["source"]["preset"] == "tiny"
    assert manifest["steps"][0]["type"] == r.steps[0].type and manifest["steps"][0]["seconds"] >= 0
    rep = res["steps"][-1]
    if "measured_sparsity" in rep:
        names = list(select_linears(m, r.steps[-1].targets))
        assert _zeros_in_saved(out, names) == pytest.approx(rep["measured_sparsity"], abs=1e-12)
        assert "stored densely" in rep["storage_note"]
    if "pattern_holds" in rep:
        assert rep["pattern_holds"] is True
    if rep["type"] == "sparsegpt":  # the reconstruction lowers the calibration output error of its own mask
        assert rep["output_rel_error_mean"] < rep["mask_only_output_rel_error_mean"]
    if rep["type"] == "layer_drop":
        assert rep["layers_after"] == len(m.llm_base().model.layers) < rep["layers_before"]
    if rep["type"] == "lottery_ticket":
        plan = r.steps[-1].targets_per_round()
        assert rep["lora_new_zeros"] == 0 and len(rep["rounds"]) == len(plan) == 3
        assert [x["measured_sparsity"] for x in rep["rounds"]] == pytest.approx(plan, abs=0.01)
    out_ids = m.generate([torch.zeros(16000).numpy()], "asr", num_beams=1, max_new_tokens=3, ignore_eos=True)
    assert len(out_ids[0].token_ids) == 3


def test_sparse_storage_round_trip_and_size(tmp_path):
    from compress.loaders.artifact import save_artifact

    r = recipe_from_dict({"name": "m", "steps": [{"type": "magnitude", "sparsity": 0.6,
                                                   "targets": {"parts": ["llm", "speech_encoder"]}}]})
    res = run_recipe(r, "tiny", str(tmp_path / "s"), progress=False, bench=False, log=lambda *a: None)
    assert res["steps"][0]["measured_sparsity"] == pytest.approx(0.6, abs=0.01)
    sparse = load_model(str(tmp_path / "s"))
    save_artifact(sparse, str(tmp_path / "d"), storage="dense")
    dense = load_model(str(tmp_path / "d"))
    a, b = sparse.state_dict(), dense.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ms, md = sparse.manifest["storage"], dense.manifest["storage"]
    assert ms["sparse_tensors"] > 0 and md["sparse_tensors"] == 0
    assert ms["stored_tensor_bytes"] < 0.8 * md["stored_tensor_bytes"]
    size = lambda d: os.path.getsize(os.path.join(d, "model.safetensors"))  # noqa: E731
    assert size(str(tmp_path / "s")) < size(str(tmp_path / "d"))


def test_lora_is_never_a_target():
    m = load_model("tiny")
    sel = select_linears(m, Targets(parts=["llm"], include=".*", ignore=[]))
    assert sel and not any("lora" in n for n in sel)
    assert any(n.endswith("q_proj") for n in sel)  # the base layer under the LoRA wrapper, shown by its name


def test_wanda_sequential_sees_pruned_earlier_layers(tmp_path):
    base = {"name": "w", "calibration": {"data": CALIB, "samples": 4}}
    seq = recipe_from_dict({**base, "steps": [{"type": "wanda", "sparsity": 0.5}]})
    par = recipe_from_dict({**base, "steps": [{"type": "wanda", "sparsity": 0.5, "sequential": False}]})
    run_recipe(seq, "tiny", str(tmp_path / "a"), progress=False, bench=False, log=lambda *a: None)
    run_recipe(par, "tiny", str(tmp_path / "b"), progress=False, bench=False, log=lambda *a: None)
    a, b = load_model(str(tmp_path / "a")).state_dict(), load_model(str(tmp_path / "b")).state_dict()
    l0 = [k for k in a if k.startswith("llama_model") and ".layers.0." in k and "lora" not in k
          and a[k].dim() == 2]
    l1 = [k.replace(".layers.0.", ".layers.1.") for k in l0]
    assert len(l0) == 7
    assert all(torch.equal(a[k] == 0, b[k] == 0) for k in l0)  # first layer: same inputs either way
    assert any(not torch.equal(a[k] == 0, b[k] == 0) for k in l1)  # second layer: pruned inputs differ


def test_wanda_scope_row_or_layer(tmp_path):
    base = {"name": "w", "calibration": {"data": CALIB, "samples": 4}}
    for scope in ("row", "layer"):
        r = recipe_from_dict({**base, "steps": [{"type": "wanda", "sparsity": 0.5, "scope": scope}]})
        run_recipe(r, "tiny", str(tmp_path / scope), progress=False, bench=False, log=lambda *a: None)
    key = "llama_model.base_model.model.model.layers.0.mlp.up_proj.weight"
    w = {s: load_model(str(tmp_path / s)).state_dict()[key] for s in ("row", "layer")}
    row_share = {s: (w[s] == 0).float().mean(dim=1) for s in w}
    assert torch.all(row_share["row"] == 0.5)  # every output row loses exactly half
    assert (w["layer"] == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)  # the layer as a whole does
    assert row_share["layer"].std() > 0.01  # rows differ: the comparison group is the layer


def test_layer_drop_explicit_layers_and_renumbering(tmp_path):
    r = recipe_from_dict({"name": "d", "steps": [{"type": "layer_drop", "part": "llm", "layers": [0]}]})
    out = str(tmp_path / "d")
    run_recipe(r, "tiny", out, progress=False, bench=False, log=lambda *a: None)
    m = load_model(out)
    layers = m.llm_base().model.layers
    assert len(layers) == 3 and [l.self_attn.layer_idx for l in layers] == [0, 1, 2]
    assert m.cfg.llm["num_hidden_layers"] == 3


@pytest.mark.parametrize("doc,msg", [
    ({"name": "x", "steps": [{"type": "prune-it"}]}, "unknown step type 'prune-it'; valid: .*'layer_drop'"),
    ({"name": "x", "steps": [{"type": "magnitude", "sparsity": 1.2}]}, "sparsity: Input should be less than 1"),
    ({"name": "x", "steps": [{"type": "magnitude", "spars": 0.3}]}, "spars: unknown field; valid fields: pattern"),
    ({"name": "x", "steps": [{"type": "wanda"}]}, "calibrate on real audio"),
    ({"name": "x", "steps": []}, "non-empty list"),
    ({"name": "x", "steps": [{"type": "export", "int8_float": ["down_proj"]}]}, "int8_float applies with int8"),
    ({"name": "x", "steps": [{"type": "export", "int8": True, "int8_float": ["up_proj"]}]}, "down_proj"),
    ({"name": "x", "steps": [{"type": "export", "format": "tensorrt", "int8_front": True}]}, "format 'onnx' only"),
    ({"name": "x", "steps": [{"type": "magnitude", "targets": {"parts": ["lm"]}}]}, "valid: speech_encoder"),
    ({"name": "x", "steps": [{"type": "magnitude", "targets": {"include": "(["}}]}, "invalid regular expression"),
    ({"name": "x", "steps": [{"type": "layer_drop", "part": "beats", "count": 1}]}, "part: Input should be"),
    ({"name": "x", "steps": [{"type": "lottery_ticket", "retrain": {"data": "x", "steps": 1}, "rewind": "early"}]},
     "rewind: early needs train_base"),
    ({"name": "x", "steps": [{"type": "lottery_ticket", "retrain": {"data": "x", "steps": 1},
                              "schedule": [0.5, 0.3]}]}, "schedule must be increasing"),
    ({"name": "x", "steps": [{"type": "lottery_ticket", "retrain": {"data": "x", "steps": 1},
                              "rewind": "later"}]}, "rewind: Input should be 'start', 'early' or 'none'"),
    ({"name": "x", "calibration": {"data": "c.json", "inputs": "text"},
      "steps": [{"type": "wanda", "targets": {"parts": ["llm", "qformer"]}}]}, "feeds the LLM only, but steps target ['qformer']"),
    ({"name": "x", "calibration": {"data": "c.json", "inputs": "speech"}, "steps": [{"type": "wanda"}]}, "inputs"),
    ({"name": "x", "steps": [{"type": "rtn", "zero_point": "float"}]}, "asymmetric grid"),
    ({"name": "x", "steps": [{"type": "rtn", "zero_point": "half"}]}, "zero_point: Input should be 'integer' or 'float'"),
    ({"name": "x", "calibration": {"data": "c.json"},
      "steps": [{"type": "gptq", "sym": False, "zero_point": "float"}]}, "gptq takes zero_point: integer only"),
])
def test_bad_recipes(doc, msg):
    with pytest.raises(ConfigError, match=msg if ".*" in msg else msg.replace("(", r"\(").replace("[", r"\[")):
        recipe_from_dict(doc)


def test_cli_bad_recipe_fails_before_loading(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nsteps:\n  - {type: magnitude, sparsity: 2}\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(p), "--model", "/no/such/model.yaml",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "sparsity" in r.stderr and "Traceback" not in r.stderr
    assert "model.yaml" not in r.stderr  # the recipe was refused first
    assert not out.exists()


def test_cli_run_and_interrupt_leaves_nothing(tmp_path, monkeypatch, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("name: m\nsteps:\n  - {type: magnitude, sparsity: 0.3}\n")
    out = tmp_path / "art"
    assert main(["run", str(p), "--model", "tiny", "--out", str(out)]) == 0
    assert (out / "manifest.json").exists()
    assert main(["run", str(p), "--model", "tiny", "--out", str(out)]) == 2  # exists, no --overwrite
    import compress.outputs as art

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(art, "sha256_file", interrupted)
    out2 = tmp_path / "art2"
    assert main(["run", str(p), "--model", "tiny", "--out", str(out2)]) == 130
    assert sorted(os.listdir(tmp_path)) == ["art", "r.yaml"]


def test_cli_recipes_lists_all(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for path in RECIPES:
        assert load_recipe(path).name in out


def test_demo_command_on_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--model", "tiny", "--recipes", "magnitude-50,layer-drop-25", "--out", str(out),
                 "--limit", "2", "--beams", "1", "--max-new-tokens", "3", "--latency-tokens", "3", "--repeats", "1"])
    assert code == 0
    for f in ("baseline.json", "magnitude-50.json", "layer-drop-25.json", "table.md", "table.csv", "pareto.png",
              "diff-magnitude-50.txt"):
        assert (out / f).exists(), f
    table = (out / "table.md").read_text()
    assert table.count("\n") == 5 and "layer-drop-25" in table
    assert main(["demo", "--model", "tiny", "--recipes", "no-such-recipe", "--out", str(out)]) == 2


def test_text_calibration_feeds_the_llm_text_only():
    """inputs='text': the LLM gets BOS + the reference's tokens, no prompt, no speech tokens."""
    from compress.steps.calibration import CalibSample, llm_inputs, reference_ids

    m = load_model("tiny")
    s = CalibSample("a", np.zeros(16000, dtype=np.float32), "asr", "hello world")
    emb, mask = llm_inputs(m, s, True, "text")
    ids = [m.tokenizer.bos_token_id] + reference_ids(m, "hello world")
    want = m.llama_model.get_input_embeddings()(torch.tensor([ids]))
    assert emb.shape == want.shape and torch.equal(emb, want) and mask.sum() == len(ids)
    audio_emb, _ = llm_inputs(m, s, True, "audio")
    assert audio_emb.shape[1] > emb.shape[1]


def test_clip_calibration_keeps_the_clips_speech_windows_only():
    """speech_windows='clip': the LLM gets the first speech tokens (those of the clip's windows + 2), same values."""
    from compress.steps.calibration import CalibSample, clip_speech_tokens, llm_inputs

    m = load_model("tiny")
    m.eval()
    rng = np.random.default_rng(0)
    s = CalibSample("a", rng.normal(0, 0.1, 32000).astype(np.float32), "asr", "hello world")
    with torch.no_grad():
        full, _ = llm_inputs(m, s, True, "audio")
        clip, mask = llm_inputs(m, s, True, "audio", "clip")
        speech = m.encode_audio(**m.prepare_audio([s.audio]))
    k = clip_speech_tokens(m, 32000)
    windows_2s = -(-(100 - m.cfg.window_kernel) // m.cfg.window_stride) + 1  # windows covering 2 s = 100 frames
    assert k == (windows_2s + 2) * m.cfg.num_speech_query_token < speech.shape[1]
    assert clip.shape[1] == full.shape[1] - (speech.shape[1] - k) and mask.shape[1] == clip.shape[1]
    i = next(j for j in range(full.shape[1]) if torch.allclose(full[0, j], speech[0, 0]))  # where the slot starts
    assert torch.allclose(clip[0, i:i + k], speech[0, :k]) and torch.allclose(clip[0, :i], full[0, :i])


def test_benchmark_recipes_validate():
    """Recipes kept for recorded benchmark runs (benchmarks/recipes/) load and validate like shipped ones."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "recipes")
    paths = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".yaml"))
    assert paths
    for p in paths:
        r = load_recipe(p)
        assert r.steps and r.name == os.path.splitext(os.path.basename(p))[0]


def test_save_dtype_auto_keeps_the_sources_storage(tmp_path):
    """run --save-dtype: auto keeps a float16 source float16 (weights of 2+ dims; 1-D tensors and quantized
    modules keep theirs), float32 forces float32; the stored sparsity is the reported one either way."""
    from compress.loaders.artifact import save_artifact

    src = str(tmp_path / "src16")
    save_artifact(load_model("tiny"), src, weights_dtype="float16")
    r = load_recipe(os.path.join(ROOT, "recipes", "magnitude-50.yaml"))
    for want, arg in (("float16", "auto"), ("float32", "float32")):
        out = str(tmp_path / want)
        rep = run_recipe(r, src, out, progress=False, bench=False, log=lambda *a: None, weights_dtype=arg)
        st = load_file(os.path.join(out, "model.safetensors"))
        assert json.load(open(os.path.join(out, "manifest.json")))["storage"]["weights_dtype"] == want
        big = {str(v.dtype) for k, v in st.items()  # pruned matrices may be stored as mask + 1-D non-zeros
               if v.is_floating_point() and (v.dim() >= 2 or k.endswith("__sparse_values"))}
        small = {str(v.dtype) for k, v in st.items()
                 if v.is_floating_point() and v.dim() == 1 and not k.endswith("__sparse_values")}
        assert big == {f"torch.{want}"} and small <= {"torch.float32"}
        m = load_model(out)
        names = list(select_linears(m, r.steps[-1].targets))
        assert _zeros_in_saved(out, names) == pytest.approx(rep["steps"][-1]["measured_sparsity"], abs=1e-12)
    q = recipe_from_dict({"name": "q", "steps": [{"type": "rtn", "bits": 4}]})
    out = str(tmp_path / "q16")
    run_recipe(q, src, out, progress=False, bench=False, log=lambda *a: None)
    m = load_model(out)
    assert m.module_overrides and m.stored_dtype == "float16"
    ids = m.generate([np.zeros(16000, dtype=np.float32)], "asr", num_beams=1, max_new_tokens=3, ignore_eos=True)
    assert len(ids[0].token_ids) == 3


def test_answers_are_scored_as_trained():
    """Recompression steps score an answer with the tokens the training used (SALMONN: the text + EOS, no
    leading space): a space-prefixed tokenization is another token sequence, which retraining would pull towards."""
    from compress.models.salmonn import answer_ids
    from compress.steps.calibration import reference_ids

    m = load_model("tiny")
    tok = m.tokenizer
    text = "a dog barks twice"
    assert reference_ids(m, text) == answer_ids(tok, text)  # what the demo training uses
    assert reference_ids(m, text) == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok(" " + text, add_special_tokens=False)["input_ids"] != tok(text, add_special_tokens=False)["input_ids"]
