#!/usr/bin/env python3
"""The wake benchmark behind scripts/bench-wake.sh.

Starts a real lbd (release build, loopback network, a temporary state dir)
and measures two things on 127.0.0.1 only:

1. Wake overhead. A managed pool at `min: 0` whose backend is a Python
   script that records when it started and when it began listening (after
   a fixed boot delay, `BENCH_BOOT_MS`). For each of `BENCH_WAKES` wakes
   (default 20): wait until lbd has stopped the backend (idle), send one
   request, and take

       overhead = first response time - backend's own ready time

   where the backend's own ready time runs from its start (lbd records it
   just before the fork, `started_at_ms`) to the moment the script logs
   that it listens. The interpreter's start-up is the backend's own time;
   the run prints it too.

2. Warm throughput. nginx as a managed backend (`min: 1`) against the same
   nginx as a plain pool member, through lb-node with wrk, alternating
   `BENCH_PAIRS` pairs (default 3); the median ratio managed / plain.

Every process it starts is ended by PID (instances are deleted through the
API first, which stops their nodes and backends).
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BENCH_BIN_DIR=target/debug measures a debug build (quick checks only).
RELEASE = os.environ.get("BENCH_BIN_DIR") or os.path.join(ROOT, "target", "release")
DURATION = int(sys.argv[1]) if len(sys.argv) > 1 else 10
WAKES = int(os.environ.get("BENCH_WAKES", "20"))
PAIRS = int(os.environ.get("BENCH_PAIRS", "3"))
BOOT_MS = int(os.environ.get("BENCH_BOOT_MS", "300"))
CONNECTIONS = 50
PLAIN_BACKEND = 18301
# A slice of 127.0.0.0/8 that the tests' lbds do not use.
SUBNET_POOL = "127.213.0.0/16"

BACKEND_PY = r"""
import time
started = time.time()
import socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
address, port, log, boot_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
time.sleep(boot_ms / 1000.0)  # the app's own boot work

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

server = HTTPServer((address, port), Handler)  # binds and listens
with open(log, "a") as f:
    f.write(f"{started} {time.time()}\n")
server.serve_forever()
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx-{name}.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-{name}-body;
    proxy_temp_path {dir}/tmp-{name}-proxy;
    fastcgi_temp_path {dir}/tmp-{name}-fcgi;
    uwsgi_temp_path {dir}/tmp-{name}-uwsgi;
    scgi_temp_path {dir}/tmp-{name}-scgi;
    keepalive_requests 1000000;
    server {{
        listen {listen};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

procs = []


class Lbd(benchlib.Lbd):
    def __init__(self, state):
        super().__init__(RELEASE, state, SUBNET_POOL, procs)

    def instance(self, name):
        return self.api("info", "instance", {"project": "bench", "name": name})[1]["info"]

    def create(self, name, backend):
        self.api("create", "instance", {"name": name, "project": "bench", "traffic_type": "http",
                                        "port": 8080, "backend": backend})
        deadline = time.time() + 60
        while time.time() < deadline:
            info = self.instance(name)
            if info["provisioning_status"] == "ACTIVE":
                return (info["nodes"][0]["address"], 8080)
            time.sleep(0.1)
        raise SystemExit(f"instance {name} did not become ACTIVE")


def http_get(addr):
    """One request on a new connection: (status, headers dict, seconds)."""
    start = time.time()
    with socket.create_connection(addr, 60) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    took = time.time() - start
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    status = int(head[0].split()[1]) if head and len(head[0].split()) > 1 else 0
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if ":" in h)}
    return status, headers, took


def wake_overhead(lbd, work):
    log = os.path.join(work, "ready.log")
    script = os.path.join(work, "backend.py")
    with open(script, "w") as f:
        f.write(BACKEND_PY)
    os.chmod(work, 0o777)
    open(log, "w").close()
    os.chmod(log, 0o666)
    addr = lbd.create("wake", {"managed": {
        "compute": "process", "port": 8000, "min": 0, "max": 1, "idle_timeout": 1,
        "start_timeout": 30,
        "process": {"command": ["python3", script, "{address}", "{port}", log, str(BOOT_MS)]}}})
    overheads, totals, readies, cold, interp = [], [], [], [], []
    for i in range(WAKES):
        deadline = time.time() + 60
        while lbd.instance("wake").get("backends"):
            if time.time() > deadline:
                raise SystemExit("the backend was not stopped when idle")
            time.sleep(0.05)
        status, headers, took = http_get(addr)
        if status != 200:
            raise SystemExit(f"wake {i}: status {status} {headers}")
        with open(log) as f:
            started, listening = map(float, f.read().split("\n")[-2].split())
        # lbd records a backend's start just before it forks: the backend's
        # own time runs from there (interpreter start-up included) to listen.
        spawned = lbd.instance("wake")["backends"][0]["started_at_ms"] / 1000.0
        ready = listening - spawned
        overheads.append((took - ready) * 1000)
        totals.append(took * 1000)
        readies.append(ready * 1000)
        interp.append((started - spawned) * 1000)
        cold.append(int(headers.get("x-lbaas-cold-start", "-1")))
    return overheads, totals, readies, cold, interp


def wait_gone(lbd, names):
    """Until the deleted instances' nodes and backends are gone."""
    deadline = time.time() + 30
    for name in names:
        while time.time() < deadline:
            try:
                lbd.instance(name)
            except SystemExit:
                break
            time.sleep(0.1)


def wrk(addr):
    return benchlib.wrk(f"http://{addr[0]}:{addr[1]}/", CONNECTIONS, DURATION)["rps"]


def warm_throughput(lbd, work):
    conf = os.path.join(work, "nginx.conf.in")
    with open(conf, "w") as f:
        f.write(NGINX_CONF)
    plain_conf = os.path.join(work, "nginx-plain.conf")
    with open(plain_conf, "w") as f:
        f.write(NGINX_CONF.format(dir=work, name="plain", listen=f"127.0.0.1:{PLAIN_BACKEND}")
                )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    plain = subprocess.Popen([nginx, "-c", plain_conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(plain)
    # The managed nginx gets its own config, written by the backend's
    # command from the template with its address and port. No `exec`: nginx
    # writes its process title over its environment, where lbd's marker of
    # its backends is, so the shell stays the process lbd knows (a stop
    # signals the whole group, nginx too).
    render = (f"python3 -c \"import sys; t=open('{conf}').read(); "
              f"open('{work}/nginx-' + sys.argv[1] + '.conf','w').write(t.format(dir='{work}', "
              f"name=sys.argv[1], listen=sys.argv[1] + ':' + sys.argv[2]))\" {{address}} {{port}} "
              f"&& {nginx} -c {work}/nginx-{{address}}.conf")
    plain_lb = lbd.create("plain", {"entities": [
        {"address": f"127.0.0.1:{PLAIN_BACKEND}", "weight": 1}]})
    warm_lb = lbd.create("warm", {"managed": {
        "compute": "process", "port": 8000, "min": 1, "max": 1, "idle_timeout": 3600,
        "process": {"command": ["sh", "-c", render]}}})
    deadline = time.time() + 60
    while http_get(warm_lb)[0] != 200 or http_get(plain_lb)[0] != 200:
        if time.time() > deadline:
            raise SystemExit("the warm or plain pool does not answer 200")
        time.sleep(0.1)
    pairs = []
    for _ in range(PAIRS):
        p = wrk(plain_lb)
        w = wrk(warm_lb)
        pairs.append((p, w, w / p))
    running = [(b["address"], b["state"]) for b in lbd.instance("warm").get("backends", [])]
    print(f"warm pool's backends after the runs: {running}", flush=True)
    return pairs


def main():
    for binary in ("lbd", "lb-node"):
        if not os.path.exists(os.path.join(RELEASE, binary)):
            raise SystemExit(f"no target/release/{binary}: run scripts/bench-wake.sh")
    state = tempfile.mkdtemp(prefix="bench-wake-")
    work = tempfile.mkdtemp(prefix="bench-wake-work-")
    lbd = None
    try:
        lbd = Lbd(state)
        lbd.api("create", "project", {"name": "bench"})
        overheads, totals, readies, cold, interp = wake_overhead(lbd, work)
        pairs = warm_throughput(lbd, work)
        report = {
            "wakes": WAKES, "boot_ms": BOOT_MS, "interpreter_start_ms": interp,
            "overhead_ms": overheads, "first_response_ms": totals, "backend_ready_ms": readies,
            "cold_start_header_ms": cold, "warm_pairs": pairs, "duration_s": DURATION,
        }
        out_dir = os.path.join(ROOT, "target", "bench")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "wake.json"), "w") as f:
            json.dump(report, f, indent=1)
        ranked = sorted(overheads)
        q = [ranked[int(0.1 * (len(ranked) - 1))], ranked[round(0.9 * (len(ranked) - 1))]]
        print(f"wake overhead over {WAKES} wakes (backend boot {BOOT_MS} ms):")
        print(f"  median {statistics.median(overheads):7.1f} ms   p10 {q[0]:6.1f}   p90 {q[-1]:6.1f}"
              f"   max {max(overheads):6.1f}")
        print(f"  first response median {statistics.median(totals):7.1f} ms, backend's own ready"
              f" median {statistics.median(readies):7.1f} ms, X-Lbaas-Cold-Start median"
              f" {statistics.median(cold)} ms")
        print(f"  of the backend's own time, fork to the script's first line (python3 start-up):"
              f" median {statistics.median(interp):.1f} ms")
        print(f"warm throughput, wrk -t1 -c{CONNECTIONS} -d{DURATION}s, {PAIRS} pairs:")
        for p, w, r in pairs:
            print(f"  plain {p:10.0f} req/s   managed {w:10.0f} req/s   ratio {r:5.3f}")
        print(f"  median ratio managed / plain: {statistics.median(r for _, _, r in pairs):.3f}")
    finally:
        if lbd is not None:
            for name in ("wake", "warm", "plain"):
                try:
                    lbd.api("delete", "instance", {"project": "bench", "name": name})
                except SystemExit:
                    pass
            wait_gone(lbd, ("wake", "warm", "plain"))
        for p in reversed(procs):
            benchlib.stop(p, grace=10)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
