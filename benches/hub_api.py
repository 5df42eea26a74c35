"""What the bench scripts (benches/*.sh) share: a free loopback port, the
hub's HTTP API, and a process's memory from /proc. Standard library only.

    sys.path.insert(0, "<repo>/benches"); import hub_api
    hub_api.connect(http_port)
"""
import json
import socket
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
