#!/usr/bin/env python3
"""The controller benchmark behind scripts/bench-controller.sh (issue 19,
part 4): what lbd costs at rest as the number of nodes it checks grows.

Starts a real lbd (release build, process nodes, loopback network, a
temporary state dir, 127.216.0.0/16 with one /20 project) and a TCP
backend that accepts and closes, all on 127.0.0.0/8. For each size N
(arguments, default 100 300 1000) it creates single-node http instances
until there are N, with lbd's health checks every 1 s (TCP member checks
on the nodes), waits until every one is ACTIVE and ONLINE, lets it settle
for `BENCH_SETTLE` s (default 5), then reads over `BENCH_WINDOW` s
(default 30), from /proc (and with `BENCH_PERF=1`, a `perf record` of lbd):

- lbd's CPU (user + system) as a share of one core, and its RSS;
- the nodes' CPU together (every lb-node process), for context: they share
  the machine's two cores with lbd;
- the node checks lbd made in the window (the `samples` it wrote), to show
  that it kept up with one check per node per second.

The baseline is the same lbd with no instances, measured first in the same
run. Prints a table and writes JSON to target/bench/controller.json. Every
instance is deleted through the API at the end and every process it
started is ended by PID.
"""
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BENCH_BIN_DIR") or os.path.join(ROOT, "target", "release")
SIZES = [int(a) for a in sys.argv[1:]] or [100, 300, 1000]
WINDOW = float(os.environ.get("BENCH_WINDOW", "30"))
SETTLE = float(os.environ.get("BENCH_SETTLE", "5"))
# BENCH_PERF=1: `perf record` lbd during each window (target/bench/controller-N.perf.data).
PERF = os.environ.get("BENCH_PERF") == "1"
BACKEND = ("127.0.0.1", 18313)
SUBNET_POOL = "127.216.0.0/16"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

procs = []


def accept_and_close():
    """The members' TCP health checks: accept, then close. In a thread."""
    async def serve():
        async def handle(_reader, writer):
            writer.close()
        server = await asyncio.start_server(handle, *BACKEND, backlog=1024)
        async with server:
            await server.serve_forever()
    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError):
        return None


def is_lb_node(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0]) == b"lb-node"
    except OSError:
        return False


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Lbd(benchlib.Lbd):
    def __init__(self, state):
        # The benchmark's own calls must not meet the API's per-user limits.
        limits = []
        for kind in ("write", "read"):
            limits += [f"--api-{kind}-rate", "5000", f"--api-{kind}-burst", "5000"]
        super().__init__(BIN, state, SUBNET_POOL, procs, subnet_prefix=20, args=limits)
        self.db = os.path.join(state, "lbaas.db")

    def instances(self):
        return self.api("info", "instance", {"project": "bench"})[1]["info"]

    def node_pids(self):
        pids = []
        for inst in self.instances():
            info = self.api("info", "instance", {"project": "bench", "name": inst["name"]})[1]["info"]
            pids += [int(n["pid"]) for n in info.get("nodes", []) if n.get("pid")]
        return pids

    def samples_since(self, after_id):
        """(raw samples written after row `after_id`, the newest row id),
        read-only beside lbd."""
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            count, newest = db.execute(
                "SELECT count(*) FILTER (WHERE resolution = 0), max(id) FROM samples WHERE id > ?",
                (after_id,)).fetchone()
            return count, newest or after_id
        finally:
            db.close()


def create_up_to(lbd, n, have):
    for k in range(have, n):
        lbd.api("create", "instance", {
            "name": f"i{k}", "project": "bench", "traffic_type": "http", "port": 8080,
            "backend": {"entities": [f"{BACKEND[0]}:{BACKEND[1]}"],
                        "health-check": {"protocol": "TCP",
                                         "criteria": {"interval": 1, "timeout": 1,
                                                      "health-threshold": 2,
                                                      "unhealth-threshold": 2}}}})
    deadline = time.time() + 60 + n * 0.5
    while time.time() < deadline:
        listed = lbd.instances()
        ready = sum(1 for i in listed
                    if i["provisioning_status"] == "ACTIVE" and i["operating_status"] == "ONLINE")
        if ready == n:
            return
        time.sleep(1)
    raise SystemExit(f"only {ready} of {n} instances ACTIVE and ONLINE")


def measure(lbd, node_pids):
    time.sleep(SETTLE)
    lbd_pid = lbd.proc.pid
    _, newest = lbd.samples_since(0)
    t0, c0 = time.monotonic(), cpu_ticks(lbd_pid)
    n0 = {p: cpu_ticks(p) for p in node_pids}
    perf = None
    if PERF and node_pids:
        # The profile of lbd over this window, for `perf report -i`.
        out = os.path.join(ROOT, "target", "bench", f"controller-{len(node_pids)}.perf.data")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(lbd_pid), "-o", out,
                                 "--", "sleep", str(WINDOW)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(WINDOW)
    if perf is not None:
        perf.wait()
    t1, c1 = time.monotonic(), cpu_ticks(lbd_pid)
    checks, _ = lbd.samples_since(newest)
    n1 = {p: cpu_ticks(p) for p in node_pids}
    secs = t1 - t0
    nodes_ticks = sum(n1[p] - n0[p] for p in node_pids if n0[p] is not None and n1[p] is not None)
    return {
        "lbd_cpu_pct": (c1 - c0) / CLK_TCK / secs * 100,
        "lbd_rss_mib": rss_bytes(lbd_pid) / (1 << 20),
        "nodes_cpu_pct": nodes_ticks / CLK_TCK / secs * 100,
        "checks_per_s": checks / secs,
        "window_s": secs,
    }


def main():
    state = tempfile.mkdtemp(prefix="lbaas-bench-controller-")
    lbd = None
    rows = []
    try:
        accept_and_close()
        lbd = Lbd(state)
        lbd.api("create", "project", {"name": "bench"})
        base = measure(lbd, [])
        rows.append({"nodes": 0, **base})
        print(f"  {0:5} nodes: lbd {base['lbd_cpu_pct']:5.2f} % of a core,"
              f" RSS {base['lbd_rss_mib']:6.1f} MiB", flush=True)
        have = 0
        for n in SIZES:
            create_up_to(lbd, n, have)
            have = n
            r = measure(lbd, lbd.node_pids())
            rows.append({"nodes": n, **r})
            r["store_busy_retries"] = lbd.store_busy_retries
            print(f"  {n:5} nodes: lbd {r['lbd_cpu_pct']:5.2f} % of a core,"
                  f" RSS {r['lbd_rss_mib']:6.1f} MiB, {r['checks_per_s']:6.1f} checks/s;"
                  f" nodes together {r['nodes_cpu_pct']:5.1f} %; API calls refused with"
                  f" store_unavailable so far {lbd.store_busy_retries}", flush=True)
        print("lbd at rest, health checks every 1 s (share of one core; 0 nodes is the baseline):")
        for r in rows[1:]:
            per_1000 = (r["lbd_cpu_pct"] - base["lbd_cpu_pct"]) / r["nodes"] * 1000
            print(f"  N={r['nodes']:5}: {r['lbd_cpu_pct']:5.2f} %  ({per_1000:5.2f} % per 1,000 nodes"
                  f" above the baseline), RSS {r['lbd_rss_mib']:.1f} MiB")
        out = os.path.join(ROOT, "target", "bench")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "controller.json"), "w") as f:
            json.dump({"window_s": WINDOW, "runs": rows}, f, indent=2)
    finally:
        leftovers = []
        if lbd is not None:
            try:
                leftovers = lbd.node_pids()
                for inst in lbd.instances():
                    lbd.api("delete", "instance", {"project": "bench", "name": inst["name"]},
                            ok=(200, 404))
                deadline = time.time() + 120
                while time.time() < deadline and lbd.instances():
                    time.sleep(0.5)
            except SystemExit as e:
                print(f"cleanup: {e}", file=sys.stderr)
        for p in reversed(procs):
            benchlib.stop(p, grace=10)
        # Nodes of this lbd that outlived it (it was stopped before it
        # could stop them): ours, by the pids it reported.
        for pid in leftovers:
            if is_lb_node(pid):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        if lbd is not None:
            out = os.path.join(ROOT, "target", "bench")
            os.makedirs(out, exist_ok=True)
            shutil.copy(lbd.log_path, os.path.join(out, "controller-lbd.log"))
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
