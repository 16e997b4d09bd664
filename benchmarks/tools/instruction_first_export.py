"""Export an artifact with its prompt switched to instruction-first (SalmonnConfig.instruction_first), by the export
step of recipes/best-cpu.yaml (its options as they stand), to time what the layout saves:

    .venv/bin/python benchmarks/tools/instruction_first_export.py ARTIFACT OUT_DIR

The export computes exactly what a model trained instruction-first would (the same graphs, a different prompt
order), so its TTFT and TPOT are that model's; its transcripts are not, unless the artifact was trained that way.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="a model spec: demo, or an artifact folder (e.g. the rtn-4bit-g32-offset recipe's)")
    p.add_argument("out", help="the export folder to write (must not exist)")
    a = p.parse_args(argv)

    from compress.errors import UserError
    from compress.export import export_model
    from compress.loaders import load_model
    from compress.recipe import load_recipe

    if os.path.exists(a.out):
        print(f"error: {a.out} exists; give a new folder", file=sys.stderr)
        return 2
    try:
        model = load_model(a.artifact)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.cfg.instruction_first = True
    model._prompt_cache = {}  # prompt ids are cached per instruction: rebuild them in the new order
    options = load_recipe(os.path.join(ROOT, "recipes", "best-cpu.yaml")).steps[-1]  # its export step's config
    export_model(model, a.out, options)
    print(f"exported {a.out} (instruction first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
