"""Quality metrics (WER, CIDEr-D, SPICE/SPIDEr, ...) computed the way the field reports them."""

from compress.metrics.asr import WERDetails, normalize_english, wer, wer_details
from compress.metrics.caption import CORENLP_ENV, caption_metrics, spice, spider
from compress.metrics.cider import cider_d, hackathon_spider
from compress.metrics.embedding import SENTENCE_MODEL, sentence_similarity
from compress.metrics.ptb import PTB_PUNCTUATION, caption_tokenize, caption_tokenize_batch
from compress.metrics.registry import METRICS, MetricInfo, MetricUnavailable, metric_info

__all__ = [
    "CORENLP_ENV",
    "METRICS",
    "MetricInfo",
    "MetricUnavailable",
    "PTB_PUNCTUATION",
    "SENTENCE_MODEL",
    "WERDetails",
    "caption_metrics",
    "caption_tokenize",
    "caption_tokenize_batch",
    "cider_d",
    "hackathon_spider",
    "metric_info",
    "normalize_english",
    "sentence_similarity",
    "spice",
    "spider",
    "wer",
    "wer_details",
]
