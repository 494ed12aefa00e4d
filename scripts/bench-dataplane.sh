#!/usr/bin/env bash
# Benchmarks lb-node against HAProxy and against going straight to the
# backend, in one run, on 127.0.0.1 only. Prints a table with ratios and
# writes JSON under target/bench/. Usage: scripts/bench-dataplane.sh [SECONDS]
# (BENCH_ONLY=tls: the TLS termination part only)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for cmd in wrk haproxy nginx iperf3 openssl; do command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for cmd in "${need[@]}"; do case "$cmd" in nginx) pkgs+=(nginx-light) ;; *) pkgs+=("$cmd") ;; esac; done
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
cargo build --quiet --release --bin lb-node
exec python3 scripts/bench_dataplane.py "$@"
