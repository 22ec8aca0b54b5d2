#!/usr/bin/env bash
# The test command: creates or updates .venv, installs everything the tests need (the
# package with its extras, a real ComfyUI 0.3.75 for the end-to-end tests, the extra ComfyUI
# environments that hold only ComfyUI's and the pack's requirements (scripts/comfyui_envs.sh)
# and, when run as root, Debian's Chromium for the web-UI tests) and runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
set -euo pipefail
cd "$(dirname "$0")/.."
HONESTFACE_EXTRAS="[torch,face,train,test]" source scripts/venv.sh
bash scripts/comfyui_setup.sh "$PY"
bash scripts/comfyui_envs.sh
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "test.sh: could not install chromium; the web-UI tests will skip" >&2
    else
        echo "test.sh: chromium not found (apt-get install chromium); the web-UI tests will skip" >&2
    fi
fi
exec "$PY" -m pytest "$@"
