#!/usr/bin/env bash
# Benchmarks failover of a process node (issue 19, part 3): over N runs
# (default 10), kill -9 of the instance's node -> a replacement that DNS
# names and that serves, with the failed requests of a client looping
# through the instance meanwhile; on 127.0.0.0/8 only. Prints the runs, the
# median and the max, and writes JSON to target/bench/failover.json.
# Usage: scripts/bench-failover.sh [N]   (BENCH_INTERVAL: health-check
# interval in s, default 1; BENCH_RATE: client requests/s, default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3 >/dev/null
}
cargo build --quiet --release --bin lbd --bin lb-node
exec python3 scripts/bench_failover.py "$@"
