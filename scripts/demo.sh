#!/usr/bin/env bash
# The demo command: creates or updates .venv, installs HonestFace and runs `honestface demo`
# (writes outputs/demo/report.html and contact_sheet.png). Extra arguments go to the demo,
# e.g. `bash scripts/demo.sh --sd v2-1_512-ema-pruned.safetensors --weights OSDFace`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec "$VENV/bin/honestface" demo -o outputs/demo "$@"
