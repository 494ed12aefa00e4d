"""What the benchmark scripts share: a real lbd on 127.0.0.0/8 and its
envelope API, ending the processes they started (by PID, through their
Popen) and reading a wrk run."""
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request


def stop(p, grace=5):
    """SIGTERM, then SIGKILL after `grace` seconds; waits either way."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wrk(url, connections, duration, threads=1, headers=()):
    """One wrk run: requests/s, p50 and p99 in ms, non-2xx/3xx answers and
    socket errors. `headers`: extra request headers ("Name: value")."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99), "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


class Lbd:
    """A real lbd (process nodes, loopback network) in the state dir
    `state`, its API and DNS server on free ports of 127.0.0.1, its nodes
    in `subnet_pool`. Its Popen is appended to `procs`, for the caller to
    stop by PID."""

    def __init__(self, bin_dir, state, subnet_pool, procs, subnet_prefix=24, args=()):
        self.state = state
        self.log_path = os.path.join(state, "lbd.stderr")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1",
                   LBAAS_SUBNET_LOCK_DIR=os.path.join(state, "locks"))
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "lbd"), "--listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0",
             "--subnet-pool", subnet_pool, "--subnet-prefix", str(subnet_prefix),
             "--state-dir", state, "--node-binary", os.path.join(bin_dir, "lb-node"), *args],
            stdout=subprocess.PIPE, stderr=open(self.log_path, "w"), env=env)
        procs.append(self.proc)
        line = self.proc.stdout.readline().decode()
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if "api" not in fields:
            raise SystemExit(f"lbd did not start: {line!r}")
        self.url = f"http://{fields['api']}/api"
        host, port = fields["dns"].rsplit(":", 1)
        self.dns = (host, int(port))
        with open(os.path.join(state, "admin.token")) as f:
            self.token = f.read().strip()

    # Calls lbd refused with 503 `store_unavailable` ("try again") and that
    # were tried again: a figure of its own under load.
    store_busy_retries = 0

    def api(self, action, kind, info, ok=(200,)):
        """One envelope call: (status, answer); an HTTP error not in `ok` ends
        the run. A 503 `store_unavailable` is tried again, up to 20 times."""
        body = json.dumps({"action": action, "type": kind, "info": info}).encode()
        for _ in range(20):
            req = urllib.request.Request(self.url, body, {"Authorization": f"Bearer {self.token}",
                                                          "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as e:
                text = e.read().decode()
                if e.code == 503 and "store_unavailable" in text:
                    self.store_busy_retries += 1
                    time.sleep(0.2)
                    continue
                if e.code in ok:
                    return e.code, None
                raise SystemExit(f"{action} {kind}: {e.code} {text}")
        raise SystemExit(f"{action} {kind}: the store stayed unavailable")
