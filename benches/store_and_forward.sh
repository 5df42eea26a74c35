#!/usr/bin/env bash
# Store-and-forward benchmark: an agent replays 1,000,000 records while the
# hub is down (everything goes to its durable log), then the hub comes up
# and the backlog drains. Reports the log's fill rate, the agent's resident
# memory with the backlog on disk, and the drain time and rate.
#
#   benches/store_and_forward.sh [RECORDS]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
cargo build --release --quiet -p cloud-hub -p edge-agent
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt=$(free_port); http=$(free_port)
cat > "$work/agent.toml" <<TOML
device_id = "bench-sf"
data_dir = "state"
[uplink]
url = "mqtt://127.0.0.1:$mqtt"
heartbeat_secs = 1.0
[log]
max_bytes = 1073741824
[[sources]]
type = "replay"
name = "motion"
path = "$PWD/models/data/BasicMotions/BasicMotions_TRAIN.ts"
rate = 0
loop = true
limit = $n
TOML
printf '[broker]\nlisten = "127.0.0.1:%s"\nauth = "none"\n[http]\nlisten = "127.0.0.1:%s"\nauth = "none"\n[store]\npath = "store"\n' "$mqtt" "$http" > "$work/hub.toml"

t0=$(date +%s.%N)
"$bin/edge-agent" run --config "$work/agent.toml" > "$work/agent.log" 2>&1 &
agent=$!
until grep -q "replay finished" "$work/agent.log"; do sleep 0.05; done
sleep 1 # the last chunks reach the log
t1=$(date +%s.%N)
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$agent/status)
log_mb=$(du -sm "$work/state/log" | cut -f1)

"$bin/cloud-hub" serve --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
t2=$(date +%s.%N)
until [ "$(curl -s "http://127.0.0.1:$http/api/v1/devices/bench-sf" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["records"])
except Exception: print(0)')" = "$n" ]; do sleep 0.2; done
t3=$(date +%s.%N)
wait $agent
python3 - "$n" "$t0" "$t1" "$t2" "$t3" "$rss_kb" "$log_mb" <<'PY'
import sys
n, t0, t1, t2, t3, rss, mb = int(sys.argv[1]), *map(float, sys.argv[2:6]), int(sys.argv[6]), sys.argv[7]
print(f"| records | fill: replay into the log, records/s | agent RSS with the backlog on disk | log on disk | drain after the hub is back | drain rate, records/s |")
print(f"|---|---|---|---|---|---|")
print(f"| {n:,} | {n/(t1-t0-1):,.0f} (upper bound: includes 1 s of settling) | {rss/1024:.1f} MB | {mb} MB | {t3-t2:.1f} s | {n/(t3-t2):,.0f} |")
PY
