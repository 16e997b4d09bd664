"""Runtime steps: SDPA equals eager per part and end to end, real-length encoding, compile, Liger's CUDA check."""

import os

import numpy as np
import pytest
import torch

from compress.errors import ConfigError
from compress.loaders import load_model
from compress.models.salmonn import real_mel_frames, whisper_encode
from compress.recipe import parse_recipe
from compress.runner import run_recipe
from compress.runtime import apply_runtime, set_attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = os.path.join(ROOT, "benchmarks", "data", "calib.json")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def _clip(seconds=3.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


@torch.inference_mode()
def _parts_out(m, audio):
    inp = m.prepare_audio([audio])
    spec = inp["spectrogram"]
    whisper = m.speech_encoder(spec).last_hidden_state
    beats, _ = m.beats.extract_features(inp["wav"], padding_mask=inp["padding_mask"])
    return whisper, beats, m.encode_audio(**inp)


def test_sdpa_equals_eager_per_part_and_end_to_end(tiny):
    audio = _clip()
    set_attention(tiny, ["speech_encoder", "beats", "qformer"], "eager")
    ref = _parts_out(tiny, audio)
    ref_ids = tiny.generate([audio], "asr", num_beams=1, max_new_tokens=8, ignore_eos=True)[0].token_ids
    try:
        set_attention(tiny, ["speech_encoder", "beats", "qformer"], "sdpa")
        assert tiny.speech_encoder.config._attn_implementation == "sdpa"
        out = _parts_out(tiny, audio)
        ids = tiny.generate([audio], "asr", num_beams=1, max_new_tokens=8, ignore_eos=True)[0].token_ids
    finally:
        set_attention(tiny, ["speech_encoder", "beats", "qformer"], "eager")
    for a, b in zip(ref, out):  # whisper, beats, speech embeddings (the Q-Former path included)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert ids == ref_ids


def test_beats_sdpa_with_padding_and_without_gate():
    from compress.models.beats import BEATs, tiny_beats_cfg

    torch.manual_seed(0)
    for gru in (True, False):
        b = BEATs({**tiny_beats_cfg(), "gru_rel_pos": gru}).eval()
        wav = torch.randn(2, 16000 * 2) * 0.1
        pad = torch.zeros_like(wav, dtype=torch.bool)
        pad[1, 20000:] = True
        with torch.no_grad():
            ref, _ = b.extract_features(wav, padding_mask=pad)
            for m in b.modules():
                if hasattr(m, "use_sdpa"):
                    m.use_sdpa = True
            out, _ = b.extract_features(wav, padding_mask=pad)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_whisper_encode_short_equals_full_prefix_structure(tiny):
    enc = tiny.speech_encoder
    spec = tiny.prepare_audio([_clip(2.0)])["spectrogram"]
    with torch.no_grad():
        full = whisper_encode(enc, spec)
        assert torch.equal(full, enc(spec).last_hidden_state)  # 3000 frames: transformers' forward, unchanged
        short = whisper_encode(enc, spec[..., :340])
    assert short.shape == (1, 170, full.shape[-1])


def test_real_mel_frames_rounds_up_to_whole_windows():
    k = s = 17
    assert real_mel_frames(16000 * 30, k, s) == 3000  # capped: 88 windows as before
    assert real_mel_frames(16000 * 3, k, s) == 2 * 17 * 9  # 150 encoder frames -> 9 windows
    assert real_mel_frames(16000, k, s) == 2 * 17 * 3  # 50 frames -> 3 windows
    assert real_mel_frames(100, k, s) == 34  # at least one window


def test_real_length_gives_fewer_tokens_and_default_is_unchanged(tiny):
    audio = _clip(3.0)
    with torch.no_grad():
        ref = tiny.encode_audio(**tiny.prepare_audio([audio]))
        tiny.real_length = True
        try:
            short = tiny.encode_audio(**tiny.prepare_audio([audio]))
            ids = tiny.generate([audio, _clip(1.5, 1)], "asr", num_beams=1, max_new_tokens=3, ignore_eos=True)
        finally:
            tiny.real_length = False
        again = tiny.encode_audio(**tiny.prepare_audio([audio]))
    assert ref.shape[1] == 88 and short.shape[1] == 9
    assert torch.equal(again, ref)
    assert all(len(o.token_ids) == 3 for o in ids)


def _recipe(steps: str, samples: int = 2):
    return parse_recipe(f"name: t\ncalibration: {{data: {CALIB}, samples: {samples}}}\nsteps:\n{steps}", "t", ROOT)


def test_sdpa_and_real_length_steps_report_and_reload(tmp_path):
    r = _recipe("  - {type: sdpa}\n  - {type: real_length}")
    out = str(tmp_path / "art")
    res = run_recipe(r, "tiny", out, progress=False, bench=False, log=lambda *a: None)
    sd, rl = res["steps"]
    assert sd["greedy_tokens_equal"] is True and sd["speech_embeds_max_abs_diff"] < 1e-4
    assert sd["parts"] == ["speech_encoder", "beats", "qformer"]
    assert all(a < b for a, b in zip(rl["speech_tokens_after"], rl["speech_tokens_before"]))
    assert "not measured" in rl["note"]
    m = load_model(out)  # re-applied at load from config.json
    assert m.real_length and m.speech_Qformer.bert.encoder.layer[0].attention.self.use_sdpa
    assert m.speech_encoder.config._attn_implementation == "sdpa"
    assert m.cfg.extra["runtime"] == {"sdpa": ["speech_encoder", "beats", "qformer"], "real_length": True}


def test_liger_refuses_without_cuda_at_run_time(tmp_path):
    r = parse_recipe("name: t\nsteps:\n  - {type: liger}", "t", ROOT)  # loads fine: the check is at run time
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the refusal path is for CPU machines")
    with pytest.raises(ConfigError, match="CUDA"):
        run_recipe(r, "tiny", str(tmp_path / "a"), progress=False, bench=False, log=lambda *a: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger kernels need CUDA and liger-kernel")
def test_liger_on_cuda():
    pytest.importorskip("liger_kernel")
    from compress.runtime import apply_liger

    m = load_model("tiny").cuda()
    audio = _clip()
    ref = m.generate([audio], "asr", num_beams=1, max_new_tokens=4, ignore_eos=True)[0].token_ids
    apply_liger(m)
    assert m.generate([audio], "asr", num_beams=1, max_new_tokens=4, ignore_eos=True)[0].token_ids == ref


def test_apply_runtime_without_record_changes_nothing(tiny):
    apply_runtime(tiny)
    assert tiny.real_length is False


def test_compile_step_reports_compile_seconds(tmp_path):
    r = _recipe("  - {type: compile, parts: [qformer], mode: default, warmup_tokens: 2}", samples=1)
    res = run_recipe(r, "tiny", str(tmp_path / "art"), progress=False, bench=False, log=lambda *a: None)
    rep = res["steps"][0]
    assert rep["compile_seconds"] >= 0 and rep["steady_generate_seconds"] > 0
    m = load_model(str(tmp_path / "art"))
    assert m.cfg.extra["runtime"]["compile"]["parts"] == ["qformer"]
    assert m.speech_Qformer._compiled_call_impl is not None
