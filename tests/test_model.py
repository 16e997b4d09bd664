"""The assembled model: presets, supported LLM families, artifact round trip, audio path shapes."""

import json
import os

import pytest
import torch

from bundle import tone
from compress.errors import CheckpointError, ConfigError, UserError
from compress.inspect_model import part_stats
from compress.loaders import load_model
from compress.loaders.artifact import save_artifact
from compress.outputs import MANIFEST
from compress.models.build import build_modules
from compress.models.presets import preset_config
from compress.models.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_preset_is_deterministic_from_seed():
    a, b, c = load_model("tiny", seed=3), load_model("tiny", seed=3), load_model("tiny", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_audio_path_shapes_and_window_count(tiny):
    inputs = tiny.prepare_audio([tone(3.0), tone(1.0)])
    assert inputs["spectrogram"].shape == (2, 80, 3000)
    speech = tiny.encode_audio(**inputs)
    assert speech.shape == (2, 88, 64)  # 1500 frames / 17 = 88 windows, one query each
    emb, mask = tiny.build_inputs(speech, tiny.instruction_for("asr"))
    ids_b, ids_a = tiny._prompt_ids(tiny.instruction_for("asr"))
    assert emb.shape[1] == 1 + len(ids_b) + 88 + len(ids_a)
    text = tiny.tokenizer.decode(ids_b) + "<SpeechHere>" + tiny.tokenizer.decode(ids_a)
    assert text == "USER: <Speech><SpeechHere></Speech> Recognize the speech and give me the transcription.\nASSISTANT:"


def test_beats_branch_is_used(tiny):
    inputs = tiny.prepare_audio([tone(2.0)])
    other = tiny.prepare_audio([tone(2.0, 3000.0)])
    with torch.no_grad():
        full = tiny.encode_audio(**inputs)
        swapped = tiny.encode_audio(inputs["spectrogram"], other["wav"], other["padding_mask"])
    assert not torch.allclose(full, swapped)  # same Whisper input, different BEATs input


def test_generate_batch_greedy_and_beam(tiny):
    clips = [tone(2.0), tone(1.2, 660.0)]
    steps = []
    outs = tiny.generate(clips, "caption", num_beams=1, max_new_tokens=5, ignore_eos=True, on_token=steps.append)
    assert steps == [0, 1, 2, 3, 4] and all(len(o.token_ids) == 5 for o in outs)
    single = tiny.generate(clips[1:], "caption", num_beams=1, max_new_tokens=5, ignore_eos=True)
    assert single[0].token_ids == outs[1].token_ids
    beams = tiny.generate(clips, "asr", num_beams=3, max_new_tokens=4)
    assert len(beams) == 2 and all(isinstance(o.text, str) for o in beams)


def test_unknown_task(tiny):
    with pytest.raises(ConfigError, match="valid"):
        tiny.generate([tone(1.0)], "translate")


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_other_llm_families(family):
    cfg = preset_config("tiny")
    base = {k: cfg.llm[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "num_key_value_heads", "intermediate_size", "vocab_size",
                                     "bos_token_id", "eos_token_id", "pad_token_id")}
    cfg.llm = {"model_type": family, "max_position_embeddings": 512, **base}
    if family == "gemma2":
        cfg.llm["head_dim"] = 16
    m = build_modules(cfg, byte_tokenizer(), seed=0)
    lora = [n for n, _ in m.named_parameters() if "lora_A" in n]
    assert lora and all(("q_proj" in n or "v_proj" in n) for n in lora)
    out = m.generate([tone(1.0)], "asr", num_beams=2, max_new_tokens=3, ignore_eos=True)
    assert len(out[0].token_ids) == 3


def test_unsupported_llm_family():
    cfg = preset_config("tiny")
    cfg.llm = dict(cfg.llm, model_type="bert")
    with pytest.raises(ConfigError, match="model_type 'bert'.*valid"):
        build_modules(cfg, byte_tokenizer())


def test_artifact_round_trip(tiny, tmp_path):
    out = save_artifact(tiny, str(tmp_path / "art"), manifest_extra={"source": {"spec": "tiny"}})
    assert os.path.isfile(os.path.join(out, MANIFEST))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dir left behind
    back = load_model(out)
    sa, sb = tiny.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    clip = [tone(1.5)]
    a = tiny.generate(clip, "asr", num_beams=1, max_new_tokens=6, ignore_eos=True)
    b = back.generate(clip, "asr", num_beams=1, max_new_tokens=6, ignore_eos=True)
    assert a[0].token_ids == b[0].token_ids
    assert back.manifest["source"] == {"spec": "tiny"}
    # BEATs shares one relative-position table across layers: stored once, restored as an alias.
    conf = json.load(open(os.path.join(out, "config.json")))
    assert any("relative_attention_bias" in k for k in conf["aliases"])
    assert part_stats(back) == part_stats(tiny)


def test_low_memory_load_restores_everything(tiny, tmp_path, monkeypatch):
    """Meta build + chunked copy: every tensor real, non-persistent buffers recomputed, shared tensors still
    shared, identical outputs, also when every module is its own chunk and when loading straight to float16."""
    import compress.loaders.materialize as mat

    out = save_artifact(tiny, str(tmp_path / "art"))
    monkeypatch.setattr(mat, "CHUNK_BYTES", 1)
    back = load_model(out)
    ref = dict(tiny.named_buffers())
    for name, t in list(back.named_parameters()) + list(back.named_buffers()):
        assert t.device.type == "cpu"
    for name, b in back.named_buffers():  # includes rotary inv_freq and the Q-Former's position_ids
        assert torch.equal(b, ref[name]), name
    shared = {}
    for mod_name, mod in tiny.named_modules(remove_duplicate=False):
        for pn, p in mod.named_parameters(recurse=False):
            shared.setdefault(id(p), []).append(f"{mod_name}.{pn}")
    groups = [g for g in shared.values() if len(g) > 1]
    assert groups  # BEATs' relative-position table
    params = {n: p for m_name, m in back.named_modules(remove_duplicate=False) for n, p in
              ((f"{m_name}.{pn}", p) for pn, p in m.named_parameters(recurse=False))}
    for g in groups:
        assert len({id(params[n]) for n in g}) == 1, g
    clip = [tone(1.5)]
    a = tiny.generate(clip, "caption", num_beams=1, max_new_tokens=6, ignore_eos=True)
    assert back.generate(clip, "caption", num_beams=1, max_new_tokens=6, ignore_eos=True)[0].token_ids == a[0].token_ids
    half = load_model(out, dtype="float16")
    assert {p.dtype for p in half.parameters()} == {torch.float16} and half.stored_dtype == "float32"


def test_artifact_refuses_overwrite_and_cleans_up_on_failure(tiny, tmp_path, monkeypatch):
    out = str(tmp_path / "art")
    save_artifact(tiny, out)
    with pytest.raises(UserError, match="already exists"):
        save_artifact(tiny, out)
    import compress.outputs as art

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(art, "sha256_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(tiny, str(tmp_path / "art2"))
    assert sorted(os.listdir(tmp_path)) == ["art"]  # neither art2 nor a temp dir


def test_artifact_corruption_detected(tiny, tmp_path):
    out = save_artifact(tiny, str(tmp_path / "art"))
    w = os.path.join(out, "model.safetensors")
    data = bytearray(open(w, "rb").read())
    data[-10] ^= 0xFF
    open(w, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(out)
    os.remove(os.path.join(out, MANIFEST))
    with pytest.raises(UserError, match="manifest.json"):
        load_model(out)


def test_unknown_spec():
    with pytest.raises(UserError, match="tiny"):
        load_model("no-such-model")


def test_safetensors_reader_matches_safetensors(tmp_path):
    """The loader's plain-read safetensors reader gives safetensors' own tensors, for every dtype we store."""
    from safetensors.torch import load_file, save_file

    from compress.errors import CheckpointError
    from compress.loaders.materialize import SafetensorsReader

    g = torch.Generator().manual_seed(0)
    state = {"f32": torch.randn(3, 5, generator=g), "f16": torch.randn(7, generator=g).half(),
             "bf16": torch.randn(2, 2, generator=g).bfloat16(), "i32": torch.arange(6, dtype=torch.int32).view(2, 3),
             "u8": torch.arange(9, dtype=torch.uint8), "b": torch.tensor([True, False, True]),
             "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    path = str(tmp_path / "w.safetensors")
    save_file(state, path, metadata={"format": "x"})
    ref = load_file(path)
    with SafetensorsReader(path) as f:
        assert sorted(f.keys()) == sorted(state)
        for k in state:
            got = f.get_tensor(k)
            assert got.dtype == ref[k].dtype and got.shape == ref[k].shape and torch.equal(got, ref[k]), k
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-8])
    with SafetensorsReader(path) as f, pytest.raises(CheckpointError, match="truncated"):
        [f.get_tensor(k) for k in f.keys()]
    open(path, "wb").write(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        SafetensorsReader(path)
