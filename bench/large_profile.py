#!/usr/bin/env python3
"""Where a large download through palisade spends the machine (issue 8: why large plain
forwarding stays below the direct connection on loopback).

Downloads the 10 GiB sparse file of bench/proxy_bench.py directly and through palisade
(pinned as in the benchmark: nginx and curl on CPU 0, palisade on CPU 1), prints each CPU's
user / system / softirq / idle share during each download, then records `perf record -g -C 1`
(the proxy's core) over a third download into /tmp/palisade-bench/perf-large.data; see it
with `perf report -i /tmp/palisade-bench/perf-large.data --no-children --sort comm,dso`.
Assumes bench/proxy-bench.sh has run once (configs and files in /tmp/palisade-bench).
"""

import subprocess
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import proxy_bench as pb  # noqa: E402


def cpus():
    out = {}
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("cpu") and line[3] != " ":
                fields = line.split()
                out[fields[0]] = [int(value) for value in fields[1:9]]
    return out


def main():
    nginx = pb.Daemon("nginx", ["nginx", "-c", f"{pb.WORK}/nginx/nginx.conf", "-p", f"{pb.WORK}/nginx/"],
                      pb.ORIGIN, pb.PIN_LOAD)
    palisade = pb.Daemon("palisade", [pb.PALISADE, "run", "--config", f"{pb.WORK}/palisade/palisade.toml"],
                         pb.PROXIES["palisade"], pb.PIN_PROXY)
    try:
        for target in ["direct", "palisade"]:
            before = cpus()
            _, speed = pb.curl_download(target, False, "/huge")
            after = cpus()
            print(f"{target}: {speed:.0f} MiB/s")
            for cpu in sorted(before):
                delta = [b - a for a, b in zip(before[cpu], after[cpu])]
                total = sum(delta) or 1
                print(f"  {cpu}: user {delta[0] / total:.0%} system {delta[2] / total:.0%} "
                      f"softirq {delta[6] / total:.0%} idle {delta[3] / total:.0%} steal {delta[7] / total:.0%}")
        perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-C", pb.PIN_PROXY, "-o",
                                 f"{pb.WORK}/perf-large.data", "--", "sleep", "4"],
                                stderr=subprocess.DEVNULL)
        time.sleep(0.2)
        pb.curl_download("palisade", False, "/huge")
        perf.wait()
        print(f"perf data: {pb.WORK}/perf-large.data")
    finally:
        palisade.stop()
        nginx.stop()


if __name__ == "__main__":
    main()
