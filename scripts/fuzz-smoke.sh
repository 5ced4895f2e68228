#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each briefly from its seed corpus (fuzz/corpus/*).
# Long runs: cd fuzz && cargo fuzz run -s none -O TARGET
# (stable toolchain: `-s none` builds without sanitizers, which need nightly).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-10}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
cargo fuzz build -s none -O
for target in $(cargo fuzz list); do
  scratch=$(mktemp -d)
  echo "--> $target (${seconds}s)"
  # New inputs go to the scratch dir; the committed seed corpus is only read.
  if ! cargo fuzz run -s none -O "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=0 >"$scratch.log" 2>&1; then
    tail -40 "$scratch.log"
    echo "fuzz target $target failed; the crashing input is under fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E "^Done" "$scratch.log" || true
  rm -rf "$scratch" "$scratch.log"
done
