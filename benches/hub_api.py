"""What the bench scripts (benches/*.sh) share: a free loopback port, a
release hub started and stopped, the hub's HTTP API, and a process's CPU
time and memory from /proc. Standard library only.

    sys.path.insert(0, "<repo>/benches"); import hub_api
    hub_api.connect(http_port)
"""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

_port = None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def connect(port):
    """The hub's HTTP port, for every call below."""
    global _port
    _port = port


def api(method, path, body=None):
    """(status, body bytes) of one request; error statuses are returned, not raised."""
    req = urllib.request.Request(f"http://127.0.0.1:{_port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get(path):
    """The JSON body of a 200 answer, else None."""
    code, body = api("GET", path)
    return json.loads(body) if code == 200 else None


def served():
    """conveyor_hub_artifact_bytes_served_total, from /metrics."""
    _, text = api("GET", "/metrics")
    for line in text.decode().splitlines():
        if line.startswith("conveyor_hub_artifact_bytes_served_total"):
            return int(float(line.split()[-1]))
    return 0


def memory(pid):
    """VmRSS, VmHWM, RssAnon and RssFile of a process, MB."""
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024
    return out


def start_hub(bin_dir, work):
    """Starts `cloud-hub serve` on free loopback ports with its store in
    `work`, connects the calls above to it and waits until it is ready.
    Returns (process, mqtt port, http port)."""
    mqtt, http = free_port(), free_port()
    connect(http)
    with open(f"{work}/hub.toml", "w") as f:
        f.write(f'[broker]\nlisten = "127.0.0.1:{mqtt}"\nauth = "none"\n[http]\nlisten = "127.0.0.1:{http}"\nauth = "none"\n'
                f'[store]\npath = "{work}/store"\n')
    hub = subprocess.Popen([f"{bin_dir}/cloud-hub", "serve", "--config", f"{work}/hub.toml"],
                           stdout=subprocess.DEVNULL, stderr=open(f"{work}/hub.log", "w"))
    while True:
        try:
            if api("GET", "/healthz")[0] == 200:
                return hub, mqtt, http
        except OSError:
            pass
        if hub.poll() is not None:
            raise SystemExit(f"the hub exited {hub.returncode}: see {work}/hub.log")
        time.sleep(0.1)


def stop(procs):
    """SIGTERM to each process still running, then a wait (SIGKILL after 20 s)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_s(pid):
    """User plus system CPU seconds a process has used."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
