#!/usr/bin/env python3
"""The failover benchmark behind scripts/bench-failover.sh (issue 19, part 3).

Starts a real lbd (release build, process nodes, loopback network, a
temporary state dir, 127.214.0.0/16) and a small HTTP backend, all on
127.0.0.0/8. One instance with one serving node, health checks every
`BENCH_INTERVAL` s (default 1) with `unhealth-threshold` 2, the setting
issue 19 measured 4 s with. Scenarios (`BENCH_SCENARIOS`, default all three,
in this order), each `N` times (argument, default 10):

- `replacement`: `kill -9` of the serving node, no standby: lbd sees the
  exit and boots a replacement;
- `standby`: the same with `"standby_nodes": 1`: lbd promotes the booted
  standby, and boots a new standby behind it;
- `hung` (the baseline): `SIGSTOP` of the serving node: only missed checks
  can tell (interval x threshold), which is all a failover had before lbd
  watched node exits. The stopped node is killed once its successor serves;
- `vm-standby` (when libvirt runs here, the image is built and lbd has the
  libvirt driver: bench-failover.sh sees to the last two): VM nodes under
  TCG on the netns network (100.120.0.0/16, names "lbbf"), a standby VM,
  and `virsh destroy` of the serving VM; libvirt's lifecycle event tells
  lbd at once.

Each run:
1. wait until the instance has one serving node (and its standby), DNS
   names only it and it answers;
2. signal that node's process (a process of our own lbd, by its pid from
   `info instance`) and take the time;
3. poll lbd's DNS server (a plain UDP query of the instance's name, every
   5 ms) until it names one address, not the old one, and that address
   answers `GET /` with 200: that is **signal -> a serving successor**
   (for VMs, from the call of `virsh destroy`, which returns once libvirt
   has torn the VM down: that moment is printed too).
   `dns` is when DNS first named only the new address; `failed` is when
   lbd logged `node_failed` for the old node (its detection).

Meanwhile a client loop sends `GET /` through the instance at
`BENCH_RATE` requests/s (default 100), resolving the name before each
request (a client honouring the 1 s TTL would resolve less often and fail
longer), one new connection each, with a 1 s timeout; it counts the
requests that failed between the signal and the successor serving.

Between runs lbd deletes the failed node (`--failover-grace 2`), so the
circuit breaker never counts old failures. Prints the runs, the median and
max of each scenario and their ratios to the `hung` baseline, and writes
JSON to target/bench/failover.json. Every process it starts is ended by
PID (the instance is deleted through the API first, which stops its nodes).
"""
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BENCH_BIN_DIR=target/debug measures a debug build (quick checks only).
BIN = os.environ.get("BENCH_BIN_DIR") or os.path.join(ROOT, "target", "release")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
INTERVAL = int(os.environ.get("BENCH_INTERVAL", "1"))
RATE = float(os.environ.get("BENCH_RATE", "100"))

def vm_ready():
    """Whether VM nodes can run here: libvirtd answers, the node image is
    built, and lbd has the libvirt driver (bench-failover.sh builds it so
    when libvirt-dev is there)."""
    image = os.path.join(ROOT, "target", "image", "vmlinuz")
    try:
        subprocess.run(["virsh", "-c", "qemu:///system", "list"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        return False
    return os.path.exists(image) and os.environ.get("BENCH_LIBVIRT") == "1"


DEFAULT_SCENARIOS = "replacement,standby,hung" + (",vm-standby" if vm_ready() else "")
SCENARIOS = os.environ.get("BENCH_SCENARIOS", DEFAULT_SCENARIOS).split(",")
# How each scenario ends the serving node ("destroy": `virsh destroy` of its
# VM), and how many standbys it keeps.
SIGNALS = {"replacement": signal.SIGKILL, "standby": signal.SIGKILL, "hung": signal.SIGSTOP,
           "vm-standby": "destroy"}
STANDBYS = {"replacement": 0, "standby": 1, "hung": 0, "vm-standby": 1}
# VM nodes: their own lbd, on the netns network (a slice of 100.64.0.0/10
# that the tests do not use), its domains, taps and namespaces named "lbbf".
VM_POOL = "100.120.0.0/16"
VM_PREFIX = "lbbf"
VM_BACKEND_PORT = 18312
BACKEND = ("127.0.0.1", 18311)
PORT = 8080
# A slice of 127.0.0.0/8 that the tests' lbds and the other benchmarks do not use.
SUBNET_POOL = "127.214.0.0/16"
NAME = "web.bench.lbaas.internal"

BACKEND_PY = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
class Server(ThreadingHTTPServer):
    daemon_threads = True
    def handle_error(self, request, client_address):
        pass  # a node killed mid-connection resets it: expected here
Server((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""

procs = []


def dns_a(server, name, timeout=0.5):
    """The A records lbd's DNS server answers for `name` (one UDP query)."""
    qid = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, server)
        data, _ = s.recvfrom(4096)
    rid, _flags, qd, an = struct.unpack(">HHHH", data[:8])
    if rid != qid:
        return []
    pos = 12
    for _ in range(qd):
        while data[pos] != 0:
            pos += 1 + data[pos]
        pos += 5
    addrs = []
    for _ in range(an):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos] != 0:
                pos += 1 + data[pos]
            pos += 1
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += rdlen
    return sorted(addrs)


def http_ok(addr, timeout=1.0):
    """Whether `GET /` on a new connection to addr answers 200."""
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + NAME.encode() + b"\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
            return head.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Lbd(benchlib.Lbd):
    def __init__(self, state):
        super().__init__(BIN, state, SUBNET_POOL, procs,
                         args=["--failover-grace", "2", "--dns-ttl", "1"])

    def instance(self):
        return self.api("info", "instance", {"project": "bench", "name": "web"})[1]["info"]

    def node_failed_at(self, node_id):
        """When lbd logged `node_failed` for `node_id` (epoch seconds)."""
        with open(self.log_path) as f:
            for line in f:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                m = re.match(r"^(\S+)\s", line)
                if m and "node_failed" in line and f"node {node_id} at " in line:
                    ts = m.group(1).replace("Z", "+00:00")
                    return datetime.datetime.fromisoformat(ts).timestamp()
        return None


class Client:
    """GET / through the instance at RATE requests/s, resolving before each."""

    def __init__(self, dns):
        self.dns = dns
        self.lock = threading.Lock()
        self.log = []  # (time, ok)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        period = 1.0 / RATE
        next_at = time.time()
        while not self.stop.is_set():
            t = time.time()
            try:
                addrs = dns_a(self.dns, NAME)
                ok = bool(addrs) and http_ok((addrs[0], PORT))
            except OSError:
                ok = False
            with self.lock:
                self.log.append((t, ok))
            next_at += period
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.time()

    def between(self, start, end):
        with self.lock:
            window = [ok for t, ok in self.log if start <= t <= end]
        return len(window), sum(1 for ok in window if not ok)

    def close(self):
        self.stop.set()
        self.thread.join()


def wait_settled(lbd, standbys, deadline_s=60):
    """Until the instance has one running node, in DNS alone, answering,
    and `standbys` standby nodes (answering too), and nothing else."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        nodes = lbd.instance()["nodes"]
        running = [n for n in nodes if n["state"] == "running" and n.get("pid")]
        standby = [n for n in nodes if n["state"] == "standby" and n.get("pid")]
        if len(running) == 1 and len(standby) == standbys and len(nodes) == 1 + standbys:
            node = running[0]
            if (dns_a(lbd.dns, NAME) == [node["address"]]
                    and all(http_ok((n["address"], PORT)) for n in running + standby)):
                return node
        time.sleep(0.1)
    raise SystemExit(f"the instance did not settle: {lbd.instance()['nodes']}")


def one_failover(lbd, client, scenario):
    old = wait_settled(lbd, STANDBYS[scenario], deadline_s=300)
    time.sleep(0.5)  # the client sees the settled instance first
    t0 = time.time()
    signalled_at = t0
    if SIGNALS[scenario] == "destroy":
        domain = f"{VM_PREFIX}-bench-web-{old['id']}"
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", domain], check=True,
                       stdout=subprocess.DEVNULL)
        # libvirt has torn the VM down (qemu gone) when virsh returns.
        signalled_at = time.time()
    else:
        os.kill(int(old["pid"]), SIGNALS[scenario])
    dns_at = None
    deadline = t0 + 60
    while time.time() < deadline:
        try:
            addrs = dns_a(lbd.dns, NAME, timeout=0.2)
        except OSError:
            addrs = []
        now = time.time()
        if len(addrs) == 1 and addrs[0] != old["address"]:
            dns_at = dns_at or now
            if http_ok((addrs[0], PORT)):
                serving_at = time.time()
                break
        time.sleep(0.005)
    else:
        raise SystemExit("no successor within 60 s")
    if SIGNALS[scenario] == signal.SIGSTOP:
        # Failed over; it must not come back within the grace period.
        os.kill(int(old["pid"]), signal.SIGKILL)
    time.sleep(0.2)
    requests, failed = client.between(t0, serving_at)
    failed_at = lbd.node_failed_at(int(old["id"]))
    return {
        "signalled_ms": (signalled_at - t0) * 1000,
        "serving_ms": (serving_at - t0) * 1000,
        "dns_ms": (dns_at - t0) * 1000,
        "detected_ms": (failed_at - t0) * 1000 if failed_at else None,
        "requests": requests,
        "failed_requests": failed,
    }


def create_instance(lbd, standbys, backend):
    lbd.api("create", "instance", {
        "name": "web", "project": "bench", "traffic_type": "http", "port": PORT,
        "standby_nodes": standbys,
        "backend": {"entities": [backend],
                    "health-check": {"protocol": "HTTP", "request-path": "/",
                                     "criteria": {"interval": INTERVAL, "timeout": 1,
                                                  "health-threshold": 2, "unhealth-threshold": 2}}}})
    # VMs boot in seconds under TCG, two at once more slowly.
    wait_settled(lbd, standbys, deadline_s=300)


def delete_instance(lbd):
    lbd.api("delete", "instance", {"project": "bench", "name": "web"}, ok=(200, 404))
    # VMs are destroyed one by one, each in a second or two under TCG.
    deadline = time.time() + 120
    while time.time() < deadline:
        if lbd.api("info", "instance", {"project": "bench", "name": "web"},
                   ok=(200, 404))[0] == 404:
            return
        time.sleep(0.1)
    raise SystemExit("the instance was not deleted within 120 s")


def scenario_runs(lbd, client, scenario, backend):
    """`RUNS` failovers of one scenario, printed as they go; the summary."""
    create_instance(lbd, STANDBYS[scenario], backend)
    runs = []
    print(f"{scenario}:", flush=True)
    for k in range(RUNS):
        r = one_failover(lbd, client, scenario)
        runs.append(r)
        detected = f"{r['detected_ms']:7.1f}" if r["detected_ms"] is not None else "      ?"
        destroyed = (f", virsh destroy returned {r['signalled_ms']:7.1f} ms"
                     if SIGNALS[scenario] == "destroy" else "")
        print(f"  run {k + 1:2}: serving {r['serving_ms']:7.1f} ms  (dns {r['dns_ms']:7.1f} ms,"
              f" node_failed {detected} ms{destroyed})  failed requests {r['failed_requests']}"
              f" of {r['requests']}", flush=True)
    delete_instance(lbd)
    serving = [r["serving_ms"] for r in runs]
    failed = [r["failed_requests"] for r in runs]
    detected = [r["detected_ms"] for r in runs if r["detected_ms"] is not None]
    how = SIGNALS[scenario]
    return {
        "standby_nodes": STANDBYS[scenario],
        "signal": "virsh destroy" if how == "destroy" else signal.Signals(how).name,
        "serving_ms_median": statistics.median(serving), "serving_ms_max": max(serving),
        "detected_ms_median": statistics.median(detected) if detected else None,
        "failed_requests_median": statistics.median(failed), "failed_requests_max": max(failed),
        "each": runs,
    }


def vm_runs(scenarios, client):
    """The VM scenarios, on an lbd of their own (libvirt compute, netns
    network); its VMs reach a backend on the project's gateway address."""
    state = tempfile.mkdtemp(prefix="lbaas-bench-failover-vm-")
    backend = subprocess.Popen([sys.executable, "-c", BACKEND_PY, "0.0.0.0", str(VM_BACKEND_PORT)])
    procs.append(backend)
    # Beside the state dir, not in it: qemu (its own user) opens the disks,
    # and mkdtemp's 0700 would keep it out (lbd sets the dir's own mode).
    secrets = tempfile.mkdtemp(prefix="lbaas-bench-failover-vm-secrets-")
    os.chmod(secrets, 0o755)
    image = os.path.join(ROOT, "target", "image")
    lbd = benchlib.Lbd(BIN, state, VM_POOL, procs, args=[
        "--failover-grace", "2", "--dns-ttl", "1", "--network", "netns", "--netns-prefix", VM_PREFIX,
        "--compute", "libvirt", "--vm-image", image, "--vm-domain-type", "qemu",
        "--vm-prefix", VM_PREFIX, "--vm-secret-dir", secrets])
    lbd.instance = lambda: Lbd.instance(lbd)
    lbd.node_failed_at = lambda node_id: Lbd.node_failed_at(lbd, node_id)
    try:
        lbd.api("create", "project", {"name": "bench"})
        subnet = lbd.api("info", "project", {"name": "bench"})[1]["info"]["subnet"]
        gateway = subnet.split("/")[0].rsplit(".", 1)[0] + ".1"
        client.dns = lbd.dns
        return {name: scenario_runs(lbd, client, name, f"{gateway}:{VM_BACKEND_PORT}")
                for name in scenarios}
    finally:
        try:
            lbd.api("delete", "project", {"name": "bench", "force": True}, ok=(200, 404))
            deadline = time.time() + 120
            while time.time() < deadline:
                if lbd.api("info", "project", {"name": "bench"}, ok=(200, 404))[0] == 404:
                    break
                time.sleep(0.2)
        except SystemExit as e:
            print(f"cleanup: {e}", file=sys.stderr)
        benchlib.stop(lbd.proc, grace=10)
        out = os.path.join(ROOT, "target", "bench")
        os.makedirs(out, exist_ok=True)
        shutil.copy(lbd.log_path, os.path.join(out, "failover-vm-lbd.log"))
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(secrets, ignore_errors=True)


def main():
    state = tempfile.mkdtemp(prefix="lbaas-bench-failover-")
    lbd = None
    client = None
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", BACKEND_PY, BACKEND[0], str(BACKEND[1])]))
        lbd = Lbd(state)
        lbd.api("create", "project", {"name": "bench"})
        client = Client(lbd.dns)
        results = {}
        for name in (n for n in SCENARIOS if not n.startswith("vm-")):
            results[name] = scenario_runs(lbd, client, name, f"{BACKEND[0]}:{BACKEND[1]}")
        vm_scenarios = [n for n in SCENARIOS if n.startswith("vm-")]
        if vm_scenarios:
            results.update(vm_runs(vm_scenarios, client))
        print(f"signal -> a serving successor, {RUNS} runs each ({INTERVAL} s checks,"
              f" threshold 2; client {RATE:.0f} req/s, resolving each):")
        base = results.get("hung")
        for name, r in results.items():
            ratio = ""
            if base and name != "hung":
                ratio = (f"  = {r['serving_ms_median'] / base['serving_ms_median']:.3f}"
                         f" x the hung-node baseline")
            print(f"  {name:11} median {r['serving_ms_median']:7.1f} ms, max"
                  f" {r['serving_ms_max']:7.1f} ms; failed requests median"
                  f" {r['failed_requests_median']}, max {r['failed_requests_max']}{ratio}")
        summary = {
            "runs": RUNS, "check_interval_s": INTERVAL, "unhealth_threshold": 2,
            "client_rate_per_s": RATE, "scenarios": results,
        }
        out = os.path.join(ROOT, "target", "bench")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "failover.json"), "w") as f:
            json.dump(summary, f, indent=2)
    finally:
        if client is not None:
            client.close()
        if lbd is not None:
            try:
                delete_instance(lbd)
            except SystemExit as e:
                print(f"cleanup: {e}", file=sys.stderr)
        for p in reversed(procs):
            benchlib.stop(p, grace=10)
        if lbd is not None:
            # lbd's log (info, with timestamps) for a closer look at a slow run.
            out = os.path.join(ROOT, "target", "bench")
            os.makedirs(out, exist_ok=True)
            shutil.copy(lbd.log_path, os.path.join(out, "failover-lbd.log"))
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
