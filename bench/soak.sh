#!/usr/bin/env bash
# Soak: 30 minutes (MINUTES) of mixed load through one release node (3,000 GET/s over 200
# keep-alive connections, blocked requests, CONNECT tunnels, 10 MiB downloads, a policy edit
# every 6 s, log rotation every 150 s), minutes 5-10 vs 25-30: heap in use and RSS within
# 5%, descriptors stable, no unasked failure. See crates/e2e/src/soak.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p palisade-cli -p palisade-e2e --bin palisade --bin soak
mkdir -p bench/runs
exec target/release/soak target/release/palisade "${MINUTES:-30}" "bench/runs/soak-$(date -u +%Y%m%dT%H%M%SZ).json"
