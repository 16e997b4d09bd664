#!/usr/bin/env bash
# Virtual environments of the peers the method table compares against (never needed by CI or the product):
#   .venv-llmc       llm-compressor 0.14 (Wanda, SparseGPT; it pins transformers <= 5.17)
#   .venv-gptqmodel  GPTQModel 7.6 (GPTQ; 7.7 needs torch >= 2.14.1; it pins numpy, and peft needs optimum beside it)
# Each gets the project's torch pin first, so nothing can pull a CUDA build. Usage: bash benchmarks/peers_env.sh [llmc|gptqmodel]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want=${1:-all}
make_env() {  # name, packages...
  local dir=$1; shift
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  "$dir/bin/python" -m pip install -q "torch==2.13.0"
  "$dir/bin/python" -m pip install -q "torch==2.13.0" "$@"
}
if [ "$want" = all ] || [ "$want" = llmc ]; then make_env .venv-llmc "llmcompressor==0.14.0.1"; fi
if [ "$want" = all ] || [ "$want" = gptqmodel ]; then make_env .venv-gptqmodel "gptqmodel==7.6.0" optimum; fi
