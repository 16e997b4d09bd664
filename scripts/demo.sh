#!/usr/bin/env bash
# The main job on the embedded default: set up the environment if needed, then run the model on shipped audio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
.venv/bin/salmonn-compress inspect --model tiny
exec .venv/bin/salmonn-compress generate --model tiny --audio benchmarks/data/samples/*.flac --task asr --beams 4 --max-new-tokens 24
