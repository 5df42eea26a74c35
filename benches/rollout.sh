#!/usr/bin/env bash
# A fleet rollout over AGENTS real agent processes (default 50): how long
# each wave takes, the hub's CPU and memory while it drives the rollout
# (against the same hub over the same time just before, the fleet
# streaming and no rollout: the baseline), and the bytes each agent
# downloads.
#
# Starts a release hub and AGENTS release edge agents, each replaying the
# BasicMotions test split in a loop at RATE readings/s through its int8
# model (stage `classify`, tag fleet=bench). Then rolls basicmotions-edge
# 2.0.0 out with waves 1,10%,50%,100%, a SOAK s soak and the accuracy gate
# (the replayed split is labelled), and reads the rollout's recorded steps
# for the time of each wave: from the wave's start to the next wave's
# start (the last: to "completed").
#
#   benches/rollout.sh [AGENTS] [SOAK] [RATE]     (defaults: 50, 5, 100)
#
# Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-50}
soak=${2:-5}
rate=${3:-100}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
echo "building release binaries ..." >&2
cargo build --release --quiet -p cloud-hub -p edge-agent
exec python3 - "$agents" "$soak" "$rate" "$CARGO_TARGET_DIR/release" "$PWD" <<'PY'
import json, os, shutil, subprocess, sys, tempfile, time

agents, soak, rate = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
bin_dir, repo = sys.argv[4], sys.argv[5]
work = tempfile.mkdtemp(prefix="conveyor-rollout-bench-")
procs = []
sys.path.insert(0, os.path.join(repo, "benches"))
from hub_api import api, cpu_s, get, memory, served, start_hub, stop

def cleanup():
    stop(procs)
    shutil.rmtree(work, ignore_errors=True)

try:
    hub, mqtt, http = start_hub(bin_dir, work)
    procs.append(hub)
    key = get("/api/v1/keys")["keys"][0]["public"]
    env = dict(os.environ, CONVEYOR_HUB=f"http://127.0.0.1:{http}")
    out = subprocess.run([f"{bin_dir}/cloud-hub", "artifact", "push",
                          f"{repo}/models/basicmotions/v2/edge.int8.json"], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"push failed: {out.stdout}{out.stderr}")
    names = [f"bench-{i:03}" for i in range(agents)]
    print(f"starting {agents} agents ...", file=sys.stderr)
    for name in names:
        with open(f"{work}/{name}.toml", "w") as f:
            f.write(f'''device_id = "{name}"
data_dir = "{work}/state-{name}"
tags = {{ fleet = "bench" }}
[uplink]
url = "mqtt://127.0.0.1:{mqtt}"
heartbeat_secs = 2.0
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
[ota]
trusted_keys = ["{key}"]
url = "http://127.0.0.1:{http}"
''')
        procs.append(subprocess.Popen([f"{bin_dir}/edge-agent", "run", "--config", f"{work}/{name}.toml"],
                                      stdout=subprocess.DEVNULL, stderr=open(f"{work}/{name}.log", "w")))
    # Every agent reported its state and has labelled predictions.
    deadline = time.time() + 300
    while True:
        ready = 0
        for name in names:
            d = get(f"/api/v1/devices/{name}") or {}
            t = (d.get("predictions") or {}).get("basicmotions-edge@1.0.0-int8") or {}
            st = get(f"/api/v1/devices/{name}/state") or {}
            ready += t.get("scored", 0) >= 3 and st.get("tags", {}).get("fleet") == "bench"
        if ready == agents: break
        if time.time() > deadline: sys.exit(f"only {ready} of {agents} agents ready after 300 s")
        time.sleep(1)

    # Baseline: the hub over the same span, the fleet streaming, no rollout.
    def span(seconds):
        c0, t0 = cpu_s(hub.pid), time.time()
        time.sleep(seconds)
        return (cpu_s(hub.pid) - c0) / (time.time() - t0)
    print("baseline ...", file=sys.stderr)
    base_cpu = span(15)
    base_mem = memory(hub.pid)

    print("rollout ...", file=sys.stderr)
    with open(f"/proc/{hub.pid}/clear_refs", "w") as f:
        f.write("5")
    bytes0, c0, t0 = served(), cpu_s(hub.pid), time.time()
    code, body = api("POST", "/api/v1/rollouts", {
        "stage": "classify", "target": {"model": "basicmotions-edge@2.0.0-int8"},
        "tags": {"fleet": "bench"}, "waves": "1,10%,50%,100%", "soak_s": soak,
        "device_timeout_s": 120, "gates": {"accuracy_margin": 0.1, "min_windows": 3}, "by": "bench"})
    if code != 201:
        sys.exit(f"rollout start: {code} {body}")
    rid = json.loads(body)["id"]
    while True:
        r = get(f"/api/v1/rollouts/{rid}")
        if r["state"] != "running": break
        time.sleep(0.5)
    wall = time.time() - t0
    roll_cpu = (cpu_s(hub.pid) - c0) / wall
    roll_mem = memory(hub.pid)
    bytes_per_agent = (served() - bytes0) / agents
    if r["state"] != "completed":
        sys.exit(f"rollout ended {r['state']}: {r.get('reason')}")
    steps = [(s["at_us"] / 1e6, s["what"]) for s in r["log"]]
    marks = [t for t, w in steps if w.startswith("started") or w.startswith("wave ") or w == "completed"]
    sizes = [end - start for start, end in zip([0] + r["waves"][:-1], r["waves"])]
    print(f"| wave | devices | time (s) |")
    print("|---|---|---|")
    for i, n in enumerate(sizes):
        print(f"| {i + 1} of {len(sizes)} | {n} | {marks[i + 1] - marks[i]:.1f} |")
    print(f"\nWhole rollout: {wall:.1f} s ({agents} agents, soak {soak:g} s, every device healthy).")
    print(f"\n| hub | baseline (fleet streaming, no rollout) | during the rollout |")
    print("|---|---|---|")
    print(f"| CPU (cores) | {base_cpu:.2f} | {roll_cpu:.2f} |")
    print(f"| VmRSS | {base_mem['VmRSS']:.1f} MB | {roll_mem['VmRSS']:.1f} MB (peak {roll_mem['VmHWM']:.1f} MB) |")
    print(f"\nBytes downloaded per agent: {bytes_per_agent:,.0f} (the model's ONNX file and metadata, once).")
finally:
    cleanup()
PY
