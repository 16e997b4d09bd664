"""Kaldi-compatible log-mel filterbank in pure torch, because BEATs needs torchaudio's Kaldi fbank and torchaudio cannot be installed here."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from compress.errors import AudioError, ConfigError

# Kaldi floors mel energies at std::numeric_limits<float>::epsilon() before the log.
EPSILON = float(torch.finfo(torch.float32).eps)
LOG_EPSILON = math.log(EPSILON)  # -15.942385..., the value of every bin of a silent frame

# BEATs' fbank normalisation constants (AudioSet statistics from the official BEATs.preprocess).
BEATS_FBANK_MEAN = 15.41663
BEATS_FBANK_STD = 6.55582
BEATS_WAVEFORM_SCALE = 2**15  # BEATs feeds int16-range samples to the Kaldi fbank

POVEY_EXPONENT = 0.85


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def frame_sizes(sample_frequency: float, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int, int]:
    """(window_size, window_shift, padded_window_size) in samples, truncated as Kaldi does.

    The FFT length is the window size rounded up to a power of two (round_to_power_of_two=True).
    """
    window_size = int(sample_frequency * frame_length_ms * 0.001)
    window_shift = int(sample_frequency * frame_shift_ms * 0.001)
    padded = 1 if window_size == 0 else 2 ** (window_size - 1).bit_length()
    return window_size, window_shift, padded


def num_frames(num_samples: int, window_size: int = 400, window_shift: int = 160) -> int:
    """Frame count with snip_edges=True: only frames that fit completely in the signal."""
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // window_shift


def mel_scale(freq_hz):
    """Kaldi's mel scale, 1127 ln(1 + f / 700); works on floats and numpy arrays."""
    return 1127.0 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=16)
def _mel_banks_cached(
    num_bins: int, padded_window_size: int, sample_frequency: float, low_freq: float, high_freq: float
) -> np.ndarray:
    nyquist = 0.5 * sample_frequency
    if high_freq <= 0.0:
        high_freq += nyquist
    num_fft_bins = padded_window_size // 2
    fft_bin_width = sample_frequency / padded_window_size

    mel_low = float(mel_scale(low_freq))
    mel_high = float(mel_scale(high_freq))
    # num_bins + 1 intervals: each triangle spans two of them, neighbours overlap by one.
    mel_delta = (mel_high - mel_low) / (num_bins + 1)

    index = np.arange(num_bins, dtype=np.float64)[:, None]  # (num_bins, 1)
    left = mel_low + index * mel_delta
    center = mel_low + (index + 1.0) * mel_delta
    right = mel_low + (index + 2.0) * mel_delta

    fft_mel = mel_scale(fft_bin_width * np.arange(num_fft_bins, dtype=np.float64))[None, :]  # (1, num_fft_bins)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))  # (num_bins, num_fft_bins)

    # Kaldi leaves the Nyquist bin out of every filter: one zero column for it.
    banks = np.concatenate([banks, np.zeros((num_bins, 1))], axis=1)  # (num_bins, num_fft_bins + 1)
    banks.setflags(write=False)
    return banks


def kaldi_mel_banks(
    num_bins: int = 128,
    padded_window_size: int = 512,
    sample_frequency: float = 16000.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> np.ndarray:
    """Kaldi's triangular mel filters (no VTLN), shape (num_bins, padded_window_size // 2 + 1), float64.

    Triangles are linear in the mel domain; high_freq <= 0 is an offset from Nyquist.
    The returned array is read-only (it is cached).
    """
    _check_mel_options(num_bins, sample_frequency, low_freq, high_freq)
    return _mel_banks_cached(
        int(num_bins), int(padded_window_size), float(sample_frequency), float(low_freq), float(high_freq)
    )


def povey_window(window_size: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Kaldi's 'povey' window: a symmetric Hann window raised to the power 0.85 (zero at both ends)."""
    return torch.hann_window(window_size, periodic=False, dtype=dtype, device=device).pow(POVEY_EXPONENT)


def _check_mel_options(num_bins: int, sample_frequency: float, low_freq: float, high_freq: float) -> None:
    if sample_frequency <= 0:
        raise ConfigError(f"sample_frequency must be > 0, got {sample_frequency}")
    if int(num_bins) != num_bins or num_bins <= 3:
        raise ConfigError(f"num_mel_bins must be an integer > 3, got {num_bins}")
    nyquist = 0.5 * sample_frequency
    high = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if not 0.0 <= low_freq < nyquist:
        raise ConfigError(f"low_freq must be in [0, {nyquist}) for sample_frequency {sample_frequency}, got {low_freq}")
    if not 0.0 < high <= nyquist:
        raise ConfigError(
            f"high_freq must be in (0, {nyquist}] (or <= 0 as an offset from Nyquist), got {high_freq}"
        )
    if not low_freq < high:
        raise ConfigError(f"low_freq ({low_freq}) must be below high_freq ({high} Hz after the Nyquist offset)")


# ---------------------------------------------------------------------------------------------
# Batched core
# ---------------------------------------------------------------------------------------------


def power_spectrum(frames: torch.Tensor, padded: int) -> torch.Tensor:
    """|rfft(frames zero-padded to `padded`)|^2 over the last axis: (..., w) -> (..., padded // 2 + 1).

    Under torch.export (the ONNX exporter) the transform is written as two matmuls with the real DFT basis of the w
    samples: ONNX Runtime's DFT kernel is slow on CPU (about a tenth of the demo's audio front), a matmul of
    (frames, w) by (w, padded // 2 + 1) runs on its GEMM. Same values up to float rounding."""
    if not torch.compiler.is_exporting():
        return torch.fft.rfft(frames, n=padded, dim=-1).abs().pow(2)
    w = frames.shape[-1]
    angle = 2.0 * np.pi * np.outer(np.arange(w), np.arange(padded // 2 + 1)) / padded  # (w, bins), float64
    cos = torch.tensor(np.cos(angle), dtype=frames.dtype, device=frames.device)
    sin = torch.tensor(np.sin(angle), dtype=frames.dtype, device=frames.device)
    return torch.matmul(frames, cos).pow(2) + torch.matmul(frames, sin).pow(2)


def kaldi_fbank_batch(
    wavs: torch.Tensor,
    *,
    num_mel_bins: int = 128,
    sample_frequency: float = 16000.0,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Kaldi log-mel fbank of every row of wavs (B, T) at once: returns (B, num_frames, num_mel_bins) float32.

    Same definition as torchaudio.compliance.kaldi.fbank with its defaults (povey window, DC removal,
    snip_edges, power spectrum, log floor at float epsilon, no energy column), vectorised over the batch
    and the frames. Float64 input is computed in float64; anything else in float32 (as torchaudio does
    for float32 input).
    """
    if wavs.dim() != 2:
        raise AudioError(f"expected a batch of waveforms shaped (B, T), got shape {tuple(wavs.shape)}")
    if sample_frequency <= 0:
        raise ConfigError(f"sample_frequency must be > 0, got {sample_frequency}")
    window_size, window_shift, padded = frame_sizes(sample_frequency, frame_length_ms, frame_shift_ms)
    if window_size < 2:
        raise ConfigError(f"frame_length_ms gives a window of {window_size} samples; it must be at least 2")
    if window_shift <= 0:
        raise ConfigError(f"frame_shift_ms must give a shift of at least one sample, got {frame_shift_ms} ms")
    if not 0.0 <= preemphasis <= 1.0:
        raise ConfigError(f"preemphasis must be in [0, 1], got {preemphasis}")
    if dither < 0:
        raise ConfigError(f"dither must be >= 0, got {dither}")
    banks_np = kaldi_mel_banks(num_mel_bins, padded, sample_frequency, low_freq, high_freq)

    num_samples = wavs.shape[-1]
    if num_samples < window_size:
        raise AudioError(
            f"audio too short for one {frame_length_ms} ms frame: {num_samples} samples, "
            f"need at least {window_size} at {sample_frequency:g} Hz"
        )

    dtype = torch.float64 if wavs.dtype == torch.float64 else torch.float32
    x = wavs.to(dtype)

    # (B, T) -> (B, m, window_size): overlapping frames as a strided view, then a real copy below.
    frames = x.unfold(-1, window_size, window_shift)

    if dither != 0.0:
        noise = torch.randn(frames.shape, generator=generator, dtype=dtype, device=frames.device)
        frames = frames + dither * noise

    # Remove each frame's DC offset.
    frames = frames - frames.mean(dim=-1, keepdim=True)

    # Pre-emphasis inside each frame: y[j] = x[j] - c * x[max(j - 1, 0)].
    if preemphasis != 0.0:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - preemphasis * previous

    frames = frames * povey_window(window_size, dtype=dtype, device=frames.device)

    power = power_spectrum(frames, padded)  # (B, m, padded // 2 + 1)

    banks = torch.tensor(banks_np, dtype=dtype, device=power.device)  # copies the read-only cache
    mel = torch.matmul(power, banks.T)  # (B, m, padded // 2 + 1) @ (padded // 2 + 1, bins) -> (B, m, bins)
    return mel.clamp_min(EPSILON).log().to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def kaldi_fbank(
    waveform: torch.Tensor,
    *,
    num_mel_bins: int = 128,
    sample_frequency: float = 16000.0,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Log-mel fbank of one waveform (T,) or (1, T): (num_frames, num_mel_bins) float32.

    Numerically equivalent to torchaudio.compliance.kaldi.fbank(waveform, num_mel_bins=...,
    sample_frequency=..., frame_length=..., frame_shift=..., dither=...) with the remaining defaults.
    num_frames = 1 + (T - window) // shift (snip_edges); window = 400, shift = 160 at 16 kHz.
    """
    if waveform.dim() == 2:
        if waveform.shape[0] != 1:
            raise AudioError(
                f"kaldi_fbank takes one channel, shaped (T,) or (1, T); got shape {tuple(waveform.shape)}"
            )
        batch = waveform
    elif waveform.dim() == 1:
        batch = waveform.unsqueeze(0)  # (T,) -> (1, T)
    else:
        raise AudioError(f"kaldi_fbank takes a waveform shaped (T,) or (1, T); got shape {tuple(waveform.shape)}")
    return kaldi_fbank_batch(
        batch,
        num_mel_bins=num_mel_bins,
        sample_frequency=sample_frequency,
        frame_length_ms=frame_length_ms,
        frame_shift_ms=frame_shift_ms,
        dither=dither,
        preemphasis=preemphasis,
        low_freq=low_freq,
        high_freq=high_freq,
        generator=generator,
    )[0]


def beats_fbank(
    wavs: torch.Tensor,
    *,
    fbank_mean: float = BEATS_FBANK_MEAN,
    fbank_std: float = BEATS_FBANK_STD,
) -> torch.Tensor:
    """BEATs input features: wavs (B, T) in [-1, 1] at 16 kHz -> (B, frames, 128) float32.

    waveform * 2**15, Kaldi fbank (128 bins, 25 ms / 10 ms), then (x - mean) / (2 * std),
    as the official BEATs.preprocess does one waveform at a time.
    """
    if wavs.dim() == 1:
        wavs = wavs.unsqueeze(0)  # (T,) -> (1, T)
    fbank = kaldi_fbank_batch(
        wavs.to(torch.float64 if wavs.dtype == torch.float64 else torch.float32) * BEATS_WAVEFORM_SCALE,
        num_mel_bins=128,
        sample_frequency=16000.0,
        frame_length_ms=25.0,
        frame_shift_ms=10.0,
    )
    return (fbank - fbank_mean) / (2 * fbank_std)
