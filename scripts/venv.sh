# Sourced by the set-up scripts: creates or updates the virtual environment
# ($HONESTFACE_VENV, default .venv), installs torch and the package with the extras in
# $HONESTFACE_EXTRAS (e.g. "[face,train,test]"), and sets PY to its Python.
VENV="${HONESTFACE_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$PY" -m pip install -q -e ".${HONESTFACE_EXTRAS:-}"
