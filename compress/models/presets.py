"""Named model presets built from config with seeded random weights: `tiny` for tests, `sized-*` for real shapes."""

from __future__ import annotations

from ..errors import ConfigError, choices
from .config import LoraSettings, SalmonnConfig
from .qformer import QFormerConfig

_WHISPER_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def _whisper(d_model, layers, heads, ffn, n_mels):
    return dict(d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=ffn,
                num_mel_bins=n_mels, max_source_positions=1500, decoder_layers=1, decoder_attention_heads=heads,
                decoder_ffn_dim=ffn, vocab_size=64, **_WHISPER_IDS)


# whisper-large-v3-turbo encoder: 32 layers x 1280, 20 heads, FFN 5120, 128 mel bins.
WHISPER_LARGE_V3_TURBO = _whisper(1280, 32, 20, 5120, 128)


def _llama(hidden, layers, heads, kv_heads, inter, vocab, **extra):
    return dict(model_type="llama", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, intermediate_size=inter, vocab_size=vocab,
                bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)


_LLAMA32 = dict(rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True,
                rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192})


def _tiny() -> SalmonnConfig:
    from .beats import tiny_beats_cfg

    beats = tiny_beats_cfg()
    whisper = _whisper(64, 2, 4, 128, 80)
    return SalmonnConfig(
        whisper=whisper,
        beats=beats,
        llm=_llama(64, 4, 4, 2, 128, 260, max_position_embeddings=512, tie_word_embeddings=False),
        qformer=QFormerConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                              encoder_width=64 + beats["encoder_embed_dim"]),
        lora=LoraSettings(r=4, alpha=16, dropout=0.0),
        extra={"preset": "tiny"},
    )


def _sized(llm: dict, name: str) -> SalmonnConfig:
    from .beats import base_beats_cfg

    return SalmonnConfig(
        whisper=dict(WHISPER_LARGE_V3_TURBO),
        beats=base_beats_cfg(),
        llm=llm,
        qformer=QFormerConfig(encoder_width=1280 + 768),
        lora=LoraSettings(r=8, alpha=32, dropout=0.1),
        extra={"preset": name},
    )


PRESETS = {
    "tiny": _tiny,
    # Llama-3.2-1B: 16 layers x 2048, 32 heads (8 KV), FFN 8192, vocab 128256, tied embeddings.
    "sized-1b": lambda: _sized(_llama(2048, 16, 32, 8, 8192, 128256, **_LLAMA32), "sized-1b"),
    # Llama-3.2-3B: 28 layers x 3072, 24 heads (8 KV), FFN 8192, vocab 128256, tied embeddings.
    "sized-3b": lambda: _sized(_llama(3072, 28, 24, 8, 8192, 128256, **_LLAMA32), "sized-3b"),
}


def preset_config(name: str) -> SalmonnConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid: {choices(PRESETS)}") from None


def build_preset(name: str, *, seed: int = 0, dtype=None):
    """A preset with seeded random weights (LoRA B too, so the adapters change the output)."""
    import torch

    from .build import build_modules
    from .tokenizer import byte_tokenizer

    cfg = preset_config(name)
    cfg.extra["seed"] = seed
    model = build_modules(cfg, byte_tokenizer(), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    if dtype is not None:
        model.to(dtype)
    return model
