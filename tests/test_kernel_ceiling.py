"""benchmarks/tools/kernel_ceiling.py at a shrunken size: its MatMulNBits graphs compute x W^T from the codes and
scales it counts as bytes, and a run writes one table row per kernel with a ratio to the probed bound."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("kernel_ceiling", os.path.join(ROOT, "benchmarks", "tools",
                                                                              "kernel_ceiling.py"))
kc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kc)


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(kc, "LAYERS", 1)
    monkeypatch.setattr(kc, "VOCAB", 64)


@pytest.mark.parametrize("fmt", [(8, 128), (4, 32), None])
def test_projection_graph_computes_what_it_counts(small, fmt):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    blob, nbytes = kc.projection_graph(fmt)
    model = onnx.load_from_string(blob)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert nbytes == sum(a.nbytes for a in inits.values())
    assert len(model.graph.node) == len(kc.LAYER_SHAPES) + 1  # one layer's projections and the output layer
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, kc.HIDDEN), dtype=np.float32)
    h = rng.standard_normal((1, kc.MLP), dtype=np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    y = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"]).run(["y2", "y4"], {"x": x, "h": h})
    for out, inp, i in ((y[0], x, 2), (y[1], h, 4)):  # gate (576 -> 1536) and down (1536 -> 576)
        k = inp.shape[1]
        if fmt is None:
            w = inits[f"w{i}"].T
        else:
            bits, block = fmt
            codes = inits[f"b{i}"]
            if bits == 4:  # two codes a byte, the low nibble first
                codes = np.stack([codes & 15, codes >> 4], axis=-1).reshape(codes.shape[0], codes.shape[1], -1)
            n, blocks = codes.shape[:2]
            scales = inits[f"s{i}"].reshape(n, blocks, 1)
            w = ((codes.astype(np.float32) - 2 ** (bits - 1)) * scales).reshape(n, -1)[:, :k]
        ref = inp @ w.T
        # int8 activations (accuracy level 4) round the input per block: close, not equal
        tol = 1e-4 if fmt is None else 0.02
        assert np.abs(out - ref).max() <= tol * np.abs(ref).max()


def test_a_run_writes_one_row_per_kernel(small, tmp_path, capsys):
    out = tmp_path / "k.json"
    assert kc.main(["--out", str(out), "--rounds", "1", "--threads", "1", "--no-llama-cpp"]) == 0
    res = json.loads(out.read_text())
    assert [r["kernel"] for r in res["table"]] == [f"onnxruntime {n}" for n in kc.ORT_FORMATS]
    for row in res["table"]:
        assert row["ms_median"] > 0 and row["over_bound_median"] > 0 and row["streamed_gbs"] > 0
    assert res["rounds"][0]["bandwidth_gbs"] > 0 and "| onnxruntime fp32 |" in capsys.readouterr().out
