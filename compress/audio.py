"""Audio input for SALMONN: read, check and resample clips, then build Whisper and BEATs inputs."""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from compress.errors import AudioError, ConfigError, choices

SAMPLE_RATE = 16000
MIN_SECONDS = 1.0
MAX_SECONDS = 30.0

MIN_SAMPLES = int(MIN_SECONDS * SAMPLE_RATE)  # 16000
MAX_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)  # 480000, what Whisper pads to
HOP = 160  # Whisper's mel hop: 100 frames a second
FULL_MEL_FRAMES = MAX_SAMPLES // HOP  # 3000

CHANNEL_MODES = ("downmix", "first")
TOO_LONG_MODES = ("error", "cut")


class AudioConvertedWarning(UserWarning):
    """A clip was downmixed or resampled to SALMONN's 16 kHz mono on reading (said, never silent)."""


class AudioCutWarning(UserWarning):
    """A clip longer than MAX_SECONDS was cut to its first MAX_SECONDS (too_long="cut")."""


# --------------------------------------------------------------------------------------------
# Loading and checking one clip
# --------------------------------------------------------------------------------------------


def load_audio(
    path,
    *,
    channel_mode: str = "downmix",
    too_long: str = "error",
    pad_short: bool = True,
) -> np.ndarray:
    """Read an audio file and return a float32 mono waveform at 16 kHz, ready for the model.

    Follows the reference (SALMONN ``prepare_one_sample``): clips shorter than 1 s are padded
    with silence to 1 s (``pad_short``), clips longer than 30 s are refused
    (``too_long="error"``) or cut to their first 30 s with a warning (``too_long="cut"``).
    ``channel_mode="downmix"`` averages the channels; ``"first"`` takes the first channel as
    the reference does. Integer PCM is scaled to [-1, 1].

    Every problem with the file (missing, a directory, empty, not decodable, no samples,
    NaN/inf samples, too long) raises :class:`compress.errors.AudioError` naming the file.
    """
    _check_options(channel_mode, too_long)
    import soundfile as sf

    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    _check_path(name)

    try:
        with sf.SoundFile(name) as f:
            sample_rate = int(f.samplerate)
            total_frames = int(f.frames)
            if sample_rate <= 0:
                raise AudioError(f"audio file '{name}' declares an invalid sample rate {sample_rate}")
            # Never read more than one frame past the limit: enough to know it is too long,
            # and a long recording is not decoded in full only to be refused or cut.
            limit = int(MAX_SECONDS * sample_rate)
            data = f.read(frames=limit + 1, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError, MemoryError) as exc:
        raise AudioError(f"cannot read audio file '{name}': {_reason(exc, name)}") from exc

    if data.size == 0:
        raise AudioError(
            f"audio file '{name}' contains no audio samples (0 frames decoded; "
            f"the file may hold only a header)"
        )
    return _prepare(
        data,
        sample_rate,
        name=name,
        channel_mode=channel_mode,
        too_long=too_long,
        pad_short=pad_short,
        total_frames=max(total_frames, data.shape[0]),
        stacklevel=3,
    )


def prepare_waveform(
    samples,
    sample_rate: int,
    *,
    name: str = "<array>",
    channel_mode: str = "downmix",
    too_long: str = "error",
    pad_short: bool = True,
) -> np.ndarray:
    """Check and convert already-loaded samples exactly as :func:`load_audio` does.

    ``samples`` is 1-D (mono) or 2-D laid out ``(frames, channels)`` as soundfile returns it.
    Float input is taken as is; integer PCM is scaled to [-1, 1]. ``name`` appears in errors.
    """
    _check_options(channel_mode, too_long)
    return _prepare(
        samples,
        sample_rate,
        name=name,
        channel_mode=channel_mode,
        too_long=too_long,
        pad_short=pad_short,
        total_frames=None,
        stacklevel=3,
    )


def _prepare(
    samples,
    sample_rate,
    *,
    name: str,
    channel_mode: str,
    too_long: str,
    pad_short: bool,
    total_frames: int | None,
    stacklevel: int,
) -> np.ndarray:
    sample_rate = _check_sample_rate(sample_rate, name)
    data = _to_float32(samples, name)

    if data.ndim == 1:
        data = data[:, None]
    elif data.ndim != 2:
        raise AudioError(
            f"audio '{name}' has shape {tuple(data.shape)}; expected (frames,) or (frames, channels)"
        )
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"audio '{name}' contains no audio samples (shape {tuple(data.shape)})")

    n_frames = data.shape[0]
    total = n_frames if total_frames is None else max(int(total_frames), n_frames)
    limit = int(MAX_SECONDS * sample_rate)
    if total > limit:
        seconds = total / sample_rate
        if too_long == "error":
            raise AudioError(
                f"audio '{name}' is {seconds:.2f} s long; the limit is {MAX_SECONDS:g} s "
                f"(SALMONN's Whisper encoder sees at most {MAX_SECONDS:g} s). "
                f"Pass --too-long cut (too_long='cut' in Python) to keep the first {MAX_SECONDS:g} s, or split the file."
            )
        warnings.warn(
            f"audio '{name}' is {seconds:.2f} s long; cut to its first {MAX_SECONDS:g} s",
            AudioCutWarning,
            stacklevel=stacklevel,
        )
        data = data[:limit]

    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        n_nan = int(np.isnan(data).sum())
        raise AudioError(
            f"audio '{name}' contains {n_bad} non-finite sample value(s) "
            f"({n_nan} NaN, {n_bad - n_nan} inf) out of {data.size}"
        )

    if channel_mode == "first" or data.shape[1] == 1:
        wav = data[:, 0]
    else:
        wav = data.mean(axis=1, dtype=np.float64).astype(np.float32)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    changes = []
    if data.shape[1] > 1:
        changes.append(f"{data.shape[1]} channels " + ("-> first channel" if channel_mode == "first" else "downmixed to mono"))
    if sample_rate != SAMPLE_RATE:
        changes.append(f"resampled {sample_rate} -> {SAMPLE_RATE} Hz")
    if changes:
        warnings.warn(f"audio '{name}': {', '.join(changes)}", AudioConvertedWarning, stacklevel=stacklevel)

    if sample_rate != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(wav, sample_rate, SAMPLE_RATE, quality="HQ")
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        if total > limit:
            # A cut clip is exactly MAX_SECONDS; absorb a rounding sample from the resampler.
            wav = _fit(wav, MAX_SAMPLES)
    wav = wav[:MAX_SAMPLES]

    if wav.shape[0] < MIN_SAMPLES:
        if pad_short:
            wav = _fit(wav, MIN_SAMPLES)
        elif wav.shape[0] == 0:
            raise AudioError(
                f"audio '{name}' is too short to use: {n_frames} frame(s) at {sample_rate} Hz "
                f"resample to no samples at {SAMPLE_RATE} Hz"
            )
    return wav


def _fit(wav: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad (silence at the end) a 1-D float32 array to exactly n samples."""
    if wav.shape[0] >= n:
        return wav[:n]
    return np.concatenate([wav, np.zeros(n - wav.shape[0], dtype=np.float32)])


def _check_options(channel_mode, too_long) -> None:
    if channel_mode not in CHANNEL_MODES:
        raise ConfigError(f"unknown channel_mode {channel_mode!r}; valid: {choices(CHANNEL_MODES)}")
    if too_long not in TOO_LONG_MODES:
        raise ConfigError(f"unknown too_long {too_long!r}; valid: {choices(TOO_LONG_MODES)}")


def _check_path(name: str) -> None:
    if not os.path.exists(name):
        raise AudioError(f"cannot read audio file '{name}': file not found")
    if os.path.isdir(name):
        raise AudioError(f"cannot read audio file '{name}': it is a directory, not an audio file")
    if not os.access(name, os.R_OK):
        raise AudioError(f"cannot read audio file '{name}': permission denied")
    try:
        size = os.path.getsize(name)
    except OSError as exc:
        raise AudioError(f"cannot read audio file '{name}': {exc.strerror or exc}") from exc
    if size == 0:
        raise AudioError(f"cannot read audio file '{name}': the file is empty (0 bytes)")


def _reason(exc: BaseException, name: str) -> str:
    """soundfile's message without the repeated "Error opening '<name>': " prefix."""
    msg = str(exc).strip() or type(exc).__name__
    prefix = f"Error opening {name!r}: "
    if msg.startswith(prefix):
        msg = msg[len(prefix):]
    if msg.rstrip(".") == "Format not recognised":
        msg = "format not recognised (not a supported audio format, or a corrupt file)"
    return msg


def _check_sample_rate(sample_rate, name: str) -> int:
    if isinstance(sample_rate, (bool, np.bool_)):
        raise AudioError(f"audio '{name}': sample rate must be a positive integer, got {sample_rate!r}")
    try:
        rate = int(sample_rate)
    except (TypeError, ValueError):
        raise AudioError(
            f"audio '{name}': sample rate must be a positive integer, got {sample_rate!r}"
        ) from None
    if rate != sample_rate or rate <= 0:
        raise AudioError(f"audio '{name}': sample rate must be a positive integer, got {sample_rate!r}")
    return rate


def _to_float32(samples, name: str) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    try:
        arr = np.asarray(samples)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"audio '{name}' is not a numeric array: {exc}") from exc
    kind = arr.dtype.kind
    if kind == "f":
        return arr.astype(np.float32, copy=False)
    if kind == "i":
        scale = float(2 ** (8 * arr.dtype.itemsize - 1))
        return (arr.astype(np.float64) / scale).astype(np.float32)
    if kind == "u":
        half = float(2 ** (8 * arr.dtype.itemsize - 1))
        return ((arr.astype(np.float64) - half) / half).astype(np.float32)
    raise AudioError(f"audio '{name}' has unsupported sample type {arr.dtype}; expected float or integer PCM")


# --------------------------------------------------------------------------------------------
# Model inputs for a batch of prepared clips
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _feature_extractor(n_mels: int):
    from transformers import WhisperFeatureExtractor

    # Built from arguments, never from the hub: these are Whisper's (and SALMONN's) settings.
    return WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        chunk_length=int(MAX_SECONDS),
        n_fft=400,
        padding_value=0.0,
    )


def _check_batch(waveforms, what: str) -> list[np.ndarray]:
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
        raise TypeError(f"{what} takes a list of 1-D waveforms, not a single waveform")
    waveforms = list(waveforms)
    if not waveforms:
        raise ValueError(f"{what}: empty list of waveforms")
    out = []
    for i, w in enumerate(waveforms):
        if isinstance(w, torch.Tensor):
            w = w.detach().cpu().numpy()
        w = np.asarray(w)
        if w.ndim != 1:
            raise AudioError(
                f"{what}: waveform {i} has shape {tuple(w.shape)}; expected a 1-D mono "
                f"{SAMPLE_RATE} Hz waveform (use load_audio / prepare_waveform)"
            )
        if w.dtype.kind != "f":
            raise AudioError(f"{what}: waveform {i} has dtype {w.dtype}; expected float samples in [-1, 1]")
        if w.shape[0] > MAX_SAMPLES:
            raise AudioError(
                f"{what}: waveform {i} has {w.shape[0]} samples ({w.shape[0] / SAMPLE_RATE:.2f} s); "
                f"the limit is {MAX_SECONDS:g} s "
                f"(load it with --too-long cut, or too_long='cut' in Python, to keep the first {MAX_SECONDS:g} s)"
            )
        out.append(np.ascontiguousarray(w, dtype=np.float32))
    return out


def whisper_features(waveforms, n_mels: int, frames: Optional[int] = None) -> torch.Tensor:
    """Whisper log-mel features ``(B, n_mels, 3000)`` float32 for 16 kHz mono waveforms.

    Each clip is zero-padded to 30 s, as Whisper and the SALMONN reference do; the result
    equals transformers' ``WhisperFeatureExtractor(feature_size=n_mels)`` applied per clip.
    Whisper large-v2 uses 80 mel bins, large-v3 / v3-turbo 128.

    ``frames``: only the first ``frames`` mel frames, ``(B, n_mels, frames)``, equal to the 30 s features
    cut there. The STFT runs over the clips plus enough zeros that every kept frame and every frame touching
    a sample is the 30 s one (its frames past that are all silence, at the floor): a few-second clip costs a
    few seconds of STFT, not thirty.
    """
    if isinstance(n_mels, bool) or not isinstance(n_mels, (int, np.integer)) or n_mels <= 0:
        raise ConfigError(
            f"n_mels must be a positive integer (80 for Whisper large-v2, 128 for v3), got {n_mels!r}"
        )
    waves = _check_batch(waveforms, "whisper_features")
    extractor = _feature_extractor(int(n_mels))
    if frames is None or frames >= FULL_MEL_FRAMES:
        feats = extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]
        return torch.as_tensor(feats, dtype=torch.float32)[..., :frames].contiguous()
    # frame j spans samples [160 j - 200, 160 j + 200): 480 zeros past the last kept frame and the last sample
    # reach every frame that is not pure padding
    target = min(MAX_SAMPLES, max(int(frames) * HOP, max(w.shape[0] for w in waves)) + 480)
    padded = [np.pad(w, (0, target - w.shape[0])) for w in waves]
    feats = extractor(padded, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="longest")["input_features"]
    return torch.as_tensor(feats, dtype=torch.float32)[..., :frames].contiguous()


def batch_waveforms(waveforms) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack waveforms for BEATs: ``wav (B, T_max)`` float32 zero-padded at the end, and
    ``padding_mask (B, T_max)`` bool, True where a sample is padding."""
    waves = _check_batch(waveforms, "batch_waveforms")
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.long)
    t_max = int(lengths.max())
    wav = torch.zeros(len(waves), t_max, dtype=torch.float32)
    for i, w in enumerate(waves):
        wav[i, : w.shape[0]] = torch.from_numpy(w)
    padding_mask = torch.arange(t_max)[None, :] >= lengths[:, None]
    return wav, padding_mask


@dataclass
class AudioBatch:
    """Model inputs for a batch of clips: Whisper features and BEATs waveforms."""

    waveforms: list  # the prepared 1-D float32 16 kHz numpy waveforms
    wav: torch.Tensor  # (B, T_max) float32, zero-padded
    padding_mask: torch.Tensor  # (B, T_max) bool, True where padded
    spectrogram: torch.Tensor  # (B, n_mels, 3000) float32 Whisper log-mel

    def __len__(self) -> int:
        return len(self.waveforms)

    @property
    def lengths(self) -> list[int]:
        """Real (unpadded) length of each clip in samples at 16 kHz."""
        return [int(w.shape[0]) for w in self.waveforms]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "AudioBatch":
        """Move the tensors (and cast the float ones to ``dtype`` if given); a new batch."""
        return AudioBatch(
            waveforms=self.waveforms,
            wav=self.wav.to(device=device, dtype=dtype),
            padding_mask=self.padding_mask.to(device=device),
            spectrogram=self.spectrogram.to(device=device, dtype=dtype),
        )


def prepare_batch(waveforms, n_mels: int) -> AudioBatch:
    """Build the Whisper and BEATs inputs for prepared waveforms (see :func:`load_audio`)."""
    waves = _check_batch(waveforms, "prepare_batch")
    wav, padding_mask = batch_waveforms(waves)
    return AudioBatch(
        waveforms=waves,
        wav=wav,
        padding_mask=padding_mask,
        spectrogram=whisper_features(waves, n_mels),
    )
