#!/usr/bin/env bash
# Issue 8: ONNX export of the sized 1B preset (random weights, float32) and ONNX Runtime vs PyTorch with the same
# harness in one run. The export (8.4 GB, external data) goes to $WORK, results to $OUT.
# Usage: bash benchmarks/run_export_sized1b.sh     env: WORK (default /tmp/sized1b-onnx), OUT
set -euo pipefail
cd "$(dirname "$0")/.."
SC=.venv/bin/salmonn-compress
WORK=${WORK:-/tmp/sized1b-onnx}
OUT=${OUT:-benchmarks/results/export-sized-1b}
mkdir -p "$OUT"
if [ ! -f "$WORK/manifest.json" ]; then
  /usr/bin/time -v $SC export --model sized-1b --format onnx --out "$WORK" --check benchmarks/data/dev.json \
    --check-limit 1 --check-tokens 8 2>&1 | tr '\r' '\n' | grep -E "export|parity|Elapsed|Maximum resident" \
    | tee "$OUT/export.log"
fi
BENCH=(--data benchmarks/data/dev.json --limit 2 --beams 1 --max-new-tokens 8 --latency-tokens 16 --warmup 1
       --repeats 3 --threads 2)
$SC bench --model sized-1b "${BENCH[@]}" --out "$OUT/pytorch.json"
$SC bench --model "$WORK" "${BENCH[@]}" --out "$OUT/onnxruntime.json"
$SC table "$OUT/pytorch.json" "$OUT/onnxruntime.json" --md "$OUT/table.md" --csv "$OUT/table.csv"
