"""The export's options: one validated object for the recipe's export step, `salmonn-compress export` and
`export_model` (torch-free, so a recipe or a command line is checked before any model loads).

Rules that depend on the model (an already GPTQ-quantized LLM, an installed builder) are checked by the exporter.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import UserError

FORMATS = ("onnx", "tensorrt")
DEFAULT_OPSET = 18


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["onnx", "tensorrt"] = "onnx"
    int8: bool = False  # onnx: dynamic int8 quantization of the LLM graph
    # with int8: LLM parts left float ("down_proj": the MLP down projections, whose inputs hold the activation
    # outliers that per-tensor int8 loses)
    int8_float: list[Literal["down_proj"]] = []
    # onnx: dynamic int8 of the audio front graph's MatMuls (weights per output channel), whatever the LLM's format
    int8_front: bool = False
    # onnx, GPTQ / RTN models (MatMulNBits): ONNX Runtime's compute mode, 0 = unset (float activations; what the
    # model computes), 4 = activations quantized to int8 per block (ORT's fastest CPU path, approximate)
    nbits_accuracy_level: int = Field(0, ge=0, le=4)
    # with nbits_accuracy_level > 0: the LLM projections whose MatMulNBits keep float activations (level 0), e.g.
    # down_proj, whose inputs hold the activation outliers that int8 per block rounds away
    nbits_float: list[Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]] = []
    # onnx, GPTQ / RTN models: a second LLM graph for the prompt's prefill (every call of more than one position),
    # the same weights with this MatMulNBits compute mode (4: int8 activations, the fast prefill), while the decode
    # steps keep nbits_accuracy_level; None = one graph for both
    prefill_accuracy_level: Optional[int] = Field(None, ge=0, le=4)
    # onnx: who writes the LLM decoder graph: torch.onnx's dynamo exporter, or onnxruntime-genai's model builder
    # (ONNX Runtime's fused operators; positions from the attention mask, so unpadded batches only)
    llm_graph: Literal["dynamo", "genai"] = "dynamo"
    # onnx, llm_graph genai: the output layer as MatMulNBits (ONNX Runtime's round-to-nearest quantizer)
    lm_head_bits: Optional[Literal[4, 8]] = None
    # with lm_head_bits: input columns per scale; larger blocks read fewer scales and ran faster at 8 bits
    # (benchmarks/README.md, "Groups of 128 in the product")
    lm_head_block: Literal[32, 64, 128] = 32
    opset: int = Field(DEFAULT_OPSET, ge=14, le=23)

    @model_validator(mode="after")
    def _consistent(self):
        if self.format != "onnx":
            onnx_only = [name for name, on in (("int8", self.int8), ("int8_float", self.int8_float),
                                               ("int8_front", self.int8_front),
                                               ("nbits_accuracy_level", self.nbits_accuracy_level),
                                               ("nbits_float", self.nbits_float),
                                               ("prefill_accuracy_level", self.prefill_accuracy_level is not None),
                                               ("llm_graph", self.llm_graph != "dynamo"),
                                               ("lm_head_bits", self.lm_head_bits)) if on]
            if onnx_only:
                verb = "applies" if len(onnx_only) == 1 else "apply"
                raise ValueError(f"{', '.join(onnx_only)} {verb} to format 'onnx' only")
        if self.lm_head_bits and self.llm_graph != "genai":
            raise ValueError("lm_head_bits needs llm_graph: genai")
        if self.lm_head_block != 32 and not self.lm_head_bits:
            raise ValueError("lm_head_block applies with lm_head_bits only (command line: --lm-head-block needs "
                             "--lm-head-bits)")
        if self.int8 and self.prefill_accuracy_level is not None:
            raise ValueError("prefill_accuracy_level applies to GPTQ / RTN LLM graphs (MatMulNBits), not with int8")
        if self.nbits_float and not self.nbits_accuracy_level:
            raise ValueError("nbits_float keeps some projections at float activations while the others use "
                             "nbits_accuracy_level: it needs nbits_accuracy_level > 0 (command line: --nbits-float "
                             "needs --nbits-accuracy-level)")
        if self.int8_float and not self.int8:
            raise ValueError("int8_float applies with int8 only: it leaves parts of an int8 LLM graph float "
                             "(command line: --int8-float needs --int8)")
        return self

    @classmethod
    def build(cls, where: str = "export", **fields) -> "ExportOptions":
        """The options from keyword values (None = the default), or a UserError naming each problem."""
        try:
            return cls(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as e:
            problems = "; ".join((".".join(map(str, err["loc"])) + ": " if err["loc"] else "")
                                 + err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise UserError(f"{where}: {problems}") from None
