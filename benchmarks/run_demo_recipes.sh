#!/usr/bin/env bash
# Record every shipped recipe on the embedded demo model against its baseline (issues 5, 6, 7, 8):
# one baseline bench, then for each recipe: `run` (timed, no bench) and `bench` of the artifact with the
# same settings, then one table. Artifacts go to $WORK (not the repo); results JSON + table to $OUT.
# Usage: bash benchmarks/run_demo_recipes.sh [recipe.yaml ...]   (default: every file in recipes/)
#   env: LIMIT (clips per task, default 40), DATA (default benchmarks/data/test.json), OUT, WORK,
#        MODEL (default demo; e.g. sized-1b), BENCH_ARGS (replace the bench settings below),
#        RUN_ARGS (extra `run` arguments, e.g. "--save-dtype float16"), KEEP=0 (delete each artifact once benched: sized-1b artifacts are GBs)
set -uo pipefail
cd "$(dirname "$0")/.."
SC=.venv/bin/salmonn-compress
OUT=${OUT:-benchmarks/results/demo-recipes}
WORK=${WORK:-/tmp/demo-recipes}
DATA=${DATA:-benchmarks/data/test.json}
LIMIT=${LIMIT:-40}
MODEL=${MODEL:-demo}
KEEP=${KEEP:-1}
BENCH=(--data "$DATA" --limit "$LIMIT" --latency-tokens 32 --warmup 2 --repeats 5 --threads 2)
[ -n "${BENCH_ARGS:-}" ] && read -r -a BENCH <<< "--data $DATA --limit $LIMIT $BENCH_ARGS"
mkdir -p "$OUT" "$WORK"
RECIPES=("$@")
[ ${#RECIPES[@]} -eq 0 ] && RECIPES=(recipes/*.yaml)
[ -f "$OUT/baseline.json" ] || $SC bench --model "$MODEL" "${BENCH[@]}" --out "$OUT/baseline.json"
for r in "${RECIPES[@]}"; do
  name=$(basename "$r" .yaml)
  echo "== $name"
  start=$(date +%s)
  if ! /usr/bin/time -f "run_max_rss_kib %M" $SC run "$r" --model "$MODEL" --out "$WORK/$name" --overwrite --no-bench ${RUN_ARGS:-} > "$OUT/$name.run.log" 2>&1; then
    echo "run failed: see $OUT/$name.run.log"; tail -n 3 "$OUT/$name.run.log"; continue
  fi
  echo "run_seconds $(( $(date +%s) - start ))" >> "$OUT/$name.run.log"
  du -sb "$WORK/$name" | awk '{print "artifact_bytes", $1}' >> "$OUT/$name.run.log"
  $SC bench --model "$WORK/$name" "${BENCH[@]}" --out "$OUT/$name.json" || echo "bench failed: $name"
  [ "$KEEP" = 0 ] && rm -rf "${WORK:?}/$name"
done
$SC table "$OUT/baseline.json" $(ls "$OUT"/*.json | grep -v '/baseline.json$') \
  --md "$OUT/table.md" --csv "$OUT/table.csv" --plot "$OUT/pareto.png"
