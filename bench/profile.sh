#!/usr/bin/env bash
# Profiles palisade under the small-GET load of bench/proxy_bench.py (perf, cpu-clock
# sampling: this machine has no hardware counters) and prints the hottest symbols.
# Assumes bench/proxy_bench.py has run once (it leaves its configs in /tmp/palisade-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/palisade-bench
taskset -c 0 nginx -c $work/nginx/nginx.conf -p $work/nginx/ &
taskset -c 1 target/release/palisade run --config $work/palisade/palisade.toml &
palisade=$!
sleep 1
WRK_TARGET=http://127.0.0.1:18080/small WRK_HOST=127.0.0.1:18080 \
  taskset -c 0 wrk -t 1 -c 50 -d 12s -s $work/wrk.lua http://127.0.0.1:19090/small &
sleep 2
perf record -e cpu-clock -F 2000 -g -p $palisade -o $work/perf.data -- sleep 8 2>/dev/null
wait %3 || true
kill $palisade; pkill -x nginx || true
perf report -i $work/perf.data --no-children --percent-limit 0.7 --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -60
