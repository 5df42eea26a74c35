#!/usr/bin/env bash
# Over-the-air updates: how long from `deploy` to applied, on 1 and on 10
# agents, the bytes each agent downloads, and the agent's memory while it
# downloads and applies.
#
# Starts a release hub and 11 release edge agents, each replaying the
# BasicMotions test split in a loop at 200 readings/s through its int8
# edge model (stage `classify`). Ten take the deploys; the eleventh is the
# baseline: it streams the same and is never deployed to, so its memory
# over the same windows is the noise the others are measured against.
#
# Each repeat, for 1 agent and then for 10, deploys:
#   - a fresh model (never seen by the agents: downloaded), the 27 kB fp32
#     edge model, and then the 705 kB hub model (the same 6x100 input);
#   - back to the model they ran before (in their cache: no download).
# A fresh model is the same ONNX file under a new version per repeat, so
# every repeat downloads it again.
#
# Times are from just before the deploy request to the `applied` phase in
# each agent's own report (its clock: the same machine), so they hold the
# desired state's trip over MQTT, the download, the digest checks, the
# model's load and checks, and the hand-over to the running stage (the
# swap itself is at the agent's next window). Memory: the agent's VmRSS
# just before the deploy, and its peak (VmHWM, reset through
# /proc/PID/clear_refs just before the deploy) until applied. Bytes: the
# hub's conveyor_hub_artifact_bytes_served_total over the deploy, per
# agent.
#
#   benches/ota.sh [REPEATS]      (default 5)
#
# Prints a Markdown table of medians over the repeats (the peak rise also
# for the first repeat: the first load of a model's code touches the most),
# and on stderr the fleet's memory before each repeat.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
echo "building release binaries ..." >&2
cargo build --release --quiet -p cloud-hub -p edge-agent
exec python3 - "$repeats" "$CARGO_TARGET_DIR/release" "$PWD" <<'PY'
import json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

repeats, bin_dir, repo = int(sys.argv[1]), sys.argv[2], sys.argv[3]
work = tempfile.mkdtemp(prefix="conveyor-ota-bench-")
procs = []
sys.path.insert(0, os.path.join(repo, "benches"))
from hub_api import api, connect, free_port, get, memory, served

def cleanup():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill()
    shutil.rmtree(work, ignore_errors=True)

try:
    mqtt, http = free_port(), free_port()
    connect(http)
    with open(f"{work}/hub.toml", "w") as f:
        f.write(f'[broker]\nlisten = "127.0.0.1:{mqtt}"\nauth = "none"\n[http]\nlisten = "127.0.0.1:{http}"\nauth = "none"\n[store]\npath = "{work}/store"\n')
    procs.append(subprocess.Popen([f"{bin_dir}/cloud-hub", "serve", "--config", f"{work}/hub.toml"],
                                  stdout=subprocess.DEVNULL, stderr=open(f"{work}/hub.log", "w")))
    while True:
        try:
            if api("GET", "/healthz")[0] == 200: break
        except OSError: pass
        time.sleep(0.1)
    key = get("/api/v1/keys")["keys"][0]["public"]
    env = dict(os.environ, CONVEYOR_HUB=f"http://127.0.0.1:{http}")

    def push(meta_path):
        out = subprocess.run([f"{bin_dir}/cloud-hub", "artifact", "push", meta_path], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"push {meta_path} failed: {out.stdout}{out.stderr}")

    def fresh(src, version):
        """A copy of model `src` (metadata .json) under a new version."""
        d = f"{work}/artifacts/{version}"
        os.makedirs(d)
        meta = json.load(open(src))
        shutil.copy(os.path.join(os.path.dirname(src), meta["model_file"]), d)
        meta["version"] = version
        path = f"{d}/{os.path.basename(src)}"
        json.dump(meta, open(path, "w"))
        push(path)
        return f"{meta['id']}@{version}"

    models = f"{repo}/models/basicmotions"
    int8 = f"{models}/edge.int8.json"
    push(int8)
    agents = {}
    for i in range(11):
        name = f"ota-bench-{i}" if i < 10 else "ota-baseline"
        with open(f"{work}/{name}.toml", "w") as f:
            f.write(f'''device_id = "{name}"
data_dir = "{work}/state-{name}"
[uplink]
url = "mqtt://127.0.0.1:{mqtt}"
[[sources]]
type = "replay"
name = "motion"
path = "{repo}/models/data/BasicMotions/BasicMotions_TEST.ts"
rate = 200
loop = true
[[stages]]
type = "inference"
name = "classify"
model = "{int8}"
[ota]
trusted_keys = ["{key}"]
url = "http://127.0.0.1:{http}"
''')
        p = subprocess.Popen([f"{bin_dir}/edge-agent", "run", "--config", f"{work}/{name}.toml"],
                             stdout=subprocess.DEVNULL, stderr=open(f"{work}/{name}.log", "w"))
        procs.append(p)
        agents[name] = p.pid
    fleet = [n for n in agents if n != "ota-baseline"]

    def deploy(devices, artifact):
        """Deploys; per device the seconds to applied, and the memory."""
        for d in devices + ["ota-baseline"]:
            with open(f"/proc/{agents[d]}/clear_refs", "w") as f:
                f.write("5")
        before = {d: memory(agents[d])["VmRSS"] for d in devices + ["ota-baseline"]}
        bytes0 = served()
        t0 = time.time() * 1e6
        code, body = api("POST", "/api/v1/deploy",
                         {"devices": devices, "stages": {"classify": {"model": artifact}}})
        if code != 200:
            sys.exit(f"deploy {artifact}: {code} {body}")
        gens = {d["device_id"]: d["generation"] for d in json.loads(body)["deployed"]}
        done = {}
        deadline = time.time() + 120
        while len(done) < len(devices):
            if time.time() > deadline:
                sys.exit(f"deploy {artifact}: not applied within 120 s: {sorted(set(devices) - set(done))}")
            for d in devices:
                if d in done: continue
                s = get(f"/api/v1/devices/{d}/state") or {}
                c = s.get("last_change") or {}
                if (s.get("generation") or 0) >= gens[d] and c.get("phase") == "applied":
                    done[d] = (c["since_us"] - t0) / 1e6
                elif c.get("generation") == gens[d] and c.get("phase") == "failed":
                    sys.exit(f"{d} refused {artifact}: {c.get('reason')}")
            time.sleep(0.02)
        after = {d: memory(agents[d]) for d in devices + ["ota-baseline"]}
        return {
            "times": [done[d] for d in devices],
            "bytes_per_agent": (served() - bytes0) / len(devices),
            "rss_before": statistics.median(before[d] for d in devices),
            "peak_rise": statistics.median(after[d]["VmHWM"] - before[d] for d in devices),
            "baseline_rise": after["ota-baseline"]["VmHWM"] - before["ota-baseline"],
        }

    # Every agent on the registry's int8 first: what "back" returns to.
    deploy(fleet, "basicmotions-edge@1.0.0-int8")
    rows = {}
    for k in range(repeats):
        now = [memory(agents[d]) for d in fleet]
        print(f"repeat {k + 1}/{repeats}: the fleet's median VmRSS "
              f"{statistics.median(s['VmRSS'] for s in now):.1f} MB (RssAnon "
              f"{statistics.median(s['RssAnon'] for s in now):.1f}, RssFile "
              f"{statistics.median(s['RssFile'] for s in now):.1f})", file=sys.stderr)
        for n in (1, 10):
            devices = fleet[:n]
            for label, src in (("fp32 edge model (fresh)", f"{models}/edge.fp32.json"),
                               ("hub model (fresh)", f"{models}/hub.fp32.json")):
                art = fresh(src, f"bench-{k}-{n}-{os.path.basename(src)[:-5]}")
                rows.setdefault((n, label), []).append(deploy(devices, art))
                rows.setdefault((n, "back to the previous (cached)"), []).append(
                    deploy(devices, "basicmotions-edge@1.0.0-int8"))
    med = statistics.median
    print(f"| agents | deploy | to applied, median device (s) | slowest device (s) | bytes downloaded per agent | agent VmRSS before | peak rise during the update (first repeat) | baseline agent's peak rise, same window |")
    print("|---|---|---|---|---|---|---|---|")
    for (n, label), rs in rows.items():
        print(f"| {n} | {label} | {med(med(r['times']) for r in rs):.3f} | {med(max(r['times']) for r in rs):.3f} "
              f"| {med(r['bytes_per_agent'] for r in rs):,.0f} | {med(r['rss_before'] for r in rs):.1f} MB "
              f"| {med(r['peak_rise'] for r in rs):+.1f} MB ({rs[0]['peak_rise']:+.1f} MB) | {med(r['baseline_rise'] for r in rs):+.1f} MB |")
    print(f"\n{repeats} repeats; medians over them.")
finally:
    cleanup()
PY
