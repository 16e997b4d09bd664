"""Export to deployment runtimes: ONNX (+ an ONNX Runtime backend the bench harness runs) and Torch-TensorRT.

`export_model(model, out, fmt=...)` writes a directory atomically with a manifest (kind "onnx" or "tensorrt");
`load_model(DIR)` returns an `OrtSalmonn` for kind "onnx".
"""

from __future__ import annotations

from typing import Optional

from ..errors import UserError, choices

FORMATS = ("onnx", "tensorrt")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; valid: {choices(FORMATS)}")


def export_model(model, out_dir: str, *, fmt: str = "onnx", int8: bool = False, opset: Optional[int] = None,
                 overwrite: bool = False, check: Optional[dict] = None, manifest_extra: Optional[dict] = None,
                 step_report: Optional[dict] = None, log=None, nbits_accuracy_level: int = 0,
                 llm_graph: str = "dynamo", lm_head_bits: Optional[int] = None, int8_float=(),
                 int8_front: bool = False) -> str:
    """Write `model` (a Salmonn) as an `fmt` export in `out_dir`; returns the directory's absolute path.
    `nbits_accuracy_level`: ONNX Runtime's MatMulNBits compute mode for GPTQ / RTN layers (0-4, see ExportConfig).
    `llm_graph`: onnx, who writes the LLM decoder graph: "dynamo" (torch.onnx) or "genai" (onnxruntime-genai's
    builder, fused operators; see export/genai_graph.py); `lm_head_bits` (4 / 8, genai only): the output layer as
    MatMulNBits through ONNX Runtime's round-to-nearest quantizer; `int8_front`: onnx, dynamic int8 of the audio
    front graph."""
    check_format(fmt)
    if fmt == "tensorrt":
        from .tensorrt import export_tensorrt, require_tensorrt

        require_tensorrt()
        if int8 or int8_float or int8_front or check is not None or llm_graph != "dynamo" or lm_head_bits:
            raise UserError("--int8, --int8-float, --int8-front, --check, --llm-graph and --lm-head-bits apply to "
                            "--format onnx only")
        return export_tensorrt(model, out_dir, overwrite=overwrite, manifest_extra=manifest_extra,
                               step_report=step_report, log=log)
    from .onnx_export import DEFAULT_OPSET, export_onnx

    return export_onnx(model, out_dir, int8=int8, opset=opset or DEFAULT_OPSET, overwrite=overwrite, check=check,
                       manifest_extra=manifest_extra, step_report=step_report, log=log,
                       nbits_accuracy_level=nbits_accuracy_level, llm_graph=llm_graph,
                       lm_head_bits=lm_head_bits, int8_float=tuple(int8_float), int8_front=int8_front)


def load_exported(path: str, kind: str, *, dtype=None):
    """Load an exported directory by its manifest kind (ONNX Runtime for "onnx")."""
    if kind == "onnx":
        from .ort_backend import load_onnx_export

        return load_onnx_export(path, dtype=dtype)
    if kind == "tensorrt":
        raise UserError(f"{path!r} holds TensorRT engines; this tool has no TensorRT backend for generate/bench yet "
                        "(load them with torch_tensorrt.load on an NVIDIA GPU)")
    raise UserError(f"{path!r}: unknown export kind {kind!r}; valid: {choices(FORMATS)}")
