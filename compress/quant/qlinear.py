"""The run-time module that replaces a GPTQ/RTN-quantized Linear: packed GPTQ buffers, dequantized per call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .packing import dequantize_packed, pack_qweight, pack_qzeros
from .rtn import QuantizedWeight


class WeightInfo:
    """What code that reads `linear.weight.dtype / .device / .shape` needs, for modules that keep no dense weight."""

    def __init__(self, dtype, device, shape):
        self.dtype, self.device, self.shape = dtype, device, torch.Size(shape)

    def __repr__(self) -> str:
        return f"WeightInfo(dtype={self.dtype}, device={self.device}, shape={tuple(self.shape)})"


class GPTQLinear(nn.Module):
    """y = x W^T + b with W rebuilt from qweight/qzeros/scales/g_idx on every call (nothing dense is kept).

    Buffers follow the GPTQ format (qzeros without the v1 offset, see packing.py), so the state dict is what
    a GPTQ checkpoint holds and `hf_gptq.export_hf_gptq` only renames and re-offsets it. The float-offset grid
    (rtn.py) adds one buffer, `offsets` (groups, out) float16, which the GPTQ format has no place for.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool = True,
                 dtype=torch.float32, sym: bool = True, act_order: bool = False, method: str = "gptq",
                 offsets: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.sym, self.act_order, self.method = sym, act_order, method  # how the codes were made (export metadata)
        gs = in_features if group_size == -1 else group_size
        groups = -(-in_features // gs)
        self.register_buffer("qweight", torch.zeros(-(-in_features * bits // 32), out_features, dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(groups, -(-out_features * bits // 32), dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16))
        self.register_buffer("g_idx", torch.arange(in_features, dtype=torch.int32) // gs)
        self.register_buffer("offsets", torch.zeros(groups, out_features, dtype=torch.float16) if offsets else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        # follows model.to(dtype / device) like a weight would; not stored
        self.register_buffer("dtype_probe", torch.empty(0, dtype=dtype), persistent=False)

    @property
    def weight(self) -> WeightInfo:
        """dtype/device/shape of the weight this module stands for (the compute dtype; storage is packed)."""
        return WeightInfo(self.dtype_probe.dtype, self.qweight.device, (self.out_features, self.in_features))

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias, *, sym: bool = True, act_order: bool = False,
                       method: str = "gptq", weight_dtype=None) -> "GPTQLinear":
        out_f, in_f = qw.codes.shape
        dtype = bias.dtype if bias is not None else torch.float32
        dtype = weight_dtype or dtype
        m = cls(in_f, out_f, qw.bits, qw.group_size, bias is not None, dtype, sym, act_order, method,
                offsets=qw.offsets is not None)
        if qw.offsets is not None:
            m.offsets.copy_(qw.offsets.half())
        m.qweight.copy_(pack_qweight(qw.codes, qw.bits))
        m.qzeros.copy_(pack_qzeros(qw.zeros, qw.bits, v1_offset=False))
        m.scales.copy_(qw.scales.half())
        m.g_idx.copy_(qw.g_idx)
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    def _apply(self, fn, recurse=True):
        """Device moves apply to everything, dtype casts (model.to(bfloat16)) not to the float16 scales / offsets."""
        scales, offsets = self.scales, self.offsets
        super()._apply(fn, recurse)
        if self.scales.dtype != scales.dtype:
            self.scales = scales.to(self.scales.device)
        if offsets is not None and self.offsets.dtype != offsets.dtype:
            self.offsets = offsets.to(self.offsets.device)
        return self

    def dequantize(self) -> torch.Tensor:
        w = dequantize_packed(self.qweight, self.qzeros, self.scales, self.g_idx, self.bits)
        return w + self.offsets.float()[self.g_idx.long()].T if self.offsets is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize().to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, b)

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "group_size": self.group_size, "bias": self.bias is not None,
                "dtype": str(self.dtype_probe.dtype).replace("torch.", ""),
                "sym": self.sym, "act_order": self.act_order, "method": self.method, "qzeros_format": 2,
                **({"offsets": True} if self.offsets is not None else {})}

    @classmethod
    def from_spec(cls, spec: dict) -> "GPTQLinear":
        dtype = getattr(torch, spec.get("dtype", "float32"))
        return cls(spec["in_features"], spec["out_features"], spec["bits"], spec["group_size"], spec["bias"], dtype,
                   spec.get("sym", True), spec.get("act_order", False), spec.get("method", "gptq"),
                   offsets=bool(spec.get("offsets", False)))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, sym={self.sym}, method={self.method}"
                + (", float offsets" if self.offsets is not None else ""))
