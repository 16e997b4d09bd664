"""The one description of a SALMONN model's shape, shared by presets, loaders and artifacts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from ..errors import ConfigError, check_flags, choices
from .qformer import QFormerConfig
from .windows import encoder_frames

ASR_INSTRUCTION = "Recognize the speech and give me the transcription."
CAPTION_INSTRUCTION = "Please describe the audio."
DEFAULT_TEMPLATE = "USER: {}\nASSISTANT:"
SPEECH_PLACEHOLDER = "<Speech><SpeechHere></Speech>"

TASKS = {"asr": ASR_INSTRUCTION, "caption": CAPTION_INSTRUCTION}
# Annotation files use SALMONN's task names; map them onto ours.
TASK_ALIASES = {"asr": "asr", "caption": "caption", "audiocaption": "caption", "aac": "caption"}


def resolve_task(task: str) -> str:
    try:
        return TASK_ALIASES[task]
    except KeyError:
        raise ConfigError(f"unknown task {task!r}; valid: {choices(TASK_ALIASES)}") from None


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class GenerateSettings:
    max_new_tokens: int = 200
    num_beams: int = 4
    do_sample: bool = False
    min_length: int = 1
    temperature: float = 1.0
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "GenerateSettings":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown generate option(s) {unknown}; valid: {choices(known)}")
        out = cls(**d)
        if out.do_sample:
            raise ConfigError("generate.do_sample=True is not supported: decoding is greedy or beam search")
        if out.num_beams < 1 or out.max_new_tokens < 1:
            raise ConfigError("generate.num_beams and generate.max_new_tokens must be >= 1")
        if out.repetition_penalty <= 0:
            raise ConfigError(f"generate.repetition_penalty must be > 0 (1.0 = none), got {out.repetition_penalty}")
        return out


@dataclass
class SalmonnConfig:
    """Everything needed to rebuild the module tree (weights come separately)."""

    whisper: dict  # transformers WhisperConfig.to_dict()
    llm: dict  # transformers config dict of the causal LM (has model_type)
    qformer: QFormerConfig
    beats: Optional[dict] = None  # BEATs cfg dict; None = no BEATs branch
    lora: Optional[LoraSettings] = field(default_factory=LoraSettings)
    num_speech_query_token: int = 1
    second_per_window: float = 0.333333
    second_stride: float = 0.333333
    prompt_template: str = DEFAULT_TEMPLATE
    # False: SALMONN's prompt content, "<Speech><SpeechHere></Speech> {instruction}"; True: the instruction first,
    # "{instruction} <Speech><SpeechHere></Speech>", so each task's text before the speech is fixed and its KV can be
    # computed once (compress.export.lite.LlmSession.keep_prefixes) instead of at every prefill
    instruction_first: bool = False
    # None: the Whisper encoder's last hidden state, as SALMONN reads it. A list of hidden-state indices (0 = the
    # embeddings after the convolutions, n = the last layer, with the encoder's final layer norm): each is
    # layer-normalised and they are summed with learned softmax weights (`Salmonn.speech_layer_weights`, SUPERB's
    # weighted sum), so the front can read the earlier, less contextual layers too
    whisper_layers: Optional[list] = None
    instructions: dict = field(default_factory=lambda: dict(TASKS))
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    extra: dict = field(default_factory=dict)  # free-form provenance (preset name, seed, ...)

    @property
    def window_kernel(self) -> int:
        return encoder_frames(self.second_per_window)

    @property
    def window_stride(self) -> int:
        return encoder_frames(self.second_stride)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SalmonnConfig":
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; valid: {choices(known)}")
        d["qformer"] = QFormerConfig(**d["qformer"])
        d["lora"] = LoraSettings(**d["lora"]) if d.get("lora") else None
        d["generate"] = GenerateSettings.from_dict(d.get("generate"))
        out = cls(**d)
        check_flags(out, "model config field(s)")
        return out
