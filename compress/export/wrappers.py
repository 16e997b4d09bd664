"""The two traceable graphs every export backend compiles: the audio front and the LLM decoder with a flat KV cache.

- `AudioFront`: Salmonn.encode_audio as one forward, log-mel (+ 16 kHz waveform and padding mask) -> speech
  embeddings. BEATs' Kaldi fbank stays inside the graph (its FFT as a DFT matmul: fbank.power_spectrum). Branches
  on shapes are written branch-free so that batch and waveform length can be dynamic.
- `DecoderWithCache`: the causal LM (LoRA merged) taking inputs_embeds, attention_mask, position_ids and the
  past keys/values as explicit tensors past_key_{i} / past_value_{i} (a DynamicCache is built inside forward),
  returning the last position's logits and present_key_{i} / present_value_{i}. One graph serves prefill
  (past length 0) and decode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError
from ..models.salmonn import (_full_mel_frames, mix_layers, whisper_encode, whisper_encode_frames, whisper_hidden,
                              window_tokens)


class AudioFront(nn.Module):
    """(B, n_mels, F) log-mel [, (B, T) wav, (B, T) bool padding mask] -> (B, L, llm_hidden) speech embeddings.

    Attribute names follow Salmonn's, so the graph's initializers keep the parameter names where the
    exporter does not fold them. `dynamic_mel`: run the encoder's modules on any F (real-length encoding).
    """

    def __init__(self, model, *, dynamic_mel: bool = False):
        super().__init__()
        self.speech_encoder = model.speech_encoder
        self.ln_speech = model.ln_speech
        self.beats = model.beats
        if model.beats is not None:
            self.ln_audio = model.ln_audio
        self.speech_Qformer = model.speech_Qformer
        self.speech_query_tokens = model.speech_query_tokens
        self.speech_llama_proj = model.speech_llama_proj
        self.whisper_layers = model.whisper_layers
        if self.whisper_layers is not None:
            self.speech_layer_weights = model.speech_layer_weights
        self.kernel, self.stride = model.cfg.window_kernel, model.cfg.window_stride
        self.dynamic_mel = dynamic_mel

    def forward(self, spectrogram: torch.Tensor, wav=None, padding_mask=None) -> torch.Tensor:
        enc = whisper_encode_frames if self.dynamic_mel else whisper_encode
        if self.whisper_layers is None:
            speech = self.ln_speech(enc(self.speech_encoder, spectrogram))  # (B, Tw, Dw)
        else:
            stack = whisper_hidden(self.speech_encoder, spectrogram, self.whisper_layers)
            speech = self.ln_speech(mix_layers(stack, self.speech_layer_weights))
        if self.beats is not None:
            feats, _ = self.beats.extract_features(wav, padding_mask=padding_mask)
            feats = self.ln_audio(feats)  # (B, N, Db)
            # Zero-pad BEATs to the Whisper frame count (cut when longer, as real-length encoding does). Clips are
            # at most 30 s, so BEATs never has more frames than a full Whisper encoding: this equals the reference.
            ta = speech.shape[1]
            pad = feats.new_zeros(feats.shape[0], ta, feats.shape[2])
            feats = torch.cat([feats, pad], dim=1)[:, :ta]
            speech = torch.cat([speech, feats], dim=-1)
        return window_tokens(self, speech, self.kernel, self.stride)


class DecoderWithCache(nn.Module):
    """(inputs_embeds, attention_mask, position_ids, past_key_0, past_value_0, ...) -> (logits, present_key_0, ...)."""

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.llama_model = causal_lm

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        cache = DynamicCache(pairs, config=self.llama_model.config)
        out = self.llama_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               position_ids=position_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        flat = []
        for layer in out.past_key_values.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def float32_front(model) -> AudioFront:
    """The audio front in float32: shares `model`'s modules when they already are, else a cast copy (never mutates)."""
    front = AudioFront(model, dynamic_mel=bool(getattr(model, "real_length", False))).eval()
    if any(p.dtype != torch.float32 for p in front.parameters()):
        front = copy.deepcopy(front).float()  # copies the front's modules only, not the LLM
    return front


def merged_llm(model) -> nn.Module:
    """A float32 copy of the LLM with LoRA merged into the base weights; the caller's model is untouched."""
    lm = copy.deepcopy(model.llama_model)
    if hasattr(lm, "merge_and_unload"):
        lm = lm.merge_and_unload()
    return lm.float().eval()


def example_audio(model, batch: int = 2, seconds=(3.0, 2.0)) -> dict:
    """Example inputs of the audio front (two clips of different lengths, so the padding mask is exercised)."""
    import numpy as np

    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds[:batch]]
    return model.prepare_audio(waves)


def full_mel_frames(model) -> int:
    return _full_mel_frames(model.speech_encoder)


def require_exportable(model, *, nbits: bool = False) -> None:
    """Refuse what cannot be exported. `nbits`: GPTQ / RTN modules are allowed (ONNX writes them as MatMulNBits)."""
    if not hasattr(model, "llama_model") or not hasattr(model, "speech_encoder"):
        raise UserError(f"export needs a SALMONN model (got {type(model).__name__}); an exported directory "
                        "cannot be exported again")
    replaced = getattr(model, "module_overrides", {})
    if replaced and nbits:
        from .nbits_op import check_nbits_exportable

        check_nbits_exportable(model)
        return
    if replaced:
        kinds = sorted({spec.get("kind", "?") for spec in replaced.values()})
        raise UserError(f"export: this model has {len(replaced)} quantized modules ({', '.join(kinds)}), which have "
                        "no ONNX / TensorRT mapping; export the model before quantizing (onnx: --int8 quantizes the "
                        "LLM graph in ONNX Runtime)")
