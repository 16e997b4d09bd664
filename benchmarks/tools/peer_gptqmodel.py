"""GPTQModel's GPTQ on a plain HF causal LM with TEXT-only calibration (the peer of our audio-calibrated GPTQ).

Runs inside its own virtual environment (GPTQModel pins numpy and needs optimum beside peft):
    bash benchmarks/peers_env.sh gptqmodel
Usage: GPTQMODEL_CPU_WORKERS=2 .venv-gptqmodel/bin/python benchmarks/tools/peer_gptqmodel.py --model DIR
           --texts texts.json --out DIR2 [--bits 4] [--group-size 128] [--backend auto]
Writes GPTQModel's quantized checkpoint to --out/quantized and, for the accuracy run, every quantized Linear's
effective weight as float32 to --out/dequantized.safetensors (plain HF names). The effective weight is read by
running each quantized module on the identity matrix (y = I W^T + b), so it is what GPTQModel's own kernel
computes, whatever its packing. `--backend` picks the kernel of that read-out (GPTQModel's BACKEND values): on CPU
"auto" takes the ATen int4pack kernel, which needs every input width divisible by the group size; "gptq_torch"
(GPTQModel's plain PyTorch kernel) takes any width.
"""

import argparse
import json
import os


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--texts", required=True, help="JSON list of calibration sentences")
    p.add_argument("--out", required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--backend", default="auto", help="GPTQModel kernel for the read-out of the quantized weights")
    a = p.parse_args()

    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from safetensors.torch import save_file

    try:
        backend = BACKEND(a.backend)
    except ValueError:
        raise SystemExit(f"error: unknown --backend {a.backend!r}; valid: {', '.join(b.value for b in BACKEND)}")

    with open(a.texts) as f:
        texts = json.load(f)[: a.samples]
    cfg = QuantizeConfig(bits=a.bits, group_size=a.group_size, desc_act=True, sym=True)
    model = GPTQModel.load(a.model, cfg, device="cpu")
    model.quantize(texts, batch_size=1)
    qdir = os.path.join(a.out, "quantized")
    model.save(qdir)
    del model
    q = GPTQModel.load(qdir, device="cpu", backend=backend)
    dense = {}
    with torch.no_grad():
        for name, m in q.model.named_modules():
            if hasattr(m, "qweight") and hasattr(m, "in_features"):
                eye = torch.eye(m.in_features, dtype=torch.float16 if m.qweight.device.type == "cuda" else torch.float32)
                try:
                    y = m(eye)
                except RuntimeError:  # kernels that compute in float16 only
                    y = m(eye.half())
                b = getattr(m, "bias", None)
                if b is not None:
                    y = y - b.to(y.dtype)
                dense[f"{name}.weight"] = y.float().t().contiguous()
    save_file(dense, os.path.join(a.out, "dequantized.safetensors"))
    with open(os.path.join(a.out, "peer.json"), "w") as f:
        json.dump({"bits": a.bits, "group_size": a.group_size, "layers": len(dense), "samples": len(texts),
                   "backend": a.backend}, f)


if __name__ == "__main__":
    main()
