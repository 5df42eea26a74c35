#!/usr/bin/env bash
# The dashboard on a large fleet: a release hub with DEVICES simulated
# devices (crates/demo's fleet-sim: one MQTT connection each, the real
# protocol: status, heartbeats, record batches), and a real headless
# Chromium through chromedriver.
#
# - Time to first render (first contentful paint) and to live data (the
#   overview shows every device online), from navigation start, REPEATS
#   fresh loads; medians.
# - The page's JavaScript heap after a minute of live data on the
#   overview.
# - The hub's CPU over SPAN s: no page open (the baseline), the overview
#   open (its SSE stream), the device list open (a page polled every 2 s).
#
#   benches/dashboard.sh [DEVICES] [REPEATS] [SPAN]     (defaults: 1000, 5, 20)
#
# Needs chromium and chromedriver. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-1000}
repeats=${2:-5}
span=${3:-20}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
if [ -z "${SKIP_BUILD:-}" ]; then   # SKIP_BUILD=1: the release binaries as they are
  echo "building release binaries ..." >&2
  cargo build --release --quiet -p cloud-hub -p conveyor-demo --bin cloud-hub --bin fleet-sim
fi
exec python3 - "$devices" "$repeats" "$span" "$CARGO_TARGET_DIR/release" "$PWD" <<'PY'
import json, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.error, urllib.request

devices, repeats, span = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
bin_dir, repo = sys.argv[4], sys.argv[5]
work = tempfile.mkdtemp(prefix="conveyor-dashboard-bench-")
procs = []
sys.path.insert(0, os.path.join(repo, "benches"))
from hub_api import cpu_s, free_port, get, memory, start_hub, stop

def webdriver(port):
    def wd(method, path, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        try:
            return json.loads(urllib.request.urlopen(req, timeout=120).read())["value"]
        except urllib.error.HTTPError as e:
            sys.exit(f"webdriver {method} {path}: {e.code}: {e.read().decode(errors='replace')[:500]}")
    return wd

try:
    hub, mqtt, http = start_hub(bin_dir, work)
    procs.append(hub)
    origin = f"http://127.0.0.1:{http}"
    procs.append(subprocess.Popen([f"{bin_dir}/fleet-sim", "--mqtt", f"127.0.0.1:{mqtt}", "--devices", str(devices)],
                                  stdout=subprocess.DEVNULL, stderr=open(f"{work}/sim.log", "w")))
    deadline = time.time() + 180
    while (get("/api/v1/fleet") or {}).get("devices_online", 0) < devices:
        if time.time() > deadline: sys.exit(f"the simulated fleet did not come online: see {work}/sim.log")
        time.sleep(1)
    print(f"{devices} devices online", file=sys.stderr)

    def hub_cpu():
        c0, t0 = cpu_s(hub.pid), time.time()
        time.sleep(span)
        return (cpu_s(hub.pid) - c0) / (time.time() - t0)

    base = hub_cpu()
    port = free_port()
    procs.append(subprocess.Popen(["chromedriver", f"--port={port}", "--allowed-ips=127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wd = webdriver(port)
    for _ in range(100):
        try: wd("GET", "/status"); break
        except OSError: time.sleep(0.1)
    sid = wd("POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
        "--enable-precise-memory-info", f"--user-data-dir={work}/profile"]}}}})["sessionId"]
    js = lambda script: wd("POST", f"/session/{sid}/execute/sync", {"script": script, "args": []})
    wait_all = f"""const done = arguments[arguments.length - 1];
      (function check() {{
        const el = document.getElementById('devices-online');
        if (el && Number(el.textContent.replace(/[^0-9]/g, '')) === {devices}) done(performance.now());
        else setTimeout(check, 5);
      }})();"""
    wd("POST", f"/session/{sid}/timeouts", {"script": 120000})
    fcp, live = [], []
    for _ in range(repeats):
        wd("POST", f"/session/{sid}/url", {"url": "about:blank"})
        wd("POST", f"/session/{sid}/url", {"url": f"{origin}/"})
        live.append(wd("POST", f"/session/{sid}/execute/async", {"script": wait_all, "args": []}))
        # The paint entry may be recorded after the data shows: wait for it.
        fcp.append(wd("POST", f"/session/{sid}/execute/async", {"script": """const done = arguments[arguments.length - 1];
          new PerformanceObserver((list) => {
            const e = list.getEntriesByName('first-contentful-paint')[0];
            if (e) done(e.startTime);
          }).observe({type: 'paint', buffered: true});""", "args": []}))
    overview_cpu = hub_cpu()
    time.sleep(max(0, 60 - span))
    heap = js("return performance.memory.usedJSHeapSize") / 1e6
    wd("POST", f"/session/{sid}/url", {"url": f"{origin}/#/devices"})
    time.sleep(2)
    list_cpu = hub_cpu()
    rows = js("return document.querySelectorAll('#rows tr').length")
    count = js("return document.getElementById('count').textContent")
    page_bytes = len(urllib.request.urlopen(f"{origin}/api/v1/fleet/devices?limit=50").read())
    wd("DELETE", f"/session/{sid}")
    print(f"| {devices} simulated devices | median of {repeats} | runs |")
    print("|---|---|---|")
    print(f"| first contentful paint | {statistics.median(fcp):.0f} ms | {', '.join(f'{x:.0f}' for x in fcp)} |")
    print(f"| overview shows all {devices} online | {statistics.median(live):.0f} ms | {', '.join(f'{x:.0f}' for x in live)} |")
    print(f"\n| hub CPU over {span:g} s | cores |")
    print("|---|---|")
    print(f"| no page open (baseline) | {base:.3f} |")
    print(f"| the overview open (SSE every second) | {overview_cpu:.3f} |")
    print(f"| the device list open (a page of {rows} rows every 2 s) | {list_cpu:.3f} |")
    print(f"\nThe page's JavaScript heap after a minute on the overview: {heap:.1f} MB. "
          f"The device list showed \"{count}\"; one page of it is {page_bytes:,} bytes. "
          f"Hub VmRSS: {memory(hub.pid)['VmRSS']:.1f} MB.")
finally:
    stop(procs)
    shutil.rmtree(work, ignore_errors=True)
PY
