#!/usr/bin/env bash
# Single-thread inference benchmark: tract (the edge agent's engine, through
# its own loader) against ONNX Runtime, on every model in models/*/
# (edge.int8, edge.fp32, hub.fp32), one window per call, in one process.
#
#   benches/inference.sh [inference-bench args...]
#       e.g. benches/inference.sh --seconds 3 --json /tmp/inference.json
#            benches/inference.sh models/acsf1/edge.int8.json
#            benches/inference.sh profile models/acsf1/edge.int8.json
#
# ONNX Runtime comes from the onnxruntime wheel: the one in models/.venv if
# that venv has it, else a venv of our own (benches/.venv-ort, created on the
# first run with pip install onnxruntime==1.32.0). ORT_DYLIB_PATH overrides
# both. Prints Markdown tables on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
ort_version=1.32.0

find_ort() { # venv -> path of libonnxruntime.so.* in it, or nothing
  { find "$1" -path '*/onnxruntime/capi/libonnxruntime.so*' -type f 2>/dev/null || true; } | sort | tail -n 1
}

lib="${ORT_DYLIB_PATH:-}"
if [ -z "$lib" ] && [ -d models/.venv ]; then
  lib=$(find_ort models/.venv)
  if [ -n "$lib" ]; then echo "inference.sh: ONNX Runtime from models/.venv: $lib" >&2; fi
fi
if [ -z "$lib" ]; then
  venv=benches/.venv-ort
  lib=$(find_ort "$venv")
  if [ -z "$lib" ]; then
    echo "inference.sh: creating $venv with onnxruntime==$ort_version" >&2
    if python3 -m venv "$venv" >&2 && "$venv/bin/pip" install --quiet "onnxruntime==$ort_version" >&2; then
      lib=$(find_ort "$venv")
    else
      echo "inference.sh: could not install onnxruntime; measuring tract only" >&2
    fi
  fi
  if [ -n "$lib" ]; then echo "inference.sh: ONNX Runtime from $venv: $lib" >&2; fi
fi

echo "inference.sh: building inference-bench (release)" >&2
cargo build --release --quiet -p inference-bench >&2
# through the environment, so the `profile` subcommand (tract only) takes it too
if [ -n "$lib" ]; then export ORT_DYLIB_PATH="$lib"; else unset ORT_DYLIB_PATH; fi
exec "$CARGO_TARGET_DIR/release/inference-bench" "$@"
