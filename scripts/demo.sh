#!/usr/bin/env bash
# The main job on the embedded default: set up the environment if needed, then benchmark the model on the
# shipped dev split, run the default recipes on it, and print the comparison (tables + Pareto plot in out/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
MODEL=demo
if [ ! -f compress/assets/demo/manifest.json ]; then
  echo "note: the trained demo model is not in this checkout; using the random-weight 'tiny' preset" >&2
  MODEL=tiny
fi
.venv/bin/salmonn-compress inspect --model "$MODEL"
# 16 clips per task: the SmolLM2-based demo generates about a clip a second on two cores, and the job benchmarks
# the baseline and four recipes (--limit N on the command line overrides it)
exec .venv/bin/salmonn-compress demo --model "$MODEL" --data benchmarks/data/dev.json --out out/demo --limit 16 "$@"
