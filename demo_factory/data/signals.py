"""Signal primitives for the procedural data (numpy only): tones, sweeps, coloured noise, envelopes, levels, mixing."""

from __future__ import annotations

import numpy as np

SR = 16000


def n_samples(seconds: float) -> int:
    return max(1, int(round(seconds * SR)))


def tone(freq, seconds: float, *, harmonics=(1.0,), phase: float = 0.0) -> np.ndarray:
    """A tone at ``freq`` Hz (a number, or an array of instantaneous frequencies, one per sample).

    ``harmonics`` are the relative amplitudes of partials 1, 2, 3, ...; partials above 7.6 kHz are
    left out. Returned at RMS 1 (unless silent).
    """
    n = n_samples(seconds)
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    phi = phase + 2 * np.pi * np.cumsum(f) / SR
    out = np.zeros(n)
    for k, amp in enumerate(harmonics, start=1):
        if amp:
            out += amp * np.sin(k * phi) * (k * f < 0.95 * SR / 2)
    return normalise_rms(out)


def sweep(f0: float, f1: float, seconds: float, *, log: bool = True, harmonics=(1.0,)) -> np.ndarray:
    """A glide from f0 to f1 Hz (exponential when ``log``: equal musical steps per second)."""
    t = np.linspace(0.0, 1.0, n_samples(seconds), endpoint=False)
    f = f0 * (f1 / f0) ** t if log else f0 + (f1 - f0) * t
    return tone(f, seconds, harmonics=harmonics)


def noise(color: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """White, pink (-3 dB/octave) or brown (-6 dB/octave) Gaussian noise at RMS 1."""
    n = n_samples(seconds)
    white = rng.standard_normal(n)
    if color == "white":
        return normalise_rms(white)
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1.0 / SR)
    f[0] = f[1] if n > 1 else 1.0
    power = {"pink": 0.5, "brown": 1.0}[color]
    shaped = np.fft.irfft(spectrum / f**power, n)
    shaped = highpass_dc(shaped)
    return normalise_rms(shaped)


def highpass_dc(x: np.ndarray, cutoff: float = 20.0) -> np.ndarray:
    """Remove DC and the slowest drift: a first-order high-pass applied in the frequency domain."""
    f = np.fft.rfftfreq(len(x), 1.0 / SR)
    h = (1j * f / cutoff) / (1 + 1j * f / cutoff)
    return np.fft.irfft(np.fft.rfft(x) * h, len(x))


def envelope(n: int, attack: float = 0.01, release: float = 0.01) -> np.ndarray:
    """Flat envelope with linear attack/release ramps (seconds), length n."""
    env = np.ones(n)
    a, r = min(n // 2, n_samples(attack)), min(n // 2, n_samples(release))
    if a:
        env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r:
        env[n - r:] = np.linspace(1.0, 0.0, r)
    return env


def decay(n: int, seconds: float) -> np.ndarray:
    """Exponential decay to 1/e after ``seconds`` (for plucked notes and clicks)."""
    return np.exp(-np.arange(n) / (seconds * SR))


def place(canvas: np.ndarray, sound: np.ndarray, start: float) -> None:
    """Add ``sound`` into ``canvas`` starting at ``start`` seconds (clipped at the end)."""
    i = n_samples(start) if start > 0 else 0
    if i >= len(canvas):
        return
    m = min(len(sound), len(canvas) - i)
    canvas[i:i + m] += sound[:m]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def normalise_rms(x: np.ndarray) -> np.ndarray:
    r = rms(x)
    return x / r if r > 0 else x


def set_level(x: np.ndarray, rms_db: float, peak: float = 0.95) -> np.ndarray:
    """Scale to an RMS level in dBFS, then down if the peak would pass ``peak``."""
    r = rms(x)
    if r == 0:
        return x.astype(np.float32)
    y = x * (10 ** (rms_db / 20) / r)
    top = float(np.max(np.abs(y)))
    if top > peak:
        y *= peak / top
    return y.astype(np.float32)


def mix_at_snr(signal: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + background scaled so that RMS(signal) / RMS(background) is ``snr_db``."""
    bg = np.resize(background, len(signal)) if len(background) != len(signal) else background
    s, b = rms(signal), rms(bg)
    if s == 0 or b == 0:
        return signal + bg
    return signal + bg * (s / b) / 10 ** (snr_db / 20)


def fade(x: np.ndarray, kind: str) -> np.ndarray:
    """'in': grows from silence over the clip; 'out': fades away; 'steady': short ramps only."""
    n = len(x)
    if kind == "in":
        return x * np.linspace(0.02, 1.0, n) ** 2
    if kind == "out":
        return x * np.linspace(1.0, 0.02, n) ** 2
    return x * envelope(n, 0.05, 0.05)


def midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)
