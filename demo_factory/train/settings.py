"""Settings of the demo training and the SALMONN shape they give (one dataclass, two presets)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from compress.errors import ConfigError, check_flags, choices

QFORMER_INITS = ("random", "whisper-decoder")  # DemoSettings.qformer_init
JOINT_CTC_VOCABS = ("full", "answers")  # DemoSettings.joint_ctc_vocab

# SmolLM2-Instruct's own chat layout around SALMONN's prompt content. The model's BOS is <|im_start|>, which
# the prompt builder puts first, so BOS + this template is "<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n".
CHAT_TEMPLATE = "user\n{}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class DemoSettings:
    seed: int = 0
    # ---- data (train split of demo_factory.data.build)
    n_asr: int = 2000
    # extra ASR clips of word-bigram sentences (acoustics the LLM's prior cannot guess, and word sequences the pool's
    # 2,102 training sentences lack: 3,000 -> 7,000 took test WER 0.287 -> 0.257 with the front remembering its
    # training utterances less; benchmarks/README.md)
    n_chain: int = 7000
    # extra ASR clips of open-vocabulary WordNet sentences (words the test split never uses; data.sentences).
    # 3,500 of them in place of half the chain clips: front read-out after the warm-up 0.322 test / 0.178 training
    # clips against 0.312 / 0.129 (benchmarks/README.md): the front remembers less but spells unseen test no better
    n_open: int = 0
    n_caption: int = 1000
    # ---- frozen parts: "smollm2-135m-instruct" / "tiny.en" = the real pretrained weights; a dict = a random
    # model of that config (tests)
    llm: object = "smollm2-135m-instruct"
    whisper: object = "tiny.en"
    # ---- BEATs (official structure, trained from scratch: no pretrained BEATs weights are installable)
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
    # Whisper hidden states the front reads (SalmonnConfig.whisper_layers): None = the last, as SALMONN; a list of
    # indices (0 = embeddings .. 4 = tiny.en's last layer) = their learned weighted sum. All five at 2 queries: front
    # read-out after the warm-up 0.316 test / 0.134 training clips against 0.266 / 0.106 (benchmarks/README.md)
    whisper_layers: Optional[list] = None
    # ---- window-level Q-Former
    window_seconds: float = 0.2
    window_stride_seconds: Optional[float] = None  # None: = window_seconds
    # query tokens per window (SALMONN's num_speech_query_token). 2 gives the front's CTC warm-up room to align the
    # transcript's pieces (median 0.5 pieces per 0.2-s window at 1): warm-up read-out 0.266 test / 0.106 training
    # clips against 0.312 / 0.129 (benchmarks/README.md, "Two queries per window"). Each joint step costs 1.38x, so
    # within 2 hours the joint stage got 1,400 steps: test WER 0.260 (the same), CIDEr-D 0.998 (1.138), BEATs' share
    # lost; the front still reads test at 0.266 (0.310), the LLM no better than it. 3 reads test worse after the
    # warm-up (0.302 against 2's 0.266) at 1.32x the joint step (benchmarks/README.md, "Three queries")
    queries: int = 1
    qformer_hidden: int = 384
    qformer_heads: int = 6
    qformer_ffn: int = 1536
    qformer_layers: int = 2
    qformer_dropout: float = 0.0  # BERT's hidden and attention dropout in the Q-Former while training (BLIP-2: 0.1)
    # "random" (BERT's initialisation) or "whisper-decoder": Q-Former layer j starts from Whisper decoder layer
    # qformer_init_layers[j] (qformer_init.py; needs hidden, heads and FFN equal to the decoder's). Measured worse:
    # front read-out after the warm-up 0.385 test / 0.233 training clips against 0.312 / 0.129 (benchmarks/README.md)
    qformer_init: str = "random"
    qformer_init_layers: list = field(default_factory=lambda: [0, 1])
    # ---- LoRA (SALMONN's r, alpha and dropout). SALMONN adapts q_proj and v_proj; on this 135M LLM all seven
    # projections measured better (test WER 0.319 -> 0.290, CIDEr-D 0.770 -> 1.429; benchmarks/README.md)
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                        "down_proj"])
    prompt_template: str = CHAT_TEMPLATE
    # SalmonnConfig.instruction_first: the task's instruction before the speech (23% less prefill). Trained with it
    # alone: test WER 0.252 (0.260), CIDEr-D 1.097 (1.138), but zeroing BEATs no longer costs a measurable CIDEr-D
    # (-0.082 [-0.241, +0.067]; benchmarks/README.md, "if")
    instruction_first: bool = False
    # ---- training (encoders and LLM frozen; BEATs, Q-Former, projection and LoRA learn)
    steps: int = 1800
    batch: int = 8
    # batches of clips of similar length (runs of this many batches sorted by length, then shuffled): the joint
    # stage's cost is the LLM over the batch's longest row; 0 or 1 = plain random batches
    length_buckets: int = 32
    lr: float = 5e-4
    lora_lr: Optional[float] = None  # None: = lr
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # auxiliary CTC on the ASR clips' speech tokens against the LLM's own input embeddings (loop.CtcHead):
    # SALMONN's answer loss alone moved ASR slowly here (answer loss 4.42 -> 4.24 per token over steps 100-200)
    ctc_weight: float = 0.5
    # the joint stage's CTC softmax: "full" = every LLM piece (49k); "answers" = only the 2,325 pieces the training
    # answers use (+ blank), as in the front warm-up: a 2-query joint step 2.95 s against 3.40 s
    # (benchmarks/tools/joint_step_split.py). With queries 2: test WER 0.239 (0.260), CIDEr-D 1.174, but zeroing
    # BEATs no longer lowers CIDEr-D measurably (benchmarks/README.md, "q2a")
    joint_ctc_vocab: str = "full"
    # CTC alone on the audio front before the joint stage (loop.front_warmup); 0 = none
    front_warmup_steps: int = 2000
    front_warmup_batch: int = 16
    front_warmup_lr: float = 1e-3
    # CTC also on the caption clips without speech (their caption's pieces, in order, over the clip's windows):
    # with the answer loss alone the captions collapsed onto one phrase (dev CIDEr-D 0.117 after 1000 steps).
    # Clips with speech keep the answer loss only: their windows' CTC target is the transcript.
    caption_ctc: bool = True
    # each caption clip appears this many times per epoch of the joint stage: 4 keeps the caption clips' share of the
    # stage near 30% beside the 9,000 ASR clips (at 2 it fell to 18% and BEATs' measurable contribution with it)
    caption_repeat: int = 4
    # share of caption clips trained on BEATs alone (Whisper features zeroed), in the joint stage and in the front
    # warm-up (where BEATs first learns to spell the captions of speechless clips). With Whisper nearly always present
    # the LLM reads the sounds from Whisper's features alone and BEATs carries nothing (at 0.25 / 0: test CIDEr-D
    # 1.429 intact, 1.426 with BEATs zeroed); at 0.5 / 0.5 zeroing BEATs costs -0.167 [-0.335, -0.006] of 1.278, and
    # WER is unchanged (0.287 against 0.290; benchmarks/README.md). With queries 2, 0.7 in the joint stage left
    # zeroing BEATs at -0.112 [-0.257, +0.017] and cost a third of the CIDEr-D (benchmarks/README.md, "q2w7")
    whisper_drop: float = 0.5
    warmup_whisper_drop: float = 0.5
    # SpecAugment-style time masking of the frozen Whisper features while training (front warm-up and joint stage):
    # about this share of the frames hidden, in spans of 1..time_mask_span encoder frames (20 ms each). Aimed at the
    # front remembering its training utterances (greedy CTC read-out WER 0.073 on training clips, 0.316 on test).
    # With qformer_dropout 0.1 and instruction_first through the whole training: front read-out 0.285 test (0.310),
    # but LLM test WER 0.268 (0.260), CIDEr-D 0.994 (1.138) and BEATs' share lost (benchmarks/README.md, "ri").
    # With queries 2 (and qformer_dropout 0.1) the warm-up's front reads test worse: 0.306 against 0.266
    time_mask: float = 0.0
    time_mask_span: int = 6
    full_share: float = 0.1  # share of batches with all 30 s of windows; the rest keep speech + 2-24 padding windows
    # train (and ship) the model for real-length encoding: Whisper runs on the clip's own frames rounded to whole
    # windows, not on 30 s of padding (features about 10x cheaper; no padding windows; full_share unused). The
    # artifact records it as a runtime setting, so inference encodes the same way.
    real_length: bool = True
    max_minutes: Optional[float] = 95.0  # safety stop of the joint stage (wall time; the schedule is by steps)
    checkpoint_minutes: float = 4.0
    # ---- feature caching
    cache_batch: int = 8
    # ---- decoding defaults written into the artifact
    num_beams: int = 1
    max_new_tokens: int = 48
    repetition_penalty: float = 1.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1:
            raise ConfigError(f"steps and batch must be >= 1, got {self.steps} and {self.batch}")
        if self.caption_repeat < 1:
            raise ConfigError(f"caption_repeat must be >= 1, got {self.caption_repeat}")
        if not 0 <= self.whisper_drop < 1 or not 0 <= self.warmup_whisper_drop < 1 or not 0 <= self.full_share <= 1:
            raise ConfigError("whisper_drop and warmup_whisper_drop must be in [0, 1), full_share in [0, 1]")
        if not 0 <= self.time_mask < 1 or self.time_mask_span < 1:
            raise ConfigError(f"time_mask must be in [0, 1) and time_mask_span >= 1, got {self.time_mask} and "
                              f"{self.time_mask_span}")

        check_flags(self, "training option(s)")
        if self.qformer_init not in QFORMER_INITS:
            raise ConfigError(f"qformer_init {self.qformer_init!r} is not one of {choices(QFORMER_INITS)}")
        if self.joint_ctc_vocab not in JOINT_CTC_VOCABS:
            raise ConfigError(f"joint_ctc_vocab {self.joint_ctc_vocab!r} is not one of {choices(JOINT_CTC_VOCABS)}")
        if self.qformer_init != "random" and len(self.qformer_init_layers) != self.qformer_layers:
            raise ConfigError(f"qformer_init_layers {self.qformer_init_layers} must name one decoder layer for each "
                              f"of the {self.qformer_layers} Q-Former layers")

    def replace(self, **kw) -> "DemoSettings":
        known = {f.name for f in fields(self)}
        bad = sorted(set(kw) - known)
        if bad:
            raise ConfigError(f"unknown training option(s) {bad}; valid: {choices(known)}")
        d = self.to_dict()
        d.update(kw)
        return DemoSettings(**d)


def tiny_whisper() -> dict:
    """A random 2-layer Whisper encoder shape for tests (80 mel bins, 1500 output frames)."""
    return dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=80,
                max_source_positions=1500, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
                vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def tiny_llm() -> dict:
    """A random 2-layer Llama with SmolLM2's vocabulary (its tokenizer is used) for tests."""
    return dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=64, vocab_size=49152, max_position_embeddings=512, rms_norm_eps=1e-5,
                tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=2)


PRESETS = {
    "demo": DemoSettings(),
    # Seconds on a CPU: used by the tests, runs the whole pipeline on a few clips.
    "test": DemoSettings(
        n_asr=6, n_chain=2, n_caption=6, llm=tiny_llm(), whisper=tiny_whisper(), beats_layers=1, beats_dim=32,
        beats_ffn=64, beats_heads=2, beats_patch_embed=16, beats_conv_pos=8, beats_conv_pos_groups=4,
        beats_buckets=16, beats_max_distance=32, beats_dropout=0.0, qformer_hidden=32, qformer_heads=2,
        qformer_ffn=64, qformer_layers=2, lora_r=4, lora_alpha=16, lora_dropout=0.0, steps=12, batch=4, lr=3e-3,
        ctc_weight=0.0, front_warmup_steps=3, front_warmup_batch=4, real_length=False,
        warmup=2, max_minutes=None, checkpoint_minutes=0.0, cache_batch=4, max_new_tokens=8),
}


def preset(name: str) -> DemoSettings:
    try:
        return PRESETS[name].replace()
    except KeyError:
        raise ConfigError(f"unknown training preset {name!r}; valid: {choices(PRESETS)}") from None


def whisper_config(ts: DemoSettings) -> dict:
    if ts.whisper == "tiny.en":
        from compress.models.whisper_convert import TINY_EN_CONFIG

        return dict(TINY_EN_CONFIG)
    if isinstance(ts.whisper, dict):
        return dict(ts.whisper)
    raise ConfigError(f"whisper must be 'tiny.en' or a dict of WhisperConfig fields, got {ts.whisper!r}")


def llm_config(ts: DemoSettings) -> dict:
    from compress.models.sources import SMOLLM2, smollm2_llm_config

    if ts.llm == SMOLLM2:
        return smollm2_llm_config()
    if isinstance(ts.llm, dict):
        return dict(ts.llm)
    raise ConfigError(f"llm must be {SMOLLM2!r} or a dict of Llama config fields, got {ts.llm!r}")


def beats_config(ts: DemoSettings) -> dict:
    """The official BEATs structure (post-norm DeepNorm, gated relative position bias), small widths."""
    return {
        "input_patch_size": 16, "embed_dim": ts.beats_patch_embed, "conv_bias": False,
        "encoder_layers": ts.beats_layers, "encoder_embed_dim": ts.beats_dim,
        "encoder_ffn_embed_dim": ts.beats_ffn, "encoder_attention_heads": ts.beats_heads,
        "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 1.0, "layer_norm_first": False,
        "deep_norm": True, "dropout": ts.beats_dropout, "attention_dropout": ts.beats_dropout,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
        "conv_pos": ts.beats_conv_pos, "conv_pos_groups": ts.beats_conv_pos_groups,
        "relative_position_embedding": True, "num_buckets": ts.beats_buckets,
        "max_distance": ts.beats_max_distance, "gru_rel_pos": True, "finetuned_model": False,
    }


def salmonn_config(ts: DemoSettings, extra: Optional[dict] = None):
    """The SalmonnConfig of the demo: SALMONN's prompt content and instructions in the LLM's chat layout."""
    from compress.models.config import GenerateSettings, LoraSettings, SalmonnConfig
    from compress.models.qformer import QFormerConfig

    whisper = whisper_config(ts)
    return SalmonnConfig(
        whisper=whisper,
        beats=beats_config(ts),
        llm=llm_config(ts),
        qformer=QFormerConfig(hidden_size=ts.qformer_hidden, num_attention_heads=ts.qformer_heads,
                              intermediate_size=ts.qformer_ffn, num_hidden_layers=ts.qformer_layers,
                              encoder_width=whisper["d_model"] + ts.beats_dim,
                              hidden_dropout_prob=ts.qformer_dropout, attention_probs_dropout_prob=ts.qformer_dropout),
        lora=LoraSettings(r=ts.lora_r, alpha=ts.lora_alpha, dropout=ts.lora_dropout,
                          target_modules=list(ts.lora_targets)),
        num_speech_query_token=ts.queries,
        second_per_window=ts.window_seconds, second_stride=ts.window_stride_seconds or ts.window_seconds,
        prompt_template=ts.prompt_template, instruction_first=ts.instruction_first, whisper_layers=ts.whisper_layers,
        generate=GenerateSettings(num_beams=ts.num_beams, max_new_tokens=ts.max_new_tokens,
                                  repetition_penalty=ts.repetition_penalty),
        extra=dict(extra or {}),
    )
