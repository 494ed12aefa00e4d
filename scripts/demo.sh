#!/usr/bin/env bash
# A two-minute tour on the embedded default: starts lbd in a temporary state
# dir, two small HTTP backends on 127.0.0.1, creates a project and an HTTP
# load balancer with lbctl, sends traffic through it, asks DNS, cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release --workspace --bins
bin=target/release
state=$(mktemp -d)
pids=()
cleanup() {
  for f in "$state"/nodes/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT

for port in 18001 18002; do
  mkdir -p "$state/www$port" && echo "hello from backend $port" > "$state/www$port/index.html"
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$state/www$port" >/dev/null 2>&1 &
  pids+=($!)
done

"$bin/lbd" --state-dir "$state" --listen 127.0.0.1:0 --dns-listen 127.0.0.1:0 > "$state/ready" 2> "$state/lbd.log" &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$state/ready" 2>/dev/null && break; sleep 0.1; done
api=$(grep -o 'api=[^ ]*' "$state/ready" | cut -d= -f2)
dns=$(grep -o 'dns=[^ ]*' "$state/ready" | cut -d= -f2)
lbctl() { "$bin/lbctl" --url "http://$api" --token "$(cat "$state/admin.token")" "$@"; }

set -x
lbctl project create demo --user john
lbctl instance create web --project demo --type http --port 8080 --backend 127.0.0.1:18001 --backend 127.0.0.1:18002
node=$(lbctl -o json instance info web --project demo | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["address"])')
for _ in 1 2 3 4; do curl -s "http://$node:8080/"; done
dig @127.0.0.1 -p "${dns##*:}" web.demo.lbaas.internal A +short
lbctl instance info web --project demo
lbctl project delete demo --force
