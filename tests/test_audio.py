"""Tests for compress.audio: reading, checking and resampling clips, and the model input tensors."""

import os
import warnings

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from compress import audio
from compress.audio import (
    MAX_SAMPLES,
    MIN_SAMPLES,
    SAMPLE_RATE,
    AudioBatch,
    AudioCutWarning,
    batch_waveforms,
    load_audio,
    prepare_batch,
    prepare_waveform,
    whisper_features,
)
from compress.errors import AudioError, ConfigError, UserError


def tone(freq, seconds, sr, amp=0.5, phase=0.0):
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def noise(seconds, sr, seed=0, amp=0.3):
    rng = np.random.default_rng(seed)
    return (amp * rng.uniform(-1, 1, int(round(seconds * sr)))).astype(np.float32)


def peak_hz(wav, sr=SAMPLE_RATE):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return np.fft.rfftfreq(len(wav), 1 / sr)[int(np.argmax(spectrum))]


def band_energy(wav, f_lo, f_hi, sr=SAMPLE_RATE):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav)))) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1 / sr)
    return spectrum[(freqs >= f_lo) & (freqs <= f_hi)].sum() / spectrum.sum()


# ---------------------------------------------------------------------------- reading files


def test_mono_16k_float_wav_round_trips_exactly(tmp_path):
    x = noise(2.0, SAMPLE_RATE)
    path = tmp_path / "mono.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, x)


def test_mono_16k_pcm16_wav_round_trips_to_quantisation(tmp_path):
    x = noise(1.5, SAMPLE_RATE, seed=1)
    path = tmp_path / "mono16.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_16")
    y = load_audio(str(path))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1.0 / 32768)


def test_integer_pcm_is_scaled_to_unit_range(tmp_path):
    ints = np.array([0, 16384, -16384, 32767, -32768] * 4000, dtype=np.int16)
    path = tmp_path / "ints.wav"
    sf.write(path, ints, SAMPLE_RATE, subtype="PCM_16")
    y = load_audio(path)
    np.testing.assert_array_equal(y, ints.astype(np.float32) / 32768)
    assert y.min() == -1.0 and y.max() < 1.0
    # the same through prepare_waveform with an int16 array
    np.testing.assert_array_equal(prepare_waveform(ints, SAMPLE_RATE), y)


def test_flac(tmp_path):
    x = noise(1.25, SAMPLE_RATE, seed=2)
    path = tmp_path / "clip.flac"
    sf.write(path, x, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    y = load_audio(path)
    assert y.shape == (20000,)
    np.testing.assert_allclose(y, x, atol=1.0 / 32768)


def test_stereo_44k_is_downmixed_and_resampled(tmp_path):
    sr = 44100
    left = tone(1000, 2.0, sr, amp=0.6)
    right = tone(1000, 2.0, sr, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == (2 * SAMPLE_RATE,)
    assert abs(peak_hz(y) - 1000) <= 1.0
    # mean of the channels: amplitude (0.6 + 0.2) / 2 = 0.4, away from the resampler's edges
    mid = y[4000:-4000]
    assert abs(np.abs(mid).max() - 0.4) < 0.01
    expected = soxr.resample((left + right) / 2, sr, SAMPLE_RATE, quality="HQ")
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_channel_mode_first_takes_first_channel(tmp_path):
    sr = 44100
    left = tone(1000, 2.0, sr, amp=0.5)
    right = tone(3000, 2.0, sr, amp=0.5)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    first = load_audio(path, channel_mode="first")
    assert first.shape == (2 * SAMPLE_RATE,)
    assert abs(peak_hz(first) - 1000) <= 1.0
    assert band_energy(first, 2900, 3100) < 1e-6
    np.testing.assert_allclose(first, soxr.resample(left, sr, SAMPLE_RATE, quality="HQ"), atol=1e-6)
    mixed = load_audio(path)
    assert band_energy(mixed, 2900, 3100) > 0.3  # downmix keeps both tones


def test_bad_channel_mode_and_too_long_are_config_errors(tmp_path):
    x = noise(1.0, SAMPLE_RATE)
    with pytest.raises(ConfigError, match="'downmix', 'first'"):
        prepare_waveform(x, SAMPLE_RATE, channel_mode="left")
    with pytest.raises(ConfigError, match="'cut', 'error'"):
        prepare_waveform(x, SAMPLE_RATE, too_long="truncate")


# ---------------------------------------------------------------------------- broken files


def _empty(path):
    path.write_bytes(b"")


def _header_only(path):
    sf.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    assert path.stat().st_size > 0


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _truncated_header(path):
    sf.write(path, noise(1.0, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:20])


def _missing(path):
    pass


def _directory(path):
    path.mkdir()


@pytest.mark.parametrize(
    "make, reason",
    [
        (_empty, "empty"),
        (_header_only, "no audio samples"),
        (_garbage, "not recognised"),
        (_truncated_header, ""),
        (_missing, "not found"),
        (_directory, "directory"),
    ],
    ids=["empty", "header-only", "garbage", "truncated-header", "missing", "directory"],
)
def test_unusable_files_raise_audio_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / f"bad_{make.__name__.strip('_')}.wav"
    make(path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message
    assert reason.lower() in message.lower()
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize("bad_value, word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_samples_raise(tmp_path, bad_value, word):
    x = noise(1.0, SAMPLE_RATE)
    x[[10, 500, 9000]] = bad_value
    path = tmp_path / "nonfinite.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message
    assert "3 non-finite" in message and word in message


def test_non_finite_array_names_the_array():
    x = noise(1.0, SAMPLE_RATE)
    x[0] = np.nan
    with pytest.raises(AudioError, match=r"'clip7'.*1 non-finite"):
        prepare_waveform(x, SAMPLE_RATE, name="clip7")


def test_bad_arrays_and_rates():
    with pytest.raises(AudioError, match="no audio samples"):
        prepare_waveform(np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="shape"):
        prepare_waveform(np.zeros((2, 2, 2), np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="sample rate"):
        prepare_waveform(np.zeros(100, np.float32), 0)
    with pytest.raises(AudioError, match="sample rate"):
        prepare_waveform(np.zeros(100, np.float32), 16000.5)
    with pytest.raises(AudioError, match="sample type"):
        prepare_waveform(np.zeros(100, np.complex64), SAMPLE_RATE)


# ---------------------------------------------------------------------------- length limits


def test_long_clip_is_an_error_by_default(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, noise(45.0, SAMPLE_RATE), SAMPLE_RATE, format="FLAC")
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message and "45.00 s" in message and "30 s" in message and "cut" in message


def test_long_clip_is_cut_to_30_s_with_a_warning(tmp_path):
    x = noise(45.0, SAMPLE_RATE, seed=3)
    path = tmp_path / "long.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.warns(AudioCutWarning, match=r"45\.00 s.*cut"):
        y = load_audio(path, too_long="cut")
    assert y.shape == (MAX_SAMPLES,) == (30 * SAMPLE_RATE,)
    np.testing.assert_array_equal(y, x[:MAX_SAMPLES])


def test_long_clip_at_other_rate_is_cut_to_exactly_30_s(tmp_path):
    sr = 22050
    path = tmp_path / "long22k.wav"
    sf.write(path, tone(440, 31.0, sr), sr, subtype="PCM_16")
    with pytest.warns(AudioCutWarning):
        y = load_audio(path, too_long="cut")
    assert y.shape == (MAX_SAMPLES,)


def test_exactly_30_s_is_accepted_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = prepare_waveform(noise(30.0, SAMPLE_RATE), SAMPLE_RATE)
    assert y.shape == (MAX_SAMPLES,)
    with pytest.raises(AudioError, match="30 s"):
        prepare_waveform(noise(30.0, SAMPLE_RATE)[:-1].tolist() + [0.0, 0.0], SAMPLE_RATE)


def test_short_clip_is_padded_to_1_s(tmp_path):
    x = noise(0.5, SAMPLE_RATE, seed=4)
    path = tmp_path / "short.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(path)
    assert y.shape == (MIN_SAMPLES,)
    np.testing.assert_array_equal(y[:8000], x)
    assert not y[8000:].any()
    assert load_audio(path, pad_short=False).shape == (8000,)


def test_short_clip_at_other_rate_is_padded_to_1_s():
    y = prepare_waveform(tone(440, 0.3, 8000), 8000)
    assert y.shape == (MIN_SAMPLES,)
    assert not y[5000:].any()


# ---------------------------------------------------------------------------- model inputs


def _clips():
    return [
        prepare_waveform(tone(440, 1.0, SAMPLE_RATE), SAMPLE_RATE),
        prepare_waveform(noise(2.5, SAMPLE_RATE, seed=5), SAMPLE_RATE),
        prepare_waveform(tone(2000, 30.0, SAMPLE_RATE, amp=0.1), SAMPLE_RATE),
    ]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_features_shape_determinism_and_reference(n_mels):
    from transformers import WhisperFeatureExtractor

    clips = _clips()
    feats = whisper_features(clips, n_mels)
    assert feats.shape == (3, n_mels, 3000) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert torch.equal(feats, whisper_features(clips, n_mels))
    reference = WhisperFeatureExtractor(feature_size=n_mels)
    for i, clip in enumerate(clips):
        direct = reference(clip, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]
        assert direct.shape == (1, n_mels, 3000)
        torch.testing.assert_close(feats[i : i + 1], direct, atol=1e-5, rtol=1e-5)


def test_whisper_features_of_the_first_frames_equal_the_30s_features_cut():
    rng = np.random.default_rng(3)
    for lengths, frames in (([16000], 110), ([40000, 39960], 260), ([16000 * 3 + 17, 20000], 250),
                            ([80100], 300), ([16000 * 29], 2990), ([16000], 3000)):
        clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
        short = whisper_features(clips, 80, frames)
        assert short.shape == (len(clips), 80, frames)
        assert torch.equal(short, whisper_features(clips, 80)[..., :frames])
    silent = [np.zeros(20000, np.float32)]
    assert torch.equal(whisper_features(silent, 80, 200), whisper_features(silent, 80)[..., :200])


def test_whisper_extractor_is_cached_per_n_mels():
    assert audio._feature_extractor(80) is audio._feature_extractor(80)
    assert audio._feature_extractor(80) is not audio._feature_extractor(128)
    assert audio._feature_extractor(128).feature_size == 128


def test_whisper_features_rejects_bad_inputs():
    with pytest.raises(ConfigError, match="n_mels"):
        whisper_features([np.zeros(16000, np.float32)], 0)
    with pytest.raises(AudioError, match="30 s"):
        whisper_features([np.zeros(MAX_SAMPLES + 1, np.float32)], 80)
    with pytest.raises(AudioError, match="1-D"):
        whisper_features([np.zeros((16000, 2), np.float32)], 80)


def test_batch_waveforms_pads_and_masks():
    a = np.arange(1, 6, dtype=np.float32)
    b = np.arange(1, 4, dtype=np.float32)
    c = np.arange(1, 7, dtype=np.float32)
    wav, mask = batch_waveforms([a, b, c])
    assert wav.shape == mask.shape == (3, 6)
    assert wav.dtype == torch.float32 and mask.dtype == torch.bool
    expected_mask = torch.tensor(
        [
            [False, False, False, False, False, True],
            [False, False, False, True, True, True],
            [False, False, False, False, False, False],
        ]
    )
    assert torch.equal(mask, expected_mask)
    assert torch.equal(wav[0, :5], torch.from_numpy(a)) and wav[0, 5] == 0
    assert torch.equal(wav[1, :3], torch.from_numpy(b)) and not wav[1, 3:].any()
    assert torch.equal(wav[2], torch.from_numpy(c))
    # a single clip has no padding, like the reference's all-False mask
    wav1, mask1 = batch_waveforms([a])
    assert wav1.shape == (1, 5) and not mask1.any()
    with pytest.raises(ValueError):
        batch_waveforms([])


def test_prepare_batch():
    clips = _clips()
    batch = prepare_batch(clips, 80)
    assert isinstance(batch, AudioBatch) and len(batch) == 3
    assert batch.lengths == [16000, 40000, MAX_SAMPLES]
    assert batch.wav.shape == batch.padding_mask.shape == (3, MAX_SAMPLES)
    assert batch.padding_mask.sum(dim=1).tolist() == [MAX_SAMPLES - 16000, MAX_SAMPLES - 40000, 0]
    assert batch.spectrogram.shape == (3, 80, 3000)
    assert torch.equal(batch.spectrogram, whisper_features(clips, 80))
    half = batch.to(dtype=torch.float16)
    assert half.wav.dtype == torch.float16 and half.padding_mask.dtype == torch.bool


def test_module_has_docstring_and_constants():
    assert audio.__doc__ and len(audio.__doc__.strip().splitlines()) == 1
    assert (SAMPLE_RATE, audio.MIN_SECONDS, audio.MAX_SECONDS) == (16000, 1.0, 30.0)
    assert os.path.basename(audio.__file__) == "audio.py"
