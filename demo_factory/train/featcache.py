"""The frozen inputs of training, computed once per clip: the Whisper encoder's output and BEATs' fbank.

The Whisper encoder is frozen in SALMONN's training, so its output per clip is computed once and kept as
float16: (1500, d_model) for audio padded to 30 s (SALMONN's inference), or, with `real_length`, the encoder
run on the clip's own mel frames rounded up to whole Q-Former windows (the model's `real_length` inference,
`compress.models.windows.real_mel_frames`, about a tenth of the cost for a 3-second clip). BEATs is trained
here, so only its input (the Kaldi fbank, a fixed transform of the waveform) is kept, cut to whole 16-frame
patches. With `layers` (SalmonnConfig.whisper_layers) the cache keeps those normalised hidden states, stacked
(len(layers), frames, d_model), and the trained weighted sum runs in training. One file per clip,
named by the clip's content hash, in a folder named by the encoder's weights: each file is written atomically,
so a killed run keeps every clip it finished and a rerun encodes only the rest.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Optional

import numpy as np
import torch

from compress.fileio import atomic_path

PATCH = 16  # BEATs patch size in fbank frames


def state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def clip_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:20]


def clip_fbank(wav: np.ndarray) -> np.ndarray:
    """BEATs' normalised fbank of one clip, cut to whole patches: (16 * k, 128) float16."""
    from compress.fbank import beats_fbank

    fb = beats_fbank(torch.from_numpy(np.asarray(wav, dtype=np.float32))[None])[0]
    n = max(PATCH, (fb.shape[0] // PATCH) * PATCH)
    if fb.shape[0] < n:
        fb = torch.nn.functional.pad(fb, (0, 0, 0, n - fb.shape[0]))
    return fb[:n].numpy().astype(np.float16)


class FeatureCache:
    """Per-clip cached inputs of a list of samples (index i = samples[i])."""

    def __init__(self, folder: str, digests: list, real_length: bool = False):
        self.folder, self.digests, self.real_length = folder, digests, real_length
        self._frames: dict = {}
        self._whisper_frames: dict = {}

    def __len__(self) -> int:
        return len(self.digests)

    def _path(self, i: int, kind: str) -> str:
        return os.path.join(self.folder, f"{self.digests[i]}.{kind}.npy")

    def whisper(self, i: int, frames: Optional[int] = None) -> np.ndarray:
        """(frames or 1500, d_model) float16 Whisper output of clip i (a memory-mapped slice); stacked:
        (layers, frames or 1500, d_model)."""
        a = np.load(self._path(i, "whisper"), mmap_mode="r")
        return a if frames is None else a[..., :frames, :]

    def whisper_frames(self, i: int) -> int:
        """Encoder frames cached for clip i (1500, or its real-length count)."""
        if i not in self._whisper_frames:
            self._whisper_frames[i] = int(np.load(self._path(i, "whisper"), mmap_mode="r").shape[-2])
        return self._whisper_frames[i]

    def fbank(self, i: int) -> np.ndarray:
        return np.load(self._path(i, "fbank"))

    def clip_frames(self, i: int) -> int:
        """Whisper frames (50 per second) the clip's audio covers: half its 100-per-second fbank frames."""
        if i not in self._frames:
            self._frames[i] = int(np.load(self._path(i, "fbank"), mmap_mode="r").shape[0]) // 2
        return self._frames[i]


def _save(path: str, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:  # np.save appends .npy to a name without it
        np.save(tmp, arr)


@torch.inference_mode()
def build_cache(speech_encoder: torch.nn.Module, samples: list, cache_dir: str, *, batch: int = 8,
                real_length: Optional[tuple] = None, layers: Optional[list] = None,
                progress: Optional[Callable] = None, log=print) -> FeatureCache:
    """The cache of `samples` under `cache_dir`, encoding only the clips it lacks. `real_length` = the
    Q-Former's (kernel, stride) in encoder frames: each clip encoded on its own real-length mel frames.
    `layers`: keep those hidden states (whisper_hidden) instead of the last one."""
    from compress.audio import load_audio, whisper_features
    from compress.models.salmonn import real_mel_frames, whisper_encode, whisper_hidden

    name = f"whisper-{state_digest(speech_encoder)}"
    if real_length is not None:
        name += f"-real{real_length[0]}x{real_length[1]}"
    if layers is not None:
        name += "-layers" + "-".join(str(i) for i in layers)
    folder = os.path.join(cache_dir, name)
    os.makedirs(folder, exist_ok=True)
    digests = [clip_digest(s.path) for s in samples]
    cache = FeatureCache(folder, digests, real_length=real_length is not None)
    todo = [i for i in range(len(samples))
            if not (os.path.isfile(cache._path(i, "whisper")) and os.path.isfile(cache._path(i, "fbank")))]
    seen: set = set()
    todo = [i for i in todo if not (digests[i] in seen or seen.add(digests[i]))]  # identical clips once
    if len(todo) < len(samples):
        log(f"features: {len(samples) - len(todo)} of {len(samples)} clips already cached in {folder}")
    if not todo:
        return cache
    n_mels = speech_encoder.config.num_mel_bins
    dtype = next(speech_encoder.parameters()).dtype
    speech_encoder.eval()
    bar = progress(len(todo)) if progress else None
    step = 1 if real_length is not None else batch  # real length: one clip a call, as inference of one clip
    for k in range(0, len(todo), step):
        ids = todo[k:k + step]
        waves = [load_audio(samples[i].path) for i in ids]
        spec = whisper_features(waves, n_mels).to(dtype)
        if real_length is not None:
            spec = spec[..., : real_mel_frames(len(waves[0]), real_length[0], real_length[1], spec.shape[-1])]
        out = whisper_encode(speech_encoder, spec) if layers is None else whisper_hidden(speech_encoder, spec, layers)
        out = out.float().numpy().astype(np.float16)
        for j, i in enumerate(ids):
            _save(cache._path(i, "fbank"), clip_fbank(waves[j]))
            _save(cache._path(i, "whisper"), out[j])
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()
    return cache
