"""Low-memory loading of an artifact: the module tree is built on the meta device, every tensor gets real storage
once (in its compute dtype), and the weights are copied in from the safetensors file a chunk at a time, with plain
reads rather than a memory map.

Peak memory is then the model as it runs plus one chunk, instead of a randomly initialised float32 model plus the
whole state dict: a quantized LLM never exists in float32, and a float16 artifact loaded with `--dtype float16`
never exists in float32 either.
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from typing import Optional

import torch
from torch import nn

from ..errors import CheckpointError
from .sparse_storage import MASK, VALUES, decode_one

CHUNK_BYTES = 256 * 2**20


def storable(name: str, t: torch.Tensor) -> bool:
    """Tensors a storage dtype applies to: floating weights of 2+ dims (norms, biases and scalars keep theirs)."""
    return t.is_floating_point() and t.dim() >= 2


def materialize(model: nn.Module, dtype: Optional[torch.dtype] = None) -> None:
    """Give every meta parameter and buffer real, uninitialised CPU storage (floating ones in `dtype` when given),
    keeping tied tensors tied; then recompute the non-persistent buffers, which no checkpoint holds."""
    done: dict = {}  # id(meta tensor) -> (meta tensor, real tensor); the meta tensor is kept so ids stay unique
    fresh_buffers = []
    for mod in model.modules():
        for table, is_param in ((mod._parameters, True), (mod._buffers, False)):
            for name, t in list(table.items()):
                if t is None or t.device.type != "meta":
                    continue
                if id(t) not in done:
                    dt = dtype if dtype is not None and t.is_floating_point() else t.dtype
                    real = torch.empty(t.shape, dtype=dt)
                    done[id(t)] = (t, nn.Parameter(real, requires_grad=t.requires_grad) if is_param else real)
                table[name] = done[id(t)][1]
                if not is_param and name in mod._non_persistent_buffers_set:
                    fresh_buffers.append((mod, name))
    for mod, name in fresh_buffers:
        _recompute_buffer(mod, name)


@torch.no_grad()
def _recompute_buffer(mod: nn.Module, name: str) -> None:
    buf = getattr(mod, name)
    if "RotaryEmbedding" in type(mod).__name__ and hasattr(mod, "config"):  # transformers' rotary tables
        buf.copy_(getattr(type(mod)(config=mod.config), name))
    elif name == "position_ids":  # arange(max_positions)[None] (Q-Former / BERT embeddings)
        buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    else:
        raise CheckpointError(f"cannot rebuild the non-persistent buffer {name!r} of {type(mod).__name__} when "
                              "loading an artifact; this module type is not supported by the low-memory loader")


def owning_module(key: str, modules: set) -> str:
    """The module a state-dict key belongs to: its longest dotted prefix that names a module (bitsandbytes keys
    such as `...base_layer.weight.absmax` belong to `...base_layer`, not to `...base_layer.weight`)."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in modules:
            return prefix
    return ""


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


class SafetensorsReader:
    """Reads tensors of a .safetensors file one at a time with plain reads (no memory map: mapped file pages
    would count in the process's resident memory, which is what the benchmarks measure)."""

    def __init__(self, path: str):
        self.path = path
        self.fh = open(path, "rb")
        try:
            n = struct.unpack("<Q", self.fh.read(8))[0]
            header = json.loads(self.fh.read(n))
        except (struct.error, ValueError) as e:
            self.fh.close()
            raise CheckpointError(f"{path!r} is not a readable safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self.header, self.base = header, 8 + n

    def keys(self) -> list:
        return list(self.header)

    def get_tensor(self, name: str) -> torch.Tensor:
        info = self.header[name]
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{self.path!r}: tensor {name!r} has dtype {info['dtype']}, which this loader "
                                  f"cannot read; valid: {', '.join(SAFETENSORS_DTYPES)}")
        start, end = info["data_offsets"]
        raw = torch.empty(end - start, dtype=torch.uint8)
        self.fh.seek(self.base + start)
        if end > start and self.fh.readinto(raw.numpy()) != end - start:
            raise CheckpointError(f"{self.path!r}: tensor {name!r} is truncated")
        return raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def load_weights(model: nn.Module, path: str, *, sparse: dict, aliases: dict,
                 chunk_bytes: Optional[int] = None) -> dict:
    """Copy the tensors of the safetensors file at `path` into `model`, a chunk of modules at a time (sparse
    entries decoded, aliases filled from their canonical tensor). Returns {"missing", "unexpected",
    "storage_counts"}; storage_counts maps each stored floating dtype of 2+-dim tensors to its element count."""
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    copies = defaultdict(list)
    for alias, canonical in aliases.items():
        copies[canonical].append(alias)
    expected = set(model.state_dict())
    modules = {n for n, _ in model.named_modules()}
    loaded, unexpected, counts = set(), [], defaultdict(int)
    chunk, size, prefix = {}, 0, None

    def flush() -> None:
        nonlocal size
        if chunk:
            unexpected.extend(model.load_state_dict(chunk, strict=False).unexpected_keys)
            loaded.update(chunk)
            chunk.clear()
        size = 0

    with SafetensorsReader(path) as f:
        names = sorted({k[: -len(MASK)] if k.endswith(MASK) else k[: -len(VALUES)] if k.endswith(VALUES) else k
                        for k in f.keys()})
        for name in names:
            owner = owning_module(name, modules)
            if size >= chunk_bytes and owner != prefix:  # a module's tensors stay in one chunk (custom loaders)
                flush()
            prefix = owner
            if name in sparse:
                t = decode_one(f.get_tensor(name + MASK), f.get_tensor(name + VALUES), sparse[name])
            else:
                t = f.get_tensor(name)
            if storable(name, t):
                counts[t.dtype] += t.numel()
            chunk[name] = t
            for alias in copies.get(name, ()):
                chunk[alias] = t
            size += t.numel() * t.element_size()
        flush()
    return {"missing": sorted(expected - loaded), "unexpected": sorted(set(unexpected)), "storage_counts": counts}
