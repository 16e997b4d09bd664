"""The SALMONN speech Q-Former: a BERT encoder whose queries cross-attend to audio frames.

Parameter names match the released `speech_Qformer.*` keys (BLIP-2 style BertLMHeadModel with
word/position embeddings, text FFNs and LM head removed, so only the query path remains).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class QFormerConfig:
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_hidden_layers: int = 2
    encoder_width: int = 1280 + 768
    cross_attention_freq: int = 1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    # BERT's dropouts (BLIP-2's Q-Former trains with 0.1 each); active only in train mode
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"qformer.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers",
                     "encoder_width", "cross_attention_freq"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"qformer.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_act not in _ACTS:
            raise ConfigError(f"qformer.hidden_act {self.hidden_act!r} is not one of {sorted(_ACTS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ConfigError(f"qformer.{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


_ACTS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


def attention_mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) keep-mask of 1/0 -> additive bias (B, 1, 1, S), as BERT's extended mask: (1 - m) * -10000."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * -10000.0


class _SelfAttention(nn.Module):
    """Multi-head attention; keys/values come from `kv_width` inputs (cross-attention when != hidden)."""

    def __init__(self, cfg: QFormerConfig, kv_width: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)
        self.attn_dropout = float(cfg.attention_probs_dropout_prob)
        self.use_sdpa = False  # set by the `sdpa` step; eager is the reference

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, hidden, kv=None, bias=None):
        kv = hidden if kv is None else kv
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(kv)), self._heads(self.value(kv))
        p = self.attn_dropout if self.training else 0.0
        if self.use_sdpa:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, nh, Tq, Tk)
            if bias is not None:
                scores = scores + bias
            probs = scores.softmax(dim=-1)
            ctx = (F.dropout(probs, p) if p else probs) @ v  # (B, nh, Tq, hs)
        b, _, t, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, t, -1)  # (B, Tq, C)


class _AddNorm(nn.Module):
    """BertSelfOutput / BertOutput: dense, then LayerNorm(x + residual)."""

    def __init__(self, in_dim: int, cfg: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(in_dim, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: QFormerConfig, kv_width: int):
        super().__init__()
        self.self = _SelfAttention(cfg, kv_width)
        self.output = _AddNorm(cfg.hidden_size, cfg)

    def forward(self, hidden, kv=None, bias=None):
        return self.output(self.self(hidden, kv, bias), hidden)


class _Intermediate(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _ACTS[cfg.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, index: int):
        super().__init__()
        self.attention = _Attention(cfg, cfg.hidden_size)
        self.has_cross_attention = index % cfg.cross_attention_freq == 0
        if self.has_cross_attention:
            self.crossattention = _Attention(cfg, cfg.encoder_width)
        self.intermediate_query = _Intermediate(cfg)
        self.output_query = _AddNorm(cfg.intermediate_size, cfg)

    def forward(self, queries, encoder_states, encoder_bias):
        x = self.attention(queries)  # queries attend to each other (no text tokens here)
        if self.has_cross_attention:
            x = self.crossattention(x, encoder_states, encoder_bias)
        return self.output_query(self.intermediate_query(x), x)


class _Embeddings(nn.Module):
    """Only the LayerNorm survives: SALMONN deletes word and position embeddings."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        # Kept for key compatibility with released checkpoints; unused without text tokens.
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=False)

    def forward(self, query_embeds):
        return self.dropout(self.LayerNorm(query_embeds))


class _Encoder(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.layer = nn.ModuleList(QFormerLayer(cfg, i) for i in range(cfg.num_hidden_layers))


class _Bert(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def forward(self, query_embeds, encoder_hidden_states, encoder_attention_mask=None):
        x = self.embeddings(query_embeds)
        bias = None
        if encoder_attention_mask is not None:
            bias = attention_mask_bias(encoder_attention_mask, x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, encoder_hidden_states, bias)
        return x


class SpeechQFormer(nn.Module):
    """`speech_Qformer`: keys are `bert.embeddings.LayerNorm.*` and `bert.encoder.layer.N.*`."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.config = cfg
        self.bert = _Bert(cfg)

    def forward(self, query_embeds, encoder_hidden_states, encoder_attention_mask=None):
        """(B, Q, H) queries x (B, T, W) frames -> (B, Q, H)."""
        return self.bert(query_embeds, encoder_hidden_states, encoder_attention_mask)


def window_frames(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """(B, T, C) frames -> (B * L, kernel, C) windows, L = (T - kernel) // stride + 1, as F.unfold does."""
    b, t, c = x.shape
    if t < kernel:
        raise ValueError(f"need at least {kernel} frames for one window, got {t}")
    w = x.unfold(1, kernel, stride)  # (B, L, C, kernel)
    return w.permute(0, 1, 3, 2).reshape(-1, kernel, c)  # (B*L, kernel, C)
