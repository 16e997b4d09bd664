"""Export to deployment runtimes: ONNX (+ an ONNX Runtime backend the bench harness runs) and Torch-TensorRT.

`export_model(model, out, ExportOptions(...))` writes a directory atomically with a manifest (kind "onnx" or
"tensorrt"); `load_model(DIR)` returns an `OrtSalmonn` for kind "onnx".
"""

from __future__ import annotations

from typing import Optional

from ..errors import UserError, choices
from .options import FORMATS, ExportOptions  # noqa: F401  (FORMATS re-exported)


def export_model(model, out_dir: str, options: Optional[ExportOptions] = None, *, overwrite: bool = False,
                 check: Optional[dict] = None, manifest_extra: Optional[dict] = None,
                 step_report: Optional[dict] = None, log=None) -> str:
    """Write `model` (a Salmonn) as an export in `out_dir` by `options` (ExportOptions; default: float ONNX);
    returns the directory's absolute path. `check` (onnx only): the PyTorch / ONNX Runtime parity check
    (see export_onnx)."""
    options = options or ExportOptions()
    if options.format == "tensorrt":
        from .tensorrt import export_tensorrt, require_tensorrt

        require_tensorrt()
        if check is not None:
            raise UserError("--check (the ONNX Runtime parity check) applies to format onnx only")
        return export_tensorrt(model, out_dir, overwrite=overwrite, manifest_extra=manifest_extra,
                               step_report=step_report, log=log)
    from .onnx_export import export_onnx

    return export_onnx(model, out_dir, options, overwrite=overwrite, check=check, manifest_extra=manifest_extra,
                       step_report=step_report, log=log)


def load_exported(path: str, kind: str, *, dtype=None):
    """Load an exported directory by its manifest kind (ONNX Runtime for "onnx")."""
    if kind == "onnx":
        from .ort_backend import load_onnx_export

        return load_onnx_export(path, dtype=dtype)
    if kind == "tensorrt":
        raise UserError(f"{path!r} holds TensorRT engines; this tool has no TensorRT backend for generate/bench yet "
                        "(load them with torch_tensorrt.load on an NVIDIA GPU)")
    raise UserError(f"{path!r}: unknown export kind {kind!r}; valid: {choices(FORMATS)}")
