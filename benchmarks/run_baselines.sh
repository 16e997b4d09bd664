#!/usr/bin/env bash
# Record the baseline results of issue 4: the tiny preset and the sized 1B preset on this machine.
# Usage: bash benchmarks/run_baselines.sh   (after bash scripts/env.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
SC=.venv/bin/salmonn-compress
OUT=benchmarks/results
mkdir -p "$OUT"
# tiny preset (random weights): the whole dev split, greedy, 32 new tokens.
$SC bench --model tiny --data benchmarks/data/dev.json --beams 1 --max-new-tokens 32 \
  --latency-tokens 32 --warmup 2 --repeats 5 --threads 2 --out "$OUT/baseline-tiny.json"
# sized 1B preset (real shapes, random weights, float32): 2 clips per task, 16 timed tokens.
$SC bench --model sized-1b --data benchmarks/data/dev.json --limit 2 --beams 1 --max-new-tokens 8 \
  --latency-tokens 16 --warmup 1 --repeats 3 --threads 2 --out "$OUT/baseline-sized-1b.json"
$SC table "$OUT/baseline-tiny.json" "$OUT/baseline-sized-1b.json" --md "$OUT/baselines.md" --csv "$OUT/baselines.csv"
