# Sourced by the set-up scripts: creates or updates the virtual environment
# ($HONESTFACE_VENV, default .venv), installs torch (the tested release, from
# scripts/torch-requirements.txt) and the package with the extras in $HONESTFACE_EXTRAS
# (e.g. "[torch,face,train,test]"), and sets PY to its Python. The package does not depend
# on torch itself (ComfyUI provides it); the `torch` extra does.
VENV="${HONESTFACE_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q -r scripts/torch-requirements.txt
"$PY" -m pip install -q -e ".${HONESTFACE_EXTRAS:-[torch]}"
