#!/usr/bin/env bash
# Builds the dashboard into DIR (default cloud-hub/dashboard/dist) with the
# pinned packages of package-lock.json. Needs Node and npm (and the npm
# registry once, for `npm ci`); the hub itself never does: dist/ is
# committed and compiled into the binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/dist}"
cd "$here"
if [ ! -d node_modules/uplot ] || [ ! -d node_modules/esbuild ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
node build.mjs "$out"
