#!/usr/bin/env bash
# Benchmarks managed backends (issue 16): the overhead a wake adds to a
# backend's own start, and warm throughput through a managed pool against a
# plain one, in one run, on 127.0.0.1 only. Prints the figures and writes
# JSON to target/bench/wake.json. Usage: scripts/bench-wake.sh [SECONDS]
# (wrk duration per run; BENCH_WAKES, BENCH_PAIRS, BENCH_BOOT_MS tune it).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for cmd in wrk nginx python3; do command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for cmd in "${need[@]}"; do case "$cmd" in nginx) pkgs+=(nginx-light) ;; *) pkgs+=("$cmd") ;; esac; done
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
cargo build --quiet --release --bin lbd --bin lb-node
exec python3 scripts/bench_wake.py "$@"
