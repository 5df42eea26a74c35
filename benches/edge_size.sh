#!/usr/bin/env bash
# The edge agent's stripped binary, built several ways side by side in one
# run: the default build (with the WASM compiler), the small build without
# it (`--no-default-features`: runs transforms the hub precompiled), the
# small build with fat LTO and one codegen unit, and both builds for
# aarch64. Prints a Markdown table of bytes and ratios to the default.
#
#   benches/edge_size.sh
#
# Each variant is the agent built alone (`-p edge-agent`), so it carries
# none of the hub's features. The profile overrides are environment
# variables (CARGO_PROFILE_RELEASE_*), which rebuild every crate: the
# run takes most of an hour on 2 cores, cold.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rows=()
# build NAME DESCRIPTION [ENV=VALUE...] -- [CARGO ARGS...]: the binary is
# copied aside at once (the next build of the same profile replaces it).
build() {
  local name=$1 what=$2 envs=() args=()
  shift 2
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  [ "$#" -gt 0 ] && shift
  args=("$@")
  echo "building $name ..." >&2
  local json
  json=$(env "${envs[@]}" cargo build --release --locked --quiet -p edge-agent --bin edge-agent \
    --message-format=json "${args[@]}")
  local exe
  exe=$(python3 -c '
import json, sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("target", {}).get("name") == "edge-agent" and m.get("executable"):
        print(m["executable"])' <<< "$json")
  cp "$exe" "$out/$name"
  rows+=("$name|$what")
}
build default 'x86_64, `[profile.release]` (codegen-units 4, thin local LTO), with the compiler' --
build small 'x86_64, `--no-default-features` (no Cranelift)' -- --no-default-features
build small-fat 'x86_64, `--no-default-features`, `CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1`' \
  CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 -- --no-default-features
if rustup target list --installed | grep -qx aarch64-unknown-linux-gnu && command -v aarch64-linux-gnu-gcc > /dev/null; then
  build aarch64 'aarch64-unknown-linux-gnu, `[profile.release]`, with the compiler' -- --target aarch64-unknown-linux-gnu
  build aarch64-small 'aarch64-unknown-linux-gnu, `--no-default-features`' -- --no-default-features --target aarch64-unknown-linux-gnu
else
  echo "no aarch64 cross toolchain: the aarch64 rows are left out" >&2
fi
base=$(stat -c %s "$out/default")
echo "| build | bytes (stripped) | vs default |"
echo "|---|---|---|"
for r in "${rows[@]}"; do
  name=${r%%|*}
  size=$(stat -c %s "$out/$name")
  python3 -c "import sys; print(f'| {sys.argv[1]} | {int(sys.argv[2]):,} | {int(sys.argv[2])/int(sys.argv[3]):.2f}x |')" "${r#*|}" "$size" "$base"
done
