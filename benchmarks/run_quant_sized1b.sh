#!/usr/bin/env bash
# Issue 6: every quantization method on the sized 1B preset (random weights): artifact bytes, peak memory and TPOT
# against float32 and float16 and against the decode bound, one run. The preset is first saved as a float16
# artifact with real-length encoding on (so the 30-s Whisper pass, 17 s on this CPU, does not dominate the run;
# TTFT is therefore not comparable with other tables), and every row (float32, float16, each method) is loaded by
# the same artifact loader. Accuracy is
# meaningless on random weights: one ASR clip is decoded only so that the harness runs end to end. Quantized
# artifacts are deleted once benched (GBs).
# Usage: bash benchmarks/run_quant_sized1b.sh [recipe.yaml ...]      env: OUT (default benchmarks/results/quant-sized-1b), WORK
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-benchmarks/results/quant-sized-1b} WORK=${WORK:-/tmp/quant-sized-1b}
BASE=$WORK/sized-1b-fp16
export MODEL=$BASE LIMIT=1 DATA=benchmarks/data/dev.json KEEP=0
export BENCH_ARGS="--tasks asr --beams 1 --max-new-tokens 8 --latency-tokens 8 --warmup 1 --repeats 2 --threads 2"
mkdir -p "$OUT" "$WORK"
[ -f "$BASE/manifest.json" ] || .venv/bin/python -c "
from compress.loaders import load_model
from compress.loaders.artifact import save_artifact
m = load_model('sized-1b')
m.cfg.extra['runtime'] = {'real_length': True}  # every row: Whisper on the clip's real length, not 30 s of padding
save_artifact(m, '$BASE', weights_dtype='float16', manifest_extra={'source': {'spec': 'sized-1b'}})"
du -sb "$BASE" | awk '{print "artifact_bytes", $1}' > "$OUT/float16-artifact.log"
# float16 in memory (same artifact, --dtype float16); the float32 row is run_demo_recipes.sh's baseline
[ -f "$OUT/float16.json" ] || .venv/bin/salmonn-compress bench --model "$BASE" --dtype float16 --data "$DATA" \
  --limit 1 $BENCH_ARGS --out "$OUT/float16.json" || echo "float16 bench failed"
# Recipes: the arguments, else every method (GPTQ 4-bit runs the same packed module as RTN 4-bit).
RECIPES=("$@")
[ ${#RECIPES[@]} -eq 0 ] && RECIPES=(recipes/rtn-4bit-g128.yaml benchmarks/recipes/gptq-4bit-g128-sized1b.yaml
  benchmarks/recipes/gptq-8bit-sized1b.yaml recipes/bnb-int8.yaml recipes/bnb-nf4.yaml
  recipes/torchao-int8-weight-only.yaml recipes/torchao-int8-dynamic.yaml)
bash benchmarks/run_demo_recipes.sh "${RECIPES[@]}"
