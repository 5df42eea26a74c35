#!/usr/bin/env bash
# Takes the dashboard's screenshots in docs/dashboard/ (linked from the
# README): the dashboard's browser test, with a real hub and agents,
# writing a PNG of each page. Needs chromium and chromium-driver.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONVEYOR_SCREENSHOTS="$PWD/docs/dashboard" CONVEYOR_STRICT_BROWSER=1 \
  cargo test -p conveyor-e2e --test e2e dashboard:: -- --nocapture
ls -l docs/dashboard/*.png
