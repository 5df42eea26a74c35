#!/usr/bin/env bash
# Single-thread benchmark of WASM transforms: the edge agent's wasmtime
# host (TransformInstance::call, fuel on) against the same transforms
# compiled natively (conveyor_transform_sdk::native::Runner, with the same
# Reading <-> ABI batch encoding around it), on passthrough and
# window-features at several batch sizes; then compile / cached-load /
# instantiate times of every module in transforms/dist. One process.
#
#   benches/transforms.sh [transform-bench args...]
#       e.g. benches/transforms.sh --seconds 0.5 --reps 9 --json /tmp/transforms.json
#            benches/transforms.sh --batch-sizes 1,4,16,64,256
#
# Prints Markdown tables on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
echo "transforms.sh: building transform-bench (release)" >&2
cargo build --release --quiet -p transform-bench >&2
exec "$CARGO_TARGET_DIR/release/transform-bench" "$@"
