#!/usr/bin/env python3
"""The data plane benchmark behind scripts/bench-dataplane.sh.

Starts an nginx backend (small fixed body) on 127.0.0.1, lb-node and HAProxy
in front of it, and measures with wrk, same connections and duration for
each: direct to the backend, lb-node and HAProxy with one thread, then both
with every core. Then TCP bulk throughput with iperf3 (direct, lb-node,
HAProxy mode tcp), and the memory an idle keep-alive connection costs each
proxy. With every core it also measures the L7 policy stack: lb-node with 10
rules (only the last matches), service auth answered from its cache (a tiny
Python auth service) and a local rate limit that never trips, against the
same lb-node without a policy and HAProxy with 10 equivalent ACLs and a
stick table (HAProxy has no auth service call: its figure is an upper
bound). Then TLS termination with one ECDSA P-256 certificate: requests
over kept-alive TLS connections, and new connections with a full handshake
each (`Connection: close`: its req/s is handshakes/s), lb-node against
HAProxy with the same certificate, both with every core. BENCH_ONLY=tls runs
the backend and the TLS part only. Every process it starts is ended by PID
when it finishes.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import benchlib
from benchlib import stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LB_NODE=path measures another build (an A/B run against an older commit).
LB_NODE = os.environ.get("LB_NODE") or os.path.join(ROOT, "target", "release", "lb-node")
# BENCH_POLICY=0 leaves out the L7 policy runs (for builds from before it).
POLICY = os.environ.get("BENCH_POLICY", "1") != "0"
DURATION = int(sys.argv[1]) if len(sys.argv) > 1 else 10
CONNECTIONS = 50
CORES = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")
BACKEND, LB_HTTP, HAPROXY_HTTP, ADMIN = 18081, 18082, 18083, 18090
IPERF, LB_TCP, HAPROXY_TCP = 18201, 18202, 18203
AUTH, HAPROXY_POLICY = 18091, 18084
POLICY_RULES = 10
# Alternating policy / no-policy runs whose median ratio is the policy's cost.
POLICY_PAIRS = int(os.environ.get("BENCH_POLICY_PAIRS", "3"))
SECRET = "bench-secret"
LB_HTTPS, HAPROXY_HTTPS = 18443, 18444
ONLY = os.environ.get("BENCH_ONLY", "")

procs = []


def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return total


def children(pid):
    """pid and its threads' owner processes (HAProxy and nginx fork workers)."""
    out = [pid]
    try:
        for c in open(f"/proc/{pid}/task/{pid}/children").read().split():
            out += children(int(c))
    except OSError:
        pass
    return out


def wrk(port, threads=1):
    return benchlib.wrk(f"http://127.0.0.1:{port}/", CONNECTIONS, DURATION, threads)


def measure_http(name, port, pids):
    before = cpu_seconds(pids) if pids else 0
    t0 = time.time()
    r = wrk(port)
    elapsed = time.time() - t0
    r["cpu_percent"] = round(100 * (cpu_seconds(pids) - before) / elapsed, 1) if pids else None
    print(f"  {name:<28} {r['rps']:>10.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  cpu {r['cpu_percent']}%", flush=True)
    return r


def put_config(cfg):
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}/config", data=json.dumps(cfg).encode(), method="PUT",
                                 headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def node_config(traffic, listen, backend):
    return {"version": int(time.time() * 1000), "traffic_type": traffic, "listen": f"127.0.0.1:{listen}",
            "algorithm": "round_robin", "backends": [{"address": f"127.0.0.1:{backend}", "weight": 1}],
            "health_check": {"protocol": "TCP", "port": 0, "request-path": "/", "expected-codes": "200-399",
                             "criteria": {"interval": 60, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
            "max_connections": 100000}


def policy_config(listen, backend):
    """node_config with the benchmark's policy, in the validated shape a node
    takes: 10 rules of which only the last matches, cached service auth, one
    local rate limit far above any rate wrk reaches."""
    cfg = node_config("http", listen, backend)
    to_default = {"pool": {"pool": "default", "strip_prefix": False}}
    rules = [{"name": f"r{i}", "match": {"path_prefix": f"/nomatch-{i}/"}, "action": to_default}
             for i in range(POLICY_RULES - 1)]
    rules.append({"name": "last", "match": {"path_prefix": "/"}, "action": to_default})
    cfg["policy"] = {
        "rules": rules,
        "auth": {"mode": "service", "url": f"http://127.0.0.1:{AUTH}/auth", "timeout_ms": 200,
                 "auth_token_header": "X-Auth-Token", "pass_credentials": False, "cache_ttl_s": 3600,
                 "negative_ttl_s": 5, "cache_key": ["credentials", "method", "uri", "client_ip"],
                 "failure": "deny", "stale_on_error_s": 0},
        "rate_limits": [{"name": "never", "key": "client_ip", "period": 1, "threshold": 10 ** 9,
                         "burst": 10 ** 9, "unit": "requests", "scope": "node"}],
    }
    return cfg


AUTH_SERVICE = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"auth_token": "t"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def start_auth_service():
    p = start([sys.executable, "-c", AUTH_SERVICE, str(AUTH)])
    wait_port(AUTH)
    return p


def start_haproxy_with(tmp, name, threads, port, sections):
    """HAProxy with `threads` threads, the benchmark's limits and timeouts,
    and `sections` (frontends and backends), once it listens on `port`."""
    cfg = os.path.join(tmp, name)
    with open(cfg, "w") as f:
        f.write(f"""global
    nbthread {threads}
    maxconn 9000
defaults
    timeout connect 3s
    timeout client 60s
    timeout server 60s
""" + sections)
    p = start(["haproxy", "-db", "-f", cfg])
    wait_port(port)
    return p


def start_haproxy_policy(tmp, threads):
    """HAProxy with the policy's equivalent: 10 path ACLs (the last matches)
    and a per-source stick table with a request-rate limit that never trips."""
    acls = "".join(f"    acl r{i} path_beg /nomatch-{i}/\n    use_backend web if r{i}\n"
                   for i in range(POLICY_RULES - 1))
    return start_haproxy_with(tmp, "haproxy-policy.cfg", threads, HAPROXY_POLICY, f"""frontend http
    mode http
    option forwardfor
    bind 127.0.0.1:{HAPROXY_POLICY}
    stick-table type ip size 100k expire 60s store http_req_rate(1s)
    http-request track-sc0 src
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 1000000000 }}
{acls}    acl last path_beg /
    use_backend web if last
backend web
    mode http
    http-reuse always
    server s1 127.0.0.1:{BACKEND}
""")


def policy_pairs(node, label):
    """The policy's cost as POLICY_PAIRS alternating runs on the same node:
    with the policy, then without, each pair measured back to back. Runs a
    few minutes apart on this machine differ by more than the policy costs,
    so one ratio of two separate runs says little; the median of the pairs'
    ratios is what is reported."""
    auth = start_auth_service()
    pairs = []
    for i in range(POLICY_PAIRS):
        put_config(policy_config(LB_HTTP, BACKEND))
        with_policy = measure_http(f"lb-node with policy {label} #{i + 1}", LB_HTTP, [node.pid])
        put_config(node_config("http", LB_HTTP, BACKEND))
        without = measure_http(f"lb-node no policy {label} #{i + 1}", LB_HTTP, [node.pid])
        pairs.append({"policy": with_policy, "plain": without,
                      "ratio": round(with_policy["rps"] / without["rps"], 3)})
    stop(auth)
    return pairs


def make_certificate(tmp):
    """An ECDSA P-256 certificate for bench.test: (cert PEM, key PEM, the
    file HAProxy takes with both)."""
    cert, key = os.path.join(tmp, "bench.crt"), os.path.join(tmp, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
    cert_pem, key_pem = open(cert).read(), open(key).read()
    both = os.path.join(tmp, "bench.pem")
    with open(both, "w") as f:
        f.write(cert_pem + key_pem)
    return cert_pem, key_pem, both


def start_haproxy_tls(tmp, threads, pem):
    return start_haproxy_with(tmp, "haproxy-tls.cfg", threads, HAPROXY_HTTPS, f"""frontend https
    mode http
    option forwardfor
    bind 127.0.0.1:{HAPROXY_HTTPS} ssl crt {pem} alpn http/1.1
    default_backend web
backend web
    mode http
    http-reuse always
    server s1 127.0.0.1:{BACKEND}
""")


def measure_tls(name, port, pids, new_connections):
    """wrk over TLS, every core; with `new_connections` each request opens
    a connection (and so makes a full handshake)."""
    headers = ["Connection: close"] if new_connections else []
    before = cpu_seconds(pids)
    t0 = time.time()
    r = benchlib.wrk(f"https://127.0.0.1:{port}/", CONNECTIONS, DURATION, CORES, headers)
    r["cpu_percent"] = round(100 * (cpu_seconds(pids) - before) / (time.time() - t0), 1)
    what = "handshakes/s" if new_connections else "req/s"
    print(f"  {name:<28} {r['rps']:>10.0f} {what}  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
          f"cpu {r['cpu_percent']}%  errors {r['socket_errors'] or 0}", flush=True)
    return r


def tls_section(tmp, results):
    cert_pem, key_pem, both = make_certificate(tmp)
    print(f"TLS termination, ECDSA P-256, wrk -c{CONNECTIONS} -t{CORES} -d{DURATION}s, {CORES} cores:", flush=True)
    tls = results["tls"] = {}
    node = start_lb_node(CORES)
    cfg = node_config("https", LB_HTTPS, BACKEND)
    cfg["tls"] = {"certificates": [{"cert": cert_pem, "key": key_pem, "sans": ["bench.test"]}],
                  "min_version": "1.2"}
    put_config(cfg)
    wait_port(LB_HTTPS)
    tls["lb-node keep-alive"] = measure_tls("lb-node kept-alive", LB_HTTPS, [node.pid], False)
    tls["lb-node handshakes"] = measure_tls("lb-node new connections", LB_HTTPS, [node.pid], True)
    stop(node)
    hap = start_haproxy_tls(tmp, CORES, both)
    tls["haproxy keep-alive"] = measure_tls("haproxy kept-alive", HAPROXY_HTTPS, [hap.pid], False)
    tls["haproxy handshakes"] = measure_tls("haproxy new connections", HAPROXY_HTTPS, [hap.pid], True)
    stop(hap)
    return {
        "tls req/s lb-node/haproxy (kept-alive)": round(tls["lb-node keep-alive"]["rps"] / tls["haproxy keep-alive"]["rps"], 3),
        "tls handshakes/s lb-node/haproxy": round(tls["lb-node handshakes"]["rps"] / tls["haproxy handshakes"]["rps"], 3),
        "tls p99 lb-node/haproxy (kept-alive)": round(
            tls["lb-node keep-alive"]["p99_ms"] / tls["haproxy keep-alive"]["p99_ms"], 3),
    }


def start_lb_node(threads):
    env = dict(os.environ, LB_NODE_SECRET=SECRET, RUST_LOG="warn")
    args = [LB_NODE, "--node-id", "bench", "--admin-listen", f"127.0.0.1:{ADMIN}"]
    if threads:
        args += ["--threads", str(threads)]
    p = start(args, env=env)
    wait_port(ADMIN)
    put_config(node_config("http", LB_HTTP, BACKEND))
    wait_port(LB_HTTP)
    return p


def start_haproxy(tmp, threads):
    return start_haproxy_with(tmp, f"haproxy-{threads}.cfg", threads, HAPROXY_HTTP, f"""frontend http
    mode http
    option forwardfor
    bind 127.0.0.1:{HAPROXY_HTTP}
    default_backend web
backend web
    mode http
    http-reuse always
    server s1 127.0.0.1:{BACKEND}
frontend tcp
    mode tcp
    bind 127.0.0.1:{HAPROXY_TCP}
    default_backend bulk
backend bulk
    mode tcp
    server b1 127.0.0.1:{IPERF}
""")


def iperf(port):
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(min(DURATION, 5)), "-J"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def idle_memory(port, pids, n=1000):
    before = rss_kib(pids)
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        conns.append(s)
    for s in conns:
        s.recv(4096)
    time.sleep(0.5)  # let the proxy settle its buffers; this is a measurement, not a sync
    after = rss_kib(pids)
    for s in conns:
        s.close()
    return round((after - before) * 1024 / n)


def http_and_tcp(tmp, results):
    """HTTP direct, lb-node and HAProxy (one thread, every core), the policy
    pairs, idle memory, then TCP bulk."""
    print(f"HTTP, wrk -c{CONNECTIONS} -d{DURATION}s, small body, {CORES} cores:", flush=True)
    results["http"]["direct"] = measure_http("direct to the backend", BACKEND, None)

    for threads, label in [(1, "1 thread"), (CORES, f"{CORES} threads")]:
        node = start_lb_node(threads)
        results["http"][f"lb-node {label}"] = measure_http(f"lb-node {label}", LB_HTTP, [node.pid])
        if threads == CORES:
            results["idle_keepalive_bytes_per_conn"]["lb-node"] = idle_memory(LB_HTTP, [node.pid])
            if POLICY:
                results["policy_pairs"] = policy_pairs(node, label)
            put_config(node_config("tcp", LB_TCP, IPERF))
            wait_port(LB_TCP)
        else:
            stop(node)
        hap = start_haproxy(tmp, threads)
        results["http"][f"haproxy {label}"] = measure_http(f"haproxy {label}", HAPROXY_HTTP, [hap.pid])
        if threads == CORES:
            results["idle_keepalive_bytes_per_conn"]["haproxy"] = idle_memory(HAPROXY_HTTP, [hap.pid])
            if POLICY:
                hap_policy = start_haproxy_policy(tmp, threads)
                results["http"]["haproxy with policy"] = measure_http(
                    f"haproxy with acls {label}", HAPROXY_POLICY, [hap_policy.pid])
                stop(hap_policy)
        else:
            stop(hap)

    start(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(IPERF)])
    wait_port(IPERF)
    print("TCP bulk, iperf3:", flush=True)
    for name, port in [("direct", IPERF), ("lb-node", LB_TCP), ("haproxy", HAPROXY_TCP)]:
        results["tcp_gbps"][name] = round(iperf(port), 2)
        print(f"  {name:<28} {results['tcp_gbps'][name]:>8.2f} Gbit/s", flush=True)
    # The TLS part starts its own lb-node on the same admin port.
    stop(node)
    stop(hap)


def main():
    tmp = tempfile.mkdtemp(prefix="lbaas-bench-")
    results = {"duration_s": DURATION, "connections": CONNECTIONS, "cores": CORES, "http": {}, "tcp_gbps": {},
               "idle_keepalive_bytes_per_conn": {}}
    try:
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{BACKEND};
        location / {{ default_type text/plain; return 200 "hello from the backend\\n"; }}
    }}
}}
""")
        start(["nginx", "-c", os.path.join(tmp, "nginx.conf"), "-p", tmp])
        wait_port(BACKEND)
        if ONLY != "tls":
            http_and_tcp(tmp, results)
        tls_ratios = tls_section(tmp, results)
    finally:
        for p in reversed(procs):
            stop(p)

    ratios = {}
    if ONLY != "tls":
        h = results["http"]
        for label in ["1 thread", f"{CORES} threads"]:
            lb, hap = h[f"lb-node {label}"], h[f"haproxy {label}"]
            ratios[f"req/s lb-node/haproxy ({label})"] = round(lb["rps"] / hap["rps"], 3)
            ratios[f"p99 lb-node/haproxy ({label})"] = round(lb["p99_ms"] / hap["p99_ms"], 3)
            ratios[f"req/s lb-node/direct ({label})"] = round(lb["rps"] / h["direct"]["rps"], 3)
        if POLICY:
            pairs = results["policy_pairs"]
            ranked = sorted(pairs, key=lambda p: p["ratio"])
            median = ranked[len(ranked) // 2]
            ratios["req/s lb-node policy/no policy (median of pairs)"] = median["ratio"]
            ratios["req/s lb-node policy/no policy (each pair)"] = [p["ratio"] for p in pairs]
            ratios["p99 lb-node policy/no policy (median pair)"] = round(
                median["policy"]["p99_ms"] / median["plain"]["p99_ms"], 3)
            ratios["req/s lb-node policy/haproxy acls (median pair)"] = round(
                median["policy"]["rps"] / h["haproxy with policy"]["rps"], 3)
        t = results["tcp_gbps"]
        ratios["tcp lb-node/haproxy"] = round(t["lb-node"] / t["haproxy"], 3)
        ratios["tcp lb-node/direct"] = round(t["lb-node"] / t["direct"], 3)
    ratios.update(tls_ratios)
    results["ratios"] = ratios
    print("Idle keep-alive connection, bytes of RSS each:", results["idle_keepalive_bytes_per_conn"])
    print("Ratios:")
    for k, v in ratios.items():
        print(f"  {k:<40} {v}")
    out_dir = os.path.join(ROOT, "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"dataplane-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print("written:", path)


if __name__ == "__main__":
    main()
