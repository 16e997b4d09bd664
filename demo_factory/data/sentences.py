"""English sentences for the ASR data: a shipped pool taken from WordNet's usage examples, split without overlap.

Source: the usage examples in the glosses of Princeton WordNet 3.0 (Debian package
``wordnet-base``, files ``/usr/share/wordnet/data.{noun,verb,adj,adv}``): tens of thousands of
short, real English sentences written by lexicographers, e.g. "the freshly brushed clothes hung
in the closet". Licence: the WordNet 3.0 licence (permissive, BSD-like: use, copy, modify and
distribute for any purpose, keeping the notice "WordNet 3.0 Copyright 2006 by Princeton
University. All rights reserved." and its disclaimer). ``sentences.txt`` beside this module holds
the selected pool (one sentence per line, original casing and punctuation, fed to the TTS), so
the generator needs no WordNet at run time; ``python -m demo_factory.data.sentences --rebuild``
regenerates it from an installed ``wordnet-base``.

Selection: 6 to 20 words, letters and simple punctuation only (no digits, no acronyms, no
ellipses), a short block-list of sensitive words, unique after normalisation, and every word among
the ``VOCABULARY`` (2,000) most frequent words of all such examples: a closed vocabulary, as in
WSJ's 5k closed-vocabulary task. (Without it, WordNet's examples each illustrate a rare word: on the
first pool, 22 % of the test split's running words occurred in no training clip, which no model
trained on a few thousand clips can spell.) Split: a stable hash of the normalised text puts 10 %
in ``test``, 10 % in ``dev`` and 80 % in ``train``; a dev or test sentence with a word that no
train sentence has moves to ``train`` (closed vocabulary). Dev and test sentences never occur in
training, whatever the seed.

Open-vocabulary sentences (``sentences_open.txt``, training only): WordNet usage examples that passed the same
filters but use words outside the closed vocabulary (about a quarter of their running words are in no pool
sentence), none equal to a pool sentence. They give the ASR training many more words than the test split has, so
that the audio front learns to spell word pieces from their sound rather than recognise a closed list of words.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections import Counter
from pathlib import Path

from compress.errors import ConfigError, choices

POOL_FILE = Path(__file__).with_name("sentences.txt")
WORDNET_DIR = Path("/usr/share/wordnet")
OPEN_FILE = Path(__file__).with_name("sentences_open.txt")
POOL_SIZE = 4000
OPEN_SIZE = 10000  # open-vocabulary sentences shipped in OPEN_FILE
VOCABULARY = 2000  # pool sentences use only this many of the most frequent words of the examples
MIN_WORDS, MAX_WORDS = 6, 20
SPLITS = ("train", "dev", "test")
LICENCE = ("WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. "
           "(usage examples from WordNet 3.0, WordNet licence)")

_ALLOWED = re.compile(r"[A-Za-z][A-Za-z ,.'?!;:-]*")
_BLOCK = set("""
god gods jesus christ christian christians muslim muslims jew jews jewish islam islamic hindu
catholic catholics protestant bible koran church negro negroes black blacks white whites nigger
sex sexual sexy rape raped kill killed killing murder murdered suicide drug drugs cocaine heroin
gay homosexual lesbian whore prostitute bitch damn hell nazi nazis hitler slave slaves slavery
terrorist terrorists bomb bombs corpse naked nude breast breasts penis vagina drunk beer whiskey
""".split())


def normalise(text: str) -> str:
    """Plain lower-case words: hyphens and punctuation become spaces, inner apostrophes stay."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z' ]+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def hash_split(sentence: str) -> str:
    """The split a stable hash of the normalised text gives (before the closed-vocabulary rule)."""
    bucket = int(hashlib.sha1(normalise(sentence).encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def closed_vocabulary_splits(pool) -> dict:
    """{normalised sentence: split}: `hash_split`, then dev/test sentences with a word absent from every
    train sentence move to train, so that every dev/test word occurs in the training text."""
    by = {normalise(s): hash_split(s) for s in pool}
    train_words = {w for s, sp in by.items() if sp == "train" for w in s.split()}
    return {s: sp if sp == "train" or set(s.split()) <= train_words else "train" for s, sp in by.items()}


@functools.lru_cache(maxsize=1)
def _pool_splits() -> dict:
    return closed_vocabulary_splits(load_pool())


def split_of(sentence: str) -> str:
    """The split of a pool sentence (see `closed_vocabulary_splits`); `hash_split` for any other text."""
    return _pool_splits().get(normalise(sentence)) or hash_split(sentence)


def _read_sentences(path: Path, what: str) -> tuple[str, ...]:
    if not path.is_file():
        raise ConfigError(f"{what} {path} is missing; rebuild it with "
                          f"'python -m demo_factory.data.sentences --rebuild' (needs apt-get install wordnet-base)")
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))


@functools.lru_cache(maxsize=1)
def load_pool() -> tuple[str, ...]:
    """All shipped sentences (as written, for the TTS)."""
    return _read_sentences(POOL_FILE, "the sentence pool")


def sentences_for(split: str) -> list[str]:
    """The sentences of one split, in pool order."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {choices(SPLITS)}")
    return [s for s in load_pool() if split_of(s) == split]


def chain_sentences(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """`n` new word sequences from a word-bigram (Markov) chain over one split's normalised sentences.

    Each is 6 to 20 words, unique, and is no pool sentence of any split; every word is a word of that
    split, so dev and test stay closed-vocabulary and unseen. Often ungrammatical ("he served him a game
    turn the painter decided me"): they are there to give the ASR data many more word sequences than
    the pool has sentences, so a model cannot get by on remembering whole sentences.
    Deterministic from `seed`."""
    import numpy as np

    texts = [normalise(t).split() for t in sentences_for(split)]
    follow: dict = {}
    for words in texts:
        seq = ["<s>"] + words + ["</s>"]
        for a, b in zip(seq, seq[1:]):
            follow.setdefault(a, []).append(b)
    taken = {normalise(t) for t in load_pool()}
    rng = np.random.default_rng([int(seed), 5])
    out = []
    for _ in range(200 * max(n, 1)):
        if len(out) >= n:
            break
        cur, words = "<s>", []
        while len(words) <= MAX_WORDS:
            nxt = follow[cur]
            cur = nxt[int(rng.integers(len(nxt)))]
            if cur == "</s>":
                break
            words.append(cur)
        sentence = " ".join(words)
        if MIN_WORDS <= len(words) <= MAX_WORDS and sentence not in taken:
            taken.add(sentence)
            out.append(sentence)
    if len(out) < n:
        raise ConfigError(f"the {split} sentences give only {len(out)} chain sentences, not {n}")
    return out


@functools.lru_cache(maxsize=1)
def load_open_pool() -> tuple[str, ...]:
    """The shipped open-vocabulary sentences (as written, for the TTS)."""
    return _read_sentences(OPEN_FILE, "the open-vocabulary sentence file")


def open_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct open-vocabulary sentences (as written), in an order drawn from `seed`; never a pool sentence,
    so never a dev or test sentence."""
    import numpy as np

    pool = {normalise(t) for t in load_pool()}
    texts = [t for t in load_open_pool() if normalise(t) not in pool]
    if n > len(texts):
        raise ConfigError(f"only {len(texts)} open-vocabulary sentences are shipped, not {n}")
    order = np.random.default_rng([int(seed), 6]).permutation(len(texts))
    return [texts[int(i)] for i in order[:n]]


def _acceptable(sentence: str) -> bool:
    if not _ALLOWED.fullmatch(sentence) or ".." in sentence:
        return False
    words = sentence.replace("-", " ").split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if any(sum(c.isupper() for c in w) > 1 for w in words):  # acronyms are spelled out by a TTS
        return False
    return not (set(normalise(sentence).split()) & _BLOCK)


def extract_wordnet_examples(wordnet_dir=WORDNET_DIR) -> list[str]:
    """Every usage example (the quoted parts of the glosses) in WordNet's data files, in file order."""
    wordnet_dir = Path(wordnet_dir)
    files = [wordnet_dir / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"WordNet data files not found ({', '.join(missing)}); "
                          f"install them with: apt-get install -y wordnet-base")
    out = []
    for f in files:
        for line in f.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:  # licence header / no gloss
                continue
            out.extend(q.strip() for q in re.findall(r'"([^"]+)"', line.split(" | ", 1)[1]))
    return out


def _filtered_examples(wordnet_dir) -> list[str]:
    seen, kept = set(), []
    for s in extract_wordnet_examples(wordnet_dir):
        s = s.rstrip(" ;:,")
        key = normalise(s)
        if _acceptable(s) and key not in seen:
            seen.add(key)
            kept.append(s)
    return kept


def build_pool(wordnet_dir=WORDNET_DIR, size: int = POOL_SIZE, seed: int = 0,
               vocabulary: int = VOCABULARY) -> list[str]:
    """Filter, de-duplicate, keep the sentences over the `vocabulary` most frequent words, sample at most
    `size`; sorted for a readable file."""
    kept = _filtered_examples(wordnet_dir)
    counts = Counter(w for s in kept for w in normalise(s).split())
    common = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocabulary]}
    kept = [s for s in kept if set(normalise(s).split()) <= common]
    random.Random(seed).shuffle(kept)
    return sorted(kept[:size], key=str.lower)


def build_open_pool(pool, wordnet_dir=WORDNET_DIR, size: int = OPEN_SIZE, seed: int = 0) -> list[str]:
    """The filtered examples that are not in `pool` (normalised), at most `size` of them; sorted."""
    taken = {normalise(s) for s in pool}
    kept = [s for s in _filtered_examples(wordnet_dir) if normalise(s) not in taken]
    random.Random(seed).shuffle(kept)
    return sorted(kept[:size], key=str.lower)


def _write_sentences(path, sentences: list, description: str) -> int:
    header = [f"# {len(sentences)} English sentences{description}", f"# {LICENCE}",
              "# Regenerate: python -m demo_factory.data.sentences --rebuild"]
    Path(path).write_text("\n".join(header + sentences) + "\n", encoding="utf-8")
    load_pool.cache_clear()
    load_open_pool.cache_clear()
    _pool_splits.cache_clear()
    return len(sentences)


def write_pool(path=POOL_FILE, **kwargs) -> int:
    return _write_sentences(path, build_pool(**kwargs), ": usage examples from Princeton WordNet 3.0 (Debian "
                            f"wordnet-base) over their {kwargs.get('vocabulary', VOCABULARY)} most frequent words.")


def write_open_pool(path=OPEN_FILE, wordnet_dir=WORDNET_DIR) -> int:
    """Write the open-vocabulary sentences beside the shipped pool (which they never repeat)."""
    return _write_sentences(path, build_open_pool(load_pool(), wordnet_dir=wordnet_dir),
                            " for ASR training only: usage examples from Princeton WordNet 3.0 (Debian wordnet-base) "
                            "outside the closed-vocabulary pool sentences.txt.")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rebuild", action="store_true",
                    help="regenerate sentences.txt and sentences_open.txt from wordnet-base")
    ap.add_argument("--wordnet-dir", default=str(WORDNET_DIR))
    args = ap.parse_args()
    if args.rebuild:
        print(f"wrote {write_pool(wordnet_dir=args.wordnet_dir)} sentences to {POOL_FILE}")
        print(f"wrote {write_open_pool(wordnet_dir=args.wordnet_dir)} sentences to {OPEN_FILE}")
    for split in SPLITS:
        print(split, len(sentences_for(split)))
