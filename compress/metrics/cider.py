"""CIDEr-D computed in Python exactly as pycocoevalcap 1.2 / aac-metrics do, plus the hackathon variant.

Definition (pycocoevalcap ``cider/cider_scorer.py``, which is CIDEr-D despite its name):
- n-grams n = 1..4 of whitespace tokens; each clip's references form one "document", and the
  document frequency df(g) counts the clips of THIS evaluated set whose references contain g;
- weights tf(g) * (log(#clips) - log(max(1, df(g)))) per n, one vector per caption;
- per n: sum over the candidate's n-grams of min(w_cand, w_ref) * w_ref, divided by the two
  vector norms (0 when either norm is 0);
- times the length penalty exp(-(l_cand - l_ref)^2 / (2 * 6^2)), where l counts the caption's
  BIGRAMS (tokens - 1, or 0), as pycocoevalcap's code does;
- mean over n, mean over the clip's references, times 10; the corpus score is the clip mean.

Because idf comes from the evaluated set, scores depend on the whole set: a single clip always
scores 0 (log(1) = 0), and a subset's per-clip values differ from the full set's.
"""

from __future__ import annotations

import math
from collections import Counter

from compress.errors import UserError
from compress.metrics.ptb import caption_tokenize_batch

N_MAX = 4
SIGMA = 6.0


def check_caption_inputs(candidates, references, metric: str):
    """Validate one candidate per clip and >= 1 reference per clip (a bare string = one reference)."""
    candidates = list(candidates)
    references = [list(r) if not isinstance(r, str) else [r] for r in references]
    if len(candidates) != len(references):
        raise UserError(
            f"{metric} needs one list of references per candidate: got {len(candidates)} "
            f"candidates and {len(references)} reference lists"
        )
    if not candidates:
        raise UserError(f"{metric} needs at least one clip; got empty lists")
    for i, refs in enumerate(references):
        if not refs:
            raise UserError(f"{metric}: clip {i} has no reference captions")
    return candidates, references


def tokenize_caption_sets(candidates, references):
    """pycocoevalcap tokenizes references (all clips, in order) and candidates as two batches."""
    flat = caption_tokenize_batch([r for refs in references for r in refs])
    out, k = [], 0
    for refs in references:
        out.append(flat[k : k + len(refs)])
        k += len(refs)
    return caption_tokenize_batch(candidates), out


def _ngrams(caption: str) -> Counter:
    words = caption.split()
    return Counter(tuple(words[i : i + n]) for n in range(1, N_MAX + 1) for i in range(len(words) - n + 1))


def _vector(counts: Counter, df: Counter, log_n: float):
    vec = [{} for _ in range(N_MAX)]
    norm = [0.0] * N_MAX
    bigrams = 0
    for gram, tf in counts.items():
        n = len(gram) - 1
        w = float(tf) * (log_n - math.log(max(1.0, df[gram])))
        vec[n][gram] = w
        norm[n] += w * w
        if n == 1:
            bigrams += tf
    return vec, [math.sqrt(x) for x in norm], bigrams


def _similarity(cand, ref) -> float:
    (vc, nc, lc), (vr, nr, lr) = cand, ref
    penalty = math.exp(-((lc - lr) ** 2) / (2 * SIGMA**2))
    total = 0.0
    for n in range(N_MAX):
        val = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vc[n].items())
        if nc[n] != 0 and nr[n] != 0:
            val /= nc[n] * nr[n]
        total += val * penalty
    return total / N_MAX


def cider_d(
    candidates: list[str], references: list[list[str]], *, tokenize: bool = True
) -> tuple[float, list[float]]:
    """CIDEr-D (pycocoevalcap 1.2 ``Cider``; 0..10 scale) -> (corpus score, per-clip scores).

    ``tokenize=True`` applies the PTB tokenization pycocoevalcap applies first; pass False for
    captions that are already lower-cased and tokenized.
    """
    candidates, references = check_caption_inputs(candidates, references, "CIDEr-D")
    if tokenize:
        candidates, references = tokenize_caption_sets(candidates, references)
    ref_counts = [[_ngrams(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_counts:
        df.update(set(g for counts in refs for g in counts))
    log_n = math.log(float(len(references)))
    scores = []
    for cand, refs in zip(candidates, ref_counts):
        vc = _vector(_ngrams(cand), df, log_n)
        sims = sum(_similarity(vc, _vector(r, df, log_n)) for r in refs)
        scores.append(sims / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


def hackathon_spider(
    candidates: list[str], references: list[list[str]], *, tokenize: bool = True
) -> tuple[float, list[float]]:
    """The hackathon evaluator's "SPIDEr": CIDEr-D x 100 using only the FIRST reference per clip.

    This is NOT SPIDEr (no SPICE, one reference, different scale). It exists only to compare with
    numbers teams published from that evaluator; report real metrics with ``cider_d``/``spider``.
    """
    candidates, references = check_caption_inputs(candidates, references, "hackathon_spider")
    score, per_clip = cider_d(candidates, [refs[:1] for refs in references], tokenize=tokenize)
    return score * 100.0, [s * 100.0 for s in per_clip]
