#!/usr/bin/env bash
# Benchmarks the controller at rest (issue 19, part 4): lbd's CPU and RSS
# with N single-node process instances checked every 1 s, for each N
# (default 100 300 1000), against the same lbd with none; on 127.0.0.0/8
# only. Prints a table and writes JSON to target/bench/controller.json.
# Usage: scripts/bench-controller.sh [N ...]   (BENCH_WINDOW: seconds
# measured per N, default 30; BENCH_SETTLE: seconds before, default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3 >/dev/null
}
cargo build --quiet --release --bin lbd --bin lb-node
exec python3 scripts/bench_controller.py "$@"
