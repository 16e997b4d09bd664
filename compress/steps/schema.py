"""Recipe step schemas: every step type's pydantic config, registered by `type`, importable without torch.

`compress.recipe` validates a recipe with `CONFIGS` alone, so a bad recipe is refused before torch (and the
step classes, which need it) is imported. Each config also says what validation needs to know about its step:
`terminal` (it must be the last step), `exportable` (the export step may follow it) and `calibrates()` (this
configuration of the step runs real audio through the model, so the recipe needs a `calibration:` section).
The step classes (`compress.steps.registry.register`) take their config from `CONFIGS` and these from it.
"""

from __future__ import annotations

import importlib.util
import re
from typing import ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..export.options import ExportOptions  # torch-free
from ..runtime import SDPA_PARTS  # torch-free

CONFIGS: dict[str, type] = {}

# The model's parts in data-flow order (compress.models.salmonn.PARTS, which imports torch;
# compress.steps.targets checks that the two agree).
PARTS = ("speech_encoder", "beats", "qformer", "proj", "llm")


def step_config(name: str):
    """Class decorator: register a StepConfig subclass as the config of recipe step type `name`."""

    def deco(cls):
        if name in CONFIGS:
            raise RuntimeError(f"step config {name!r} registered twice ({CONFIGS[name].__name__}, {cls.__name__})")
        field = cls.model_fields.get("type")
        if field is None or field.default != name:
            raise RuntimeError(f"{cls.__name__}.type must default to {name!r}, the type it is registered as")
        CONFIGS[name] = cls
        return cls

    return deco


class StepConfig(BaseModel):
    """One validated, versioned config per step type; unknown keys fail when the recipe is loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str

    terminal: ClassVar[bool] = False  # True for steps that must come last (export)
    exportable: ClassVar[bool] = True  # False for steps whose modules the ONNX / TensorRT export cannot trace

    def calibrates(self) -> bool:
        """Whether this configuration of the step calibrates on real audio (the recipe must then say on what)."""
        return False

    def exportable_to(self, fmt: str, int8: bool = False) -> bool:
        """Whether an export step of format `fmt` may follow this configuration of the step."""
        return self.exportable


# ------------------------------------------------------------------------------------ shared sections
def _compile(pattern: str):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None


class Targets(BaseModel):
    """Which modules a step acts on: parts plus include/ignore regular expressions."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    parts: list = ["llm"]
    include: Optional[str] = None  # regex searched in the module name; None = every Linear of the parts
    ignore: list = ["lm_head"]  # regexes; a match excludes the module

    @field_validator("parts")
    @classmethod
    def _parts(cls, v):
        bad = [p for p in v if p not in PARTS]
        if bad or not v:
            raise ValueError(f"unknown part(s) {bad}; valid: {', '.join(PARTS)}")
        return v

    @field_validator("include")
    @classmethod
    def _include(cls, v):
        if v is not None:
            _compile(v)
        return v

    @field_validator("ignore")
    @classmethod
    def _ignore(cls, v):
        for p in v:
            _compile(p)
        return v


class CalibrationConfig(BaseModel):
    """Recipe `calibration:` section: which annotation file, how many clips, which tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str
    samples: int = Field(32, ge=1, le=4096)
    tasks: list = ["asr", "caption"]
    seed: int = 0
    with_reference: bool = True  # append the reference answer (teacher forcing) so output tokens are covered
    # audio: the LLM sees what it sees in use (prompt + speech tokens [+ answer]); text: only BOS + the
    # reference text, as a text-calibrated LLM compressor would (a baseline to compare against; LLM only)
    inputs: Literal["audio", "text"] = "audio"
    # all: the LLM sees every speech token of the 30 s slot, as in use; clip: only the tokens of the windows the
    # clip covers (+ 2 of padding), so that the LLM's activation statistics are not mostly the slot's silence
    # (a 3 s clip covers ~19 of the 187 windows of the demo model)
    speech_windows: Literal["all", "clip"] = "all"


class TrainConfig(BaseModel):
    """What to train, on which annotation file, for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str
    samples: int = Field(64, ge=1, le=100000)
    steps: int = Field(20, ge=1, le=100000)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    trainable: list[Literal["lora", "qformer", "proj", "beats"]] = ["lora", "qformer", "proj"]
    seed: int = 0


# ------------------------------------------------------------------------------------ pruning
def parse_pattern(p: Optional[str]):
    if p is None:
        return None
    try:
        n, m = (int(x) for x in p.split(":"))
    except ValueError:
        raise ValueError(f"pattern must look like 'N:M' (e.g. '2:4'), got {p!r}") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {p!r}: need 0 < N < M")
    return n, m


class PruneConfig(StepConfig):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    pattern: Optional[str] = None  # "N:M" semi-structured; then `sparsity` is implied (1 - N/M)
    targets: Targets = Targets()

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v):
        parse_pattern(v)
        return v


class OwlConfig(BaseModel):
    """OWL (outlier-weighed layerwise sparsity, Yin et al. 2024): each block of a part gets its own sparsity,
    `sparsity` +- `lam`, fewer zeros where a larger share of its Wanda scores exceeds `m` times their mean; the
    shares are measured on the unpruned model, one pass over the calibration clips."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    m: float = Field(5.0, gt=0.0)  # outlier threshold, a multiple of the block's mean score (the paper's M)
    lam: float = Field(0.08, gt=0.0, lt=0.5)  # largest shift of a block's sparsity from the target (the paper's λ)


class OwlPruneConfig(PruneConfig):
    """Pruning that can take OWL's non-uniform layer sparsity (unstructured only)."""

    owl: Optional[OwlConfig] = None

    @model_validator(mode="after")
    def _owl(self):
        if self.owl is None:
            return self
        if self.pattern is not None:
            raise ValueError(f"owl sets a sparsity per block; it cannot be combined with pattern {self.pattern!r} "
                             f"(N:M fixes every block's sparsity): remove one of them")
        if not (self.owl.lam < self.sparsity and self.sparsity + self.owl.lam < 1.0):
            raise ValueError(f"owl.lam {self.owl.lam} must keep every block's sparsity inside (0, 1): "
                             f"sparsity {self.sparsity} +- lam")
        return self


@step_config("magnitude")
class MagnitudeConfig(PruneConfig):
    type: Literal["magnitude"] = "magnitude"
    scope: Literal["layer", "row", "global"] = "layer"


@step_config("wanda")
class WandaConfig(OwlPruneConfig):
    type: Literal["wanda"] = "wanda"
    sequential: bool = True  # prune block by block; later blocks calibrate on the pruned earlier ones
    # comparison group of the scores: each output row (the Wanda paper's choice for LLMs) or the whole layer
    scope: Literal["row", "layer"] = "row"

    def calibrates(self) -> bool:
        return True  # activation norms from real audio through the model


@step_config("sparsegpt")
class SparseGptConfig(OwlPruneConfig):
    type: Literal["sparsegpt"] = "sparsegpt"
    sequential: bool = True  # prune block by block; later blocks calibrate on the pruned earlier ones
    damp_percent: float = Field(0.01, ge=0.0, lt=1.0)
    block_size: int = Field(128, ge=1)

    def calibrates(self) -> bool:
        return True  # Hessians from real audio through the model


@step_config("lottery_ticket")
class LotteryConfig(StepConfig):
    type: Literal["lottery_ticket"] = "lottery_ticket"
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)  # final sparsity after the last round
    rounds: int = Field(3, ge=1, le=20)
    # explicit sparsity after each round (increasing); replaces sparsity/rounds' geometric schedule
    schedule: Optional[list[float]] = None
    scope: Literal["layer", "global"] = "global"
    # survivors go back to their values at the start ("start"), after rewind_steps of round 1 ("early"), or keep
    # their retrained values ("none": iterative pruning with fine-tuning, the control of a lottery ticket)
    rewind: Literal["start", "early", "none"] = "start"
    rewind_steps: int = Field(0, ge=0)  # with rewind=early: snapshot after this many steps of round 1
    train_base: bool = False  # also train the targeted base weights (then rewinding matters)
    retrain: TrainConfig
    targets: Targets = Targets()

    @model_validator(mode="after")
    def _rewind(self):
        if self.rewind == "early" and not (self.train_base and self.rewind_steps >= 1):
            raise ValueError("rewind: early needs train_base: true and rewind_steps >= 1")
        if self.schedule is not None:
            ok = bool(self.schedule) and all(0.0 < x < 1.0 for x in self.schedule) and all(
                a < b for a, b in zip(self.schedule, self.schedule[1:]))
            if not ok:
                raise ValueError(f"schedule must be increasing sparsities in (0, 1), got {self.schedule}")
            if len(self.schedule) > 20:
                raise ValueError("schedule: at most 20 rounds")
        return self

    def targets_per_round(self) -> list:
        from ..sparsity import round_sparsities

        return list(self.schedule) if self.schedule is not None else round_sparsities(self.sparsity, self.rounds)


@step_config("layer_drop")
class LayerDropConfig(StepConfig):
    type: Literal["layer_drop"] = "layer_drop"
    part: Literal["llm", "speech_encoder"] = "llm"
    fraction: Optional[float] = Field(None, gt=0.0, lt=1.0)  # share of the part's layers to drop
    count: Optional[int] = Field(None, ge=1)
    layers: Optional[list[int]] = None  # explicit indices instead of block influence
    keep_first: int = Field(1, ge=0)  # never drop the first / last layers (they matter most)
    keep_last: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _one_choice(self):
        given = [x is not None for x in (self.fraction, self.count, self.layers)]
        if sum(given) != 1:
            raise ValueError("give exactly one of fraction, count, layers")
        return self

    def calibrates(self) -> bool:
        return self.layers is None  # block influence is measured on calibration audio


# ------------------------------------------------------------------------------------ quantization
def require_package(package: str, what: str) -> None:
    """Refuse a config whose backend package is not installed (found without importing it)."""
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"{what} needs the {package!r} package, which is not installed (pip install {package})")


class QuantConfig(StepConfig):
    """Base of the quantization steps' configs."""

    # packed / bitsandbytes / torchao modules: no ONNX mapping, LoRA cannot merge into them
    exportable: ClassVar[bool] = False


@step_config("rtn")
class RtnConfig(QuantConfig):
    type: Literal["rtn"] = "rtn"
    bits: Literal[2, 3, 4, 8] = 4
    group_size: Literal[-1, 16, 32, 64, 128, 256, 512, 1024] = 128  # what GPTQ kernels (GPTQModel, Marlin) take
    sym: bool = True
    # "float": per group the minimum as a float16 offset and codes from it (llama.cpp's Q4_1 / Q5_1 grid; exact on
    # weights dequantized from such a file); asymmetric, so it needs sym: false. rtn only.
    zero_point: Literal["integer", "float"] = "integer"
    targets: Targets = Targets()

    @model_validator(mode="after")
    def _zero_point(self):
        if self.zero_point == "float" and self.sym:
            raise ValueError("zero_point: float is an asymmetric grid (offset = the group's minimum): set sym: false")
        return self

    def exportable_to(self, fmt: str, int8: bool = False) -> bool:
        """ONNX writes these codes as ONNX Runtime MatMulNBits (2/4/8 bits, power-of-two blocks); nothing else can."""
        return fmt == "onnx" and not int8 and self.bits in (2, 4, 8) and self.group_size != -1


@step_config("gptq")
class GptqConfig(RtnConfig):
    type: Literal["gptq"] = "gptq"
    act_order: bool = False  # desc_act: visit columns by decreasing Hessian diagonal (g_idx records the groups)
    damp_percent: float = Field(0.01, gt=0.0, lt=1.0)
    block_size: int = Field(128, ge=1, le=4096)  # columns whose error updates are applied together
    sequential: bool = True  # block by block: later blocks calibrate on the quantized earlier ones
    keep_zeros: bool = True  # exactly-zero (pruned) weights stay zero, so pruning + GPTQ keeps its pattern

    @model_validator(mode="after")
    def _integer_zero(self):
        if self.zero_point != "integer":
            raise ValueError("gptq takes zero_point: integer only (the float-offset grid is an rtn option)")
        return self

    def calibrates(self) -> bool:
        return True  # Hessians from real audio through the model


@step_config("bitsandbytes")
class BitsandbytesConfig(QuantConfig):
    type: Literal["bitsandbytes"] = "bitsandbytes"
    mode: Literal["int8", "nf4", "fp4"] = "nf4"
    threshold: Optional[float] = Field(None, ge=0.0)  # int8: LLM.int8 outlier threshold (default 6.0; 0 = none)
    double_quant: Optional[bool] = None  # nf4/fp4: also quantize the per-block absmax statistics (default true)
    compute_dtype: Optional[Literal["auto", "float32", "float16", "bfloat16"]] = None  # nf4/fp4 (default auto)
    targets: Targets = Targets()

    @model_validator(mode="after")
    def _fields_for_mode(self):
        if self.mode == "int8" and (self.double_quant is not None or self.compute_dtype is not None):
            raise ValueError("double_quant and compute_dtype apply to modes nf4 and fp4, not int8")
        if self.mode != "int8" and self.threshold is not None:
            raise ValueError(f"threshold applies to mode int8 only (mode is {self.mode})")
        require_package("bitsandbytes", "step bitsandbytes")
        return self


@step_config("torchao")
class TorchaoConfig(QuantConfig):
    type: Literal["torchao"] = "torchao"
    mode: Literal["int8_weight_only", "int8_dynamic"] = "int8_weight_only"  # dynamic: int8 activations too
    targets: Targets = Targets()

    @model_validator(mode="after")
    def _installed(self):
        require_package("torchao", "step torchao")
        return self


# ------------------------------------------------------------------------------------ adapters
@step_config("merge_lora")
class MergeLoraConfig(StepConfig):
    """Fold the LLM's LoRA adapters into its base weights (W + B A * scaling), so a quantizer that follows codes the
    merged weight and the exported graph runs one MatMul per projection instead of three."""

    type: Literal["merge_lora"] = "merge_lora"


# ------------------------------------------------------------------------------------ runtime
@step_config("sdpa")
class SdpaConfig(StepConfig):
    type: Literal["sdpa"] = "sdpa"
    parts: list[Literal["speech_encoder", "beats", "qformer"]] = list(SDPA_PARTS)
    check_tokens: int = Field(8, ge=1, le=256)  # greedy tokens compared with eager on a calibration clip

    def calibrates(self) -> bool:
        return True  # eager and SDPA are compared on a calibration clip


@step_config("real_length")
class RealLengthConfig(StepConfig):
    type: Literal["real_length"] = "real_length"

    def calibrates(self) -> bool:
        return True  # speech tokens are counted on the calibration clips


@step_config("compile")
class CompileConfig(StepConfig):
    type: Literal["compile"] = "compile"
    parts: list[Literal["speech_encoder", "beats", "qformer", "llm"]] = ["speech_encoder", "qformer"]
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    dynamic: Optional[bool] = None
    warmup_tokens: int = Field(4, ge=1, le=256)

    def calibrates(self) -> bool:
        return True  # the warm-up generate runs on a calibration clip


@step_config("liger")
class LigerConfig(StepConfig):
    type: Literal["liger"] = "liger"
    rms_norm: bool = True
    rope: bool = True
    swiglu: bool = True

    exportable: ClassVar[bool] = False  # Triton kernels: torch.export / ONNX cannot trace them


# ------------------------------------------------------------------------------------ recovery and output
@step_config("distill")
class DistillConfig(StepConfig):
    type: Literal["distill"] = "distill"
    data: str  # annotation file of the training clips (with references)
    samples: int = Field(64, ge=1, le=100000)
    tasks: list = ["asr", "caption"]
    steps: int = Field(20, ge=1, le=1000000)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    seed: int = 0
    trainable: list[Literal["lora", "qformer", "proj", "beats"]] = ["lora", "qformer", "proj"]
    teacher: Optional[str] = None  # model spec; None = the model before the recipe's first step
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(2.0, gt=0.0)
    feature_loss: Optional[Literal["proj", "qformer"]] = None
    feature_weight: float = Field(1.0, ge=0.0)
    checkpoint_every: int = Field(50, ge=1)
    checkpoint_dir: Optional[str] = None
    keep_checkpoints: bool = False


@step_config("export")
class ExportConfig(StepConfig, ExportOptions):
    """The export step: ExportOptions (compress/export/options.py), the run's last step."""

    type: Literal["export"] = "export"

    terminal: ClassVar[bool] = True  # the run's output is this export; nothing may follow it
