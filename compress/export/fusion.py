"""ONNX Runtime fusions of an exported graph, through onnxscript's maintained rewriter.

`onnxscript.rewriter.ort_fusions.optimize_for_ort` rewrites the exporter's primitive subgraphs into ONNX Runtime's
contrib operators (RMSNorm -> SimplifiedLayerNormalization, residual + RMSNorm -> SkipSimplifiedLayerNormalization,
scaled-dot-product attention -> MultiHeadAttention, ...). ONNX Runtime's own session-time optimizer does not
match the dynamo exporter's RMSNorm and attention patterns, so without this the decoder runs hundreds of small
nodes per token. Nothing here is hand-written beyond calling it, checking that the graph still loads, and
recording what was fused.
"""

from __future__ import annotations

import os


def fuse_for_ort(path: str) -> dict:
    """Rewrite the ONNX graph at `path` in place; returns {"method", "fusions": {pattern: count}}."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(path)
    model, counts = optimize_for_ort(model)
    tmp = path + ".fused"
    ir.save(model, tmp)
    os.replace(tmp, path)
    return {"method": "onnxscript.rewriter.ort_fusions.optimize_for_ort",
            "fusions": {k: int(v) for k, v in counts.items() if v}}
