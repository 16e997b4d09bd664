"""Paired bootstrap over clips: is a difference between two systems' corpus scores larger than clip sampling?"""

from __future__ import annotations

from typing import Callable

import numpy as np


def paired_bootstrap(metric: Callable[[list, list], float], a: list, b: list, references: list, *,
                     resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Resample clip indices with replacement; each resample scores both systems on the same clips.

    `metric(candidates, references)` -> corpus score (a set-level metric such as CIDEr-D is recomputed on
    each resample, duplicates included). Returns the observed difference b - a, its `level` percentile
    interval, and the share of resamples in which b scores below a."""
    if not (len(a) == len(b) == len(references)) or not a:
        raise ValueError("paired_bootstrap needs equally many (>= 1) candidates of each system and references")
    rng = np.random.default_rng(seed)
    n = len(a)
    deltas = np.empty(resamples)
    for k in range(resamples):
        idx = rng.integers(0, n, n)
        refs = [references[i] for i in idx]
        deltas[k] = metric([b[i] for i in idx], refs) - metric([a[i] for i in idx], refs)
    tail = (1.0 - level) / 2
    return {"delta": metric(b, references) - metric(a, references),
            "low": float(np.quantile(deltas, tail)), "high": float(np.quantile(deltas, 1 - tail)),
            "share_below": float((deltas < 0).mean()), "resamples": resamples, "level": level, "seed": seed}


def rounded(result: dict, digits: int = 4) -> dict:
    """A bootstrap result with its float fields rounded for a report (counts and seeds untouched)."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in result.items()}


def wer_bootstrap(references: list, a: list, b: list, **kw) -> dict:
    """`paired_bootstrap` of corpus WER (b - a; positive = b makes more errors). Each clip's edit count and
    reference words are computed once (Whisper normalisation), so a resample only sums them."""
    from .asr import wer_details

    def counts(hyps):
        return [(d.errors, d.reference_words) for d in (wer_details([r], [h]) for r, h in zip(references, hyps))]

    def corpus(cands, _refs):
        return sum(e for e, _ in cands) / max(1, sum(w for _, w in cands))

    return paired_bootstrap(corpus, counts(a), counts(b), list(references), **kw)
