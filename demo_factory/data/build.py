"""Generate a split of the speech + sound dataset: ASR clips from TTS voices, captioning clips from procedural sounds.

    python -m demo_factory.data.build --out benchmarks/data --split dev --seed 0 [--asr 100] [--caption 100]

writes ``OUT/SPLIT.json`` (SALMONN's ``{"annotation": [...]}``, paths relative to it) and the clips
under ``OUT/SPLIT/``. Every clip comes from its own generator seeded by (seed, split, task, index),
so the same arguments give identical files, and ``--asr 10`` gives the first 10 clips of
``--asr 100``. Sentences come from :mod:`demo_factory.data.sentences` (dev and test sentences never
occur in train); the voice :data:`~demo_factory.data.tts.HELDOUT_VOICE` never speaks in train and
speaks a share of the dev and test ASR clips (entries carry ``"voice"`` and ``"heldout_voice"``).
``--chain N`` (train only) adds N ASR clips ``train/chain_*`` of word-bigram sequences over the train
sentences (:func:`demo_factory.data.sentences.chain_sentences`, marked ``"sentence_source": "chain"``): far
more word sequences than the pool's 2,102 train sentences, so that a model cannot get by on whole
sentences it remembers. ``--open N`` (train only) adds N ASR clips ``train/open_*`` of open-vocabulary WordNet
sentences (:func:`demo_factory.data.sentences.open_sentences`, marked ``"sentence_source": "open"``): many words
the test split never uses, so that spelling is learnt from sound rather than from a closed word list.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.errors import ConfigError, UserError, choices
from . import signals as S
from . import sounds, tts
from compress.data.annotations import write_annotations
from .audiofile import FORMATS, write_audio
from .sentences import LICENCE, chain_sentences, normalise, open_sentences, sentences_for

SPLIT_IDS = {"train": 0, "dev": 1, "test": 2}
DEFAULT_COUNTS = {"train": (2000, 2000), "dev": (100, 100), "test": (100, 100)}
HELDOUT_SHARE = 0.2  # of the dev / test ASR clips
ASR_NOISE_SHARE = 0.3
GENERATOR_VERSION = 2
# written into every annotation file's meta and compared on reuse; the name is the one the shipped splits carry
GENERATOR_ID = f"compress.data.build v{GENERATOR_VERSION}"
CHAIN_SOURCE = "chain"  # "sentence_source" of the --chain clips' entries
OPEN_SOURCE = "open"  # "sentence_source" of the --open clips' entries


def is_chain(sample) -> bool:
    """A clip of a word-bigram chain sentence (`chain_sentences`, ``--chain``), not a pool sentence."""
    return sample.extra.get("sentence_source") == CHAIN_SOURCE


def select_voices(spec: str | None) -> list[str]:
    """Voice names from a comma list of names or engines ('espeak', 'flite', ...); 'none' for no TTS."""
    if spec is None or spec == "all":
        return list(tts.VOICES)
    if spec.strip().lower() == "none":
        return []
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        hits = [n for n, v in tts.VOICES.items() if part in (n, v.engine)]
        if not hits:
            engines = sorted({v.engine for v in tts.VOICES.values()})
            raise ConfigError(f"unknown voice or engine {part!r}; valid: {choices(list(tts.VOICES) + engines)}")
        out += [h for h in hits if h not in out]
    return out


def _rng(seed: int, split: str, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLIT_IDS[split], stream, index])


def _asr_voice(rng, split, voices):
    train = [v for v in voices if v != tts.HELDOUT_VOICE]
    if split != "train" and tts.HELDOUT_VOICE in voices and (not train or rng.random() < HELDOUT_SHARE):
        return tts.HELDOUT_VOICE
    return train[int(rng.integers(len(train)))]


def _asr_background(rng, seconds):
    kind = ("white", "pink", "brown", "hum", "music")[int(rng.integers(5))]
    if kind == "hum":
        return kind, S.tone(float((50, 60)[int(rng.integers(2))]), seconds, harmonics=[1 / k for k in range(1, 12)])
    if kind == "music":
        return kind, sounds._melody(rng, seconds)[0]
    return kind, S.noise(kind, seconds, rng)


def make_asr_clip(rng, sentence: str, voice_name: str):
    """(waveform, extra fields) for one spoken sentence: speed, padding, level and maybe noise."""
    speed = float(rng.uniform(0.85, 1.2))
    pitch = int(rng.integers(35, 66)) if tts.voice(voice_name).engine == "espeak" else None
    speech = tts.synthesize(voice_name, sentence, speed=speed, pitch=pitch)
    lead, tail = float(rng.uniform(0.1, 0.5)), float(rng.uniform(0.1, 0.5))
    x = np.concatenate([np.zeros(S.n_samples(lead)), speech.astype(np.float64), np.zeros(S.n_samples(tail))])
    noise, snr = "none", None
    if rng.random() < ASR_NOISE_SHARE:
        snr = float(rng.uniform(5, 20))
        noise, bg = _asr_background(rng, len(x) / S.SR)
        x = S.normalise_rms(x) + S.normalise_rms(bg[:len(x)]) / 10 ** (snr / 20)
    level = float(rng.uniform(-32, -16))
    extra = {"voice": voice_name, "speed": round(speed, 3), "level_db": round(level, 1), "noise": noise,
             "snr_db": None if snr is None else round(snr, 1)}
    return S.set_level(x, level), extra


def _speech_for_caption(rng, split, voices, short_sentences):
    name = _asr_voice(rng, split, voices)
    sentence = short_sentences[int(rng.integers(len(short_sentences)))]
    wav = tts.synthesize(name, sentence, speed=float(rng.uniform(0.9, 1.1)))
    v = tts.voice(name)
    return sounds.Speech(wav[: S.n_samples(9.0)], v.gender, name, normalise(sentence), robotic=v.robotic)


@dataclass(frozen=True)
class _Context:
    """What every clip of one split needs besides its job (sent once to each worker process)."""
    out: Path
    split: str
    seed: int
    voices: tuple
    short: tuple  # pool sentences of at most 12 words (speech inside caption clips)
    fmt: str


def _auto_workers(n_jobs: int) -> int:
    return 1 if n_jobs < 64 else max(1, min(4, os.cpu_count() or 1))


def _make_clip(ctx: _Context, job) -> dict:
    """Write one clip and return its annotation entry. ``job`` = (source, index, rng stream, sentence or kind)."""
    source, i, stream, what = job
    rng = _rng(ctx.seed, ctx.split, stream, i)
    if source == "cap":
        speech = _speech_for_caption(rng, ctx.split, ctx.voices, ctx.short) if what in sounds.SPEECH_MAKERS else None
        clip = sounds.make_clip(what, rng, speech)
        rel = f"{ctx.split}/cap_{i:05d}.{ctx.fmt}"
        write_audio(ctx.out / rel, clip.wav, ctx.fmt)
        return {"path": rel, "text": clip.references[0], "task": "audiocaption", "split": ctx.split,
                "references": clip.references, "kind": clip.kind, "params": clip.params}
    name = _asr_voice(rng, ctx.split, ctx.voices)
    wav, extra = make_asr_clip(rng, what, name)
    pool = source == "asr"
    rel = f"{ctx.split}/{source}_{i:05d}.{ctx.fmt}"
    write_audio(ctx.out / rel, wav, ctx.fmt)
    entry = {"path": rel, "text": normalise(what), "task": "asr", "split": ctx.split,
             "heldout_voice": pool and name == tts.HELDOUT_VOICE, **extra,
             "seconds": round(len(wav) / S.SR, 2), "sentence": what}
    return entry if pool else {**entry, "sentence_source": source}


_WORKER_CTX: _Context | None = None


def _init_worker(ctx: _Context) -> None:
    global _WORKER_CTX
    _WORKER_CTX = ctx


def _worker_clip(job) -> dict:
    return _make_clip(_WORKER_CTX, job)


def build_split(out, split: str, seed: int = 0, n_asr: int | None = None, n_caption: int | None = None, *,
                voices=None, fmt: str = "ogg", progress: bool = True, n_chain: int = 0, n_open: int = 0,
                workers: int | None = None) -> Path:
    """Generate one split under ``out``; returns the annotation file's path.

    ``n_chain`` (train only) adds that many ASR clips of `chain_sentences` (word-bigram sequences over the
    train sentences), marked ``"sentence_source": "chain"``; ``n_open`` (train only) that many of
    `open_sentences` (open-vocabulary WordNet examples), marked ``"sentence_source": "open"``. ``workers``
    processes make the clips (None: one per core, at most 4, for splits of 64 clips or more); every clip comes from
    its own generator, so the files do not depend on it."""
    if split not in SPLIT_IDS:
        raise ConfigError(f"unknown split {split!r}; valid: {choices(SPLIT_IDS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown audio format {fmt!r}; valid: {choices(FORMATS)}")
    n_asr = DEFAULT_COUNTS[split][0] if n_asr is None else int(n_asr)
    n_caption = DEFAULT_COUNTS[split][1] if n_caption is None else int(n_caption)
    if n_asr < 0 or n_caption < 0 or n_chain < 0 or n_open < 0:
        raise ConfigError("--asr, --caption, --chain and --open must be >= 0")
    if (n_chain or n_open) and split != "train":
        raise ConfigError(f"--chain and --open add training clips; the {split} split takes only pool sentences")
    voices = list(tts.VOICES) if voices is None else list(voices)
    if split == "train":
        voices = [v for v in voices if v != tts.HELDOUT_VOICE]
    if (n_asr or n_chain or n_open) and not voices:
        raise ConfigError("ASR clips need at least one TTS voice; use --asr 0 or select voices with --voices")
    tts.require_voices(voices)

    out = Path(out)
    clip_dir = out / split
    sentences = sentences_for(split)
    order = _rng(seed, split, 0).permutation(len(sentences))
    short = [s for s in sentences if len(s.split()) <= 12]
    kinds = [k for k in sounds.KINDS if voices or k not in sounds.SPEECH_MAKERS]
    kind_order = [kinds[i] for i in _rng(seed, split, 3).permutation(len(kinds))]

    from tqdm import tqdm

    jobs = [("asr", i, 1, sentences[order[i % len(sentences)]]) for i in range(n_asr)]
    for source, stream, texts in ((CHAIN_SOURCE, 4, chain_sentences(n_chain, seed) if n_chain else []),
                                  (OPEN_SOURCE, 5, open_sentences(n_open, seed) if n_open else [])):
        jobs += [(source, i, stream, sentence) for i, sentence in enumerate(texts)]
    jobs += [("cap", i, 2, kind_order[i % len(kind_order)]) for i in range(n_caption)]
    ctx = _Context(out, split, int(seed), tuple(voices), tuple(short), fmt)
    workers = _auto_workers(len(jobs)) if workers is None else max(1, int(workers))

    entries = []
    bar = tqdm(total=len(jobs), desc=f"{split}", unit="clip", disable=not progress, file=sys.stderr)
    if workers == 1:
        for job in jobs:
            entries.append(_make_clip(ctx, job))
            bar.update()
    else:
        # spawn, not fork: the caller may hold torch's thread pools, which a forked child can deadlock on
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(ctx,))
        with pool:
            for entry in pool.map(_worker_clip, jobs, chunksize=16):
                entries.append(entry)
                bar.update()
    written = {out / e["path"] for e in entries}
    bar.close()
    for stale in sorted(clip_dir.glob("*")) if clip_dir.is_dir() else []:
        if stale.is_file() and stale.name.startswith(("asr_", "cap_", "chain_", "open_")) and stale not in written:
            stale.unlink()
    meta = {"generator": GENERATOR_ID, "split": split, "seed": seed,
            "asr": n_asr, "caption": n_caption, **({"chain": n_chain} if n_chain else {}),
            **({"open": n_open} if n_open else {}), "format": fmt, "voices": voices,
            "heldout_voice": tts.HELDOUT_VOICE, "sentences": LICENCE}
    ann = out / f"{split}.json"
    write_annotations(ann, entries, meta)
    return ann


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo_factory.data.build", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (annotation OUT/SPLIT.json, clips OUT/SPLIT/)")
    ap.add_argument("--split", required=True, choices=list(SPLIT_IDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--asr", type=int, default=None, help="number of ASR clips (train 2000, dev/test 100)")
    ap.add_argument("--caption", type=int, default=None, help="number of captioning clips (train 2000, dev/test 100)")
    ap.add_argument("--chain", type=int, default=0,
                    help="train only: extra ASR clips of word-bigram sentences over the train text (default 0)")
    ap.add_argument("--open", type=int, default=0,
                    help="train only: extra ASR clips of open-vocabulary WordNet sentences (default 0)")
    ap.add_argument("--voices", default="all",
                    help="comma list of voice names or engines, 'all' (default) or 'none' (no TTS: --asr 0)")
    ap.add_argument("--format", default="ogg", choices=list(FORMATS), help="audio format (default ogg vorbis)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes making the clips (default: one per core, at most 4; the files do not change)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    try:
        ann = build_split(args.out, args.split, args.seed, args.asr, args.caption,
                          voices=select_voices(args.voices), fmt=args.format, progress=not args.no_progress,
                          n_chain=args.chain, n_open=args.open, workers=args.workers)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    size = sum(f.stat().st_size for f in (Path(args.out) / args.split).glob("*") if f.is_file())
    print(f"wrote {ann} and {size / 1e6:.2f} MB of audio in {Path(args.out) / args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
