"""SALMONN: Whisper + BEATs -> window-level Q-Former -> projection -> LoRA LLM, as the reference computes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config import SPEECH_PLACEHOLDER, SalmonnConfig, resolve_task
from .qformer import SpeechQFormer, window_frames
from .windows import real_mel_frames, window_count  # noqa: F401  (re-exported: callers import them from here)

# Parameter-name prefixes of each part; the first match wins.
PART_PREFIXES = {
    "speech_encoder": ("speech_encoder.", "ln_speech.", "speech_layer_weights"),
    "beats": ("beats.", "ln_audio."),
    "qformer": ("speech_Qformer.", "speech_query_tokens"),
    "proj": ("speech_llama_proj.",),
    "llm": ("llama_model.",),
}
PARTS = tuple(PART_PREFIXES)


def part_of(name: str) -> str:
    """Part of a parameter or module name (`speech_llama_proj` and `speech_llama_proj.weight` are both 'proj')."""
    dotted = name + "."
    for part, prefixes in PART_PREFIXES.items():
        if dotted.startswith(prefixes):
            return part
    raise KeyError(f"parameter {name!r} belongs to no part")


@dataclass
class GenerationOutput:
    text: str
    token_ids: list


class PromptMixin:
    """Audio preparation, SALMONN's prompt around the speech tokens and generate(), shared by Salmonn and the
    exported backends.

    Needs .cfg, .tokenizer, .n_mels, .real_length, .has_beats, ._prompt_cache, prompt_embedding(), prompt_bos(),
    encode_audio(), eos_ids() and decoder_lm() (what compress.generation.decode runs).
    """

    def prepare_audio(self, waveforms: list) -> dict:
        """Host arrays -> model inputs (features on the model's device)."""
        from ..audio import batch_waveforms, whisper_features

        frames = None
        if self.real_length:  # only the mel frames the longest clip's windows need
            frames = real_mel_frames(max(len(w) for w in waveforms), self.cfg.window_kernel, self.cfg.window_stride)
        spec = whisper_features(waveforms, self.n_mels, frames)
        wav, pad = batch_waveforms(waveforms) if self.has_beats else (None, None)
        return {"spectrogram": spec, "wav": wav, "padding_mask": pad}

    def instruction_for(self, task: str) -> str:
        return self.cfg.instructions[resolve_task(task)]

    def _prompt_ids(self, instruction: str) -> tuple:
        if instruction not in self._prompt_cache:
            self._prompt_cache[instruction] = prompt_ids(self.tokenizer, self.cfg, instruction)
        return self._prompt_cache[instruction]

    def build_inputs(self, speech: torch.Tensor, instruction: str) -> tuple:
        """(B, L, D) speech embeddings -> inputs_embeds (B, S, D) = [BOS, prompt-before, speech, prompt-after]."""
        return prompt_embeds(self.prompt_embedding(), self.prompt_bos(), self._prompt_ids(instruction), speech)

    @torch.inference_mode()
    def generate(self, audios: list, task: str = "asr", *, instruction: Optional[str] = None,
                 max_new_tokens: Optional[int] = None, num_beams: Optional[int] = None,
                 ignore_eos: bool = False, on_token: Optional[Callable[[int], None]] = None,
                 min_length: Optional[int] = None, repetition_penalty: Optional[float] = None,
                 length_penalty: Optional[float] = None, on_phase: Optional[Callable[[str], None]] = None) -> list:
        """Raw 16 kHz float waveforms (host) -> generated text per clip.

        `on_token(step)` is called after each generated token id of the batch is on the host; `on_phase(name)`
        when a phase ends before decoding starts: "speech_front" once the LLM's input embeddings (audio through
        both encoders, Q-Former, projection, and the prompt around them) are built. The prefill ends with the
        first `on_token`.
        """
        from ..generation import decode, options_from

        opts = options_from(self.cfg.generate, max_new_tokens=max_new_tokens, num_beams=num_beams,
                            min_length=min_length, repetition_penalty=repetition_penalty,
                            length_penalty=length_penalty, eos_ids=[] if ignore_eos else self.eos_ids())
        inputs = self.prepare_audio(audios)
        speech = self.encode_audio(**inputs)
        embeds, mask = self.build_inputs(speech, instruction or self.instruction_for(task))
        if on_phase is not None:
            on_phase("speech_front")
        seqs = decode(self.decoder_lm(), embeds, mask, opts, on_token=on_token)
        return [GenerationOutput(text=self.decode_text(s), token_ids=s) for s in seqs]

    def decode_text(self, ids: list) -> str:
        from ..generation import tokens_to_text

        return tokens_to_text(self.tokenizer, ids)


class Salmonn(PromptMixin, nn.Module):
    """The module tree with the released checkpoints' attribute names.

    Built empty by `build_modules`; loaders fill the weights. `tokenizer` is attached by the loader.
    """

    def __init__(self, cfg: SalmonnConfig, speech_encoder: nn.Module, llama_model: nn.Module,
                 beats: Optional[nn.Module], tokenizer):
        super().__init__()
        self.cfg = cfg
        d_whisper = speech_encoder.config.d_model
        self.speech_encoder = speech_encoder
        self.ln_speech = nn.LayerNorm(d_whisper)
        self.beats = beats
        beats_dim = 0
        if beats is not None:
            beats_dim = beats.cfg.encoder_embed_dim
            self.ln_audio = nn.LayerNorm(beats_dim)
        if cfg.qformer.encoder_width != d_whisper + beats_dim:
            raise ConfigError(
                f"qformer.encoder_width is {cfg.qformer.encoder_width} but the Whisper encoder ({d_whisper}) "
                f"+ BEATs ({beats_dim}) give {d_whisper + beats_dim}"
            )
        self.whisper_layers = whisper_layer_list(cfg.whisper_layers, speech_encoder.config.encoder_layers)
        if self.whisper_layers is not None:
            self.speech_layer_weights = nn.Parameter(torch.zeros(len(self.whisper_layers)))
        self.speech_Qformer = SpeechQFormer(cfg.qformer)
        self.speech_query_tokens = nn.Parameter(torch.zeros(1, cfg.num_speech_query_token, cfg.qformer.hidden_size))
        llm_hidden = llama_model.get_input_embeddings().embedding_dim
        self.speech_llama_proj = nn.Linear(cfg.qformer.hidden_size, llm_hidden)
        self.llama_model = llama_model
        self.tokenizer = tokenizer
        self._prompt_cache: dict = {}
        self.real_length = False  # set by the `real_length` step: encode the clip's length, not 30 s

    # ----------------------------------------------------------------- parts and dtypes
    @property
    def device(self) -> torch.device:
        return self.speech_query_tokens.device

    @property
    def n_mels(self) -> int:
        return self.speech_encoder.config.num_mel_bins

    def parts(self) -> dict:
        """Part name -> module, for targeting and per-part accounting."""
        out = {"speech_encoder": self.speech_encoder}
        if self.beats is not None:
            out["beats"] = self.beats
        out.update(qformer=self.speech_Qformer, proj=self.speech_llama_proj, llm=self.llama_model)
        return out

    def llm_base(self) -> nn.Module:
        """The causal LM without the PEFT wrapper (its `.model.layers` etc.)."""
        m = self.llama_model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    # ----------------------------------------------------------------- audio path
    def encode_audio(self, spectrogram: torch.Tensor, wav: Optional[torch.Tensor] = None,
                     padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, n_mels, 3000) log-mel [+ (B, T) 16 kHz wav] -> (B, L, llm_hidden) speech embeddings."""
        enc_dtype = self.ln_speech.weight.dtype
        spectrogram = spectrogram.to(self.device, enc_dtype)
        if self.whisper_layers is None:
            speech = whisper_encode(self.speech_encoder, spectrogram)  # (B, 1500, Dw)
        else:
            speech = self.mix_layers(whisper_hidden(self.speech_encoder, spectrogram, self.whisper_layers))
        speech = self.ln_speech(speech)
        if self.beats is not None and wav is not None:
            pm = padding_mask.to(self.device) if padding_mask is not None else None
            audio, _ = self.beats.extract_features(wav.to(self.device, torch.float32), padding_mask=pm)
            audio = self.ln_audio(audio.to(self.ln_audio.weight.dtype))  # (B, N, 768)
            if spectrogram.shape[-1] < _full_mel_frames(self.speech_encoder):  # real length: cut BEATs to it
                audio = audio[:, : speech.shape[1]]
            speech, audio = _pad_to_same_length(speech, audio.to(speech.dtype))
            speech = torch.cat([speech, audio], dim=-1)  # (B, T, Dw + 768)
        return window_tokens(self, speech, self.cfg.window_kernel, self.cfg.window_stride)

    def mix_layers(self, stack: torch.Tensor) -> torch.Tensor:
        """(B, L, T, Dw) normalised hidden states of `whisper_layers` -> (B, T, Dw), their learned weighted sum."""
        return mix_layers(stack, self.speech_layer_weights)

    @property
    def has_beats(self) -> bool:
        return self.beats is not None

    # ----------------------------------------------------------------- prompt (PromptMixin)
    def prompt_embedding(self) -> nn.Module:
        return self.llama_model.get_input_embeddings()

    def prompt_bos(self) -> Optional[int]:
        return self.tokenizer.bos_token_id

    def eos_ids(self) -> list:
        ids = set()
        gc = getattr(self.llm_base(), "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
        if e is not None:
            ids.update(e if isinstance(e, (list, tuple)) else [e])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def decoder_lm(self) -> nn.Module:
        return self.llama_model


def window_tokens(m, speech: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """(B, T, C) encoder frames -> (B, L*Q, D) speech tokens: the window-level Q-Former and the projection.

    `m` has speech_Qformer, speech_query_tokens and speech_llama_proj (a Salmonn, or an export wrapper).
    """
    b = speech.shape[0]
    windows = window_frames(speech, kernel, stride)  # (B*L, k, C)
    queries = m.speech_query_tokens.expand(windows.shape[0], -1, -1)
    mask = torch.ones(windows.shape[:2], dtype=torch.long, device=windows.device)
    q = m.speech_Qformer(queries.to(windows.dtype), windows, mask)  # (B*L, Q, H)
    q = m.speech_llama_proj(q.to(m.speech_query_tokens.dtype))  # (B*L, Q, D)
    return q.reshape(b, -1, q.shape[-1])  # (B, L*Q, D)


def prompt_text(cfg: SalmonnConfig, instruction: str) -> tuple:
    """(before, after): the prompt strings around the speech tokens (the template split at <SpeechHere>)."""
    content = f"{instruction} {SPEECH_PLACEHOLDER}" if cfg.instruction_first else f"{SPEECH_PLACEHOLDER} {instruction}"
    text = cfg.prompt_template.format(content)
    before, after = text.split("<SpeechHere>")
    return before, after


def prompt_ids(tokenizer, cfg: SalmonnConfig, instruction: str) -> tuple:
    """Token ids of the prompt before and after the speech tokens (see prompt_text)."""
    before, after = prompt_text(cfg, instruction)
    return (tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(after, add_special_tokens=False)["input_ids"])


def answer_ids(tokenizer, text: str) -> list:
    """Token ids of an answer as SALMONN trains it after the prompt: the text as it is (no leading space added)
    followed by EOS, tokenized without special tokens. Training and every step that trains or scores answers
    (fine-tuning, distillation, lottery retraining, calibration with the reference) use this one tokenization."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return ids + ([eos] if eos is not None else [])


def prompt_embeds(emb, bos: Optional[int], ids: tuple, speech: torch.Tensor) -> tuple:
    """[BOS, prompt-before, speech, prompt-after] embeddings (B, S, D) and their all-ones mask."""
    ids_b, ids_a = ids
    ids_b = ([bos] if bos is not None else []) + list(ids_b)
    b, dev = speech.shape[0], speech.device
    eb = emb(torch.tensor(ids_b, device=dev)).unsqueeze(0).expand(b, -1, -1)
    ea = emb(torch.tensor(ids_a, device=dev)).unsqueeze(0).expand(b, -1, -1)
    embeds = torch.cat([eb, speech.to(eb.dtype), ea], dim=1)
    return embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=dev)


def _full_mel_frames(encoder) -> int:
    return encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]


def whisper_encode(encoder, features: torch.Tensor) -> torch.Tensor:
    """(B, n_mels, F) log-mel -> (B, F // 2, D) last hidden state.

    F = 3000 runs transformers' WhisperEncoder as it is. A shorter F (real-length encoding; the
    transformers forward refuses it) runs the same modules, with the first F // 2 position embeddings.
    """
    if features.shape[-1] == _full_mel_frames(encoder):
        return encoder(features).last_hidden_state
    return whisper_encode_frames(encoder, features)


def whisper_encode_frames(encoder, features: torch.Tensor) -> torch.Tensor:
    """The Whisper encoder's modules on any number of mel frames F <= 3000 (no length check), -> (B, F // 2, D)."""
    n = len(encoder.layers)
    return _whisper_states(encoder, features, [n])[n]


def _whisper_states(encoder, features: torch.Tensor, keep: list) -> dict:
    """{k: hidden state k} for k in `keep` (0 = the embeddings after the convolutions, n = the last layer, after the
    encoder's final layer norm), running the layers only as far as the deepest kept; any F <= 3000 mel frames."""
    x = F.gelu(encoder.conv1(features))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)  # (B, D, T) -> (B, T, D)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    x = F.dropout(x, p=encoder.dropout, training=encoder.training)
    n = len(encoder.layers)
    states = {0: x} if 0 in keep else {}
    for k, layer in enumerate(encoder.layers[: max(keep)], 1):
        x = layer(x, None)
        if k in keep:
            states[k] = encoder.layer_norm(x) if k == n else x
    return states


def whisper_layer_list(layers: Optional[list], n_layers: int) -> Optional[list]:
    """`SalmonnConfig.whisper_layers` checked against an encoder of `n_layers` layers (None stays None)."""
    if layers is None:
        return None
    ok = isinstance(layers, (list, tuple)) and len(layers) > 0 and all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= n_layers for i in layers)
    if not ok or len(set(layers)) != len(layers):
        raise ConfigError(f"whisper_layers must be distinct hidden-state indices in 0..{n_layers} (0 = the "
                          f"embeddings, {n_layers} = the last layer), got {layers!r}")
    return list(layers)


def whisper_hidden(encoder, features: torch.Tensor, layers: list) -> torch.Tensor:
    """(B, n_mels, F) log-mel -> (B, len(layers), F // 2, D): the encoder's hidden states `layers` (0 = the
    embeddings, n = the last layer after the encoder's final layer norm), each layer-normalised (no affine), on
    any F <= 3000 as `whisper_encode_frames`."""
    states = _whisper_states(encoder, features, layers)
    return torch.stack([F.layer_norm(states[i], states[i].shape[-1:]) for i in layers], 1)


def mix_layers(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, L, T, D) hidden states, (L,) weight logits -> (B, T, D): the softmax-weighted sum over L."""
    w = torch.softmax(weights.float(), 0).to(stack.dtype)
    return (stack * w[None, :, None, None]).sum(1)


def _pad_to_same_length(a: torch.Tensor, b: torch.Tensor) -> tuple:
    """Zero-pad the shorter of (B, Ta, C) / (B, Tb, C') on the time axis, as the reference does."""
    ta, tb = a.shape[1], b.shape[1]
    if tb < ta:
        b = F.pad(b, (0, 0, 0, ta - tb))
    elif tb > ta:
        a = F.pad(a, (0, 0, 0, tb - ta))
    return a, b
