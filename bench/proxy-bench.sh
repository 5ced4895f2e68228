#!/usr/bin/env bash
# palisade vs HAProxy vs Squid vs tinyproxy vs direct, one run on loopback; see
# bench/proxy_bench.py for the method. Installs haproxy, squid, tinyproxy, nginx-light, wrk,
# valgrind (Debian) and oha (cargo, ~5 min the first time), builds palisade in release mode,
# runs, prints the tables.
# Environment: REPS (3), DURATION (10s), RATE (5000), CPU_REPS (10), CPU_DURATION (5s),
# CALLGRIND=1 (instructions per request under valgrind), ONLY=palisade,haproxy,...,
# STAGES=small,fixed,cpu,large,memory,huge (all by default), LARGE_REPS (5).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in haproxy squid tinyproxy nginx wrk curl taskset valgrind; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy squid tinyproxy nginx-light wrk curl util-linux valgrind >/dev/null
fi
# Debian starts the packaged services; the benchmark runs its own instances.
for service in haproxy squid tinyproxy nginx; do
  pkill -x "$service" 2>/dev/null || true
done
command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
cargo build --release --locked -p palisade-cli
exec python3 bench/proxy_bench.py "$@"
