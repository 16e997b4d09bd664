"""llm-compressor's Wanda or SparseGPT on a plain HF causal LM with TEXT-only calibration (the peer of ours).

Runs inside its own virtual environment (llm-compressor pins transformers <= 5.17):
    bash benchmarks/peers_env.sh llmc
Usage: .venv-llmc/bin/python benchmarks/tools/peer_llmc.py --method wanda|sparsegpt --model DIR --texts texts.json
           --out DIR2 [--sparsity 0.5] [--mask 0:0|2:4] [--owl M,LAMBDA]
Writes the pruned model (dense safetensors, zeros in place) to --out; benchmarks/tools/method_table.py copies its
Linear weights back into the SALMONN.
"""

import argparse
import json


def modifier(method: str, sparsity: float, mask: str, owl: str = "", targets: str = "Linear"):
    kw = dict(sparsity=sparsity, mask_structure=mask, targets=[targets], ignore=["lm_head"])
    if owl:  # "M,LAMBDA": llm-compressor's OWL layer sparsity, one value per decoder layer (its targets)
        m, lam = (float(x) for x in owl.split(","))
        kw.update(sparsity_profile="owl", owl_m=m, owl_lmbda=lam, targets=["LlamaDecoderLayer"])
    if method == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return WandaPruningModifier(**kw)
    try:  # its home since 0.6; older releases keep it under obcq
        from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    except ImportError:
        from llmcompressor.modifiers.obcq import SparseGPTModifier
    return SparseGPTModifier(**kw)


def patch_owl_calibration() -> None:
    """Two faults of llm-compressor 0.14's OWL profile, worked around here; its OWL math and the pruning itself are
    untouched:
    - it gathers its activation norms by calling its calibration pipeline from inside the modifier's initialisation,
      which its lifecycle refuses ("ValueError: Cannot invoke event before initializing"): its OWL hooks only need
      the calibration batches run through the model, so a plain forward replaces that pipeline call;
    - it returns the layer sparsities as a dict, while the hooks it registers read a per-layer value only from a
      list (a dict is taken as one sparsity): the dict is handed over as a list, in the decoder layers' order."""
    import torch
    import llmcompressor.pipelines.basic as basic
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase

    infer = SparsityModifierBase._infer_owl_layer_sparsity
    SparsityModifierBase._infer_owl_layer_sparsity = lambda self, *a, **k: [float(v) for v in infer(self, *a,
                                                                                                      **k).values()]

    def forward_only(model, dataloader):
        device = next(model.parameters()).device
        with torch.no_grad():
            for batch in dataloader:
                model(**{k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})

    basic.run_calibration = forward_only


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--method", choices=("wanda", "sparsegpt"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--texts", required=True, help="JSON list of calibration sentences")
    p.add_argument("--out", required=True)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--mask", default="0:0", help="llm-compressor mask_structure: 0:0 unstructured, 2:4 ...")
    p.add_argument("--owl", default="", help="M,LAMBDA: OWL's non-uniform layer sparsity (e.g. 5,0.08)")
    p.add_argument("--targets", default="Linear", help="the modifier's targets: Linear (default) or "
                   "LlamaDecoderLayer (as OWL needs: the control of the OWL row)")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    a = p.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot

    if a.owl:
        patch_owl_calibration()
    with open(a.texts) as f:
        texts = json.load(f)
    oneshot(model=a.model, dataset=Dataset.from_dict({"text": texts}),
            recipe=modifier(a.method, a.sparsity, a.mask, a.owl, a.targets),
            num_calibration_samples=min(a.samples, len(texts)),
            max_seq_length=a.max_seq_length, output_dir=a.out, save_compressed=False,
            shuffle_calibration_samples=False)


if __name__ == "__main__":
    main()
