"""Hyper-parameters of the demo training and the SALMONN shape they give (one dataclass, two presets)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from ..errors import ConfigError, choices


PROJ_INITS = ("data", "random")
CTC_HEADS = ("lm", "linear", "embed")  # see audio_stage.CtcHead


@dataclass
class TrainConfig:
    seed: int = 0
    # ---- data (train split of compress.data.build)
    n_asr: int = 2000
    n_caption: int = 1000
    # extra ASR clips of word-bigram sentences over the train text (compress.data.sentences.chain_sentences):
    # more word sequences than the pool has sentences; used by the CTC warm-up and the joint stage, never by
    # the LM corpus (the LM learns real sentences only)
    n_chain: int = 2000
    chain_per_epoch: Optional[int] = 500  # chain clips drawn afresh per epoch of the joint stage (None: all)
    # ---- tokenizer (byte-level BPE trained on the training text)
    vocab_size: int = 2048
    # ---- LM corpus: the training clips' texts, plus the whole train-split sentence pool when True
    lm_sentence_pool: bool = True
    # ---- Whisper: "tiny.en" = the real pretrained encoder; otherwise a dict of WhisperConfig fields (tests)
    whisper: object = "tiny.en"
    # ---- BEATs (official structure, trained from scratch in the audio stage)
    beats_layers: int = 2
    beats_dim: int = 192
    beats_ffn: int = 768
    beats_heads: int = 4
    beats_patch_embed: int = 128
    beats_conv_pos: int = 32
    beats_conv_pos_groups: int = 8
    beats_buckets: int = 64
    beats_max_distance: int = 256
    beats_dropout: float = 0.1
    # ---- Q-Former (window level, 1 query per window). SALMONN's window is 1/3 s (17 Whisper frames); the
    # demo uses 0.16 s (8 frames) so that a window holds at most about one word piece of TTS speech,
    # which the CTC term of the audio stage needs (see audio_stage.ctc_loss).
    window_seconds: float = 0.16
    window_stride_seconds: Optional[float] = None  # None: = window_seconds (no overlap); less: windows overlap
    qformer_hidden: int = 256
    qformer_heads: int = 4
    qformer_ffn: int = 1024
    qformer_layers: int = 2
    # ---- LLM (Llama architecture)
    llm_hidden: int = 256
    llm_layers: int = 4
    llm_heads: int = 4
    llm_kv_heads: int = 4
    llm_ffn: int = 768
    llm_max_positions: int = 512
    # ---- LoRA (SALMONN's defaults)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"])
    # ---- audio-path init (see audio_stage.boost_cross_attention / init_projection_from_data)
    qformer_cross_gain: float = 4.0  # Q-Former cross-attention output weights x this at init
    proj_init: str = "data"  # "data": centred + scaled on training clips; "random": scaled random weights
    proj_init_scale: float = 1.0  # speech-token spread at init, relative to the LM's mean embedding norm
    # ---- stage 1: text LM pretraining
    lm_epochs: float = 10.0
    lm_batch: int = 32
    lm_lr: float = 2e-3
    lm_warmup: int = 100
    lm_weight_decay: float = 0.1
    lm_prompted_share: float = 0.1  # share of sequences in the SALMONN prompt layout with an empty speech slot
    lm_slot_share: float = 0.7  # share in the prompt layout with text in the speech slot (see text.slot_tokens)
    lm_slot_full_share: float = 0.15  # share of those slots kept 30 s long; the rest cut as the audio stage cuts
    lm_copy_share: float = 0.2  # synthetic random-piece copy items, x the corpus size (see text.copy_slot)
    lm_answer_only: bool = True  # prompt layouts score the answer only (see text.lm_sequences)
    lm_copy_steps: int = 800  # LM steps on synthetic copies alone before the corpus (see text.pretrain_lm)
    # ---- stage 2: audio (SALMONN) training
    epochs: float = 5.0
    batch: int = 8
    lr: float = 1e-3
    lora_lr: Optional[float] = 1e-3  # None: same as lr
    proj_lr: Optional[float] = 3e-5  # speech_llama_proj (see audio_stage._lr_of); None: same as lr
    warmup: int = 150
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ctc_head: str = "embed"  # "lm": the LM's frozen norm + output layer; "linear": a free head; "embed": distance to the
    # LM's input embeddings (audio_stage.CtcHead)
    ctc_warmup_steps: int = 1000  # CTC alone on ASR clips before SALMONN's loss (audio_stage.ctc_warmup); 0 = none
    ctc_warmup_batch: int = 16
    ctc_warmup_lr: float = 1e-3
    ctc_warmup_feature_dropout: float = 0.2  # warm-up noise on the Whisper features (audio_stage.augment_features)
    ctc_warmup_time_masks: int = 2  # ... and zeroed time spans per clip, of up to ctc_warmup_mask_width frames
    ctc_warmup_mask_width: int = 12
    ctc_weight: float = 1.0  # auxiliary CTC on the speech tokens of ASR clips (0 = SALMONN's loss only)
    ctc_caption: bool = True  # ... and of caption clips, on their content words (see audio_stage.epoch_plan)
    whisper_drop: float = 0.25  # share of caption clips trained on BEATs alone (Whisper features zeroed)
    full_share: float = 0.15  # share of batches with all 30 s of windows; the rest keep speech + 2-24 padding windows
    max_minutes: Optional[float] = 34.0  # safety stop of the audio stage (wall time; the schedule is by steps)
    # ---- feature caching
    cache_batch: int = 8
    # ---- decoding defaults written into the artifact
    # greedy, for the main job's 10-minute budget. With the repetition penalty 4 beams scored dev WER 0.612 /
    # CIDEr-D 0.984 vs greedy 0.625 / 0.926 (session 8); without it an earlier model's 4 beams scored CIDEr-D 0.22 vs 0.48
    num_beams: int = 1
    max_new_tokens: int = 48
    repetition_penalty: float = 1.2  # dev split, session-7 model: WER 0.660 -> 0.625, CIDEr-D 0.900 -> 0.926 (1.0 -> 1.2)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self):
        if self.proj_init not in PROJ_INITS:
            raise ConfigError(f"proj_init {self.proj_init!r} is not one of {choices(PROJ_INITS)}")
        if self.ctc_head not in CTC_HEADS:
            raise ConfigError(f"ctc_head {self.ctc_head!r} is not one of {choices(CTC_HEADS)}")

    def replace(self, **kw) -> "TrainConfig":
        known = {f.name for f in fields(self)}
        bad = sorted(set(kw) - known)
        if bad:
            raise ConfigError(f"unknown training option(s) {bad}; valid: {choices(known)}")
        d = self.to_dict()
        d.update(kw)
        return TrainConfig(**d)


def tiny_whisper() -> dict:
    """A random 2-layer Whisper encoder shape for tests (80 mel bins, 1500 output frames)."""
    return dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=80,
                max_source_positions=1500, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
                vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


PRESETS = {
    "demo": TrainConfig(),
    # Seconds on a CPU: used by the tests, runs the whole pipeline on a few clips.
    "test": TrainConfig(
        n_asr=6, n_caption=6, n_chain=0, chain_per_epoch=None, vocab_size=300, lm_sentence_pool=False, whisper=tiny_whisper(), beats_layers=1, beats_dim=32, beats_ffn=64,
        beats_heads=2, beats_patch_embed=16, beats_conv_pos=8, beats_conv_pos_groups=4, beats_buckets=16,
        beats_max_distance=32, beats_dropout=0.0, qformer_hidden=32, qformer_heads=2, qformer_ffn=64,
        qformer_layers=2, llm_hidden=32, llm_layers=2, llm_heads=2, llm_kv_heads=2, llm_ffn=64,
        lora_r=4, lora_alpha=16, lora_dropout=0.0, lm_epochs=3, lm_batch=8, lm_lr=3e-3, lm_warmup=2, lm_copy_steps=4,
        ctc_warmup_steps=4, ctc_warmup_batch=4, epochs=8, batch=4, lr=3e-3, warmup=2, cache_batch=4, num_beams=2, max_new_tokens=12),
}


def preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name].replace()
    except KeyError:
        raise ConfigError(f"unknown training preset {name!r}; valid: {choices(PRESETS)}") from None


def whisper_config(tc: TrainConfig) -> dict:
    if tc.whisper == "tiny.en":
        from ..models.whisper_convert import TINY_EN_CONFIG

        return dict(TINY_EN_CONFIG)
    if isinstance(tc.whisper, dict):
        return dict(tc.whisper)
    raise ConfigError(f"whisper must be 'tiny.en' or a dict of WhisperConfig fields, got {tc.whisper!r}")


def beats_config(tc: TrainConfig) -> dict:
    """The official BEATs structure (post-norm DeepNorm, gated relative position bias), small widths."""
    return {
        "input_patch_size": 16, "embed_dim": tc.beats_patch_embed, "conv_bias": False,
        "encoder_layers": tc.beats_layers, "encoder_embed_dim": tc.beats_dim,
        "encoder_ffn_embed_dim": tc.beats_ffn, "encoder_attention_heads": tc.beats_heads,
        "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 1.0, "layer_norm_first": False,
        "deep_norm": True, "dropout": tc.beats_dropout, "attention_dropout": tc.beats_dropout,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
        "conv_pos": tc.beats_conv_pos, "conv_pos_groups": tc.beats_conv_pos_groups,
        "relative_position_embedding": True, "num_buckets": tc.beats_buckets,
        "max_distance": tc.beats_max_distance, "gru_rel_pos": True, "finetuned_model": False,
    }


def llm_config(tc: TrainConfig, vocab_size: int, *, bos: int, eos: int, pad: int) -> dict:
    return dict(model_type="llama", hidden_size=tc.llm_hidden, num_hidden_layers=tc.llm_layers,
                num_attention_heads=tc.llm_heads, num_key_value_heads=tc.llm_kv_heads,
                intermediate_size=tc.llm_ffn, vocab_size=vocab_size, max_position_embeddings=tc.llm_max_positions,
                rms_norm_eps=1e-5, tie_word_embeddings=True, attention_dropout=0.0, hidden_act="silu",
                bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def salmonn_config(tc: TrainConfig, vocab_size: int, *, bos: int, eos: int, pad: int, extra: Optional[dict] = None):
    """The SalmonnConfig of the demo: SALMONN's prompt, instructions, windows and LoRA targets."""
    from ..models.config import GenerateSettings, LoraSettings, SalmonnConfig
    from ..models.qformer import QFormerConfig

    whisper = whisper_config(tc)
    return SalmonnConfig(
        whisper=whisper,
        beats=beats_config(tc),
        llm=llm_config(tc, vocab_size, bos=bos, eos=eos, pad=pad),
        qformer=QFormerConfig(hidden_size=tc.qformer_hidden, num_attention_heads=tc.qformer_heads,
                              intermediate_size=tc.qformer_ffn, num_hidden_layers=tc.qformer_layers,
                              encoder_width=whisper["d_model"] + tc.beats_dim),
        lora=LoraSettings(r=tc.lora_r, alpha=tc.lora_alpha, dropout=tc.lora_dropout,
                          target_modules=list(tc.lora_targets)),
        second_per_window=tc.window_seconds, second_stride=tc.window_stride_seconds or tc.window_seconds,
        generate=GenerateSettings(num_beams=tc.num_beams, max_new_tokens=tc.max_new_tokens,
                                  repetition_penalty=tc.repetition_penalty),
        extra=dict(extra or {}),
    )
