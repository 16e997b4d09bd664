"""Our own BEATs audio encoder, with the official checkpoints' parameter names, so SALMONN's beats_path loads without the original code."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compress.errors import AudioError, CheckpointError, ConfigError, choices
from compress.fbank import BEATS_FBANK_MEAN, BEATS_FBANK_STD, beats_fbank

# Logits are shifted by their row max and re-scaled by this factor before the softmax
# (the official "alpha = 32" trick that keeps fp16 attention scores in range).
ATTN_ALPHA = 32.0

ACTIVATIONS = ("relu", "gelu", "gelu_fast", "gelu_accurate", "tanh", "linear")

FBANK_WINDOW = 400  # samples in one 25 ms frame at 16 kHz
FBANK_SHIFT = 160  # samples in one 10 ms shift


# =============================================================================================
# Config
# =============================================================================================


@dataclass(init=False)
class BEATsConfig:
    """BEATs hyper-parameters, as stored in ``ckpt['cfg']``, with the official defaults.

    Build it from the checkpoint's dict: ``BEATsConfig(ckpt['cfg'])`` (keyword overrides allowed).
    Keys this class does not know are kept in ``extra`` and written back by ``to_dict()``.
    Wrong types or values raise ConfigError naming the field. Note that the official default
    ``input_patch_size = -1`` means "unset": every released checkpoint sets 16.
    """

    input_patch_size: int = -1  # side of the square fbank patches (frames x mel bins)
    embed_dim: int = 512  # patch embedding width
    conv_bias: bool = False  # bias in the patch embedding conv

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"

    layer_wise_gradient_decay_ratio: float = 1.0  # scales gradients flowing into each layer (training only)
    layer_norm_first: bool = False  # pre-norm layers (False: post-norm)
    deep_norm: bool = False  # DeepNorm residual scaling (post-norm only)

    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0

    conv_pos: int = 128  # kernel of the convolutional position embedding
    conv_pos_groups: int = 16

    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False  # gated relative position bias

    finetuned_model: bool = False  # True: an AudioSet classifier head ("predictor") is present
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    extra: dict = field(default_factory=dict)  # unknown cfg keys, kept as they came

    def __init__(self, cfg: Optional[Mapping[str, Any]] = None, **overrides: Any) -> None:
        if cfg is not None and not isinstance(cfg, Mapping):
            raise ConfigError(f"BEATs cfg must be a mapping of field names to values, got {type(cfg).__name__}")
        for f in _CONFIG_FIELDS:
            setattr(self, f.name, f.default)
        self.extra = {}
        merged = {**(dict(cfg) if cfg is not None else {}), **overrides}
        if isinstance(merged.get("extra"), Mapping):  # a to_dict() output fed back keeps its extras flat
            merged = {**merged.pop("extra"), **merged}
        for key, value in merged.items():
            if key in _CONFIG_TYPES:
                setattr(self, key, _coerce(key, value, _CONFIG_TYPES[key]))
            else:
                self.extra[key] = value
        self._validate()

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "BEATsConfig":
        return cls(cfg)

    def to_dict(self) -> dict:
        """Plain dict in the checkpoint's format: every known field, then the unknown keys."""
        out = {f.name: getattr(self, f.name) for f in _CONFIG_FIELDS}
        out.update(self.extra)
        return out

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    def _validate(self) -> None:
        positive = (
            "input_patch_size", "embed_dim", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
            "encoder_attention_heads", "conv_pos", "conv_pos_groups",
        )
        for name in positive:
            value = getattr(self, name)
            if value < 1:
                hint = ""
                if name == "input_patch_size":
                    hint = " (the official default -1 means unset; released checkpoints use 16)"
                raise ConfigError(f"BEATs cfg field '{name}' must be a positive integer, got {value}{hint}")
        if self.input_patch_size > 128:
            raise ConfigError(
                f"BEATs cfg field 'input_patch_size' must be at most 128 (the fbank's mel bins), got {self.input_patch_size}"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
                     "predictor_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"BEATs cfg field '{name}' must be in [0, 1), got {value}")
        if self.layer_wise_gradient_decay_ratio < 0:
            raise ConfigError(
                "BEATs cfg field 'layer_wise_gradient_decay_ratio' must be >= 0, "
                f"got {self.layer_wise_gradient_decay_ratio}"
            )
        if self.activation_fn not in ACTIVATIONS:
            raise ConfigError(
                f"BEATs cfg field 'activation_fn' is {self.activation_fn!r}; supported: {choices(ACTIVATIONS)}"
            )
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ConfigError(
                f"BEATs cfg field 'encoder_attention_heads' ({self.encoder_attention_heads}) must divide "
                f"encoder_embed_dim ({self.encoder_embed_dim})"
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ConfigError(
                f"BEATs cfg field 'conv_pos_groups' ({self.conv_pos_groups}) must divide "
                f"encoder_embed_dim ({self.encoder_embed_dim})"
            )
        if self.deep_norm and self.layer_norm_first:
            raise ConfigError("BEATs cfg fields 'deep_norm' and 'layer_norm_first' cannot both be true")
        if self.relative_position_embedding:
            if self.num_buckets < 4:
                raise ConfigError(f"BEATs cfg field 'num_buckets' must be >= 4, got {self.num_buckets}")
            max_exact = self.num_buckets // 4  # half the buckets per direction, half of those exact
            if self.max_distance <= max_exact:
                raise ConfigError(
                    f"BEATs cfg field 'max_distance' ({self.max_distance}) must exceed num_buckets // 4 ({max_exact})"
                )
        if self.finetuned_model and self.predictor_class < 1:
            raise ConfigError(f"BEATs cfg field 'predictor_class' must be >= 1, got {self.predictor_class}")


_CONFIG_FIELDS = tuple(f for f in dataclasses.fields(BEATsConfig) if f.name != "extra")
_CONFIG_TYPES = {f.name: type(f.default) for f in _CONFIG_FIELDS}


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Checkpoint cfg value -> the field's type, or ConfigError naming the field."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Integral) and int(value) in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"BEATs cfg field '{name}' must be {kind.__name__}, got {value!r}")


def tiny_beats_cfg() -> dict:
    """A small BEATs cfg for tests: 2 layers, width 64, same structure as the base model."""
    return {
        "input_patch_size": 16,
        "embed_dim": 48,  # differs from encoder_embed_dim so post_extract_proj exists, as in the base model
        "conv_bias": False,
        "encoder_layers": 2,
        "encoder_embed_dim": 64,
        "encoder_ffn_embed_dim": 128,
        "encoder_attention_heads": 4,
        "activation_fn": "gelu",
        "layer_wise_gradient_decay_ratio": 1.0,
        "layer_norm_first": False,
        "deep_norm": True,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "dropout_input": 0.0,
        "conv_pos": 16,
        "conv_pos_groups": 4,
        "relative_position_embedding": True,
        "num_buckets": 32,
        "max_distance": 64,
        "gru_rel_pos": True,
        "finetuned_model": False,
    }


def base_beats_cfg() -> dict:
    """The cfg of the released BEATs_iter3 / iter3+ pre-trained checkpoints (no classifier head)."""
    return {
        "input_patch_size": 16,
        "embed_dim": 512,
        "conv_bias": False,
        "encoder_layers": 12,
        "encoder_embed_dim": 768,
        "encoder_ffn_embed_dim": 3072,
        "encoder_attention_heads": 12,
        "activation_fn": "gelu",
        "layer_wise_gradient_decay_ratio": 0.6,
        "layer_norm_first": False,
        "deep_norm": True,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.0,
        "conv_pos": 128,
        "conv_pos_groups": 16,
        "relative_position_embedding": True,
        "num_buckets": 320,
        "max_distance": 800,
        "gru_rel_pos": True,
        "finetuned_model": False,
    }


# =============================================================================================
# Pure functions
# =============================================================================================


def relative_position_bucket(
    relative_position: Tensor, num_buckets: int, max_distance: int, bidirectional: bool = True
) -> Tensor:
    """T5-style bucket of each relative position (key index - query index), as BEATs computes it.

    Bidirectional: half the buckets for positive offsets (keys after the query), half for the rest.
    Within a half, offsets below half of it get their own bucket; larger ones share log-spaced
    buckets up to max_distance, and everything beyond lands in the last bucket.
    """
    buckets = torch.zeros_like(relative_position, dtype=torch.long)
    if bidirectional:
        num_buckets = num_buckets // 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Float32 and this order of operations, as the official code, so bucket edges agree exactly.
    # Distances below max_exact are clamped up only to keep the (discarded) log finite.
    scaled = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def relative_position_matrix(query_length: int, key_length: int, device=None) -> Tensor:
    """(query_length, key_length) matrix of key index - query index."""
    context = torch.arange(query_length, dtype=torch.long, device=device)[:, None]
    memory = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
    return memory - context


def weight_norm_weight(weight_v: Tensor, weight_g: Tensor, dim: int) -> Tensor:
    """Weight-norm reparametrisation: g * v / ||v||, the norm taken over every axis but `dim`."""
    axes = [a for a in range(weight_v.dim()) if a != dim]
    norm = weight_v.norm(p=2, dim=axes, keepdim=True)
    return weight_v * (weight_g / norm)


def downsample_padding_mask(padding_mask: Tensor, length: int) -> Tensor:
    """(B, T) padding mask -> (B, length), as the official forward_padding_mask does it.

    Trailing T % length positions are dropped, the rest cut into `length` equal groups, and a
    group is padding only if all its positions are.
    """
    usable = padding_mask.size(1) - padding_mask.size(1) % length  # no branch on shapes: exportable
    padding_mask = padding_mask[:, :usable]
    # (B, length * g) -> (B, length, g): g consecutive positions per output position.
    grouped = padding_mask.reshape(padding_mask.size(0), length, -1)
    return grouped.all(dim=-1)


def _activation(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return lambda x: F.gelu(x.float()).type_as(x)
    if name in ("gelu_fast", "gelu_accurate"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "tanh":
        return torch.tanh
    if name == "linear":
        return lambda x: x
    raise ConfigError(f"BEATs cfg field 'activation_fn' is {name!r}; supported: {choices(ACTIVATIONS)}")


class _GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by `scale` backward (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


# =============================================================================================
# Modules
# =============================================================================================


class WeightNormConv1d(nn.Module):
    """Conv1d with its weight stored as weight_g / weight_v, the names torch's weight_norm gives.

    The effective weight is weight_norm_weight(weight_v, weight_g, dim); with dim=2 there is one
    gain per kernel tap, weight_g shaped (1, 1, kernel_size).
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, padding: int, dim: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.padding = padding
        self.dim = dim
        v_shape = (channels, channels // groups, kernel_size)
        g_shape = tuple(n if axis == dim else 1 for axis, n in enumerate(v_shape))
        # Registration order as in the official state_dict: bias, weight_g, weight_v.
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_g = nn.Parameter(torch.ones(g_shape))
        self.weight_v = nn.Parameter(torch.empty(v_shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        channels, _, kernel_size = self.weight_v.shape
        std = math.sqrt(4.0 / (kernel_size * channels))
        with torch.no_grad():
            nn.init.normal_(self.weight_v, mean=0.0, std=std)
            axes = [a for a in range(self.weight_v.dim()) if a != self.dim]
            self.weight_g.copy_(self.weight_v.norm(p=2, dim=axes, keepdim=True))
            self.bias.zero_()

    @property
    def weight(self) -> Tensor:
        return weight_norm_weight(self.weight_v, self.weight_g, self.dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drops the extra last frame an even-kernel 'same' convolution produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : -self.remove] if self.remove > 0 else x


class MultiheadSelfAttention(nn.Module):
    """BEATs self-attention: alpha-scaled logits plus a (gated) relative position bias."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float,
        has_relative_attention_bias: bool,
        num_buckets: int,
        max_distance: int,
        gru_rel_pos: bool,
        own_bias_table: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.has_relative_attention_bias = has_relative_attention_bias
        self.dropout_module = nn.Dropout(dropout)
        if has_relative_attention_bias and own_bias_table:  # otherwise the encoder attaches a shared one
            self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        self.use_sdpa = False  # set by the `sdpa` step; eager (below) is the reference

    def compute_bias(self, query_length: int, key_length: int) -> Tensor:
        """(num_heads, query_length, key_length) relative position bias."""
        table = self.relative_attention_bias.weight
        relative = relative_position_matrix(query_length, key_length, device=table.device)
        buckets = relative_position_bucket(relative, self.num_buckets, self.max_distance, bidirectional=True)
        # Gather from the transposed table so the result is (H, Lq, Lk) without a strided copy:
        # (buckets, H) -> (H, buckets) -> pick Lq * Lk columns -> (H, Lq, Lk)
        values = table.t().contiguous().index_select(1, buckets.reshape(-1))
        return values.view(self.num_heads, query_length, key_length)

    def forward(
        self, x: Tensor, key_padding_mask: Optional[Tensor] = None, position_bias: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """x (B, T, C), key_padding_mask (B, T) True = padding, position_bias (H, T, T) or None.

        Returns the attention output (B, T, C) and the ungated position bias, for the next layer.
        """
        bsz, length, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        if self.has_relative_attention_bias and position_bias is None:
            position_bias = self.compute_bias(length, length)

        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)
        q = q * self.scaling
        q = q * (1.0 / ATTN_ALPHA)

        # (B, T, C) -> (B, T, H, d) -> (B, H, T, d)
        q = q.view(bsz, length, heads, head_dim).transpose(1, 2)
        k = k.view(bsz, length, heads, head_dim).transpose(1, 2)
        v = v.view(bsz, length, heads, head_dim).transpose(1, 2)

        if self.use_sdpa:
            return self._sdpa(q, k, v, key_padding_mask, position_bias), position_bias

        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, T, T)
        # In place on the fresh difference: these (B, H, T, T) tensors dominate memory traffic.
        scores = (scores - scores.amax(dim=-1, keepdim=True)).mul_(ATTN_ALPHA)
        if key_padding_mask is not None:
            scores.masked_fill_(key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))

        if position_bias is not None:
            bias = position_bias.unsqueeze(0)  # (H, T, T) -> (1, H, T, T)
            if self.gru_rel_pos:
                query = q * ATTN_ALPHA / self.scaling  # back to the unscaled query, (B, H, T, d)
                # (B, H, T, 8) -> (B, H, T, 2, 4) -> sum -> (B, H, T, 2): two gates per query position
                gates = torch.sigmoid(self.grep_linear(query).view(bsz, heads, length, 2, 4).sum(dim=-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)  # each (B, H, T, 1)
                gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0
                bias = gate * bias  # (B, H, T, 1) * (1, H, T, T) -> (B, H, T, T)
            scores.add_(bias.to(scores.dtype))

        probs = F.softmax(scores, dim=-1, dtype=torch.float32).type_as(scores)
        probs = self.dropout_module(probs)
        out = torch.matmul(probs, v)  # (B, H, T, d)
        out = out.transpose(1, 2).reshape(bsz, length, self.embed_dim)  # (B, H, T, d) -> (B, T, C)
        return self.out_proj(out), position_bias


    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor],
              position_bias: Optional[Tensor]) -> Tensor:
        """The eager path through torch SDPA: softmax is shift-invariant, so the alpha trick
        ((s / alpha - max) * alpha) drops out, and the gated bias and padding become an additive mask."""
        bsz, heads, length, _ = q.shape
        mask = None
        if position_bias is not None:
            mask = position_bias.unsqueeze(0)  # (1, H, T, T)
            if self.gru_rel_pos:
                query = q * ATTN_ALPHA / self.scaling  # (B, H, T, d) unscaled query, as eager
                gates = torch.sigmoid(self.grep_linear(query).view(bsz, heads, length, 2, 4).sum(dim=-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)  # each (B, H, T, 1)
                mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * mask  # (B, H, T, T)
            mask = mask.to(q.dtype)
        if key_padding_mask is not None:
            pad = torch.zeros(bsz, 1, 1, length, dtype=q.dtype, device=q.device)
            pad = pad.masked_fill(key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))
            mask = pad if mask is None else mask + pad  # (B, H or 1, T, T)
        p = self.dropout_module.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q * ATTN_ALPHA, k, v, attn_mask=mask, dropout_p=p, scale=1.0)
        out = out.transpose(1, 2).reshape(bsz, length, self.embed_dim)  # (B, H, T, d) -> (B, T, C)
        return self.out_proj(out)


class TransformerSentenceEncoderLayer(nn.Module):
    """One BEATs layer: self-attention and FFN, post-norm with DeepNorm scaling, or pre-norm."""

    def __init__(self, cfg: BEATsConfig, has_relative_attention_bias: bool, own_bias_table: bool = True) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = MultiheadSelfAttention(
            dim,
            cfg.encoder_attention_heads,
            dropout=cfg.attention_dropout,
            has_relative_attention_bias=has_relative_attention_bias,
            num_buckets=cfg.num_buckets,
            max_distance=cfg.max_distance,
            gru_rel_pos=cfg.gru_rel_pos,
            own_bias_table=own_bias_table,
        )
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.activation_dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation_fn = _activation(cfg.activation_fn)
        self.deep_norm_alpha = math.pow(2 * cfg.encoder_layers, 0.25) if cfg.deep_norm else 1.0

    def _ffn(self, x: Tensor) -> Tensor:
        x = self.activation_fn(self.fc1(x))
        x = self.dropout2(x)
        return self.dropout3(self.fc2(x))

    def forward(
        self, x: Tensor, padding_mask: Optional[Tensor] = None, position_bias: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        residual = x
        if self.layer_norm_first:
            h, position_bias = self.self_attn(self.self_attn_layer_norm(x), padding_mask, position_bias)
            x = residual + self.dropout1(h)
            x = x + self._ffn(self.final_layer_norm(x))
        else:
            h, position_bias = self.self_attn(x, padding_mask, position_bias)
            x = self.self_attn_layer_norm(residual * self.deep_norm_alpha + self.dropout1(h))
            x = self.final_layer_norm(x * self.deep_norm_alpha + self._ffn(x))
        return x, position_bias


class TransformerEncoder(nn.Module):
    """Convolutional position embedding, then the layers; the relative bias table is shared by all layers."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.dropout = cfg.dropout
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups, padding=cfg.conv_pos // 2, dim=2),
            SamePad(cfg.conv_pos),
            nn.GELU(),
        )
        self.layers = nn.ModuleList(
            TransformerSentenceEncoderLayer(
                cfg, has_relative_attention_bias=cfg.relative_position_embedding, own_bias_table=(i == 0)
            )
            for i in range(cfg.encoder_layers)
        )
        if cfg.relative_position_embedding:
            # One table for all layers, registered under every layer (so the state_dict lists it
            # once per layer, as the official checkpoints do, and in the same key order).
            shared = self.layers[0].self_attn.relative_attention_bias
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = shared
        self.layer_norm_first = cfg.layer_norm_first
        self.layer_norm = nn.LayerNorm(dim)
        self.layerdrop = cfg.encoder_layerdrop
        self.grad_decay = cfg.layer_wise_gradient_decay_ratio

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x (B, N, C), padding_mask (B, N) True = padding -> (B, N, C)."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)

        x_conv = self.pos_conv(x.transpose(1, 2))  # (B, N, C) -> (B, C, N) -> conv -> (B, C, N)
        x = x + x_conv.transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)

        position_bias = None
        for layer in self.layers:
            if self.grad_decay != 1.0 and torch.is_grad_enabled() and x.requires_grad:
                x = _GradMultiply.apply(x, self.grad_decay)
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                continue
            x, position_bias = layer(x, padding_mask, position_bias)

        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


class BEATs(nn.Module):
    """BEATs audio encoder: 16 kHz waveform -> Kaldi fbank -> 16x16 patches -> transformer tokens.

    Parameter names match the official checkpoints, so ``BEATs.from_checkpoint_dict(torch.load(path))``
    loads BEATs_iter3 / iter3+ files directly.
    """

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        if isinstance(cfg, Mapping):
            cfg = BEATsConfig(cfg)
        if not isinstance(cfg, BEATsConfig):
            raise ConfigError(f"BEATs needs a BEATsConfig or a cfg dict, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = cfg.embed_dim
        self.post_extract_proj = (
            nn.Linear(self.embed, cfg.encoder_embed_dim) if self.embed != cfg.encoder_embed_dim else None
        )
        self.input_patch_size = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(
            1, self.embed, kernel_size=cfg.input_patch_size, stride=cfg.input_patch_size, bias=cfg.conv_bias
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(self.embed)
        if cfg.finetuned_model:
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None
        self._init_weights()

    # ------------------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        """BERT-style init (normal 0.02, zero bias) for a model that will not load weights."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------------------ sizes
    @staticmethod
    def num_fbank_frames(num_samples: int) -> int:
        return 0 if num_samples < FBANK_WINDOW else 1 + (num_samples - FBANK_WINDOW) // FBANK_SHIFT

    def num_tokens(self, num_samples: int) -> int:
        """Tokens for a clip of num_samples at 16 kHz: (frames // p) * (128 // p)."""
        p = self.input_patch_size
        return (self.num_fbank_frames(num_samples) // p) * (128 // p)

    # ------------------------------------------------------------------------------ forward
    def preprocess(
        self, wav: Tensor, fbank_mean: float = BEATS_FBANK_MEAN, fbank_std: float = BEATS_FBANK_STD
    ) -> Tensor:
        """(B, T) waveform in [-1, 1] -> (B, frames, 128) normalised fbank."""
        return beats_fbank(wav, fbank_mean=fbank_mean, fbank_std=fbank_std)

    def forward_padding_mask(self, features: Tensor, padding_mask: Tensor) -> Tensor:
        """Padding mask (B, T) -> (B, features.size(1)), the official way."""
        return downsample_padding_mask(padding_mask, features.size(1))

    def extract_features(
        self,
        wav: Tensor,
        padding_mask: Optional[Tensor] = None,
        fbank_mean: float = BEATS_FBANK_MEAN,
        fbank_std: float = BEATS_FBANK_STD,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """wav (B, T) 16 kHz in [-1, 1], padding_mask (B, T) True = padding.

        Returns the encoder output (B, N, encoder_embed_dim) and the token padding mask (B, N) or None.
        Feature extraction only: the classifier head is not applied.
        """
        self._check_input(wav, padding_mask)
        fbank = self.preprocess(wav, fbank_mean, fbank_std)  # (B, F, 128)
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(fbank, padding_mask)  # (B, F)
        return self._encode_fbank(fbank, padding_mask)

    forward = extract_features

    def _encode_fbank(self, fbank: Tensor, padding_mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        fbank = fbank.to(self.patch_embedding.weight.dtype).unsqueeze(1)  # (B, F, 128) -> (B, 1, F, 128)
        features = self.patch_embedding(fbank)  # (B, E, F // p, 128 // p)
        features = features.reshape(features.shape[0], features.shape[1], -1)  # (B, E, N), time-major
        features = features.transpose(1, 2)  # (B, E, N) -> (B, N, E)
        features = self.layer_norm(features)
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)  # (B, F) -> (B, N)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)  # (B, N, E) -> (B, N, C)
        x = self.dropout_input(features)
        x = self.encoder(x, padding_mask=padding_mask)
        return x, padding_mask

    def classify(self, wav: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """Clip-level class probabilities (B, predictor_class) from a fine-tuned checkpoint's head."""
        if self.predictor is None:
            raise ConfigError("this BEATs cfg has finetuned_model = False: there is no classifier head")
        x, padding_mask = self.extract_features(wav, padding_mask)
        logits = self.predictor(self.predictor_dropout(x))  # (B, N, classes)
        if padding_mask is not None and padding_mask.any():
            logits = logits.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            logits = logits.sum(dim=1) / (~padding_mask).sum(dim=1, keepdim=True).to(logits.dtype)
        else:
            logits = logits.mean(dim=1)
        return torch.sigmoid(logits)

    def _check_input(self, wav: Tensor, padding_mask: Optional[Tensor]) -> None:
        if not isinstance(wav, Tensor) or wav.dim() != 2:
            shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
            raise AudioError(f"BEATs takes waveforms shaped (batch, samples), got {shape}")
        min_samples = FBANK_WINDOW + (self.input_patch_size - 1) * FBANK_SHIFT
        if wav.shape[1] < min_samples:
            raise AudioError(
                f"BEATs needs at least {min_samples} samples ({min_samples / 16000:.3f} s at 16 kHz) "
                f"for one patch of {self.input_patch_size} frames, got {wav.shape[1]}"
            )
        if padding_mask is not None:
            if padding_mask.shape != wav.shape:
                raise AudioError(
                    f"padding_mask must have the waveform's shape {tuple(wav.shape)}, got {tuple(padding_mask.shape)}"
                )
            if padding_mask.dtype != torch.bool:
                raise AudioError(f"padding_mask must be a bool tensor (True = padding), got {padding_mask.dtype}")

    # ------------------------------------------------------------------------------ checkpoints
    @classmethod
    def from_checkpoint_dict(cls, ckpt: Mapping[str, Any]) -> "BEATs":
        """Build from an official checkpoint dict {'cfg': dict, 'model': state_dict}; returns eval mode.

        The state dict must match exactly: missing or unexpected keys and shape mismatches raise
        CheckpointError; a bad cfg raises ConfigError.
        """
        if not isinstance(ckpt, Mapping) or "cfg" not in ckpt or "model" not in ckpt:
            keys = sorted(map(str, ckpt.keys())) if isinstance(ckpt, Mapping) else type(ckpt).__name__
            raise CheckpointError(f"a BEATs checkpoint is a dict with 'cfg' and 'model'; got {keys}")
        cfg_raw, state = ckpt["cfg"], ckpt["model"]
        if isinstance(cfg_raw, BEATsConfig):
            cfg = cfg_raw
        elif isinstance(cfg_raw, Mapping):
            cfg = BEATsConfig(cfg_raw)
        else:
            raise CheckpointError(f"BEATs checkpoint 'cfg' must be a dict, got {type(cfg_raw).__name__}")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"BEATs checkpoint 'model' must be a state dict, got {type(state).__name__}")

        model = cls(cfg)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                "BEATs checkpoint does not match its cfg: "
                f"missing keys {_key_list(missing)}; unexpected keys {_key_list(unexpected)}"
            )
        for key, ref in expected.items():
            value = state[key]
            if not isinstance(value, Tensor):
                raise CheckpointError(f"BEATs checkpoint entry '{key}' is a {type(value).__name__}, not a tensor")
            if value.shape != ref.shape:
                raise CheckpointError(
                    f"BEATs checkpoint entry '{key}' has shape {tuple(value.shape)}, the cfg needs {tuple(ref.shape)}"
                )
        if cfg.relative_position_embedding and cfg.encoder_layers > 1:
            name = "encoder.layers.{}.self_attn.relative_attention_bias.weight"
            first = state[name.format(0)]
            for i in range(1, cfg.encoder_layers):
                if not torch.equal(state[name.format(i)].to(first.dtype), first):
                    raise CheckpointError(
                        f"BEATs shares one relative position table across layers, but '{name.format(i)}' "
                        f"differs from '{name.format(0)}'"
                    )
        model.load_state_dict(state, strict=True)
        return model.eval()


def _key_list(keys: list, limit: int = 12) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"
