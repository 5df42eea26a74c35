#!/usr/bin/env bash
# Builds the example transforms to WebAssembly, reproducibly, and copies
# them to OUT_DIR/<transform name>.wasm (default: transforms/dist), with
# dist/positive.wasm compiled from wat/positive.wat.
#
#   transforms/build.sh [OUT_DIR]
#
# transforms/dist is committed; `cargo test -p conveyor-transform-sdk`
# (tests/dist_matches_source.rs) rebuilds into a temporary directory and
# fails if the bytes differ. After changing a transform or the SDK: run
# this script and commit transforms/dist.
#
# Same bytes on any machine and from any clone path, given the same
# toolchain (rustc -V is recorded in dist/rustc-version.txt): paths that
# end up in the module (panic locations) are remapped, symbols stripped,
# and codegen is one unit with full LTO.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/transforms/dist}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# Its own target dir, so that it can run inside a `cargo test` without
# waiting on that build's lock, and so its RUSTFLAGS do not churn the
# fingerprints of the normal build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}/wasm-transforms"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"

flags="-C strip=symbols -C debuginfo=0"
flags+=" --remap-path-prefix=$root=/conveyor"
for src in "$cargo_home"/registry/src/*/ "$cargo_home"/git/checkouts/; do
  [ -d "$src" ] && flags+=" --remap-path-prefix=${src%/}=/cargo-src"
done
flags+=" --remap-path-prefix=$cargo_home=/cargo"
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
export RUSTFLAGS="$flags"
export CARGO_PROFILE_RELEASE_LTO=fat
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_PROFILE_RELEASE_PANIC=abort
export CARGO_INCREMENTAL=0

# crate dir -> transform name (the name in its conveyor.transform section)
transforms=(
  "passthrough:passthrough"
  "scale:scale"
  "features:window-features"
  "threshold:threshold"
  "redact-pos:redact-pos"
)

packages=()
for t in "${transforms[@]}"; do packages+=(-p "transform-${t%%:*}"); done
cargo build --release --locked --target wasm32-unknown-unknown "${packages[@]}" \
  --manifest-path "$root/Cargo.toml"

for t in "${transforms[@]}"; do
  crate="transform_${t%%:*}"
  cp "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/${crate//-/_}.wasm" "$out/${t#*:}.wasm"
done

cargo run --quiet --release --locked --manifest-path "$root/Cargo.toml" \
  -p conveyor-transform-sdk --example wat2wasm -- \
  "$root/transforms/wat/positive.wat" "$out/positive.wasm"

rustc -V >"$out/rustc-version.txt"
ls -l "$out"/*.wasm | awk '{ printf "%8d  %s\n", $5, $NF }'
