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
# both (see benches/ort-env.sh). Prints Markdown tables on stdout; progress
# goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
# sets $lib; ort_export
. benches/ort-env.sh

echo "inference.sh: building inference-bench (release)" >&2
cargo build --release --quiet -p inference-bench >&2
# through the environment, so the `profile` subcommand (tract only) takes it too
ort_export
exec "$CARGO_TARGET_DIR/release/inference-bench" "$@"
