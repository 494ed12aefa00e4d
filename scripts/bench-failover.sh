#!/usr/bin/env bash
# Benchmarks failover of a process node (issue 19, part 3): over N runs
# (default 10) of each scenario, a signal to the instance's serving node ->
# a successor that DNS names and that serves, with the failed requests of a
# client looping through the instance meanwhile; on 127.0.0.0/8 only.
# Scenarios: kill -9 with a replacement booting, kill -9 with a standby
# promoted, the baseline, SIGSTOP (a hung node: missed checks only), and
# where libvirt runs, virsh destroy of a VM node with a standby VM.
# Prints the runs, the medians, the maxima and the ratios to the baseline,
# and writes JSON to target/bench/failover.json.
# Usage: scripts/bench-failover.sh [N]   (BENCH_INTERVAL: health-check
# interval in s, default 1; BENCH_RATE: client requests/s, default 100;
# BENCH_SCENARIOS: a comma list of replacement, standby, hung, vm-standby;
# vm-standby by default where libvirt runs: VM nodes, virsh destroy).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3 >/dev/null
}
if pkg-config --exists libvirt 2>/dev/null && virsh -c qemu:///system list >/dev/null 2>&1; then
  # VM nodes too (the vm-standby scenario): lbd with the libvirt driver,
  # and the node image.
  cargo build --quiet --release --features libvirt --bin lbd --bin lb-node
  scripts/build-image.sh target/release/lb-node >/dev/null
  export BENCH_LIBVIRT=1
else
  cargo build --quiet --release --bin lbd --bin lb-node
fi
exec python3 scripts/bench_failover.py "$@"
