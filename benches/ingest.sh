#!/usr/bin/env bash
# Hub ingest benchmark, each scenario measured through the embedded broker
# (rumqttd, in-process link) and, in the same run, through mosquitto as an
# external broker (the baseline):
#   - flood: 1 and 10 agents replaying as fast as they can (the hub's
#     capacity; agents outrun it, so records are left behind: see "lost");
#   - sustained: 20,000 records/s in total from 1 and from 10 agents, then
#     50,000 and 100,000 from 10;
#   - latency at a moderate rate: 3 agents x 100 records/s.
#
#   benches/ingest.sh [REPEATS] [SECONDS]     (defaults: 3 repeats, 10 s each)
#
# BASELINE="path/to/old/cloud-hub demo" adds, for every row, the same
# scenario run by that command (e.g. a build of an earlier commit), its
# repeats interleaved with the current build's, so both share the
# machine's noise; the table then has a "build" column.
#
# SCENARIOS="10 0;3 100" (agents and records/s each, ';'-separated) and
# BROKERS="embedded" pick a subset. BROKERS="embedded embedded-tls" sets
# the embedded broker against itself serving mqtts:// (the demo's --tls:
# the agents verify the hub's certificate against its CA), in one run.
# BROKERS="embedded fluvio" sets the embedded broker against a local Fluvio
# cluster (the demo's --transport fluvio: an SC and one SPU on loopback).
#
# Prints a Markdown table of medians. Needs mosquitto (apt: mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
secs=${2:-10}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
cargo build --release --quiet -p conveyor-demo
current="$CARGO_TARGET_DIR/release/conveyor-demo"
baseline=${BASELINE:-}
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # demo-command broker agents rate -> json summary
  local demo=$1; shift
  local broker=$1 agents=$2 rate=$3 extra=() mosq_pid=""
  if [ "$broker" = mosquitto ]; then
    # A fresh mosquitto per run, so no run inherits another's backlog.
    local port; port=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 100\n' "$port" > "$work/mosquitto.conf"
    "$mosq" -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
    mosq_pid=$!
    sleep 0.5
    extra=(--broker-url "mqtt://127.0.0.1:$port")
  elif [ "$broker" = embedded-tls ]; then
    extra=(--tls)
  elif [ "$broker" = fluvio ]; then
    # A local Fluvio cluster the demo starts (an SC and one SPU), fresh per
    # run; every agent streams through it. Needs CONVEYOR_FLUVIO_DIR or
    # ../shared/tools/fluvio.
    extra=(--transport fluvio)
  fi
  $demo --no-inference --agents "$agents" --rate "$rate" --duration "$secs" --json \
    --mqtt-port 0 --http-port 0 "${extra[@]}" 2>/dev/null
  if [ -n "$mosq_pid" ]; then kill "$mosq_pid"; wait "$mosq_pid" 2>/dev/null || true; fi
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

builds=(current)
[ -n "$baseline" ] && builds=(baseline current)
echo "| scenario | broker | build | records/s (median of $repeats) | latency p50 ms | latency p99 ms | lost | duplicated |"
echo "|---|---|---|---|---|---|---|---|"
# agents, records/s per agent (0 = as fast as the agent can)
IFS=';' read -r -a scenarios <<< "${SCENARIOS:-1 0;10 0;1 20000;10 2000;10 5000;10 10000;3 100}"
read -r -a brokers <<< "${BROKERS:-embedded mosquitto}"
for scenario in "${scenarios[@]}"; do
  set -- $scenario
  agents=$1 rate=$2
  for broker in "${brokers[@]}"; do
    for b in "${builds[@]}"; do : > "$work/results-$b"; done
    for _ in $(seq "$repeats"); do
      for b in "${builds[@]}"; do
        if [ "$b" = baseline ]; then demo=$baseline; else demo=$current; fi
        run "$demo" "$broker" "$agents" "$rate" >> "$work/results-$b"
        echo >> "$work/results-$b"
      done
    done
    for b in "${builds[@]}"; do
    python3 - "$work/results-$b" "$agents" "$rate" "$broker" "$b" <<'PY'
import json, statistics, sys
text = open(sys.argv[1]).read()
dec = json.JSONDecoder(); runs = []; i = 0
while i < len(text):
    if text[i].isspace(): i += 1; continue
    obj, i = dec.raw_decode(text, i); runs.append(obj)
agents, rate, broker, build = sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
med = lambda k: statistics.median(r[k] for r in runs)
label = f"{agents} agent(s), {'unthrottled' if rate == 0 else f'{rate:g} rec/s each'}"
print(f"| {label} | {broker} | {build} | {med('ingest_records_per_sec'):,.0f} | {med('latency_p50_ms'):.1f} | {med('latency_p99_ms'):.1f} | {sum(r['records_lost'] for r in runs)} | {sum(r['records_duplicated'] for r in runs)} |")
PY
    done
  done
done
