"""torchao int8 Linears kept as plain buffers: quantized with `quantize_` + a config, stored and reloaded as tensors.

torchao puts an `Int8Tensor` subclass in `weight`; safetensors cannot hold it and per-part accounting would
count it at the float dtype it reports. This module keeps its inner tensors (int8 qdata, per-row scale,
zero_point) as buffers and re-wraps them in an `Int8Tensor` at each call, so torchao's kernels still run
(int8 weight-only matmul, or dynamic per-token int8 activations x int8 weights).
Imported only when a torchao step runs or an artifact holds such modules (torchao is optional).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8_weight_only", "int8_dynamic")


def _config(mode: str):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if mode == "int8_weight_only":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if mode == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    raise ValueError(f"unknown torchao mode {mode!r}; valid: {', '.join(MODES)}")


def _quantized_weight(w: torch.Tensor, mode: str):
    """torchao's quantize_ on a one-layer model holding w; returns the Int8Tensor it made."""
    from torchao.quantization import quantize_

    holder = nn.Sequential(nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta"))
    holder[0].weight = nn.Parameter(w.detach().clone(), requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(holder, _config(mode))
    return holder[0].weight


class TorchaoInt8Linear(nn.Module):
    """y = x W^T + b through torchao's Int8Tensor, rebuilt per call from the qdata / scale / zero_point buffers."""

    def __init__(self, in_features: int, out_features: int, mode: str, bias: bool, dtype=torch.float32,
                 zero_point: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.register_buffer("qdata", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, 1, dtype=dtype))
        self.register_buffer("zero_point", torch.zeros(out_features, 1, dtype=torch.int8) if zero_point else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        # what torchao derives from the config and the shape (block size, activation quantization settings)
        template = _quantized_weight(torch.zeros(1, in_features, dtype=dtype), mode)
        self._block_size = [1, in_features]
        self._act_quant_kwargs = template.act_quant_kwargs
        self._reduce_range = getattr(template, "reduce_range", False)

    @classmethod
    def from_linear(cls, lin: nn.Linear, mode: str) -> "TorchaoInt8Linear":
        w = _quantized_weight(lin.weight.detach(), mode)
        if list(w.block_size) != [1, lin.in_features]:
            raise ValueError(f"torchao produced block size {w.block_size}; expected per-row [1, {lin.in_features}]")
        m = cls(lin.in_features, lin.out_features, mode, lin.bias is not None, lin.weight.dtype,
                zero_point=w.zero_point is not None)
        m.to(lin.weight.device)
        m.qdata.copy_(w.qdata)
        m.scale.copy_(w.scale.reshape(m.scale.shape))
        if w.zero_point is not None:
            m.zero_point.copy_(w.zero_point.reshape(m.zero_point.shape))
        if lin.bias is not None:
            m.bias.data.copy_(lin.bias.detach())
        return m

    @property
    def weight(self):
        """dtype/device/shape of the weight this module stands for (what `linear.weight.dtype` readers need)."""
        from .qlinear import WeightInfo

        return WeightInfo(self.scale.dtype, self.qdata.device, (self.out_features, self.in_features))

    def weight_tensor(self):
        from torchao.quantization import Int8Tensor

        return Int8Tensor(self.qdata, self.scale, self._block_size, self.scale.dtype, zero_point=self.zero_point,
                          act_quant_kwargs=self._act_quant_kwargs, reduce_range=self._reduce_range)

    def dequantize(self) -> torch.Tensor:
        zp = self.zero_point.float() if self.zero_point is not None else 0.0
        return (self.qdata.float() - zp) * self.scale.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_tensor(), self.bias)

    def spec(self) -> dict:
        return {"mode": self.mode, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": str(self.scale.dtype).replace("torch.", ""),
                "zero_point": self.zero_point is not None}

    @classmethod
    def from_spec(cls, spec: dict) -> "TorchaoInt8Linear":
        return cls(spec["in_features"], spec["out_features"], spec["mode"], spec["bias"],
                   getattr(torch, spec["dtype"]), spec["zero_point"])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"
