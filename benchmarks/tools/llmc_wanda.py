"""Run llm-compressor's Wanda on a plain HF causal LM with TEXT-only calibration (for comparison with ours).

Runs inside a separate virtual environment that has llmcompressor (it pins transformers <= 5.17):
    python3 -m venv .venv-llmc && .venv-llmc/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1
Usage: .venv-llmc/bin/python benchmarks/tools/llmc_wanda.py --model DIR --texts texts.json --out DIR2
"""

import argparse
import json


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--texts", required=True, help="JSON list of calibration sentences")
    p.add_argument("--out", required=True)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--mask", default="0:0", help="llm-compressor mask_structure: 0:0 unstructured, 2:4 ...")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    a = p.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    texts = json.load(open(a.texts))
    ds = Dataset.from_dict({"text": texts})
    oneshot(model=a.model, dataset=ds, recipe=WandaPruningModifier(sparsity=a.sparsity, mask_structure=a.mask,
                                                                    targets=["Linear"], ignore=["lm_head"]),
            num_calibration_samples=min(a.samples, len(texts)), max_seq_length=a.max_seq_length,
            output_dir=a.out, save_compressed=False, shuffle_calibration_samples=False)


if __name__ == "__main__":
    main()
