#!/usr/bin/env bash
# The demo command: creates or updates .venv, installs HonestFace and runs `honestface demo`
# (writes outputs/demo/report.html and contact_sheet.png). Extra arguments go to the demo,
# e.g. `bash scripts/demo.sh --sd v2-1_512-ema-pruned.safetensors --weights OSDFace`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HONESTFACE_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$PY" -m pip install -q -e .
exec "$VENV/bin/honestface" demo -o outputs/demo "$@"
