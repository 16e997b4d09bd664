"""bitsandbytes Linears built from, and rebuilt for, plain tensors: LLM.int8 (Linear8bitLt) and nf4/fp4 (Linear4bit).

Imported only when a bitsandbytes step runs or an artifact holds such modules (bitsandbytes is optional).
Everything stored is a plain tensor: int8 codes + per-row scales (SCB), or packed 4-bit codes + the quant
state bitsandbytes itself serialises (absmax, quant_map, nested statistics, a packed descriptor).
"""

from __future__ import annotations

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import dequantize_4bit, int8_vectorwise_quant
from torch import nn

MODES = ("int8", "nf4", "fp4")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _bias(lin: nn.Linear):
    return None if lin.bias is None else nn.Parameter(lin.bias.detach().clone(), requires_grad=False)


def _int8_module(spec: dict, codes: torch.Tensor, scb: torch.Tensor, device) -> nn.Module:
    m = bnb.nn.Linear8bitLt(spec["in_features"], spec["out_features"], bias=spec["bias"],
                            has_fp16_weights=False, threshold=spec["threshold"], device="meta")
    w = bnb.nn.Int8Params(codes.to(device), requires_grad=False, has_fp16_weights=False)
    w.CB, w.SCB = w.data, scb.to(device)
    m.weight = w
    if spec["bias"]:
        m.bias = nn.Parameter(torch.zeros(spec["out_features"], dtype=_dtype(spec["bias_dtype"]), device=device),
                              requires_grad=False)
    return m


class Linear4bitLoadable(bnb.nn.Linear4bit):
    """Linear4bit whose load_state_dict rebuilds the quantized weight from the stored codes + quant state
    (plain Linear4bit only loads into an already-quantized weight of the same shape)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        stats = {k[len(key) + 1:]: v for k, v in state_dict.items() if k.startswith(key + ".")}
        if key in state_dict and stats:
            device = self.bias.device if self.bias is not None else torch.device("cpu")
            self.weight = bnb.nn.Params4bit.from_prequantized(state_dict[key], dict(stats), requires_grad=False,
                                                              device=device, module=self)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for k in stats:  # the quant state was consumed above
            if key + "." + k in unexpected_keys:
                unexpected_keys.remove(key + "." + k)


def _4bit_empty(spec: dict, device="cpu") -> nn.Module:
    m = Linear4bitLoadable(spec["in_features"], spec["out_features"], bias=spec["bias"],
                           compute_dtype=_dtype(spec["compute_dtype"]), compress_statistics=spec["double_quant"],
                           quant_type=spec["mode"], device="meta")
    n = spec["in_features"] * spec["out_features"]
    m.weight = bnb.nn.Params4bit(torch.zeros((n + 1) // 2, 1, dtype=torch.uint8, device=device), requires_grad=False,
                                 quant_type=spec["mode"], compress_statistics=spec["double_quant"],
                                 bnb_quantized=True, module=m)
    if spec["bias"]:
        m.bias = nn.Parameter(torch.zeros(spec["out_features"], dtype=_dtype(spec["bias_dtype"]), device=device),
                              requires_grad=False)
    return m


def quantize_linear(lin: nn.Linear, mode: str, *, threshold: float = 6.0, double_quant: bool = True,
                    compute_dtype: str = "auto") -> tuple:
    """nn.Linear -> (bitsandbytes module, spec for rebuilding it, dequantized weight as the module computes it)."""
    w = lin.weight.detach()
    spec = {"mode": mode, "in_features": lin.in_features, "out_features": lin.out_features,
            "bias": lin.bias is not None,
            "bias_dtype": str(lin.bias.dtype).replace("torch.", "") if lin.bias is not None else None}
    if mode == "int8":
        spec["threshold"] = threshold
        codes, scb, _ = int8_vectorwise_quant(w.to(torch.float16))
        m = _int8_module(spec, codes, scb, w.device)
        if lin.bias is not None:
            m.bias = _bias(lin)
        deq = codes.float() * (scb.float()[:, None] / 127.0)
        return m, spec, deq
    cdt = str(w.dtype).replace("torch.", "") if compute_dtype == "auto" else compute_dtype
    spec.update(compute_dtype=cdt, double_quant=double_quant)
    m = Linear4bitLoadable(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=_dtype(cdt),
                           compress_statistics=double_quant, quant_type=mode, device="meta")
    m.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type=mode, compress_statistics=double_quant,
                                 module=m)
    if lin.bias is not None:
        m.bias = _bias(lin)
    m.weight = m.weight.to(w.device)  # quantizes
    deq = dequantize_4bit(m.weight.data, m.weight.quant_state).float()
    return m, spec, deq


def rebuild(spec: dict) -> nn.Module:
    """An empty module of the stored kind and shapes; load_state_dict fills it."""
    if spec["mode"] == "int8":
        return _int8_module(spec, torch.zeros(spec["out_features"], spec["in_features"], dtype=torch.int8),
                            torch.zeros(spec["out_features"]), "cpu")
    return _4bit_empty(spec)


def state_outside_buffers(m: nn.Module) -> int:
    """Bytes the module stores that are neither parameters nor buffers (so per-part accounting misses them)."""
    own = sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    stored = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    return max(stored - own, 0)
