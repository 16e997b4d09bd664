"""Resolve a model SPEC (preset name, artifact directory, or official config YAML) to a loaded model."""

from __future__ import annotations

import os
from typing import Optional

from ..errors import UserError, choices

SPEC_HELP = ("'demo' (the shipped trained model), a preset name (tiny, sized-1b, sized-3b), an artifact directory, "
             "or an official SALMONN config YAML")
# The embedded default: a trained tiny SALMONN shipped inside the package.
DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


def parse_dtype(name: Optional[str]):
    import torch

    if name is None:
        return None
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; valid: {choices(DTYPES)}")
    return getattr(torch, DTYPES[name])


def parse_device(name: Optional[str]):
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, checked against what this machine has (None -> None)."""
    import torch

    if name is None:
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: CUDA is not available here (torch.cuda.is_available() is False, "
                            f"torch {torch.__version__}); valid here: cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"device {name!r}: this machine has {n} CUDA device(s); valid: "
                            + ", ".join(["cuda"] + [f"cuda:{i}" for i in range(n)]))
    return dev


def load_model(spec: str, *, allow_unsafe_pickle: bool = False, dtype: Optional[str] = None,
               qformer_config: Optional[str] = None, seed: int = 0, device: Optional[str] = None):
    """Load SPEC (see SPEC_HELP); `device` ('cpu', 'cuda', 'cuda:N') moves a PyTorch model there after loading."""
    dev = parse_device(device)  # checked before the (possibly long) load
    model = _load_spec(spec, allow_unsafe_pickle=allow_unsafe_pickle, dtype=dtype, qformer_config=qformer_config,
                       seed=seed, device=dev)
    if dev is not None and dev.type != "cpu":
        model.to(dev)
    return model


def _load_spec(spec: str, *, allow_unsafe_pickle: bool, dtype: Optional[str], qformer_config: Optional[str],
               seed: int, device):
    from ..models.presets import PRESETS, build_preset
    from ..outputs import MANIFEST, read_manifest
    from .artifact import load_artifact
    from .official import load_official

    dt = parse_dtype(dtype)
    if qformer_config is not None:
        if not os.path.exists(qformer_config):
            raise UserError(f"--qformer-config {qformer_config!r}: no such file or directory")
        if not (os.path.isfile(spec) and spec.endswith((".yaml", ".yml"))):
            raise UserError(f"--qformer-config applies to official SALMONN config YAMLs only; model {spec!r} "
                            "carries its own Q-Former settings")
    if spec == "demo":
        if not os.path.isfile(os.path.join(DEMO_DIR, MANIFEST)):
            raise UserError(f"the demo model is not built in this checkout ({DEMO_DIR} has no {MANIFEST}); "
                            "build it with: python -m demo_factory.train")
        return load_artifact(DEMO_DIR, dtype=dt)
    if spec in PRESETS:
        model = build_preset(spec, seed=seed, dtype=dt)
        model.load_report = {p: {"source": f"preset {spec!r}, seeded random weights (seed {seed})"}
                             for p in model.parts()}
        return model
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, MANIFEST)):
            raise UserError(f"model {spec!r} is a directory without {MANIFEST}: not a (complete) artifact")
        kind = read_manifest(spec).get("kind", "pytorch")
        if kind != "pytorch":  # an `export` directory (ONNX: run by ONNX Runtime)
            from ..export import load_exported

            if device is not None and device.type != "cpu":
                raise UserError(f"model {spec!r} is an ONNX export, run by ONNX Runtime's CPU provider here; "
                                f"device {str(device)!r} applies to PyTorch models only; valid: cpu")

            return load_exported(spec, kind, dtype=dt)
        return load_artifact(spec, dtype=dt)
    if os.path.isfile(spec) and spec.endswith((".yaml", ".yml")):
        return load_official(spec, allow_unsafe_pickle=allow_unsafe_pickle, qformer_config=qformer_config, dtype=dt)
    raise UserError(f"cannot resolve model {spec!r}: expected {SPEC_HELP}; presets: {choices(PRESETS)}")
