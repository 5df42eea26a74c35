#!/usr/bin/env bash
# Edge agent memory while streaming, with and without a model or a WASM
# transform loaded.
#
# Starts a release hub and, side by side in the same run, six release
# edge agents replaying the BasicMotions / ACSF1 test splits in a loop at
# RATE readings/s: for each data set one without stages (baseline) and one
# running its int8 edge model on every window, and for BasicMotions one
# running the window-features WASM transform (transforms/dist), and one
# running both (two replays of BasicMotions at RATE each, one through the
# model, one through the transform), and the same two run by the small
# agent (built `--no-default-features`: no WASM compiler, the transform
# precompiled by `cloud-hub precompile`). Samples each agent's
# resident memory once a second for SECONDS and prints medians of VmRSS
# and of its two parts: RssAnon (private heap and stacks) and RssFile
# (pages of the binary and other files, shared and reclaimable), the
# records and predictions the hub received, and the stripped binary's size.
#
#   benches/edge_memory.sh [SECONDS] [RATE]      (defaults: 30 s, 1000 readings/s)
#
# BASELINE=path/to/old/edge-agent (e.g. a build of an earlier commit) adds
# the two agents without stages run by that binary, in the same run. Build
# it in its own CARGO_TARGET_DIR: built from a worktree into this one,
# cargo may then take this checkout's agent as up to date and run the old.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/rss.sh
secs=${1:-30}
rate=${2:-1000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
echo "building release binaries ..." >&2
# Apart: built together, cargo would unify their features and the agent
# would carry the hub's (the Fluvio client, `embedded-broker`).
cargo build --release --quiet -p cloud-hub
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# The small agent first, copied aside: the default build then replaces it
# in target/release.
cargo build --release --quiet -p edge-agent --no-default-features
cp "$bin/edge-agent" "$work/edge-agent-small"
cargo build --release --quiet -p edge-agent
mkdir "$work/modules"
cp transforms/dist/window-features.wasm "$work/modules/"
"$bin/cloud-hub" precompile --target "$(rustc -vV | sed -n 's/^host: //p')" "$work/modules/window-features.wasm" > /dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt=$(free_port); http=$(free_port)
printf '[broker]\nlisten = "127.0.0.1:%s"\nauth = "none"\n[http]\nlisten = "127.0.0.1:%s"\nauth = "none"\n[store]\npath = "store"\n' "$mqtt" "$http" > "$work/hub.toml"
"$bin/cloud-hub" serve --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
until curl -sf "http://127.0.0.1:$http/healthz" > /dev/null; do sleep 0.1; done

model_stage() { printf '[[stages]]\ntype = "inference"\nmodel = "%s"\n' "$PWD/models/$1"; }
features_stage() { # [module]
  printf '[[stages]]\ntype = "transform"\nstream = "s"\nchain = [{ wasm = "%s", config = { window = 100, sample_rate_hz = 10.0 } }]\n' \
    "${1:-$PWD/transforms/dist/window-features.wasm}"
}
# The model and the transform in one agent: a second replay of the same
# file at the same rate, stream "f", through the transform, while "s" goes
# through the model (each stage passes the other's stream through).
model_and_features() { # [module]
  printf '[[sources]]\ntype = "replay"\nname = "f"\npath = "%s"\nrate = %s\nloop = true\n' \
    "$PWD/models/data/BasicMotions/BasicMotions_TEST.ts" "$rate"
  model_stage basicmotions/edge.int8.json | sed '$a stream = "s"'
  features_stage "${1:-}" | sed 's/stream = "s"/stream = "f"/'
}
agent() { # name data stage-toml [binary]
  local stage="$3" exe="${4:-$bin/edge-agent}"
  cat > "$work/$1.toml" <<TOML
device_id = "$1"
data_dir = "state-$1"
[uplink]
url = "mqtt://127.0.0.1:$mqtt"
[[sources]]
type = "replay"
name = "s"
path = "$PWD/models/data/$2"
rate = $rate
loop = true
$stage
TOML
  "$exe" run --config "$work/$1.toml" > "$work/$1.log" 2>&1 &
  echo $!
}
declare -A pids
pids[basicmotions-no-model]=$(agent basicmotions-no-model BasicMotions/BasicMotions_TEST.ts "")
pids[acsf1-no-model]=$(agent acsf1-no-model ACSF1/ACSF1_TEST.ts "")
pids[basicmotions-edge-int8]=$(agent basicmotions-edge-int8 BasicMotions/BasicMotions_TEST.ts "$(model_stage basicmotions/edge.int8.json)")
pids[acsf1-edge-int8]=$(agent acsf1-edge-int8 ACSF1/ACSF1_TEST.ts "$(model_stage acsf1/edge.int8.json)")
pids[basicmotions-wasm-features]=$(agent basicmotions-wasm-features BasicMotions/BasicMotions_TEST.ts "$(features_stage)")
pids[basicmotions-int8-and-features]=$(agent basicmotions-int8-and-features BasicMotions/BasicMotions_TEST.ts "$(model_and_features)")
small="$work/edge-agent-small"
pids[basicmotions-no-model-small]=$(agent basicmotions-no-model-small BasicMotions/BasicMotions_TEST.ts "" "$small")
pids[basicmotions-int8-and-features-small]=$(agent basicmotions-int8-and-features-small BasicMotions/BasicMotions_TEST.ts \
  "$(model_and_features "$work/modules/window-features.wasm")" "$small")
names=(basicmotions-no-model basicmotions-edge-int8 basicmotions-wasm-features basicmotions-int8-and-features basicmotions-no-model-small basicmotions-int8-and-features-small acsf1-no-model acsf1-edge-int8)
if [ -n "${BASELINE:-}" ]; then
  pids[basicmotions-no-model-baseline]=$(agent basicmotions-no-model-baseline BasicMotions/BasicMotions_TEST.ts "" "$BASELINE")
  pids[acsf1-no-model-baseline]=$(agent acsf1-no-model-baseline ACSF1/ACSF1_TEST.ts "" "$BASELINE")
  names+=(basicmotions-no-model-baseline acsf1-no-model-baseline)
fi
args=(); for name in "${!pids[@]}"; do args+=("$name=${pids[$name]}"); done
sample_rss "$secs" "$work" "${args[@]}"
echo "| agent | model | VmRSS median | RssAnon | RssFile | VmRSS max | records at the hub | of which predictions |"
echo "|---|---|---|---|---|---|---|---|"
for name in "${names[@]}"; do
  python3 - "$name" "$(rss_cells "$work/$name.rss")" "http://127.0.0.1:$http/api/v1/devices/$name" <<'PY'
import json, sys, urllib.request
name, cells, url = sys.argv[1:]
d = json.load(urllib.request.urlopen(url))
preds = sum(t["predictions"] for t in d.get("predictions", {}).values())
stages = (d.get("last_heartbeat") or {}).get("stages", [])
wasm = [t["transform"] for s in stages for t in s.get("transforms", [])]
model = ", ".join(list(d.get("predictions", {})) + wasm) or "none"
print(f"| {name} | {model} | {cells} | {d['records']:,} | {preds:,} |")
PY
done
echo
echo "edge-agent binary (stripped): $(du -k "$bin/edge-agent" | cut -f1) KB; small (no WASM compiler): $(du -k "$work/edge-agent-small" | cut -f1) KB"
