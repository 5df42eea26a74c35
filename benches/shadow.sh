#!/usr/bin/env bash
# What a shadow run costs the agent: one release agent replaying the
# BasicMotions test split in a loop at RATE readings/s through its int8
# model (basicmotions-edge 1.0.0), alone (the baseline) and with the
# retrained candidate (basicmotions-edge 2.0.0, int8) running beside it in
# shadow (`shadow` in agent.toml: the code path a rollout's shadow phase
# uses). The two configurations alternate, ROUNDS times each, SECONDS s
# per run, against one release hub; medians are reported.
#
# A third configuration runs the champion's own model in shadow (a
# control): the candidate's run time against the same model's in the
# same position, after the champion, tells the model's cost from the
# position's.
#
# Per run: the agent's CPU (cores, over the run after a 5 s warm-up), its
# VmRSS and RssAnon at the end, and, from its last heartbeat, the stage's
# per-window run time of each model (p50/p99 over the recent windows:
# the shadow's tally). The candidate runs after the champion on the
# pipeline thread, so a window's stage time grows by the candidate's.
#
#   benches/shadow.sh [ROUNDS] [SECONDS] [RATE]     (defaults: 3, 20, 1000)
#
# Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-20}
rate=${3:-1000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
echo "building release binaries ..." >&2
cargo build --release --quiet -p cloud-hub -p edge-agent
exec python3 - "$rounds" "$seconds" "$rate" "$CARGO_TARGET_DIR/release" "$PWD" <<'PY'
import os, shutil, statistics, subprocess, sys, tempfile, time

rounds, seconds, rate = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
bin_dir, repo = sys.argv[4], sys.argv[5]
work = tempfile.mkdtemp(prefix="conveyor-shadow-bench-")
procs = []
sys.path.insert(0, os.path.join(repo, "benches"))
from hub_api import cpu_s, get, memory, start_hub, stop
WARMUP = 5.0

def cleanup():
    stop(procs)
    shutil.rmtree(work, ignore_errors=True)

SHADOWS = {"alone": None, "candidate": "v2/edge.int8.json", "control": "edge.int8.json"}

def run(n, mode):
    name = f"shadow-bench-{n}"
    shadow = SHADOWS[mode]
    shadow_line = f'shadow = "{repo}/models/basicmotions/{shadow}"\n' if shadow else ""
    cfg = f"{work}/{name}.toml"
    with open(cfg, "w") as f:
        f.write(f'''device_id = "{name}"
data_dir = "{work}/state-{name}"
[uplink]
url = "mqtt://127.0.0.1:{mqtt}"
heartbeat_secs = 1.0
[[sources]]
type = "replay"
name = "motion"
path = "{repo}/models/data/BasicMotions/BasicMotions_TEST.ts"
rate = {rate}
loop = true
[[stages]]
type = "inference"
name = "classify"
model = "{repo}/models/basicmotions/edge.int8.json"
{shadow_line}''')
    agent = subprocess.Popen([f"{bin_dir}/edge-agent", "run", "--config", cfg],
                             stdout=subprocess.DEVNULL, stderr=open(f"{work}/{name}.log", "w"))
    procs.append(agent)
    time.sleep(WARMUP)
    c0, t0 = cpu_s(agent.pid), time.time()
    time.sleep(seconds)
    cpu = (cpu_s(agent.pid) - c0) / (time.time() - t0)
    mem = memory(agent.pid)
    time.sleep(1.5)  # one more heartbeat
    hb = (get(f"/api/v1/devices/{name}") or {}).get("last_heartbeat") or {}
    stage = next((s for s in hb.get("stages", []) if s.get("name") == "classify"), {})
    stop([agent])
    if agent.returncode not in (0, -15):
        sys.exit(f"agent exited {agent.returncode}: see {work}/{name}.log")
    return {"cpu": cpu, "rss": mem["VmRSS"], "anon": mem["RssAnon"],
            "windows": stage.get("windows", 0), "shadow": stage.get("shadow")}

try:
    hub, mqtt, http = start_hub(bin_dir, work)
    procs.append(hub)
    results = {mode: [] for mode in SHADOWS}
    n = 0
    for r in range(rounds):
        for mode in SHADOWS:
            print(f"round {r + 1}/{rounds}, {mode} ...", file=sys.stderr)
            results[mode].append(run(n, mode))
            n += 1
    med = lambda rows, k: statistics.median(x[k] for x in rows)
    a, b = results["alone"], results["candidate"]
    tallies = lambda rows: [x["shadow"] for x in rows if x["shadow"]]
    sh, ctl = tallies(b), tallies(results["control"])
    if len(sh) != len(b) or len(ctl) != rounds:
        sys.exit("a shadow run reported no shadow tally")
    ms = lambda k, rows=sh: statistics.median(s[k] for s in rows)
    print(f"| agent, {rate:g} readings/s, BasicMotions int8 | alone | with the candidate in shadow | ratio |")
    print("|---|---|---|---|")
    print(f"| CPU (cores) | {med(a, 'cpu'):.3f} | {med(b, 'cpu'):.3f} | {med(b, 'cpu') / med(a, 'cpu'):.2f}x |")
    print(f"| VmRSS | {med(a, 'rss'):.1f} MB | {med(b, 'rss'):.1f} MB | +{med(b, 'rss') - med(a, 'rss'):.1f} MB |")
    print(f"| RssAnon | {med(a, 'anon'):.1f} MB | {med(b, 'anon'):.1f} MB | +{med(b, 'anon') - med(a, 'anon'):.1f} MB |")
    print(f"\nPer window, from the shadow's tally (medians of {len(sh)} runs): the champion "
          f"p50 {ms('champion_p50_us'):.0f} µs / p99 {ms('champion_p99_us'):.0f} µs, the candidate "
          f"p50 {ms('candidate_p50_us'):.0f} µs / p99 {ms('candidate_p99_us'):.0f} µs; "
          f"agreement {statistics.median(s['agreed'] / s['windows'] for s in sh):.3f} over "
          f"{statistics.median(s['windows'] for s in sh):.0f} windows, {sum(s['errors'] for s in sh)} errors.")
    print(f"\nControl (the champion's own model in shadow): champion p50 {ms('champion_p50_us', ctl):.0f} µs / "
          f"p99 {ms('champion_p99_us', ctl):.0f} µs, the same model after it p50 {ms('candidate_p50_us', ctl):.0f} µs / "
          f"p99 {ms('candidate_p99_us', ctl):.0f} µs; agreement {statistics.median(s['agreed'] / s['windows'] for s in ctl):.3f}; "
          f"VmRSS {med(results['control'], 'rss'):.1f} MB, CPU {med(results['control'], 'cpu'):.3f} cores.")
    print(f"\n{rounds} rounds, {seconds:g} s each after a {WARMUP:g} s warm-up, alternating.")
finally:
    cleanup()
PY
