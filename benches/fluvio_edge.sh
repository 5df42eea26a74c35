#!/usr/bin/env bash
# What the Fluvio client costs the edge agent: its binary size, and its
# resident memory while streaming, side by side in one run.
#
# Builds the release edge-agent twice, without and with the cargo feature
# `fluvio`, starts a release hub reading both its embedded MQTT broker and
# a local Fluvio cluster (an SC and one SPU from Fluvio's fluvio-run), and
# runs three agents replaying the BasicMotions test split in a loop at RATE
# readings/s: the plain build on MQTT (the baseline), the Fluvio build on
# MQTT (the cost of carrying the client) and the Fluvio build on Fluvio.
# Samples each agent's resident memory once a second for SECONDS and
# prints medians, the records the hub stored of each, and both binaries'
# sizes.
#
#   benches/fluvio_edge.sh [SECONDS] [RATE]      (defaults: 30 s, 1000 readings/s)
#
# Needs Fluvio's cluster binaries: CONVEYOR_FLUVIO_DIR, or
# ../shared/tools/fluvio beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/rss.sh
secs=${1:-30}
rate=${2:-1000}
F=${CONVEYOR_FLUVIO_DIR:-../shared/tools/fluvio}
[ -x "$F/fluvio-run" ] || { echo "no fluvio-run in $F (set CONVEYOR_FLUVIO_DIR)" >&2; exit 1; }
F=$(cd "$F" && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
echo "building release binaries (edge-agent without and with fluvio, cloud-hub) ..." >&2
cargo build --release --quiet -p edge-agent
cp "$bin/edge-agent" "$work/edge-agent-plain"
cargo build --release --quiet -p edge-agent --features fluvio
cp "$bin/edge-agent" "$work/edge-agent-fluvio"
cargo build --release --quiet -p cloud-hub

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sc=$(free_port); sc_priv=$(free_port); spu=$(free_port); spu_priv=$(free_port)
export FLV_PROFILE_PATH="$work/profile.toml"
"$F/fluvio-run" sc --local "$work/sc" --bind-public "127.0.0.1:$sc" --bind-private "127.0.0.1:$sc_priv" > "$work/sc.log" 2>&1 &
until (exec 3<>"/dev/tcp/127.0.0.1/$sc") 2>/dev/null; do sleep 0.2; done
"$F/fluvio" profile add bench "127.0.0.1:$sc" local > /dev/null
"$F/fluvio" cluster spu register --id 5001 --public-server "127.0.0.1:$spu" --private-server "127.0.0.1:$spu_priv" > /dev/null
"$F/fluvio-run" spu -i 5001 -p "127.0.0.1:$spu" -v "127.0.0.1:$spu_priv" --sc-addr "127.0.0.1:$sc_priv" \
  --log-base-dir "$work/spu" > "$work/spu.log" 2>&1 &
until "$F/fluvio" cluster spu list 2>/dev/null | grep -q Online; do sleep 0.2; done

mqtt=$(free_port); http=$(free_port)
printf '[broker]\nlisten = "127.0.0.1:%s"\nauth = "none"\n[http]\nlisten = "127.0.0.1:%s"\nauth = "none"\n[store]\npath = "store"\n[fluvio]\nurl = "fluvio://127.0.0.1:%s"\n' \
  "$mqtt" "$http" "$sc" > "$work/hub.toml"
"$bin/cloud-hub" serve --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
until curl -sf "http://127.0.0.1:$http/healthz" > /dev/null; do sleep 0.1; done

agent() { # name binary url
  cat > "$work/$1.toml" <<TOML
device_id = "$1"
data_dir = "state-$1"
[uplink]
url = "$3"
[[sources]]
type = "replay"
name = "s"
path = "$PWD/models/data/BasicMotions/BasicMotions_TEST.ts"
rate = $rate
loop = true
TOML
  "$work/$2" run --config "$work/$1.toml" > "$work/$1.log" 2>&1 &
  echo $!
}
declare -A pids
pids[plain-build-mqtt]=$(agent plain-build-mqtt edge-agent-plain "mqtt://127.0.0.1:$mqtt")
pids[fluvio-build-mqtt]=$(agent fluvio-build-mqtt edge-agent-fluvio "mqtt://127.0.0.1:$mqtt")
pids[fluvio-build-fluvio]=$(agent fluvio-build-fluvio edge-agent-fluvio "fluvio://127.0.0.1:$sc")
args=(); for name in "${!pids[@]}"; do args+=("$name=${pids[$name]}"); done
sample_rss "$secs" "$work" "${args[@]}"
echo "| agent (build, transport) | VmRSS median | RssAnon | RssFile | VmRSS max | records at the hub |"
echo "|---|---|---|---|---|---|"
for name in plain-build-mqtt fluvio-build-mqtt fluvio-build-fluvio; do
  python3 - "$name" "$(rss_cells "$work/$name.rss")" "http://127.0.0.1:$http/api/v1/devices/$name" <<'PY'
import json, sys, urllib.request
name, cells, url = sys.argv[1:]
d = json.load(urllib.request.urlopen(url))
print(f"| {name} | {cells} | {d['records']:,} |")
PY
done
echo
plain=$(stat -c %s "$work/edge-agent-plain"); flv=$(stat -c %s "$work/edge-agent-fluvio")
python3 -c "import sys; p,f=map(int,sys.argv[1:]); print(f'edge-agent binary (stripped): {p:,} bytes without fluvio, {f:,} with (+{f-p:,} bytes, {f/p:.3f}x)')" "$plain" "$flv"
