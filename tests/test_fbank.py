"""Tests for compress.fbank: the Kaldi fbank against a slow per-frame reference of the Kaldi definition."""

import math
import warnings

import numpy as np
import pytest
import torch

from compress.errors import AudioError, ConfigError
from compress.fbank import (
    BEATS_FBANK_MEAN,
    BEATS_FBANK_STD,
    EPSILON,
    beats_fbank,
    frame_sizes,
    kaldi_fbank,
    kaldi_fbank_batch,
    kaldi_mel_banks,
    num_frames,
)

SR = 16000


# ---------------------------------------------------------------------------------------------
# A deliberately slow, straightforward reference, written from the Kaldi definition
# (feature-window.cc / mel-computations.cc), one frame and one filter at a time, in float64.
# ---------------------------------------------------------------------------------------------


def _ref_mel(f):
    return 1127.0 * math.log(1.0 + f / 700.0)


def _ref_mel_banks(num_bins, fft_size, sr, low, high):
    nyquist = sr / 2.0
    if high <= 0:
        high = nyquist + high
    lo_mel, hi_mel = _ref_mel(low), _ref_mel(high)
    delta = (hi_mel - lo_mel) / (num_bins + 1)
    banks = np.zeros((num_bins, fft_size // 2 + 1))
    for m in range(num_bins):
        left, center, right = lo_mel + m * delta, lo_mel + (m + 1) * delta, lo_mel + (m + 2) * delta
        for k in range(fft_size // 2):  # the Nyquist bin stays zero in Kaldi
            mk = _ref_mel(k * sr / fft_size)
            if left < mk <= center:
                banks[m, k] = (mk - left) / (center - left)
            elif center < mk < right:
                banks[m, k] = (right - mk) / (right - center)
    return banks


def reference_fbank(x, num_bins=128, sr=SR, frame_ms=25.0, shift_ms=10.0, preemph=0.97, low=20.0, high=0.0):
    x = np.asarray(x, dtype=np.float64)
    n_win = int(sr * frame_ms / 1000)
    n_shift = int(sr * shift_ms / 1000)
    fft_size = 1
    while fft_size < n_win:
        fft_size *= 2
    window = np.array([(0.5 - 0.5 * math.cos(2 * math.pi * i / (n_win - 1))) ** 0.85 for i in range(n_win)])
    banks = _ref_mel_banks(num_bins, fft_size, sr, low, high)
    out = []
    start = 0
    while start + n_win <= len(x):
        frame = x[start : start + n_win].copy()
        frame -= frame.mean()
        emph = np.empty_like(frame)
        for j in range(n_win - 1, 0, -1):
            emph[j] = frame[j] - preemph * frame[j - 1]
        emph[0] = frame[0] - preemph * frame[0]
        padded = np.zeros(fft_size)
        padded[:n_win] = emph * window
        spectrum = np.fft.rfft(padded)
        power = spectrum.real**2 + spectrum.imag**2
        energies = [float(np.dot(banks[m], power)) for m in range(num_bins)]
        out.append([math.log(max(e, EPSILON)) for e in energies])
        start += n_shift
    return np.array(out)


def broadband_signal(n, seed=0):
    """Noise plus a few tones, scaled to the int16 range as BEATs feeds them."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.2 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 523.0 * t) + 0.1 * np.sin(2 * np.pi * 2700.0 * t)
    return (x * 2**15).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Against the reference
# ---------------------------------------------------------------------------------------------


def test_matches_reference_float32():
    x = broadband_signal(3 * 160 * 7 + 401)
    ours = kaldi_fbank(torch.from_numpy(x))
    assert ours.dtype == torch.float32
    ref = reference_fbank(x)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_matches_reference_float64_tightly():
    # Computed in float64 end to end, the only differences left are FFT rounding.
    x = broadband_signal(2400, seed=1).astype(np.float64)
    ours = kaldi_fbank(torch.from_numpy(x))
    np.testing.assert_allclose(ours.numpy(), reference_fbank(x), rtol=1e-6, atol=1e-6)


def test_matches_reference_with_other_options():
    x = broadband_signal(1600, seed=2).astype(np.float64)
    ours = kaldi_fbank(
        torch.from_numpy(x), num_mel_bins=40, preemphasis=0.5, low_freq=100.0, high_freq=-400.0
    )
    ref = reference_fbank(x, num_bins=40, preemph=0.5, low=100.0, high=-400.0)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_mel_banks_match_reference():
    banks = kaldi_mel_banks(128, 512, 16000.0, 20.0, 0.0)
    assert banks.shape == (128, 257)
    assert np.all(banks[:, -1] == 0.0)
    assert np.all(banks >= 0.0) and banks.max() <= 1.0
    np.testing.assert_allclose(banks, _ref_mel_banks(128, 512, 16000, 20.0, 0.0), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Frames and shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [400, 401, 559, 560, 719, 720, 16000, 480000])
def test_frame_count_formula(n):
    expected = 1 + (n - 400) // 160
    assert num_frames(n) == expected
    out = kaldi_fbank(torch.zeros(n))
    assert out.shape == (expected, 128)


def test_frame_sizes_at_16k():
    assert frame_sizes(16000.0, 25.0, 10.0) == (400, 160, 512)


def test_thirty_seconds_gives_2998_frames():
    assert num_frames(30 * SR) == 2998
    assert num_frames(SR) == 98


def test_too_short_raises_audio_error():
    assert num_frames(399) == 0
    with pytest.raises(AudioError, match="400"):
        kaldi_fbank(torch.zeros(399))


def test_accepts_1d_and_single_channel_2d():
    x = torch.from_numpy(broadband_signal(2000))
    a = kaldi_fbank(x)
    b = kaldi_fbank(x.unsqueeze(0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(2, 1000), (1, 1, 1000)])
def test_rejects_other_shapes(shape):
    with pytest.raises(AudioError, match="shape"):
        kaldi_fbank(torch.zeros(shape))


def test_batch_equals_rows():
    rows = [torch.from_numpy(broadband_signal(4000, seed=s)) for s in range(3)]
    batch = kaldi_fbank_batch(torch.stack(rows))
    assert batch.shape == (3, num_frames(4000), 128)
    for i, row in enumerate(rows):
        torch.testing.assert_close(batch[i], kaldi_fbank(row), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Physical checks
# ---------------------------------------------------------------------------------------------


def _center_freqs(num_bins=128, low=20.0, high=8000.0):
    lo, hi = _ref_mel(low), _ref_mel(high)
    delta = (hi - lo) / (num_bins + 1)
    return np.array([700.0 * (math.exp((lo + (m + 1) * delta) / 1127.0) - 1.0) for m in range(num_bins)])


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3150.0, 6000.0])
def test_pure_tone_lands_in_its_mel_bin(freq):
    t = np.arange(SR) / SR
    x = torch.from_numpy((0.5 * 2**15 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    feats = kaldi_fbank(x)
    peak_bins = feats.argmax(dim=1)
    expected = int(np.argmin(np.abs(_center_freqs() - freq)))
    # Every frame peaks at the filter centred nearest the tone (or its immediate neighbour,
    # when the tone sits between two centres).
    assert torch.all((peak_bins - expected).abs() <= 1), (peak_bins.unique(), expected)
    assert torch.mode(peak_bins).values.item() == expected


def test_silence_is_log_epsilon():
    # Kaldi floors every mel energy at float epsilon: a silent frame is log(1.1920929e-07) = -15.9424.
    feats = kaldi_fbank(torch.zeros(SR))
    assert torch.allclose(feats, torch.full_like(feats, math.log(EPSILON)))
    assert abs(feats[0, 0].item() - (-15.942385)) < 1e-5


def test_dither_zero_is_deterministic():
    x = torch.from_numpy(broadband_signal(8000))
    assert torch.equal(kaldi_fbank(x), kaldi_fbank(x))
    assert torch.equal(kaldi_fbank(x, dither=0.0), kaldi_fbank(x))


def test_dither_is_random_but_seedable():
    x = torch.zeros(4000)
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    a = kaldi_fbank(x, dither=1.0, generator=g1)
    b = kaldi_fbank(x, dither=1.0, generator=g2)
    assert torch.equal(a, b)
    assert not torch.equal(a, kaldi_fbank(x))
    live = kaldi_mel_banks().sum(axis=1) > 0  # filters that cover at least one FFT bin
    assert torch.all(a[:, torch.from_numpy(live)] > math.log(EPSILON))


def test_empty_filter_is_always_floored():
    # With 128 filters on a 512-point FFT, filter 3 (around 60 Hz) falls between two FFT bins and
    # covers none, so its column is log(epsilon) for any signal, in torchaudio and Kaldi alike.
    banks = kaldi_mel_banks()
    assert np.flatnonzero(banks.sum(axis=1) == 0).tolist() == [3]
    feats = kaldi_fbank(torch.from_numpy(broadband_signal(4000)))
    assert torch.allclose(feats[:, 3], torch.full_like(feats[:, 3], math.log(EPSILON)))


def test_input_is_not_modified():
    x = torch.from_numpy(broadband_signal(3000))
    before = x.clone()
    kaldi_fbank(x)
    beats_fbank(x.unsqueeze(0) / 2**15)
    assert torch.equal(x, before)


# ---------------------------------------------------------------------------------------------
# BEATs preprocessing
# ---------------------------------------------------------------------------------------------


def test_beats_fbank_scaling_and_normalisation():
    wavs = torch.stack([torch.from_numpy(broadband_signal(SR, seed=s)) / 2**15 for s in range(2)])
    feats = beats_fbank(wavs)
    assert feats.shape == (2, 98, 128)
    assert feats.dtype == torch.float32
    for i in range(2):
        expected = (kaldi_fbank(wavs[i] * 2**15) - BEATS_FBANK_MEAN) / (2 * BEATS_FBANK_STD)
        torch.testing.assert_close(feats[i], expected, rtol=1e-5, atol=1e-5)


def test_beats_fbank_of_silence():
    feats = beats_fbank(torch.zeros(1, 30 * SR))
    assert feats.shape == (1, 2998, 128)
    expected = (math.log(EPSILON) - 15.41663) / (2 * 6.55582)  # -2.391693...
    assert torch.allclose(feats, torch.full_like(feats, expected), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Published / independent implementations
# ---------------------------------------------------------------------------------------------

# kaldi-native-fbank 1.22.5 (a C++ port of Kaldi's compute-fbank-feats), options: dither 0,
# snip_edges, 128 bins, low 20 Hz, high 0 (Nyquist); signal: 0.5 s of
# (0.5 sin(2 pi 440 t) + 0.1 sin(2 pi 3000 t)) * 32768 as float32. Bins where the energy is far
# above float32 leakage noise; Kaldi computes in float32, so agreement is to ~1e-3.
KNF_BINS = [0, 5, 11, 20, 40, 64, 100]
KNF_VALUES = {
    0: [9.3576, 6.4236, 12.1903, 19.611, 7.885, 3.8426, 4.7616],
    10: [9.3576, 6.4236, 12.1903, 19.611, 7.885, 3.8426, 4.7616],
    47: [10.1458, 7.9321, 12.394, 19.6153, 7.6035, 2.9443, 4.737],
}


def _two_tone_signal():
    t = np.arange(8000, dtype=np.float64) / SR
    return ((0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)) * 32768).astype(np.float32)


def test_matches_recorded_kaldi_native_fbank_values():
    feats = kaldi_fbank(torch.from_numpy(_two_tone_signal())).numpy()
    assert feats.shape == (48, 128)
    for frame, values in KNF_VALUES.items():
        np.testing.assert_allclose(feats[frame, KNF_BINS], values, atol=2e-3)


def test_matches_kaldi_native_fbank_when_installed():
    knf = pytest.importorskip("kaldi_native_fbank")
    x = broadband_signal(12345, seed=4)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.samp_freq = SR
    opts.mel_opts.num_bins = 128
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SR, x.tolist())
    fb.input_finished()
    ref = np.stack([np.array(fb.get_frame(i)) for i in range(fb.num_frames_ready)])
    ours = kaldi_fbank(torch.from_numpy(x)).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


def test_matches_transformers_numpy_kaldi_path():
    # transformers' numpy fallback for ASTFeatureExtractor reproduces torchaudio's kaldi.fbank;
    # with the povey window it is an independent implementation of the same definition.
    audio_utils = pytest.importorskip("transformers.audio_utils")
    x = broadband_signal(8000, seed=5).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # it warns about the empty filter 3, which is expected
        mel_filters = audio_utils.mel_filter_bank(
            num_frequency_bins=257,
            num_mel_filters=128,
            min_frequency=20,
            max_frequency=SR // 2,
            sampling_rate=SR,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )
    theirs = audio_utils.spectrogram(
        x,
        audio_utils.window_function(400, "povey", periodic=False),
        frame_length=400,
        hop_length=160,
        fft_length=512,
        power=2.0,
        center=False,
        preemphasis=0.97,
        mel_filters=mel_filters,
        log_mel="log",
        mel_floor=EPSILON,
        remove_dc_offset=True,
    ).T
    ours = kaldi_fbank(torch.from_numpy(x)).numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_mel_bins": 3}, "num_mel_bins"),
        ({"low_freq": 9000.0}, "low_freq"),
        ({"high_freq": 9000.0}, "high_freq"),
        ({"low_freq": 4000.0, "high_freq": 3000.0}, "low_freq"),
        ({"preemphasis": 1.5}, "preemphasis"),
        ({"dither": -1.0}, "dither"),
        ({"sample_frequency": 0.0}, "sample_frequency"),
        ({"frame_shift_ms": 0.0}, "frame_shift_ms"),
    ],
)
def test_bad_options_raise_config_error(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        kaldi_fbank(torch.zeros(2000), **kwargs)


def test_power_spectrum_as_exported_equals_the_fft(monkeypatch):
    """Under torch.export the power spectrum is two matmuls with the DFT basis (ONNX Runtime's DFT is slow): the same
    values as torch.fft.rfft's, in float64 and float32."""
    from compress.fbank import power_spectrum

    g = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        frames = (torch.randn(2, 7, 400, generator=g, dtype=torch.float64) * 3000).to(dtype)
        want = power_spectrum(frames, 512)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        got = power_spectrum(frames, 512)
        monkeypatch.undo()
        assert got.shape == want.shape == (2, 7, 257) and got.dtype == dtype
        scale = want.max()
        assert float(((got - want).abs() / scale).max()) < tol
