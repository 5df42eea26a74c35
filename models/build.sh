#!/usr/bin/env bash
# Build every Conveyor demo model with one command:
#
#     models/build.sh              # all data sets
#     models/build.sh --datasets ACSF1
#
# Creates models/.venv (python3 -m venv) if it is missing, installs the pinned
# models/requirements.txt into it, then runs models/train.py, which trains,
# exports, quantises, evaluates and writes models/<dataset>/. Safe to rerun.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"

step() { printf '\n[models/build.sh] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
else
  step "reusing virtual environment $VENV"
fi

step "installing pinned requirements (models/requirements.txt)"
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off --quiet \
  -r "$HERE/requirements.txt"
"$VENV/bin/python" -c 'import torch, onnx, onnxruntime, numpy; print("torch", torch.__version__, "| onnx", onnx.__version__, "| onnxruntime", onnxruntime.__version__, "| numpy", numpy.__version__)'

step "training, exporting, quantising, evaluating"
"$VENV/bin/python" "$HERE/train.py" "$@"

step "done; onnxruntime's shared library for the Rust side:"
ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* 2>/dev/null || true
