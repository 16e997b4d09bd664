"""Corpus-level WER after Whisper's English normalisation, the way ASR papers report it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from compress.errors import UserError

# whisper-normalizer 0.1.15 copies openai-whisper's EnglishTextNormalizer (and its 1,739-entry
# British->American spelling map, byte-identical to whisper/normalizers/english.json) but adds
# four replacements openai-whisper does not have. "cause" -> "because" even rewrites the noun
# ("the cause of" -> "the because of"). We remove them so the output matches openai-whisper.
_NOT_IN_OPENAI_WHISPER = (r"\bkinda\b", r"\bsorta\b", r"\bdunno\b", r"\bcause\b")


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    normalizer = EnglishTextNormalizer()
    for pattern in _NOT_IN_OPENAI_WHISPER:
        normalizer.replacers.pop(pattern, None)
    return normalizer


def normalize_english(text: str) -> str:
    """Whisper's EnglishTextNormalizer (openai-whisper behaviour), with surrounding spaces removed."""
    return _normalizer()(text).strip()


@dataclass(frozen=True)
class WERDetails:
    """Edit counts summed over a corpus. ``wer`` = (S + D + I) / reference_words."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int
    utterances: int
    empty_references: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        if self.reference_words == 0:
            raise UserError(
                f"WER is undefined: all {self.utterances} references are empty after Whisper "
                "normalisation (0 reference words); "
                f"{self.insertions} hypothesis words would all be insertions"
            )
        return self.errors / self.reference_words


def wer_details(references: list[str], hypotheses: list[str], *, normalize: bool = True) -> WERDetails:
    """Align each (reference, hypothesis) pair with jiwer and sum the edit counts.

    A reference that is empty after normalisation (e.g. "[noise]" or "um") contributes its
    hypothesis words as insertions against zero reference words; it is counted in
    ``empty_references``. An empty hypothesis is all deletions.
    """
    import jiwer

    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise UserError(
            f"WER needs one hypothesis per reference: got {len(references)} references "
            f"and {len(hypotheses)} hypotheses"
        )
    if not references:
        raise UserError("WER needs at least one utterance; got empty lists")
    prep = normalize_english if normalize else (lambda s: " ".join(s.split()))
    refs = [prep(r) for r in references]
    hyps = [prep(h) for h in hypotheses]

    counted = [(r, h) for r, h in zip(refs, hyps) if r]
    empty_ref_insertions = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    s = d = i = hits = n_words = 0
    if counted:
        out = jiwer.process_words([r for r, _ in counted], [h for _, h in counted])
        s, d, i, hits = out.substitutions, out.deletions, out.insertions, out.hits
        n_words = sum(len(r.split()) for r, _ in counted)
    return WERDetails(
        substitutions=s,
        deletions=d,
        insertions=i + empty_ref_insertions,
        hits=hits,
        reference_words=n_words,
        utterances=len(refs),
        empty_references=len(refs) - len(counted),
    )


def wer(references: list[str], hypotheses: list[str], *, normalize: bool = True) -> float:
    """Corpus WER: sum of S+D+I over the sum of reference words, after Whisper normalisation.

    Not the mean of per-utterance WERs: refs ["a b c d", "e"], hyps ["a b c d", "x"] give 0.2,
    not 0.5. Raises UserError on mismatched lengths, an empty corpus, or when every reference
    is empty after normalisation (WER has no denominator then).
    """
    return wer_details(references, hypotheses, normalize=normalize).wer
