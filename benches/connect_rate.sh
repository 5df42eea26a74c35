#!/usr/bin/env bash
# Device connections per second at the hub's embedded broker, over TLS
# (mqtts://, a full handshake each: no session resumed) and over plain
# MQTT, in the same run: a release `cloud-hub serve` with WORKERS
# provisioned devices (`cloud-hub device add`; each connects with its
# secret through the gate), and `connect-rate` connecting, waiting for the
# CONNACK and disconnecting as each device, in a loop. The repeats of the
# two alternate (a fresh hub each), so both share the machine's noise.
#
#   benches/connect_rate.sh [REPEATS] [SECONDS]   (defaults: 5 repeats, 5 s each)
#
# WORKERS=4 (default) devices connect at once. Prints a Markdown table of
# medians. The client and the hub share this machine's cores: the
# client's half of each handshake is in the figure too.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-5}
secs=${2:-5}
workers=${WORKERS:-4}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet -p cloud-hub -p conveyor-demo --bin cloud-hub --bin connect-rate
bin="$CARGO_TARGET_DIR/release"

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$work/secrets"
for i in $(seq "$workers"); do
  "$bin/cloud-hub" device add "bench-$i" --store "$work/store" --out "$work/secrets" > /dev/null
done
"$bin/cloud-hub" tls init --store "$work/store" > /dev/null

run() { # tls(true|false) -> json summary
  local tls=$1 mqtt http scheme=mqtt ca=()
  mqtt=$(free_port); http=$(free_port)
  cat > "$work/hub.toml" <<EOF
[broker]
listen = "127.0.0.1:$mqtt"
tls = $tls
[broker.limits]
connects_per_minute = 0
[http]
listen = "127.0.0.1:$http"
[store]
path = "$work/store"
EOF
  "$bin/cloud-hub" serve --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
  local hub=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$http/healthz" > /dev/null && break
    sleep 0.1
  done
  if [ "$tls" = true ]; then scheme=mqtts; ca=(--ca "$work/store/tls/ca.pem"); fi
  local before after
  before=$(awk '{print $14+$15}' "/proc/$hub/stat")
  "$bin/connect-rate" --url "$scheme://127.0.0.1:$mqtt" "${ca[@]}" --secrets "$work/secrets" --seconds "$secs" > "$work/run.json"
  after=$(awk '{print $14+$15}' "/proc/$hub/stat")
  # The hub's CPU (user + system, in clock ticks) over the run, per connect.
  python3 -c 'import json,os,sys; r=json.load(open(sys.argv[1])); r["hub_cpu_ms_per_connect"]=(int(sys.argv[3])-int(sys.argv[2]))*1000/os.sysconf("SC_CLK_TCK")/max(r["connects"],1); print(json.dumps(r))' "$work/run.json" "$before" "$after"
  kill "$hub"; wait "$hub" 2>/dev/null || true
}

: > "$work/plain"; : > "$work/tls"
for _ in $(seq "$repeats"); do
  run false >> "$work/plain"
  run true >> "$work/tls"
done
echo "| $workers devices connecting at once | connects/s (median of $repeats) | connect p50 ms | connect p99 ms | hub CPU ms per connect | failed | runs (connects/s) |"
echo "|---|---|---|---|---|---|---|"
for kind in plain tls; do
  python3 - "$work/$kind" "$kind" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda k: statistics.median(r[k] for r in runs)
label = "mqtts:// (TLS 1.3, full handshake)" if sys.argv[2] == "tls" else "mqtt:// (plain)"
each = ", ".join(f"{r['connects_per_sec']:.0f}" for r in runs)
fails = sum(r['failed'] for r in runs)
first = next((r['first_failure'] for r in runs if r['first_failure']), None)
print(f"| {label} | {med('connects_per_sec'):,.0f} | {med('connect_ms_p50'):.2f} | {med('connect_ms_p99'):.2f} | {med('hub_cpu_ms_per_connect'):.3f} | {fails} | {each} |")
if first: print(f"first failure: {first}", file=sys.stderr)
PY
done
