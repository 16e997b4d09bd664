"""Torch-free runtime of an ONNX export: audio file in, greedy transcript or caption out.

Runs a directory written by `export --format onnx` with onnxruntime, numpy, the `tokenizers` library, soundfile and
soxr only, for deployment where importing torch (about 280 MiB resident on its own) would dominate the memory of a
small model. Its greedy ids are those of `OrtSalmonn.generate(..., num_beams=1)` (ort_backend.py), which runs the
same graphs through torch and transformers.

Hand-written because no installable runtime runs this pair of graphs without torch: the Whisper log-mel (the steps
of transformers' WhisperFeatureExtractor, in numpy), the audio front graph, the splice of its speech tokens into the
prompt's embeddings, and greedy decoding through the KV-cache LLM graph.

Usage: python -m compress.export.lite EXPORT_DIR AUDIO [AUDIO ...] [--task asr|caption] [--max-new-tokens N]
[--ignore-eos] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Optional

import numpy as np

from ..errors import AudioError, CheckpointError, UserError, choices
from ..models.windows import encoder_frames, real_mel_frames
from .layout import CONFIG, EMBED, FRONT, KIND, LLM

MEL_FILTERS = "mel_filters.npy"
TOKENIZER_JSON = os.path.join("tokenizer", "tokenizer.json")
SAMPLE_RATE = 16000
N_FFT, HOP = 400, 160
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's 30 s input, zero-padded
MIN_SAMPLES = SAMPLE_RATE  # shorter clips are padded to 1 s, as compress.audio.load_audio does
REEXPORT = "re-export it with this version (python -m compress.cli export --format onnx ...)"


# ------------------------------------------------------------------------------------ audio
def load_wav(path: str) -> np.ndarray:
    """An audio file -> float32 mono 16 kHz waveform (channels averaged, soxr HQ resampling, padded to 1 s).

    Same samples as compress.audio.load_audio's defaults; clips over 30 s are refused (Whisper sees 30 s)."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioError(f"cannot read audio file '{path}': "
                         + ("it is a directory" if os.path.isdir(path) else "file not found"))
    try:
        with sf.SoundFile(path) as f:
            rate = int(f.samplerate)
            data = f.read(frames=30 * rate + 1, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError) as e:
        reason = str(e).replace(f"Error opening {path!r}: ", "") or type(e).__name__
        raise AudioError(f"cannot read audio file '{path}': {reason}") from None
    if data.size == 0:
        raise AudioError(f"audio file '{path}' contains no audio samples")
    if data.shape[0] > 30 * rate:
        raise AudioError(f"audio file '{path}' is longer than 30 s, the most SALMONN's Whisper encoder sees: "
                         "cut or split it")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file '{path}' contains NaN or infinite samples")
    return _to_16k_mono(data, rate)


def _to_16k_mono(data: np.ndarray, rate: int) -> np.ndarray:
    """(frames, channels) float32 at `rate` -> 1-D float32 at 16 kHz, at least MIN_SAMPLES long."""
    wav = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float64).astype(np.float32)
    if rate != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(wav, rate, SAMPLE_RATE, quality="HQ")
    wav = np.ascontiguousarray(wav[:CHUNK_SAMPLES], dtype=np.float32)
    if wav.shape[0] < MIN_SAMPLES:
        wav = np.concatenate([wav, np.zeros(MIN_SAMPLES - wav.shape[0], dtype=np.float32)])
    return wav


def checked_wav(wav) -> np.ndarray:
    """A waveform the graphs accept: 1-D float samples, 1 to 480000 of them (30 s at 16 kHz), as float32."""
    wav = np.asarray(wav)
    if wav.ndim != 1 or wav.dtype.kind != "f" or not 0 < wav.shape[0] <= CHUNK_SAMPLES:
        raise AudioError(f"expected a 1-D float waveform of 1 to {CHUNK_SAMPLES} samples (30 s at 16 kHz), got "
                         f"shape {wav.shape} dtype {wav.dtype}; read files with load_wav")
    return np.ascontiguousarray(wav, dtype=np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window of length n (torch.hann_window's default, what Whisper's STFT uses)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def mel_power(power: np.ndarray, mel_filters: np.ndarray) -> np.ndarray:
    """power (count, n_fft // 2 + 1) @ mel_filters (n_fft // 2 + 1, n_mels), in float64, without BLAS: each mel
    filter is nonzero over a few neighbouring bins, whose rows (of the transposed power) it sums directly. Why:
    numpy's OpenBLAS keeps a worker thread busy-waiting for about 100 ms after a threaded matrix product, on the cores
    the LLM's prefill and first decode steps then need (best-cpu, 2 threads: prefill 31 ms instead of 16 right after
    the log-mel)."""
    rows = np.ascontiguousarray(power.T)  # (bins, count)
    weights = mel_filters.astype(np.float64)
    nonzero = weights != 0
    first = nonzero.argmax(axis=0)  # each band's first and one-past-last nonzero bin
    stop = len(weights) - nonzero[::-1].argmax(axis=0)
    out = np.zeros((mel_filters.shape[1], power.shape[0]))
    for m in np.flatnonzero(nonzero.any(axis=0)):
        lo, hi = first[m], stop[m]
        np.sum(weights[lo:hi, m, None] * rows[lo:hi], axis=0, out=out[m])
    return out.T


def log_mel(wav: np.ndarray, mel_filters: np.ndarray, frames: Optional[int] = None) -> np.ndarray:
    """1-D 16 kHz waveform -> Whisper log-mel (n_mels, 3000) float32, as WhisperFeatureExtractor computes it.

    The clip is zero-padded (or cut) to 30 s; STFT with n_fft 400, hop 160, a periodic Hann window and centred
    frames (reflect padding); power spectrum of all frames but the last; mel filters (n_fft // 2 + 1, n_mels);
    log10 clamped at 1e-10; floored at the maximum - 8; then (x + 4) / 4.

    `frames`: the first `frames` frames only, equal to the 30 s result cut there: the STFT covers those frames and
    every frame that touches a sample of the clip (the rest of the 30 s are silence at the clamp, below the floor
    unless the clip is silent, where both give the clamp)."""
    full = CHUNK_SAMPLES // HOP
    frames = full if frames is None else min(int(frames), full)
    n = min(len(wav), CHUNK_SAMPLES)
    count = min(full, max(frames, n // HOP + 3))  # frames computed: frame j spans [HOP j - N_FFT/2, HOP j + N_FFT/2)
    x = np.zeros(CHUNK_SAMPLES, dtype=np.float64)
    x[:n] = wav[:n]
    x = np.pad(x, N_FFT // 2, mode="reflect")[: (count - 1) * HOP + N_FFT]
    frames_view = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:count]  # (count, n_fft)
    power = np.abs(np.fft.rfft(frames_view * hann_window(N_FFT), axis=-1)) ** 2  # (count, n_fft // 2 + 1)
    mel = np.log10(np.maximum(mel_power(power, mel_filters), 1e-10)).T  # (n_mels, count)
    mel = np.maximum(mel, mel.max() - 8.0)[:, :frames]
    return ((mel + 4.0) / 4.0).astype(np.float32)


# ------------------------------------------------------------------------------------ ONNX Runtime sessions
def default_providers() -> list:
    """CUDA when this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


def session(path: str, providers: Optional[list] = None, threads: Optional[int] = None, spin: Optional[bool] = None):
    """An InferenceSession: `threads` intra-op threads (None: ONNX Runtime's default), one inter-op thread,
    warnings off (the exporter's graphs trigger harmless ones). `spin` False: its idle worker threads sleep at once
    instead of busy-waiting for the next call (ONNX Runtime's session.intra_op.allow_spinning; None: its default,
    spinning)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("running an ONNX export needs onnxruntime: pip install -c constraints.txt "
                        "onnxruntime==1.31.1") from None
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(path, so, providers=providers or default_providers())


class KvInPlace:
    """Each layer's KV cache in one preallocated (1, KV, capacity, hd) buffer, for the onnxruntime-genai graph's
    decode steps: its GroupQueryAttention appends the new position in place when a step's past and present are bound
    (ONNX Runtime IO binding) to the same buffer, instead of copying the whole cache into new outputs every step
    (best-cpu, benchmarks/tools/kv_in_place.py: the same ids, 0.92x the time per token at 200 tokens, 0.98x at
    64). A step hands back views of the buffers; only a call that continues from the newest views runs in place,
    any other (a batch, a beam's reordered copy, an older cache) is copied in first, after which views handed out
    before it no longer hold their cache (a greedy loop keeps only the newest; beam search runs batched, apart)."""

    MIN_CAPACITY = 256  # positions; the buffers double when a step would not fit

    def __init__(self, sess, past_names: list, present_names: list, kv_heads: int, head_dim: int, vocab: int):
        self.sess, self.past_names, self.present_names = sess, past_names, present_names
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.logits = np.zeros((1, 1, vocab), np.float32)  # the graph's last-position logits land here
        self.bufs: list = []
        self.io = None  # the IO binding of the buffers (adopt)
        self.length = 0  # positions the buffers hold for the newest views handed out

    def owns(self, past: list) -> bool:
        """Whether `past` are the newest views of these buffers (the only cache a step may extend in place)."""
        return bool(self.bufs) and len(past) == len(self.bufs) and all(
            a.base is b and a.shape[2] == self.length for a, b in zip(past, self.bufs))

    def adopt(self, past: list) -> None:
        """Copy a cache (arrays (1, KV, P, hd)) into the buffers, growing them when it does not fit one more step."""
        import onnxruntime as ort

        p = int(past[0].shape[2])
        if not self.bufs or self.bufs[0].shape[2] < p + 1:
            cap = max(self.MIN_CAPACITY, 2 * (p + 1))
            self.bufs = [np.zeros((1, self.kv_heads, cap, self.head_dim), np.float32) for _ in past]
            self.io = self.sess.io_binding()  # the buffers and the logits stay bound; a step binds its two inputs
            for name, present, buf in zip(self.past_names, self.present_names, self.bufs):
                value = ort.OrtValue.ortvalue_from_numpy(buf)  # shares buf's memory
                self.io.bind_ortvalue_input(name, value)
                self.io.bind_ortvalue_output(present, value)
            self.io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        for b, a in zip(self.bufs, past):
            b[:, :, :p] = a
        self.length = p

    def step(self, past: list, feeds: dict) -> tuple:
        """One position on top of `past`: feeds without the past -> (logits, views of the buffers one longer)."""
        if not self.owns(past):
            self.adopt(past)
        if self.length + 1 > self.bufs[0].shape[2]:
            self.adopt([b[:, :, :self.length] for b in self.bufs])  # grow: copies into larger buffers
        for name, value in feeds.items():
            self.io.bind_cpu_input(name, value)
        self.sess.run_with_iobinding(self.io)
        self.length += 1
        return self.logits.copy(), [b[:, :, :self.length] for b in self.bufs]


class LlmSession:
    """The llm.onnx session on host arrays: one call = one forward over new embeddings with the KV cache.

    Two graph layouts: the dynamo exporter's (position_ids in, past_*/present_* names) and onnxruntime-genai's
    builder's (positions from the attention mask, past_key_values.*/present.* names; see genai_graph.py).
    `prefill`: a second session on the export's prefill graph (the same graph and weights with another MatMulNBits
    compute mode, see onnx_export.write_prefill_graph), run for every call of more than one position; the
    one-position decode steps run `sess`."""

    def __init__(self, sess, spec: dict, prefill=None):
        self.session = sess
        self.prefill = prefill
        self.past_names = list(spec["past_inputs"])
        self.outputs = ["logits"] + list(spec.get("present_outputs")
                                         or [n.replace("past_", "present_") for n in self.past_names])
        self.kv_heads, self.head_dim = int(spec["kv_heads"]), int(spec["head_dim"])
        self.takes_positions = "position_ids" in {i.name for i in sess.get_inputs()}
        self.prefixes: list = []  # (rows (P, D), their KV) per prompt start kept by keep_prefixes
        on_cpu = sess.get_providers()[0] == "CPUExecutionProvider"
        self.in_place = KvInPlace(sess, self.past_names, self.outputs[1:], self.kv_heads, self.head_dim,
                                  int(spec["vocab"])) if spec.get("graph") == "genai" and on_cpu else None

    def feeds(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
              past: Optional[list] = None) -> dict:
        """The graph's inputs: embeds (B, S, D), mask (B, P+S), positions (B, S), past arrays or None (prefill)."""
        if past is None:  # prefill: past length 0
            empty = np.zeros((embeds.shape[0], self.kv_heads, 0, self.head_dim), dtype=np.float32)
            past = [empty] * len(self.past_names)
        mask = np.asarray(mask).astype(np.int64)
        feeds = {"inputs_embeds": np.ascontiguousarray(embeds, dtype=np.float32), "attention_mask": mask,
                 **dict(zip(self.past_names, past))}
        if self.takes_positions:
            feeds["position_ids"] = np.asarray(positions).astype(np.int64)
        elif not mask.all():
            raise UserError("this export's LLM graph (onnxruntime-genai builder) takes positions from the attention "
                            "mask and cannot run padded batches: run one clip at a time (--batch-size 1)")
        return feeds

    def keep_prefixes(self, starts: list) -> None:
        """Compute once the KV of each (P, D) block of embeddings a prompt starts with (BOS and the text before the
        speech, one per task where the tasks' texts differ): a later single-clip prefill that starts with exactly
        one of them runs only the rest of its prompt on top of it (the same numbers: causal attention makes a
        prefix's keys and values independent of what follows). An empty list forgets them."""
        self.prefixes = []
        for rows in starts:
            if rows is None or len(rows) == 0:
                continue
            rows = np.ascontiguousarray(rows, dtype=np.float32)
            p = rows.shape[0]
            _, past = self.run(rows[None], np.ones((1, p), np.int64), np.arange(p)[None], None)
            self.prefixes.append((rows, past))

    def keep_prompt_starts(self, embed: np.ndarray, prompts: dict, bos: Optional[int]) -> None:
        """keep_prefixes of every task's prompt start (prompt_prefixes), embedded by the table `embed`."""
        self.keep_prefixes([embed[ids] for ids in prompt_prefixes(prompts, bos)])

    def _kept_prefix(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> Optional[tuple]:
        """The kept (rows, past) this prompt starts with, if it is one unpadded clip longer than it."""
        if not self.prefixes or embeds.shape[0] != 1 or not bool(np.asarray(mask).all()) \
                or not np.array_equal(np.asarray(positions)[0], np.arange(embeds.shape[1])):
            return None
        for rows, past in self.prefixes:
            p = rows.shape[0]
            if embeds.shape[1] > p and np.array_equal(embeds[0, :p], rows):
                return rows, past
        return None

    def run(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
            past: Optional[list] = None) -> tuple:
        """-> (logits (B, 1, V) of the last position, present arrays [k0, v0, k1, v1, ...])."""
        kept = self._kept_prefix(embeds, mask, positions) if past is None else None
        if kept is not None:
            p = kept[0].shape[0]
            embeds, positions, past = embeds[:, p:], np.asarray(positions)[:, p:], kept[1]
        if self.in_place is not None and past is not None and embeds.shape[:2] == (1, 1):
            feeds = self.feeds(embeds, mask, positions, past)
            return self.in_place.step(past, {k: v for k, v in feeds.items() if k not in self.past_names})
        sess = self.prefill if self.prefill is not None and embeds.shape[1] > 1 else self.session
        logits, *present = sess.run(self.outputs, self.feeds(embeds, mask, positions, past))
        return logits, present


def llm_session(folder: str, spec: dict, providers: Optional[list] = None, threads: Optional[int] = None):
    """The LlmSession of an export's LLM graph (spec = config.json's "llm"), with its prefill graph's session when
    the export has one (not spinning: it runs once per request, and its idle threads would spin through the
    decode)."""
    prefill = spec.get("prefill_file")
    return LlmSession(session(os.path.join(folder, spec.get("file", LLM)), providers, threads), spec,
                      prefill=session(os.path.join(folder, prefill), providers, threads, spin=False) if prefill
                      else None)


def prompt_prefixes(prompts: dict, bos: Optional[int]) -> list:
    """The token ids the tasks' prompts start with: BOS and each task's `before` ids, once per distinct start."""
    out: list = []
    for p in prompts.values():
        ids = ([bos] if bos is not None else []) + list(p["before"])
        if ids and ids not in out:
            out.append(ids)
    return out


# ------------------------------------------------------------------------------------ the export
def read_export(path: str) -> dict:
    """The export's config.json, after checking that the directory is a complete ONNX export made by a version
    that writes what this runtime reads (mel filters, prompt ids, tokenizer.json)."""
    from ..outputs import read_manifest, verify_files

    if not os.path.isdir(path):
        raise UserError(f"export directory {path!r} not found")
    manifest = read_manifest(path)
    if manifest.get("kind") != KIND:
        raise CheckpointError(f"{path!r} is not an ONNX export (manifest kind {manifest.get('kind')!r}); "
                              "write one with: python -m compress.cli export --format onnx")
    verify_files(path, manifest, hashes=False)
    with open(os.path.join(path, CONFIG)) as f:
        conf = json.load(f)
    missing = [what for what, ok in ((MEL_FILTERS, os.path.isfile(os.path.join(path, MEL_FILTERS))),
                                     ("prompt ids in config.json", "prompts" in conf),
                                     ("tokenizer size in config.json", "tokenizer_size" in conf)) if not ok]
    if missing:
        raise CheckpointError(f"{path!r} was exported by an older version (no {', no '.join(missing)}): {REEXPORT}")
    if not os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
        raise CheckpointError(f"{path!r} has no {TOKENIZER_JSON} (a slow tokenizer was saved, or the file was "
                              f"removed): {REEXPORT}")
    return conf


class TextDecoder:
    """Generated ids -> text with the `tokenizers` library, as compress.generation.tokens_to_text decodes them
    through transformers (which also honours tokenizer_config.json's clean_up_tokenization_spaces, except for
    BPE models)."""

    def __init__(self, path: str, size: int):
        from tokenizers import Tokenizer as HfTokenizer

        self.backend = HfTokenizer.from_file(os.path.join(path, TOKENIZER_JSON))
        self.size = int(size)
        self.clean_up = _wants_clean_up(path) and type(self.backend.model).__name__ != "BPE"

    def decode(self, ids: list) -> str:
        """Ids past the tokenizer (padded embedding rows) and special tokens dropped, whitespace stripped."""
        text = self.backend.decode([i for i in ids if i < self.size], skip_special_tokens=True)
        return (clean_up_spaces(text) if self.clean_up else text).strip()


def _wants_clean_up(path: str) -> bool:
    cfg = os.path.join(path, "tokenizer", "tokenizer_config.json")
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        return bool(json.load(f).get("clean_up_tokenization_spaces", False))


def clean_up_spaces(text: str) -> str:
    """Spaces before punctuation and English contractions removed (transformers' clean_up_tokenization)."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def next_token(logits: np.ndarray, seq: list, eos: list, step: int, min_length: int, penalty: float) -> int:
    """Greedy choice over (V,) logits, as compress.generation._greedy makes it: CTRL repetition penalty on the
    ids generated so far, EOS masked before `min_length` new tokens, argmax (ties -> lowest id)."""
    logits = np.array(logits, dtype=np.float32)
    if penalty != 1.0 and seq:
        idx = sorted(set(seq))
        v = logits[idx]
        logits[idx] = np.where(v > 0, v / np.float32(penalty), v * np.float32(penalty))
    if eos and step < min_length:
        logits[eos] = -np.inf
    return int(np.argmax(logits))


class LiteEngine:
    """An ONNX export run without torch: one clip at a time, greedy decoding with the KV cache."""

    def __init__(self, path: str, threads: Optional[int] = None, providers: Optional[list] = None):
        self.path = os.path.abspath(path)
        conf = read_export(self.path)
        self.conf = conf
        model = conf["model"]
        self.kernel, self.stride = encoder_frames(model["second_per_window"]), encoder_frames(model["second_stride"])
        gen = model["generate"]  # GenerateSettings as a dict
        self.max_new_tokens, self.min_length = int(gen["max_new_tokens"]), int(gen["min_length"])
        self.repetition_penalty = float(gen["repetition_penalty"])
        self.real_length, self.has_beats = bool(conf.get("real_length")), bool(conf["has_beats"])
        self.bos, self.eos_ids = conf.get("bos_id"), list(conf.get("eos_ids") or [])
        self.prompts = conf["prompts"]
        self.tokenizer = TextDecoder(self.path, conf["tokenizer_size"])
        self.mel_filters = np.load(os.path.join(self.path, MEL_FILTERS))
        self.embed = np.load(os.path.join(self.path, EMBED), mmap_mode="r")  # a prompt reads a few rows
        # the front runs once per request: its idle threads would spin through the LLM's prefill (best-cpu, 2 threads:
        # TTFT 81.5 -> 70.5 ms with the front not spinning, TPOT 7.8 / 8.0 ms; benchmarks/tools/ort_spin.py)
        self.front = session(os.path.join(self.path, FRONT), providers, threads, spin=False)
        self.llm = llm_session(self.path, conf["llm"], providers, threads)
        self.llm.keep_prompt_starts(self.embed, self.prompts, self.bos)

    # ------------------------------------------------------------------ audio -> speech tokens
    def features(self, wav: np.ndarray) -> np.ndarray:
        """(1, n_mels, F) log-mel: F = 3000, or the clip's frames rounded to whole windows with real_length."""
        frames = real_mel_frames(len(wav), self.kernel, self.stride) if self.real_length else None
        return np.ascontiguousarray(log_mel(wav, self.mel_filters, frames)[None])

    def speech_tokens(self, wav: np.ndarray) -> np.ndarray:
        """1-D 16 kHz waveform -> (1, L, D) speech tokens from the audio front graph."""
        feeds = {"spectrogram": self.features(wav)}
        if self.has_beats:
            feeds["wav"] = np.ascontiguousarray(wav[None], dtype=np.float32)
            feeds["padding_mask"] = np.zeros(feeds["wav"].shape, dtype=bool)
        return self.front.run(None, feeds)[0]

    def prompt_embeds(self, speech: np.ndarray, task: str) -> np.ndarray:
        """[BOS, prompt-before, speech, prompt-after] embeddings (1, S, D), as salmonn.prompt_embeds builds them."""
        if task not in self.prompts:
            raise UserError(f"unknown task {task!r} for this export; valid: {choices(self.prompts)}")
        ids = self.prompts[task]
        before = ([self.bos] if self.bos is not None else []) + list(ids["before"])
        rows = [self.embed[before], speech[0].astype(self.embed.dtype), self.embed[list(ids["after"])]]
        return np.concatenate(rows)[None]

    # ------------------------------------------------------------------ decoding
    def generate(self, wav: np.ndarray, task: str = "asr", max_new_tokens: Optional[int] = None,
                 ignore_eos: bool = False, on_token: Optional[Callable[[int], None]] = None) -> tuple:
        """1-D 16 kHz float32 waveform -> (text, generated ids without EOS). `on_token(step)` is called once each
        token id is chosen (the EOS step included), as PromptMixin.generate calls it."""
        embeds = self.prompt_embeds(self.speech_tokens(checked_wav(wav)), task)
        n = max_new_tokens or self.max_new_tokens
        eos = [] if ignore_eos else self.eos_ids
        s = embeds.shape[1]
        logits, past = self.llm.run(embeds, np.ones((1, s), np.int64), np.arange(s)[None], None)
        ids: list = []
        for step in range(n):
            tok = next_token(logits[0, -1], ids, eos, step, self.min_length, self.repetition_penalty)
            if tok not in eos:
                ids.append(tok)
            if on_token is not None:
                on_token(step)
            if tok in eos or step == n - 1:
                break
            pos = s + step  # the new token's position; the mask covers the prompt and every token so far
            logits, past = self.llm.run(self.embed[[tok]][None], np.ones((1, pos + 1), np.int64),
                                        np.array([[pos]]), past)
        return self.tokenizer.decode(ids), ids


# ------------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compress.export.lite",
                                description="Transcribe or caption audio files with an ONNX export, without torch "
                                            "(greedy decoding, one clip at a time).")
    p.add_argument("export_dir", help="directory written by `export --format onnx`")
    p.add_argument("audio", nargs="+", help="audio files (any rate / channel count soundfile reads; at most 30 s)")
    p.add_argument("--task", default="asr", choices=("asr", "caption"))
    p.add_argument("--max-new-tokens", type=_positive, default=None,
                   help="most tokens per clip (default: the model's generate.max_new_tokens)")
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-new-tokens tokens")
    p.add_argument("--threads", type=_positive, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per clip: text, ids, tokens, ttft_ms, tpot_ms")
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def peak_rss_mib():
    """This process's peak resident memory so far (MiB; None where the platform reports none). Linux: VmHWM of
    this process's own memory map (ru_maxrss would also count the parent's pages, carried over at exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def timed_generate(engine: LiteEngine, wav: np.ndarray, **kw) -> dict:
    """One clip with its latency, defined as compress.bench.latency does: ttft_ms from the waveform in memory to
    the first token id, tpot_ms the mean time of each later token ((end - first) / (tokens - 1))."""
    stamps: list = []
    t0 = time.perf_counter()
    text, ids = engine.generate(wav, on_token=lambda step: stamps.append(time.perf_counter()), **kw)
    end = time.perf_counter()
    n = len(stamps)
    return {"text": text, "token_ids": ids, "tokens": len(ids), "ttft_ms": round((stamps[0] - t0) * 1e3, 3),
            "tpot_ms": round((end - stamps[0]) * 1e3 / (n - 1), 3) if n > 1 else None}


def main(argv: Optional[list] = None) -> int:
    """The command: one line of text (or one JSON object) per clip; errors are one line on stderr, exit 2."""
    args = _parser().parse_args(argv)
    try:
        engine = _engine(args.export_dir, args.threads)
        for path in args.audio:
            out = timed_generate(engine, load_wav(path), task=args.task, max_new_tokens=args.max_new_tokens,
                                 ignore_eos=args.ignore_eos)
            if args.json:
                out["peak_rss_mib"] = peak_rss_mib()
            print(json.dumps({"audio": path, **out}) if args.json else out["text"], flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _engine(path: str, threads: Optional[int]) -> LiteEngine:
    """LiteEngine(path), with an unreadable or malformed export file (bad JSON, a config key missing, a graph
    ONNX Runtime refuses) reported as a CheckpointError naming the directory."""
    try:
        return LiteEngine(path, threads=threads)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path!r} is not a usable ONNX export ({type(e).__name__}: {e}); {REEXPORT}") from None


if __name__ == "__main__":
    sys.exit(main())
