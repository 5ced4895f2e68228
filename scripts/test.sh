#!/usr/bin/env bash
# Runs every palisade test on a fresh Debian machine: installs what the tests use (curl,
# python3, iproute2, ...), then formatting, lints, unit, property and end-to-end tests.
#
# PALISADE_REQUIRE_ALL=1 (set by CI) turns "skipped: needs root / network namespaces" into a
# failure, so multi-host tests can never be skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

require_all="${PALISADE_REQUIRE_ALL:-0}"

# --- what the tests need -------------------------------------------------------------
packages=()
command -v curl >/dev/null || packages+=(curl)
command -v python3 >/dev/null || packages+=(python3)
python3 -c 'import urllib3' 2>/dev/null || packages+=(python3-urllib3)  # the drain tests' load
command -v ip >/dev/null || packages+=(iproute2)
command -v kill >/dev/null || packages+=(procps)
command -v keepalived >/dev/null || packages+=(keepalived)   # a real VRRP peer
command -v nft >/dev/null || packages+=(nftables)          # blackholes a peer link in a namespace
command -v faketime >/dev/null || packages+=(faketime)     # a cluster member with a skewed clock
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    echo "missing ${packages[*]} and not root to install them" >&2
    exit 1
  fi
fi
if [ "$require_all" = 1 ] && [ "$(id -u)" != 0 ]; then
  echo "PALISADE_REQUIRE_ALL=1 but not root: the multi-host tests would be skipped" >&2
  exit 1
fi
export PALISADE_REQUIRE_ALL="$require_all"
# A one-shot run gains nothing from incremental artifacts, and they grew the target
# directory by tens of gigabytes (a full disk failed a run).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# --- the tests ----------------------------------------------------------------------
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test (unit, property, end-to-end)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
echo "==> fuzz targets build and replay their seed corpus"
scripts/fuzz-smoke.sh
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
