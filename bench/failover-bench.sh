#!/usr/bin/env bash
# Failover of palisade vs keepalived, same settings, same run, in network namespaces:
# fault -> first HTTP answer through the VIP from a client namespace. See
# crates/e2e/src/bin/failover_bench.rs for the method. Needs root. RUNS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v keepalived >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq keepalived iproute2 >/dev/null
}
cargo build --release --locked -p palisade-cli -p palisade-e2e --bin palisade --bin failover_bench
exec target/release/failover_bench target/release/palisade "${RUNS:-5}"
