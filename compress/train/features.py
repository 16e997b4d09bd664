"""The frozen inputs of the audio stage, computed once: Whisper encoder outputs and BEATs fbanks per training clip.

The Whisper encoder is frozen in SALMONN's training, so its (1500, d_model) output per clip is
computed once (clips read with :func:`compress.audio.load_audio`, padded to 30 s as at inference)
and kept as float16 in a memory-mapped ``.npy`` file. BEATs is trained here, so only its input (the
Kaldi fbank, a fixed transform of the waveform) is cached, cut to whole 16-frame patches as the
patch embedding does. A cache is keyed by the clips' contents and the encoder's weights; a clip already
in an earlier cache of the same folder and encoder is copied from it rather than encoded again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

PATCH = 16  # BEATs patch size in fbank frames


@dataclass
class FeatureCache:
    whisper: np.ndarray  # (N, 1500, d_model) float16, possibly memory-mapped
    fbank: np.ndarray  # (sum of frames, 128) float16
    offsets: np.ndarray  # (N + 1,) int64: clip i's frames are fbank[offsets[i]:offsets[i+1]]

    def __len__(self) -> int:
        return self.whisper.shape[0]

    def fbank_of(self, i: int) -> np.ndarray:
        return self.fbank[self.offsets[i]:self.offsets[i + 1]]


def state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def clip_digest(path: str) -> str:
    """Content hash of one audio file: a regenerated but identical clip keeps its cached features."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:20]


def cache_key(digests: list, encoder_digest: str) -> str:
    h = hashlib.sha256()
    for d in digests:
        h.update(f"{d}\n".encode())
    h.update(encoder_digest.encode())
    return h.hexdigest()[:16]


def clip_fbank(wav: np.ndarray) -> np.ndarray:
    """BEATs' normalised fbank of one clip, cut to whole patches: (16 * k, 128) float16."""
    from ..fbank import beats_fbank

    fb = beats_fbank(torch.from_numpy(np.asarray(wav, dtype=np.float32))[None])[0]
    n = (fb.shape[0] // PATCH) * PATCH
    return fb[:n].numpy().astype(np.float16)


@torch.inference_mode()
def build_cache(speech_encoder: torch.nn.Module, samples: list, cache_dir: str, *, batch: int = 8,
                progress: Optional[Callable] = None, log=print) -> FeatureCache:
    """Compute (or reuse) the cache for `samples` in `cache_dir`.

    Keyed by the clips' contents and the encoder's weights. A clip that an earlier cache in the same
    folder already holds (same content, same encoder) is copied from it, not encoded again: adding clips
    to a split costs only the new ones."""
    from ..audio import load_audio, whisper_features

    os.makedirs(cache_dir, exist_ok=True)
    digests = [clip_digest(s.path) for s in samples]
    enc = state_digest(speech_encoder)
    key = cache_key(digests, enc)
    meta_p = os.path.join(cache_dir, f"features-{key}.json")
    wh_p = os.path.join(cache_dir, f"whisper-{key}.npy")
    fb_p = os.path.join(cache_dir, f"fbank-{key}.npz")
    if os.path.isfile(meta_p) and os.path.isfile(wh_p) and os.path.isfile(fb_p):
        log(f"features: reusing the cache {wh_p}")
        return _load(wh_p, fb_p)
    n_mels = speech_encoder.config.num_mel_bins
    d = speech_encoder.config.d_model
    frames = speech_encoder.config.max_source_positions
    tmp_wh = wh_p + ".part"
    wh = np.lib.format.open_memmap(tmp_wh, mode="w+", dtype=np.float16, shape=(len(samples), frames, d))
    fbanks: list = [None] * len(samples)
    reused = _copy_known(cache_dir, enc, digests, (frames, d), wh, fbanks)
    if reused:
        log(f"features: {reused} of {len(samples)} clips copied from earlier caches in {cache_dir}")
    todo = [i for i in range(len(samples)) if fbanks[i] is None]
    speech_encoder.eval()
    bar = progress(len(todo)) if progress and todo else None
    for k in range(0, len(todo), batch):
        ids = todo[k:k + batch]
        waves = [load_audio(samples[i].path) for i in ids]
        spec = whisper_features(waves, n_mels)
        out = speech_encoder(spec.to(next(speech_encoder.parameters()).dtype)).last_hidden_state
        out = out.float().numpy().astype(np.float16)
        for j, i in enumerate(ids):
            wh[i] = out[j]
            fbanks[i] = clip_fbank(waves[j])
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()
    wh.flush()
    del wh
    offsets = np.concatenate([[0], np.cumsum([f.shape[0] for f in fbanks])]).astype(np.int64)
    np.savez(fb_p + ".part.npz", fbank=np.concatenate(fbanks, axis=0), offsets=offsets)
    os.replace(fb_p + ".part.npz", fb_p)
    os.replace(tmp_wh, wh_p)
    with open(meta_p + ".part", "w") as f:
        json.dump({"key": key, "clips": len(samples), "frames": frames, "d_model": d, "encoder": enc,
                   "digests": digests, "paths": [s.path for s in samples]}, f)
    os.replace(meta_p + ".part", meta_p)
    return _load(wh_p, fb_p)


def _copy_known(cache_dir: str, encoder_digest: str, digests: list, shape: tuple, wh, fbanks: list) -> int:
    """Fill rows of `wh` / `fbanks` from complete earlier caches of the same encoder; returns how many."""
    want: dict = {}
    for i, d in enumerate(digests):
        want.setdefault(d, []).append(i)
    copied = 0
    for meta_p in sorted(glob.glob(os.path.join(cache_dir, "features-*.json"))):
        if not want:
            break
        try:
            with open(meta_p) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        old_key = meta.get("key")
        old_wh = os.path.join(cache_dir, f"whisper-{old_key}.npy")
        old_fb = os.path.join(cache_dir, f"fbank-{old_key}.npz")
        if (meta.get("encoder") != encoder_digest or (meta.get("frames"), meta.get("d_model")) != shape
                or not os.path.isfile(old_wh) or not os.path.isfile(old_fb)):
            continue
        hits = [(row, want.pop(d)) for row, d in enumerate(meta.get("digests", [])) if d in want]
        if not hits:
            continue
        old = _load(old_wh, old_fb)
        for row, targets in hits:
            for i in targets:
                wh[i] = old.whisper[row]
                fbanks[i] = np.array(old.fbank_of(row))
                copied += 1
    return copied


def _load(wh_p: str, fb_p: str) -> FeatureCache:
    z = np.load(fb_p)
    return FeatureCache(whisper=np.load(wh_p, mmap_mode="r"), fbank=z["fbank"], offsets=z["offsets"])
