"""Loading a SALMONN checkpoint in the official layout, and refusing bad ones cleanly."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from bundle import make_official_bundle, tone
from compress.cli import main
from compress.errors import CheckpointError, ConfigError
from compress.loaders import load_model
from compress.loaders.official import find_bert_config

# Names as they appear in the released SALMONN checkpoints (bytedance/SALMONN salmonn_v1.pth).
RELEASED_NAMES = [
    "speech_query_tokens",
    "ln_speech.weight",
    "ln_audio.bias",
    "speech_llama_proj.weight",
    "speech_Qformer.bert.embeddings.LayerNorm.weight",
    "speech_Qformer.bert.encoder.layer.0.crossattention.self.key.weight",
    "speech_Qformer.bert.encoder.layer.1.output_query.LayerNorm.bias",
    "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
    "llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight",
]


def _variant(bundle, name, **model_overrides):
    """The bundle's YAML with some `model:` fields changed, written beside it (so bert-base-uncased/ resolves)."""
    conf = yaml.safe_load(open(bundle["yaml"]))
    conf["model"].update(model_overrides)
    p = os.path.join(bundle["root"], f"{name}.yaml")
    with open(p, "w") as f:
        yaml.safe_dump(conf, f)
    return p


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_official_bundle(str(tmp_path_factory.mktemp("official")))


def test_bundle_has_released_key_names(bundle):
    for name in RELEASED_NAMES:
        assert name in bundle["trainable"], name


def test_loads_with_zero_missing_and_reports_sources(bundle):
    m = load_model(bundle["yaml"])
    rep = m.load_report
    assert rep["trainable"]["missing"] == []
    assert rep["trainable"]["unexpected"] == []  # position_ids is a known buffer, not "unexpected"
    assert rep["trainable"]["tensors_loaded"] == len(bundle["trainable"]) - 1
    assert rep["speech_encoder"]["source"].endswith("whisper")
    assert rep["beats"]["source"].endswith("BEATs_tiny.pt")
    assert rep["llm"]["source"].endswith("llama")
    assert rep["qformer"]["config"].endswith(os.path.join("bert-base-uncased", "config.json"))
    sd = m.state_dict()
    for k, v in bundle["trainable"].items():
        if k in sd:
            assert torch.equal(sd[k], v), k
    assert m.cfg.generate.num_beams == 2 and m.cfg.lora.r == 4


def test_outputs_deterministic_and_lora_matters(bundle):
    a = load_model(bundle["yaml"])
    b = load_model(bundle["yaml"])
    audio = [tone(2.0), tone(1.5, 880.0)]
    with torch.no_grad():
        sa = a.encode_audio(**a.prepare_audio(audio))
        sb = b.encode_audio(**b.prepare_audio(audio))
    assert sa.shape == (2, 88, 64)
    assert torch.equal(sa, sb)
    ta = [o.token_ids for o in a.generate(audio, "asr", num_beams=1, max_new_tokens=6, ignore_eos=True)]
    tb = [o.token_ids for o in b.generate(audio, "asr", num_beams=1, max_new_tokens=6, ignore_eos=True)]
    assert ta == tb and all(len(t) == 6 for t in ta)
    # Zeroing the LoRA B matrices changes the LLM's logits: the adapters were really loaded.
    emb, mask = a.build_inputs(sa, a.instruction_for("asr"))
    with torch.no_grad():
        before = a.llama_model(inputs_embeds=emb, attention_mask=mask).logits
        for n, p in a.named_parameters():
            if "lora_B" in n:
                p.zero_()
        after = a.llama_model(inputs_embeds=emb, attention_mask=mask).logits
    assert not torch.allclose(before, after)


def test_missing_trainable_key_is_an_error(bundle, tmp_path):
    obj = torch.load(bundle["ckpt"], weights_only=True)
    del obj["model"]["llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"]
    obj["model"]["something.unexpected"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(obj, bad)
    p = _variant(bundle, tmp_path.name, ckpt=str(bad))
    with pytest.raises(CheckpointError, match=r"lacks 1 trainable.*layers\.1\.self_attn\.v_proj\.lora_B"):
        load_model(str(p))


def test_wrong_shapes_are_named_before_whisper_or_the_llm_load(bundle, tmp_path, monkeypatch):
    import transformers

    obj = torch.load(bundle["ckpt"], weights_only=True)
    for k in [k for k in obj["model"] if "lora_A" in k]:  # a checkpoint trained with another LoRA rank
        obj["model"][k] = torch.zeros(8, obj["model"][k].shape[1])
    bad = tmp_path / "rank8.pth"
    torch.save(obj, bad)
    p = _variant(bundle, tmp_path.name, ckpt=str(bad))

    def never(*a, **k):
        raise AssertionError("the weights were loaded before the checkpoint was checked")

    monkeypatch.setattr(transformers.WhisperModel, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(CheckpointError, match=r"made for another model shape: .*lora_A.*checkpoint \(8, "):
        load_model(str(p))


def test_unexpected_keys_are_listed(bundle, tmp_path):
    obj = torch.load(bundle["ckpt"], weights_only=True)
    obj["model"]["speech_Qformer.cls.predictions.bias"] = torch.zeros(3)
    p = tmp_path / "extra.pth"
    torch.save(obj, p)
    cp = _variant(bundle, tmp_path.name, ckpt=str(p))
    m = load_model(str(cp))
    assert m.load_report["trainable"]["unexpected"] == ["speech_Qformer.cls.predictions.bias"]


def test_relative_paths_resolve_against_config_dir(bundle, tmp_path):
    conf = yaml.safe_load(open(bundle["yaml"]))
    for k in ("llama_path", "whisper_path", "beats_path", "ckpt"):
        conf["model"][k] = os.path.relpath(conf["model"][k], bundle["root"])
    p = os.path.join(bundle["root"], "relative.yaml")
    with open(p, "w") as f:
        yaml.safe_dump(conf, f)
    assert load_model(p).load_report["trainable"]["missing"] == []


def test_missing_path_and_bad_yaml(bundle, tmp_path):
    p = _variant(bundle, "nowhisper", whisper_path="/nonexistent/whisper")
    with pytest.raises(ConfigError, match="whisper_path"):
        load_model(str(p))
    q = tmp_path / "nomodel.yaml"
    q.write_text("generate: {}\n")
    with pytest.raises(ConfigError, match="model:"):
        load_model(str(q))


def test_bert_config_resolution(tmp_path):
    cfg, src = find_bert_config(str(tmp_path))
    assert cfg["hidden_size"] == 768 and "built-in" in src
    d = tmp_path / "bert-base-uncased"
    d.mkdir()
    (d / "config.json").write_text('{"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}')
    cfg, src = find_bert_config(str(tmp_path))
    assert cfg["hidden_size"] == 64 and src.endswith("config.json")
    with pytest.raises(ConfigError, match="qformer-config"):
        find_bert_config(str(tmp_path), str(tmp_path / "nope"))


def test_pad_token_added_like_reference(tmp_path):
    b = make_official_bundle(str(tmp_path), with_pad_token=False)
    m = load_model(b["yaml"])
    assert m.tokenizer.pad_token == "[PAD]"
    assert m.llm_base().get_input_embeddings().num_embeddings == len(m.tokenizer) == 261
    assert any("pad token" in n for n in m.load_report["llm"]["notes"])


def test_sentencepiece_tokenizer_bundle_loads_and_generates(tmp_path, capsys):
    """Released SALMONN LLM folders ship a SentencePiece tokenizer.model (no tokenizer.json)."""
    b = make_official_bundle(str(tmp_path), sentencepiece=True)
    assert not os.path.exists(os.path.join(tmp_path, "llama", "tokenizer.json"))
    m = load_model(b["yaml"])
    assert type(m.tokenizer).__name__.startswith("LlamaTokenizer")
    ids = m.tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    assert 0 < len(ids) < 10 and max(ids) < 120  # pieces of the trained model, not bytes
    out = m.generate([tone(1.5)], "asr", num_beams=1, max_new_tokens=4)
    assert isinstance(out[0].text, str)
    assert main(["inspect", "--model", b["yaml"]]) == 0


def test_sentencepiece_missing_is_named(tmp_path, monkeypatch):
    import importlib.util

    from compress.loaders.official import load_llm_tokenizer

    from bundle import sentencepiece_tokenizer_dir

    sentencepiece_tokenizer_dir(str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real(name, *a))
    with pytest.raises(CheckpointError, match="'sentencepiece' package: pip install sentencepiece"):
        load_llm_tokenizer(str(tmp_path))


def test_cli_inspect_official(bundle, capsys):
    assert main(["inspect", "--model", bundle["yaml"]]) == 0
    out = capsys.readouterr().out
    for part in ("speech_encoder", "beats", "qformer", "proj", "llm"):
        assert part in out
    assert "missing 0" in out


def test_cli_refuses_code_executing_checkpoint(bundle, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    obj = torch.load(bundle["ckpt"], weights_only=True)
    obj["hook"] = Evil()
    p = tmp_path / "evil.pth"
    torch.save(obj, p)
    cp = _variant(bundle, tmp_path.name, ckpt=str(p))
    r = subprocess.run([sys.executable, "-m", "compress.cli", "inspect", "--model", str(cp)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "refused" in r.stderr and "--allow-unsafe-pickle" in r.stderr
    assert "Traceback" not in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_cli_broken_checkpoint_exit_2(bundle, tmp_path, kind):
    data = open(bundle["ckpt"], "rb").read()
    p = tmp_path / "broken.pth"
    p.write_bytes(data[: len(data) // 3] if kind == "truncated" else os.urandom(len(data) // 3))
    cp = _variant(bundle, tmp_path.name, ckpt=str(p))
    r = subprocess.run([sys.executable, "-m", "compress.cli", "inspect", "--model", str(cp)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "broken.pth" in r.stderr and "Traceback" not in r.stderr
