#!/usr/bin/env bash
# Builds the extra ComfyUI environments of the end-to-end tests: each is a fresh virtual
# environment with ComfyUI's own requirements and the node pack's requirements.txt, nothing
# else of ours: what ComfyUI-Manager gives a user. Only torch comes from outside: it is
# installed once into a torch-only folder ($ENVS_DIR/torch, torch and its own dependencies)
# that every environment reads through a .pth file, so pip sees it installed and never
# touches it (pip installs a newer version of anything it needs into the environment itself).
# The ComfyUI folder is the one scripts/comfyui_setup.sh installed;
# tests/e2e/test_environments.py starts a server in each and runs every API workflow.
#
#   manager          requirements.txt alone, as ComfyUI-Manager installs it
#   opencv-python    opencv-python (the GUI build another pack may have brought) installed first
#   opencv-headless  opencv-python-headless the only package providing cv2
#   frontend-latest  the newest ComfyUI frontend and embedded docs on PyPI
#
# Usage: bash scripts/comfyui_envs.sh [NAME ...]
#   default: $HONESTFACE_COMFYUI_ENV_NAMES (space-separated; the tests read it too), else all
#   HONESTFACE_COMFYUI        the ComfyUI folder (default .comfyui/ComfyUI)
#   HONESTFACE_COMFYUI_ENVS   where the environments go (default .comfyui/envs, ignored by git)
# Idempotent: an environment is rebuilt only when this script, requirements.txt, ComfyUI's
# requirements or the torch version changed (otherwise a second run takes about a second).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_ENVS=(manager opencv-python opencv-headless frontend-latest)
COMFYUI="${HONESTFACE_COMFYUI:-.comfyui/ComfyUI}"
ENVS_DIR="${HONESTFACE_COMFYUI_ENVS:-.comfyui/envs}"
BASE_PYTHON="${HONESTFACE_BASE_PYTHON:-python3}"
# Everything that decides what an environment holds.
INPUTS=(scripts/comfyui_envs.sh scripts/torch-requirements.txt requirements.txt "$COMFYUI/requirements.txt")
TORCH_DIR="$ENVS_DIR/torch"

if [ ! -f "$COMFYUI/requirements.txt" ]; then
    echo "comfyui_envs: no ComfyUI in $COMFYUI: run scripts/comfyui_setup.sh first" >&2
    exit 1
fi
NAMES=("$@")
if [ ${#NAMES[@]} -eq 0 ]; then
    read -r -a NAMES <<< "${HONESTFACE_COMFYUI_ENV_NAMES:-${ALL_ENVS[*]}}"
fi

build_torch() {
    # torch and its dependencies alone, in a plain folder (pip install --target).
    local stamp="$TORCH_DIR/.honestface-torch" key
    key="$(cat scripts/torch-requirements.txt | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        return
    fi
    echo "comfyui_envs: installing torch into $TORCH_DIR"
    rm -rf "$TORCH_DIR" "$ENVS_DIR/.bootstrap"
    mkdir -p "$ENVS_DIR"
    "$BASE_PYTHON" -m venv "$ENVS_DIR/.bootstrap"  # a pip to install with
    "$ENVS_DIR/.bootstrap/bin/python" -m pip install -q --target "$TORCH_DIR" -r scripts/torch-requirements.txt
    rm -rf "$ENVS_DIR/.bootstrap"
    echo "$key" > "$stamp"
}

build_env() {
    local name="$1"
    local target="$ENVS_DIR/$name"
    local stamp="$target/.honestface-env"
    local key
    key="$name $(cat "${INPUTS[@]}" | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -x "$target/bin/python" ]; then
        echo "comfyui_envs: $name ready in $target"
        return
    fi
    echo "comfyui_envs: building $name in $target"
    local started=$SECONDS
    rm -rf "$target"
    mkdir -p "$ENVS_DIR"
    "$BASE_PYTHON" -m venv "$target"
    local py="$target/bin/python"
    local pip=("$py" -m pip install -q)
    "$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' | {
        read -r site; realpath "$TORCH_DIR" > "$site/honestface-torch.pth"; }
    "${pip[@]}" --upgrade pip
    grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$COMFYUI/requirements.txt" > "$target/comfyui-requirements.txt"
    "${pip[@]}" -r "$target/comfyui-requirements.txt"
    case "$name" in
        manager) ;;
        opencv-python) "${pip[@]}" opencv-python ;;
        opencv-headless) "${pip[@]}" opencv-python-headless ;;
        frontend-latest)
            "${pip[@]}" --upgrade comfyui-frontend-package comfyui-embedded-docs ;;
        *) echo "comfyui_envs: unknown environment '$name' (known: ${ALL_ENVS[*]})" >&2; exit 1 ;;
    esac
    "${pip[@]}" -r requirements.txt
    if [ "$name" = "opencv-headless" ]; then
        # A dependency may have brought the GUI build too; both write the same cv2 folder,
        # so remove the others and lay the headless files down again.
        "$py" -m pip uninstall -q -y opencv-python opencv-contrib-python 2>/dev/null || true
        "${pip[@]}" --force-reinstall --no-deps "opencv-python-headless==$("$py" -c \
            'import importlib.metadata as m; print(m.version("opencv-python-headless"))')"
    fi
    "$py" -c "import cv2, torch, onnxruntime, insightface; print('comfyui_envs: $name: cv2', cv2.__version__, '| torch', torch.__version__, 'from', torch.__file__)"
    echo "$key" > "$stamp"
    echo "comfyui_envs: $name built in $((SECONDS - started)) s"
}

build_torch
for name in "${NAMES[@]}"; do
    build_env "$name"
done
