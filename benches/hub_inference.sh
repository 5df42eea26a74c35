#!/usr/bin/env bash
# Hub inference throughput and latency on the CPU at batch sizes 1, 8, 32,
# 128: tract (the hub's backend) against ONNX Runtime, one thread per model
# call, in one process. Per hub model (models/*/hub.fp32.json) and batch
# size B: one model call of B windows, and the hub's dynamic batcher
# (max_batch B, max_delay 2 ms, 1 and 2 workers) under a closed loop of
# 2 B clients. --tract-fixed-batch adds tract with a plan per B. See
# benches/inference/README.md.
#
#   benches/hub_inference.sh [inference-bench hub args...]
#       e.g. benches/hub_inference.sh --seconds 2 --json /tmp/hub_inference.json
#            benches/hub_inference.sh --models models/acsf1/hub.fp32.json --batches 1,32
#
# ONNX Runtime is found as for benches/inference.sh (benches/ort-env.sh).
# Prints Markdown tables on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
# sets $lib; ort_export
. benches/ort-env.sh

echo "hub_inference.sh: building inference-bench (release)" >&2
cargo build --release --quiet -p inference-bench >&2
ort_export
exec "$CARGO_TARGET_DIR/release/inference-bench" hub "$@"
