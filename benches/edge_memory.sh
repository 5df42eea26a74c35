#!/usr/bin/env bash
# Edge agent memory while streaming, with and without a model loaded.
#
# Starts a release hub and, side by side in the same run, three release
# edge agents replaying the BasicMotions / ACSF1 test splits in a loop at
# RATE readings/s: one without stages (baseline), one running the
# BasicMotions int8 edge model on every window, one running the ACSF1 int8
# edge model. Samples each agent's resident memory (VmRSS) once a second
# for SECONDS and prints the median and maximum, the predictions the hub
# received, and the stripped binary's size.
#
#   benches/edge_memory.sh [SECONDS] [RATE]      (defaults: 30 s, 1000 readings/s)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
rate=${2:-1000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
echo "building release binaries ..." >&2
cargo build --release --quiet -p cloud-hub -p edge-agent
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt=$(free_port); http=$(free_port)
printf '[broker]\nlisten = "127.0.0.1:%s"\n[http]\nlisten = "127.0.0.1:%s"\n[store]\npath = "store"\n' "$mqtt" "$http" > "$work/hub.toml"
"$bin/cloud-hub" serve --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
until curl -sf "http://127.0.0.1:$http/healthz" > /dev/null; do sleep 0.1; done

agent() { # name data model
  local stage=""
  if [ -n "$3" ]; then
    stage=$(printf '[[stages]]\ntype = "inference"\nmodel = "%s"\n' "$PWD/models/$3")
  fi
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
  "$bin/edge-agent" run --config "$work/$1.toml" > "$work/$1.log" 2>&1 &
  echo $!
}
declare -A pids
pids[no-model]=$(agent no-model BasicMotions/BasicMotions_TEST.ts "")
pids[basicmotions-edge-int8]=$(agent basicmotions-edge-int8 BasicMotions/BasicMotions_TEST.ts basicmotions/edge.int8.json)
pids[acsf1-edge-int8]=$(agent acsf1-edge-int8 ACSF1/ACSF1_TEST.ts acsf1/edge.int8.json)
echo "sampling VmRSS for $secs s at $rate readings/s per agent ..." >&2
for _ in $(seq "$secs"); do
  sleep 1
  for name in "${!pids[@]}"; do
    awk '/VmRSS/ {print $2}' "/proc/${pids[$name]}/status" >> "$work/$name.rss"
  done
done
echo "| agent | model | RSS median | RSS max | records at the hub | of which predictions |"
echo "|---|---|---|---|---|---|"
for name in no-model basicmotions-edge-int8 acsf1-edge-int8; do
  python3 - "$name" "$work/$name.rss" "http://127.0.0.1:$http/api/v1/devices/$name" <<'PY'
import json, statistics, sys, urllib.request
name, rss_file, url = sys.argv[1:]
kb = [int(l) for l in open(rss_file)]
d = json.load(urllib.request.urlopen(url))
preds = sum(t["predictions"] for t in d.get("predictions", {}).values())
model = ", ".join(d.get("predictions", {})) or "none"
print(f"| {name} | {model} | {statistics.median(kb)/1024:.1f} MB | {max(kb)/1024:.1f} MB | {d['records']:,} | {preds:,} |")
PY
done
echo
echo "edge-agent binary (stripped): $(du -k "$bin/edge-agent" | cut -f1) KB"
