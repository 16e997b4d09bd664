"""Safe tensor-file loading: weights_only unpickling, clear errors for unsafe, truncated or garbage files."""

from __future__ import annotations

import os
import re

import torch

from ..errors import CheckpointError

UNSAFE_FLAG = "--allow-unsafe-pickle"


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, expected a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes)")


def load_tensor_file(path: str, *, allow_unsafe_pickle: bool = False) -> dict:
    """Load a .pth/.pt/.bin (torch) or .safetensors file into a dict, never running code unless allowed."""
    path = os.fspath(path)
    _check_file(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read safetensors file {path!r}: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        msg = str(e)
        glob = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", msg)
        if glob and not allow_unsafe_pickle:
            raise CheckpointError(
                f"checkpoint {path!r} refused: loading it would need arbitrary unpickling "
                f"(it references {glob.group(1)}), which can run code. Nothing in it was executed. "
                f"If you trust this file, pass {UNSAFE_FLAG}."
            ) from None
        first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        if "Weights only load failed" in first:
            detail = [ln for ln in msg.splitlines() if "Unsupported" in ln or "error" in ln.lower()]
            first = detail[-1].strip() if detail else "not a valid pickle stream"
        raise CheckpointError(
            f"checkpoint {path!r} is corrupt, truncated or not a PyTorch/safetensors file ({_clip(first)})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def atomic_torch_save(obj, path: str) -> None:
    """torch.save next to the target, then rename: a crash mid-write never leaves a file that looks complete."""
    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _clip(text: str, limit: int = 200) -> str:
    """A message from the reader, cut at a word boundary and marked as cut when longer than `limit`."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def state_dict_of(obj: dict, path: str) -> dict:
    """The tensor dict inside a training checkpoint: obj['model'] when present, else obj itself."""
    sd = obj.get("model", obj)
    if not isinstance(sd, dict):
        raise CheckpointError(f"checkpoint {path!r}: 'model' holds a {type(sd).__name__}, expected a dict")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path!r}: entries are not tensors: {bad[:5]}")
    return sd
