"""GPTQ / RTN Linears exported as ONNX Runtime's MatMulNBits: a torch custom op that the dynamo exporter translates
to com.microsoft::MatMulNBits (with a Gather of the activations when act-order permuted the columns).

`nbits_llm(model)` gives a float32 copy of the LLM in which every GPTQLinear of 2/4/8 bits is an NBitsLinear holding
its codes in MatMulNBits' layout (compress.quant.nbits); LoRA stays unmerged on those layers (merging would change
the codes). Run in PyTorch, an NBitsLinear computes the dequantized product (the same numbers as the GPTQLinear it
replaces); exported, it is one MatMulNBits node, which ONNX Runtime's CPU kernels run without ever materialising
the float weight. A float-offset grid (rtn zero_point: float) adds its offsets as x's per-block sums times the
offsets: plain ops beside the node (see compress.quant.nbits).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..quant.nbits import NBitsWeight, block_sums, dequantize, from_gptq

OP = "salmonn_compress::matmul_nbits"


@torch.library.custom_op(OP, mutates_args=())
def matmul_nbits(x: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
                 perm: torch.Tensor, k: int, n: int, bits: int, block_size: int, accuracy_level: int,
                 has_zero_points: bool, permuted: bool) -> torch.Tensor:
    """y = x W^T for the weight `b`/`scales`/`zero_points` encode (zero_points / perm unused when flagged absent)."""
    w = dequantize(NBitsWeight(b=b, scales=scales, zero_points=zero_points if has_zero_points else None,
                               perm=perm if permuted else None, k=k, n=n, bits=bits, block_size=block_size))
    return F.linear(x, w.to(x.dtype))


@matmul_nbits.register_fake
def _(x, b, scales, zero_points, perm, k, n, bits, block_size, accuracy_level, has_zero_points, permuted):
    return x.new_empty(x.shape[:-1] + (n,))


def onnx_translation():
    """{the op: its ONNX function} for torch.onnx.export(custom_translation_table=...)."""
    import onnxscript
    from onnxscript import opset18 as op

    _register_schema()
    nbits = onnxscript.values.Opset("com.microsoft", 1).MatMulNBits

    def translate(x, b, scales, zero_points, perm, k: int, n: int, bits: int, block_size: int,
                  accuracy_level: int, has_zero_points: bool, permuted: bool):
        if permuted:
            x = op.Gather(x, perm, axis=-1)
        inputs = (x, b, scales) + ((zero_points,) if has_zero_points else ())
        extra = {"accuracy_level": accuracy_level} if accuracy_level else {}  # 0 = the attribute's default
        return nbits(*inputs, K=k, N=n, bits=bits, block_size=block_size, **extra)

    return {torch.ops.salmonn_compress.matmul_nbits.default: translate}


def _register_schema() -> None:
    """The onnx package knows no ONNX Runtime contrib op; the exporter needs MatMulNBits' signature (which inputs,
    which attributes) to build the node, so it is declared once, as ONNX Runtime's contrib-op spec gives it."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has("MatMulNBits", "com.microsoft"):
        return
    fp, opt = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    ints = OpSchema.AttrType.INT
    schema = OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[fp("A", "T1"), fp("B", "T2"), fp("scales", "T1"), fp("zero_points", "T3", param_option=opt),
                fp("g_idx", "T4", param_option=opt), fp("bias", "T1", param_option=opt)],
        outputs=[fp("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)", "tensor(float16)"], ""),
                          ("T2", ["tensor(uint8)", "tensor(int32)"], ""),
                          ("T3", ["tensor(uint8)", "tensor(int32)", "tensor(float16)", "tensor(float)"], ""),
                          ("T4", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute("K", ints, ""), OpSchema.Attribute("N", ints, ""),
                    OpSchema.Attribute("bits", ints, ""), OpSchema.Attribute("block_size", ints, ""),
                    OpSchema.Attribute("accuracy_level", ints, "", required=False)])
    onnx.defs.register_schema(schema)


class NBitsLinear(nn.Module):
    """A GPTQ Linear's codes in MatMulNBits' layout; forward = the custom op (exported as one MatMulNBits node)."""

    def __init__(self, w: NBitsWeight, bias: Optional[torch.Tensor], accuracy_level: int = 0):
        super().__init__()
        self.in_features, self.out_features = w.k, w.n
        self.bits, self.block_size, self.accuracy_level = w.bits, w.block_size, accuracy_level
        self.register_buffer("b", w.b)
        self.register_buffer("scales", w.scales)
        self.register_buffer("zero_points", w.zero_points if w.zero_points is not None
                             else torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("perm", w.perm if w.perm is not None else torch.zeros(0, dtype=torch.int64))
        self.register_buffer("offsets", w.offsets)  # None unless the float-offset grid
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    @classmethod
    def from_gptq(cls, m, accuracy_level: int = 0) -> "NBitsLinear":
        w = from_gptq(m.qweight, m.qzeros, m.scales, m.g_idx, m.bits, m.in_features, offsets=m.offsets)
        return cls(w, m.bias, accuracy_level)

    def nbits_weight(self) -> NBitsWeight:
        """The buffers as an NBitsWeight (empty zero_points / perm buffers stand for None)."""
        return NBitsWeight(b=self.b, scales=self.scales,
                           zero_points=self.zero_points if self.zero_points.numel() else None,
                           perm=self.perm if self.perm.numel() else None, k=self.in_features, n=self.out_features,
                           bits=self.bits, block_size=self.block_size, offsets=self.offsets)

    @property
    def weight(self):
        """dtype/device/shape of the weight this module stands for (code that inspects Linears reads these)."""
        from ..quant.qlinear import WeightInfo

        return WeightInfo(self.scales.dtype, self.b.device, (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = matmul_nbits(x, self.b, self.scales, self.zero_points, self.perm, self.in_features, self.out_features,
                         self.bits, self.block_size, self.accuracy_level, self.zero_points.numel() > 0,
                         self.perm.numel() > 0)
        if self.offsets is not None:
            y = y + block_sums(x, self.nbits_weight()) @ self.offsets.to(x.dtype).T
        return y + self.bias if self.bias is not None else y


def has_gptq(model) -> bool:
    return any(spec.get("kind") == "gptq" for spec in (getattr(model, "module_overrides", None) or {}).values())


def check_nbits_exportable(model) -> None:
    """Refuse, with the reason, a model whose replaced modules MatMulNBits cannot hold."""
    bad = []
    for name, spec in (getattr(model, "module_overrides", None) or {}).items():
        if spec.get("kind") != "gptq":
            bad.append(f"{name} ({spec.get('kind')}: no ONNX mapping)")
            continue
        gs = spec.get("group_size")
        if spec.get("bits") not in (2, 4, 8):
            bad.append(f"{name} ({spec.get('bits')}-bit: MatMulNBits takes 2, 4 or 8 bits)")
        elif gs == -1 or gs < 16 or gs & (gs - 1):
            bad.append(f"{name} (group_size {gs}: MatMulNBits blocks are powers of two >= 16)")
    if bad:
        raise UserError(f"export: {len(bad)} quantized module(s) cannot be written as ONNX Runtime MatMulNBits: "
                        f"{'; '.join(bad[:3])}; export the model before quantizing, or quantize with gptq / rtn at "
                        "2, 4 or 8 bits and a power-of-two group_size (not -1)")


def nbits_llm(model, accuracy_level: int = 0, keep_float: tuple = ()) -> nn.Module:
    """A float32 copy of the LLM with its GPTQLinears as NBitsLinears; LoRA left unmerged. The model is untouched.
    `keep_float`: projection names (down_proj, ...) whose nodes keep accuracy level 0 (float activations)."""
    from ..quant.qlinear import GPTQLinear

    lm = copy.deepcopy(model.llama_model)
    if hasattr(lm, "get_base_model"):  # the PEFT wrapper goes, its LoRA layers (injected in place) stay
        lm = lm.get_base_model()
    for name, m in list(lm.named_modules()):
        if isinstance(m, GPTQLinear):
            parent, _, child = name.rpartition(".")
            level = 0 if keep_float and set(name.split(".")) & set(keep_float) else accuracy_level  # LoRA: .base_layer
            setattr(lm.get_submodule(parent) if parent else lm, child, NBitsLinear.from_gptq(m, level))
    return lm.float().eval()
