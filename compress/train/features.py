"""The frozen inputs of the audio stage, computed once: Whisper encoder outputs and BEATs fbanks per training clip.

The Whisper encoder is frozen in SALMONN's training, so its (1500, d_model) output per clip is
computed once (clips read with :func:`compress.audio.load_audio`, padded to 30 s as at inference)
and kept as float16 in a memory-mapped ``.npy`` file. BEATs is trained here, so only its input (the
Kaldi fbank, a fixed transform of the waveform) is cached, cut to whole 16-frame patches as the
patch embedding does. A cache is reused only when its key (clips, annotation, encoder weights) matches.
"""

from __future__ import annotations

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


def cache_key(samples: list, encoder: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for s in samples:
        st = os.stat(s.path)
        h.update(f"{s.path}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    h.update(state_digest(encoder).encode())
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
    """Compute (or reuse) the cache for `samples` in `cache_dir`."""
    from ..audio import load_audio, whisper_features

    os.makedirs(cache_dir, exist_ok=True)
    key = cache_key(samples, speech_encoder)
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
    fbanks = []
    speech_encoder.eval()
    bar = progress(len(samples)) if progress else None
    for i in range(0, len(samples), batch):
        waves = [load_audio(s.path) for s in samples[i:i + batch]]
        spec = whisper_features(waves, n_mels)
        out = speech_encoder(spec.to(next(speech_encoder.parameters()).dtype)).last_hidden_state
        wh[i:i + len(waves)] = out.float().numpy().astype(np.float16)
        fbanks += [clip_fbank(w) for w in waves]
        if bar is not None:
            bar.update(len(waves))
    if bar is not None:
        bar.close()
    wh.flush()
    del wh
    offsets = np.concatenate([[0], np.cumsum([f.shape[0] for f in fbanks])]).astype(np.int64)
    np.savez(fb_p + ".part.npz", fbank=np.concatenate(fbanks, axis=0), offsets=offsets)
    os.replace(fb_p + ".part.npz", fb_p)
    os.replace(tmp_wh, wh_p)
    with open(meta_p, "w") as f:
        json.dump({"key": key, "clips": len(samples), "frames": frames, "d_model": d,
                   "paths": [s.path for s in samples]}, f)
    return _load(wh_p, fb_p)


def _load(wh_p: str, fb_p: str) -> FeatureCache:
    z = np.load(fb_p)
    return FeatureCache(whisper=np.load(wh_p, mmap_mode="r"), fbank=z["fbank"], offsets=z["offsets"])
