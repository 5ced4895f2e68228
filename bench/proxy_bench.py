#!/usr/bin/env python3
"""palisade vs HAProxy vs Squid vs tinyproxy vs a direct connection, in one run, on loopback.

Method: ../shared/research/baseline-proxies.md. Each proxy is pinned to CPU 1 (PIN_PROXY),
the load generators and the nginx origin to CPU 0 (PIN_LOAD), so figures compare per core.
Small GETs: wrk, 50 keep-alive connections, 1 thread, absolute-form via a Lua script,
REPS interleaved repetitions, medians. Latency at a fixed rate: oha -q RATE. Large downloads:
curl, 100 MiB, plain and CONNECT, medians of 5. Memory: VmRSS idle, with 1,000 connected-idle
and 1,000 kept-alive client connections. Prints a table with ratios and writes raw figures
as JSON next to it.

Machine CPU per request (issue 8): every target at the same fixed rate (oha -q RATE, which all
of them sustain), CPU_REPS interleaved repetitions; the busy time of the whole machine (all
cores, /proc/stat, softirq included) divided by the requests answered, minus the direct run's:
what the proxy costs the machine per request, whoever pays it (on loopback the receiver's TCP
work runs in the sender's context, so per-process CPU figures are soft). palisade runs twice,
access log off and on (JSON lines to a file, as real deployments log). HAProxy is the
yardstick: a one-server reverse proxy, one thread, `http-reuse always`, no logging.
With CALLGRIND=1, instructions per request of the proxy process itself under valgrind
(repeatable whatever the machine's noise): (I(N2) - I(N1)) / (N2 - N1), start-up cancels out.

Run through bench/proxy-bench.sh, which installs the tools and builds palisade.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.environ.get("BENCH_DIR", "/tmp/palisade-bench")
PALISADE = os.environ.get("PALISADE_BIN", os.path.join(ROOT, "target/release/palisade"))
REPS = int(os.environ.get("REPS", "3"))
DURATION = os.environ.get("DURATION", "10s")
RATE = int(os.environ.get("RATE", "5000"))
LARGE_REPS = int(os.environ.get("LARGE_REPS", "5"))
PIN_PROXY = os.environ.get("PIN_PROXY", "1")
PIN_LOAD = os.environ.get("PIN_LOAD", "0")
ONLY = [name for name in os.environ.get("ONLY", "").split(",") if name]
# Which measurements to run (all by default): small, fixed, cpu, large, memory, huge.
STAGES = set(os.environ.get("STAGES", "small,fixed,cpu,large,memory,huge").split(","))

ORIGIN = "127.0.0.1:18080"
PROXIES = {
    "palisade": "127.0.0.1:19090",
    "palisade-log": "127.0.0.1:19190",
    "haproxy": "127.0.0.1:18081",
    "squid": "127.0.0.1:13128",
    "tinyproxy": "127.0.0.1:18888",
}
# Reverse proxies take the same absolute-form requests (HTTP/1.1 servers must accept them)
# but cannot CONNECT.
NO_CONNECT = {"haproxy"}
CPU_REPS = int(os.environ.get("CPU_REPS", "10"))
CPU_DURATION = os.environ.get("CPU_DURATION", "5s")
CALLGRIND = os.environ.get("CALLGRIND", "") == "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message):
    print(message, file=sys.stderr, flush=True)


def run(command, **kwargs):
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


def wait_port(address, timeout=15.0):
    host, port = address.rsplit(":", 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{address} did not come up")


# --- set-up -------------------------------------------------------------------------

def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def setup_files():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(f"{WORK}/www")
    write(f"{WORK}/www/small", "x" * 100)
    with open(f"{WORK}/www/large", "wb") as handle:
        handle.write(os.urandom(100 * 1024 * 1024))
    # 10 GiB sparse file: served from the page cache of zero pages, no disk needed.
    with open(f"{WORK}/www/huge", "wb") as handle:
        handle.truncate(10 * 1024 * 1024 * 1024)
    write(f"{WORK}/nginx/nginx.conf", f"""
worker_processes 1;
daemon off;
master_process on;
pid {WORK}/nginx/nginx.pid;
error_log {WORK}/nginx/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    open_file_cache max=100;
    client_body_temp_path {WORK}/nginx/tmp;
    proxy_temp_path {WORK}/nginx/tmp;
    fastcgi_temp_path {WORK}/nginx/tmp;
    uwsgi_temp_path {WORK}/nginx/tmp;
    scgi_temp_path {WORK}/nginx/tmp;
    access_log off;
    server {{
        listen {ORIGIN} backlog=4096;
        root {WORK}/www;
        location / {{ }}
    }}
}}
""")
    os.makedirs(f"{WORK}/nginx/tmp", exist_ok=True)
    write(f"{WORK}/squid/squid.conf", f"""
http_port {PROXIES['squid']}
workers 1
acl SSL_ports port 443 18080
acl Safe_ports port 80 443 1025-65535
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow localhost
http_access deny all
cache deny all
cache_mem 8 MB
max_filedescriptors 16384
access_log none
cache_store_log none
logfile_rotate 0
cache_log {WORK}/squid/cache.log
pid_filename {WORK}/squid/squid.pid
coredump_dir {WORK}/squid
shutdown_lifetime 1 seconds
client_persistent_connections on
server_persistent_connections on
""")
    run(["chown", "-R", "proxy", f"{WORK}/squid"])
    write(f"{WORK}/tinyproxy/tinyproxy.conf", f"""
User nobody
Group nogroup
Port 18888
Listen 127.0.0.1
Timeout 600
DefaultErrorFile "/usr/share/tinyproxy/default.html"
LogFile "{WORK}/tinyproxy/tinyproxy.log"
LogLevel Warning
PidFile "{WORK}/tinyproxy/tinyproxy.pid"
MaxClients 4000
Allow 127.0.0.1
ConnectPort 443
ConnectPort 18080
ViaProxyName "tinyproxy"
""")
    run(["chmod", "-R", "a+rwx", f"{WORK}/tinyproxy"])
    # palisade: same rules as the others (loopback clients, CONNECT to 443 and 18080, the
    # origin on 127.0.0.1 allowed) and, like squid's `access_log none`, no access log.
    write(f"{WORK}/palisade/policy.toml", """
default_action = "allow"
[access]
clients = ["127.0.0.0/8"]
connect_ports = [443, 18080]
allow_destinations = ["127.0.0.1/32"]
""")
    write(f"{WORK}/palisade/palisade.toml", f"""
[node]
hostname = "bench"
data_dir = "{WORK}/palisade/data"
[proxy]
listen = ["{PROXIES['palisade']}"]
test_listen = ["127.0.0.1:19091"]
max_connections = 20000
# Every benchmark client comes from 127.0.0.1: one source, unlike an office.
max_connections_per_source = 20000
[policy]
file = "{WORK}/palisade/policy.toml"
[admin]
listen = "127.0.0.1:14711"
[log]
level = "warn"
[access_log]
path = "off"
""")
    write(f"{WORK}/palisade-log/palisade.toml", f"""
[node]
hostname = "bench"
data_dir = "{WORK}/palisade-log/data"
[proxy]
listen = ["{PROXIES['palisade-log']}"]
test_listen = ["127.0.0.1:19191"]
max_connections = 20000
max_connections_per_source = 20000
[policy]
file = "{WORK}/palisade/policy.toml"
[admin]
listen = "127.0.0.1:14712"
[log]
level = "warn"
[access_log]
path = "access.log"
format = "json"
""")
    write(f"{WORK}/haproxy/haproxy.cfg", f"""
global
    nbthread 1
    # Two descriptors per connection; this machine's hard limit is 20,000.
    maxconn 9000
    pidfile {WORK}/haproxy/haproxy.pid
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    http-reuse always
frontend bench
    bind {PROXIES['haproxy']}
    default_backend origin
backend origin
    server nginx {ORIGIN}
""")
    wrk_lua = """
local target = os.getenv("WRK_TARGET")
if target ~= nil and target ~= "" then
  wrk.path = target
  wrk.headers["Host"] = os.getenv("WRK_HOST")
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\\n",
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
end
"""
    write(f"{WORK}/wrk.lua", wrk_lua)


class Daemon:
    def __init__(self, name, command, address, pin):
        self.name = name
        self.address = address
        self.process = subprocess.Popen(
            ["taskset", "-c", pin] + command,
            stdout=subprocess.DEVNULL,
            stderr=open(f"{WORK}/{name}.stderr", "w"),
            start_new_session=True,
        )
        wait_port(address)
        time.sleep(0.3)

    def pids(self):
        """The process and its direct children (squid and nginx fork)."""
        pids = [self.process.pid]
        try:
            children = run(["pgrep", "-P", str(self.process.pid)]).stdout.split()
            pids += [int(pid) for pid in children]
        except subprocess.CalledProcessError:
            pass
        return pids

    def cpu_ticks(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- measurements -------------------------------------------------------------------

def wrk(target_name, daemon):
    url = f"http://{ORIGIN}/small"
    env = dict(os.environ)
    if target_name == "direct":
        address = ORIGIN
        env.pop("WRK_TARGET", None)
    else:
        address = PROXIES[target_name]
        env["WRK_TARGET"] = url
        env["WRK_HOST"] = ORIGIN
    before_cpu, before_time = daemon.cpu_ticks(), time.time()
    output = run(["taskset", "-c", PIN_LOAD, "wrk", "-t", "1", "-c", "50", "-d", DURATION,
                  "--timeout", "5s", "-s", f"{WORK}/wrk.lua", f"http://{address}/small"], env=env).stdout
    cpu = (daemon.cpu_ticks() - before_cpu) / CLK_TCK / (time.time() - before_time) * 100
    line = next(line for line in output.splitlines() if line.startswith("RESULT"))
    values = dict(item.split("=") for item in line.split()[1:])
    errors = sum(int(values[key]) for key in values if key.startswith("err_"))
    return {"rps": float(values["rps"]), "p50_ms": int(values["p50_us"]) / 1000,
            "p99_ms": int(values["p99_us"]) / 1000, "cpu_pct": cpu, "errors": errors}


def oha_fixed_rate(target_name):
    if not shutil.which("oha"):
        return None
    command = ["taskset", "-c", PIN_LOAD, "oha", "-z", DURATION, "-c", "50", "-q", str(RATE),
               "--no-tui", "--output-format", "json"]
    if target_name != "direct":
        command += ["-x", f"http://{PROXIES[target_name]}"]
    command.append(f"http://{ORIGIN}/small")
    result = json.loads(run(command).stdout)
    percentiles = result.get("latencyPercentiles", {})
    return {"p50_ms": percentiles.get("p50", 0) * 1000, "p99_ms": percentiles.get("p99", 0) * 1000,
            "rps": result.get("summary", {}).get("requestsPerSec", 0)}


def machine_times():
    """(busy, steal) seconds of every core since boot, from /proc/stat's cpu line. Busy is
    user, nice, system, irq and softirq; not idle or iowait, and not steal: time the
    hypervisor gave to other guests is no work of ours, but it says how noisy a run was."""
    with open("/proc/stat") as handle:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(value) for value in handle.readline().split()[1:9])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def cpu_per_request(target_name, nginx, daemon=None):
    """One fixed-rate run: machine busy microseconds per answered request, the proxy
    process's own CPU per request (soft: it includes part of its peers' loopback TCP work),
    steal during the run, and its p99."""
    command = ["taskset", "-c", PIN_LOAD, "oha", "-z", CPU_DURATION, "-c", "50", "-q", str(RATE),
               "--no-tui", "--output-format", "json"]
    if target_name != "direct":
        command += ["-x", f"http://{PROXIES[target_name]}"]
    command.append(f"http://{ORIGIN}/small")
    if target_name == "direct":
        move_nginx_worker(nginx, PIN_PROXY)
    before, steal_before = machine_times()
    process_before = daemon.cpu_ticks() if daemon else 0
    result = json.loads(run(command).stdout)
    after, steal_after = machine_times()
    busy = after - before
    process = (daemon.cpu_ticks() - process_before) / CLK_TCK if daemon else 0
    if target_name == "direct":
        move_nginx_worker(nginx, PIN_LOAD)
    summary = result.get("summary", {})
    answered = sum(count for status, count in result.get("statusCodeDistribution", {}).items()
                   if status == "200")
    if not answered:
        raise RuntimeError(f"{target_name}: no request answered at {RATE}/s")
    return {"us_per_req": busy / answered * 1e6, "answered": answered,
            "process_us_per_req": process / answered * 1e6,
            "steal_s": steal_after - steal_before,
            "rps": summary.get("requestsPerSec", 0),
            "p99_ms": result.get("latencyPercentiles", {}).get("p99", 0) * 1000}


def curl_download(target_name, connect, path="/large"):
    command = ["taskset", "-c", PIN_LOAD, "curl", "-s", "-o", "/dev/null", "-w",
               "%{http_code} %{size_download} %{speed_download}"]
    if target_name != "direct":
        command += ["-x", f"http://{PROXIES[target_name]}"]
        if connect:
            command.append("-p")
    command.append(f"http://{ORIGIN}{path}")
    code, size, speed = run(command).stdout.split()
    if code != "200":
        raise RuntimeError(f"{target_name} download: HTTP {code}")
    return int(size), float(speed) / (1024 * 1024)


def hold_connections(address, count, kept_alive):
    """Opens `count` client connections (after one proxied GET each if kept_alive)."""
    host, port = address.rsplit(":", 1)
    sockets = []
    request = f"GET http://{ORIGIN}/small HTTP/1.1\r\nHost: {ORIGIN}\r\n\r\n".encode()
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        if kept_alive:
            sock.sendall(request)
            received = b""
            while not (b"\r\n\r\n" in received and received.endswith(b"x" * 100)):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        sockets.append(sock)
    return sockets


def still_open(sockets):
    alive = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            data = sock.recv(1)
            alive += 0 if data == b"" else 1
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def main():
    setup_files()
    subprocess.run(["cat", f"{WORK}/www/large"], stdout=subprocess.DEVNULL, check=True)
    nginx = Daemon("nginx", ["nginx", "-c", f"{WORK}/nginx/nginx.conf", "-p", f"{WORK}/nginx/"],
                   ORIGIN, PIN_LOAD)
    daemons = {}
    results = {"machine": os.uname().release, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
               "settings": {"reps": REPS, "duration": DURATION, "rate": RATE}}
    try:
        starters = {
            "palisade": [PALISADE, "run", "--config", f"{WORK}/palisade/palisade.toml"],
            "palisade-log": [PALISADE, "run", "--config", f"{WORK}/palisade-log/palisade.toml"],
            "haproxy": ["haproxy", "-db", "-f", f"{WORK}/haproxy/haproxy.cfg"],
            "squid": ["squid", "-N", "-f", f"{WORK}/squid/squid.conf"],
            "tinyproxy": ["tinyproxy", "-d", "-c", f"{WORK}/tinyproxy/tinyproxy.conf"],
        }
        names = [name for name in PROXIES if not ONLY or name in ONLY]
        for name in names:
            daemons[name] = Daemon(name, starters[name], PROXIES[name], PIN_PROXY)
        for name in names:
            results.setdefault(name, {})["rss_idle_kib"] = daemons[name].rss_kib()

        # Verify each proxy really forwards (and CONNECTs) before measuring.
        for name in names:
            for connect in (False,) if name in NO_CONNECT else (False, True):
                command = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                           f"http://{PROXIES[name]}", f"http://{ORIGIN}/small"]
                if connect:
                    command.insert(1, "-p")
                code = run(command).stdout
                if code != "200":
                    raise RuntimeError(f"{name} does not forward (connect={connect}): {code}")

        targets = ["direct"] + names
        for target in targets:
            results.setdefault(target, {})
        if "small" in STAGES:
            # a) small GETs, interleaved, 2 s warm-up each.
            for target in targets:
                daemon = nginx if target == "direct" else daemons[target]
                if target == "direct":
                    move_nginx_worker(nginx, PIN_PROXY)
                run(["taskset", "-c", PIN_LOAD, "wrk", "-t", "1", "-c", "50", "-d", "2s",
                     "-s", f"{WORK}/wrk.lua",
                     f"http://{ORIGIN if target == 'direct' else PROXIES[target]}/small"],
                    env=dict(os.environ, WRK_TARGET="" if target == "direct" else f"http://{ORIGIN}/small",
                             WRK_HOST=ORIGIN))
                if target == "direct":
                    move_nginx_worker(nginx, PIN_LOAD)
            runs = {target: [] for target in targets}
            for rep in range(REPS):
                for target in targets:
                    daemon = nginx if target == "direct" else daemons[target]
                    if target == "direct":
                        move_nginx_worker(nginx, PIN_PROXY)
                    runs[target].append(wrk(target, daemon))
                    if target == "direct":
                        move_nginx_worker(nginx, PIN_LOAD)
                    log(f"small GET rep {rep + 1} {target}: {runs[target][-1]}")
            for target in targets:
                entry = results.setdefault(target, {})
                entry["small_runs"] = runs[target]
                for key in ("rps", "p50_ms", "p99_ms", "cpu_pct", "errors"):
                    entry[f"small_{key}"] = statistics.median(run_[key] for run_ in runs[target])

        if "fixed" in STAGES:
            # b) latency at a fixed moderate rate.
            for target in targets:
                values = [oha_fixed_rate(target) for _ in range(REPS)]
                if values[0] is None:
                    break
                results[target]["fixed_rate"] = values
                results[target]["fixed_p50_ms"] = statistics.median(value["p50_ms"] for value in values)
                results[target]["fixed_p99_ms"] = statistics.median(value["p99_ms"] for value in values)
                log(f"fixed rate {target}: {results[target]['fixed_p99_ms']:.3f} ms p99")

        if "cpu" in STAGES:
            # b2) machine CPU per request at one fixed rate, interleaved.
            cpu_runs = {target: [] for target in targets}
            for rep in range(CPU_REPS):
                for target in targets:
                    cpu_runs[target].append(
                        cpu_per_request(target, nginx, None if target == "direct" else daemons[target]))
                    log(f"cpu/request rep {rep + 1} {target}: {cpu_runs[target][-1]}")
            for target in targets:
                values = [run_["us_per_req"] for run_ in cpu_runs[target]]
                results[target]["cpu_runs"] = cpu_runs[target]
                results[target]["cpu_us_per_req"] = statistics.median(values)
                results[target]["cpu_us_per_req_spread"] = [min(values), max(values)]
                results[target]["cpu_p99_ms"] = statistics.median(run_["p99_ms"] for run_ in cpu_runs[target])
                # Paired with the direct run of the same repetition (adjacent in time), so slow
                # drifts of the machine cancel out; the median of these is the net figure.
                net = [run_["us_per_req"] - direct_["us_per_req"]
                       for run_, direct_ in zip(cpu_runs[target], cpu_runs["direct"])]
                results[target]["cpu_net_us_per_req"] = statistics.median(net)
                results[target]["cpu_net_spread"] = [min(net), max(net)]
                results[target]["process_us_per_req"] = statistics.median(
                    run_["process_us_per_req"] for run_ in cpu_runs[target])
                results[target]["steal_s"] = statistics.median(run_["steal_s"] for run_ in cpu_runs[target])

        if "large" in STAGES:
            # c) large downloads, interleaved across targets (the machine drifts between
            # repetitions; every target sees the same drift).
            kinds = [(target, connect) for target in targets
                     for connect in ((False,) if target == "direct" or target in NO_CONNECT else (False, True))]
            speeds = {kind: [] for kind in kinds}
            for _ in range(LARGE_REPS):
                for target, connect in kinds:
                    size, speed = curl_download(target, connect)
                    assert size == 100 * 1024 * 1024, size
                    speeds[(target, connect)].append(speed)
            for (target, connect), values in speeds.items():
                key = "large_connect_mib_s" if connect else "large_plain_mib_s"
                results[target][key] = statistics.median(values)
                results[target][key + "_runs"] = values
                log(f"large {target} connect={connect}: {statistics.median(values):.0f} MiB/s")

        if "memory" in STAGES:
            # d) memory with many clients.
            for name in names:
                daemon = daemons[name]
                idle = hold_connections(PROXIES[name], 1000, kept_alive=False)
                time.sleep(2)
                results[name]["rss_1000_idle_kib"] = daemon.rss_kib()
                results[name]["idle_still_open"] = still_open(idle)
                for sock in idle:
                    sock.close()
                time.sleep(1)
                try:
                    kept = hold_connections(PROXIES[name], 1000, kept_alive=True)
                    time.sleep(2)
                    results[name]["rss_1000_keepalive_kib"] = daemon.rss_kib()
                    results[name]["keepalive_still_open"] = still_open(kept)
                    for sock in kept:
                        sock.close()
                except OSError as error:
                    results[name]["rss_1000_keepalive_kib"] = None
                    log(f"{name}: keep-alive hold failed: {error}")
                time.sleep(1)
                log(f"memory {name}: {results[name]}")

        if "huge" in STAGES:
            # e) 10 GiB through palisade in constant memory.
            if "palisade" in daemons:
                before = daemons["palisade"].rss_kib()
                size, speed = curl_download("palisade", False, "/huge")
                results["palisade"]["huge_download"] = {"bytes": size, "mib_s": speed,
                                                        "rss_before_kib": before,
                                                        "rss_after_kib": daemons["palisade"].rss_kib()}
    finally:
        for daemon in daemons.values():
            daemon.stop()
        nginx.stop()
    if CALLGRIND:
        nginx = Daemon("nginx", ["nginx", "-c", f"{WORK}/nginx/nginx.conf", "-p", f"{WORK}/nginx/"],
                       ORIGIN, PIN_LOAD)
        try:
            for name in ("palisade", "palisade-log", "haproxy"):
                if name in results:
                    results[name]["instructions_per_req"] = callgrind_per_request(name, starters[name])
                    log(f"callgrind {name}: {results[name]['instructions_per_req']:,.0f} instructions/request")
        finally:
            nginx.stop()
    with open(f"{WORK}/results.json", "w") as handle:
        json.dump(results, handle, indent=2)
    print_table(results)


def callgrind_per_request(name, command, counts=(2000, 6000)):
    """Instructions the proxy process executes per request, from two callgrind runs of
    different lengths (start-up, warm-up and exit cancel out in the difference)."""
    totals = []
    for count in counts:
        out = f"{WORK}/callgrind-{name}-{count}.out"
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + command,
            stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/callgrind-{name}.stderr", "w"),
            start_new_session=True)
        try:
            wait_port(PROXIES[name], timeout=120)
            oha = ["oha", "-n", str(count), "-c", "10", "--no-tui", "--output-format", "json",
                   "-x", f"http://{PROXIES[name]}", f"http://{ORIGIN}/small"]
            result = json.loads(run(oha).stdout)
            answered = result.get("statusCodeDistribution", {}).get("200", 0)
            if answered != count:
                raise RuntimeError(f"callgrind {name}: {answered} of {count} answered")
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=120)
        with open(out) as handle:
            total = next(int(line.split()[1]) for line in handle
                         if line.startswith(("summary:", "totals:")))
        totals.append(total)
    return (totals[1] - totals[0]) / (counts[1] - counts[0])


def move_nginx_worker(nginx, cpu):
    for pid in nginx.pids():
        subprocess.run(["taskset", "-a", "-cp", cpu, str(pid)], capture_output=True)


def print_table(results):
    names = [name for name in PROXIES if name in results]
    squid = results.get("squid", {})
    direct = results.get("direct", {})
    print(f"\n# proxy benchmark {results['time']} (kernel {results['machine']})")
    print(f"settings: {results['settings']}; proxies pinned to CPU {PIN_PROXY}, load on CPU {PIN_LOAD}\n")
    header = ("| target | small GET req/s | p50 ms | p99 ms | proxy CPU % | req/s per core | vs squid/core "
              "| p99 @ fixed rate ms | added p99 vs direct ms | large plain MiB/s | large CONNECT MiB/s "
              "| RSS idle MiB | RSS +1000 idle MiB | RSS +1000 keep-alive MiB | KiB per kept-alive |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in ["direct"] + names:
        entry = results.get(name, {})
        rps = entry.get("small_rps", 0)
        cpu = entry.get("small_cpu_pct", 0) or 100
        per_core = rps / (cpu / 100)
        squid_per_core = squid.get("small_rps", 0) / ((squid.get("small_cpu_pct", 0) or 100) / 100) if squid else 0
        ratio = f"{per_core / squid_per_core:.2f}x" if squid_per_core else "-"
        added = ""
        if "fixed_p99_ms" in entry and "fixed_p99_ms" in direct and name != "direct":
            added = f"{entry['fixed_p99_ms'] - direct['fixed_p99_ms']:.3f}"
        idle = entry.get("rss_idle_kib")
        idle1000 = entry.get("rss_1000_idle_kib")
        kept = entry.get("rss_1000_keepalive_kib")
        per_conn = f"{(kept - idle) / 1000:.1f}" if kept and idle else "-"

        def mib(value):
            return f"{value / 1024:.1f}" if value else "-"

        print(f"| {name} | {rps:,.0f} | {entry.get('small_p50_ms', 0):.2f} | {entry.get('small_p99_ms', 0):.2f} "
              f"| {entry.get('small_cpu_pct', 0):.0f} | {per_core:,.0f} | {ratio} "
              f"| {entry.get('fixed_p99_ms', 0):.3f} | {added or '-'} "
              f"| {entry.get('large_plain_mib_s', 0):,.0f} | {entry.get('large_connect_mib_s', 0):,.0f} "
              f"| {mib(idle)} | {mib(idle1000)} | {mib(kept)} | {per_conn} |")
    print_cpu_table(results)
    direct_large = direct.get("large_plain_mib_s")
    if direct_large:
        ratios = ", ".join(f"{name} {results[name]['large_plain_mib_s'] / direct_large * 100:.0f}%"
                           for name in names if results.get(name, {}).get("large_plain_mib_s"))
        print(f"\nLarge plain download vs direct (medians of {LARGE_REPS} interleaved): {ratios}")
    huge = results.get("palisade", {}).get("huge_download")
    if huge:
        print(f"\n10 GiB through palisade: {huge['bytes']} bytes at {huge['mib_s']:.0f} MiB/s, "
              f"RSS {huge['rss_before_kib']} KiB before, {huge['rss_after_kib']} KiB after")
    print(f"\nraw figures: {WORK}/results.json")


def print_cpu_table(results):
    """Issue 8's comparison: machine CPU per request at one fixed rate, net of the direct
    run, against HAProxy; p99 added over direct; large plain forwarding against direct;
    instructions per request under callgrind."""
    direct = results.get("direct", {})
    haproxy = results.get("haproxy", {})
    if "cpu_us_per_req" not in direct:
        return
    base = direct["cpu_us_per_req"]
    print(f"\nMachine CPU per request at {RATE} req/s, medians of {CPU_REPS} interleaved "
          f"{CPU_DURATION} runs (spread min-max), net = minus direct's {base:.1f} µs\n")
    header = ("| target | µs/request | spread | net µs/request (paired) | net spread | net vs HAProxy "
              "| process µs/request | steal s/run | p99 ms | added p99 vs direct ms "
              "| large plain vs direct | instructions/request |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    haproxy_net = haproxy.get("cpu_net_us_per_req", 0) if haproxy else 0
    haproxy_process = haproxy.get("process_us_per_req", 0) if haproxy else 0
    for name in ["direct"] + [name for name in PROXIES if name in results]:
        entry = results.get(name, {})
        if "cpu_us_per_req" not in entry:
            continue
        value = entry["cpu_us_per_req"]
        low, high = entry["cpu_us_per_req_spread"]
        net = entry.get("cpu_net_us_per_req", 0)
        net_low, net_high = entry.get("cpu_net_spread", [0, 0])
        versus = f"{net / haproxy_net:.2f}x" if haproxy_net > 0 and name != "direct" else "-"
        process = entry.get("process_us_per_req", 0)
        process_text = (f"{process:.1f} ({process / haproxy_process:.2f}x)"
                        if haproxy_process > 0 and name != "direct" else "-")
        added = f"{entry['cpu_p99_ms'] - direct['cpu_p99_ms']:.3f}" if name != "direct" else "-"
        plain = entry.get("large_plain_mib_s")
        ratio = (f"{plain / direct['large_plain_mib_s'] * 100:.0f}%"
                 if plain and direct.get("large_plain_mib_s") and name != "direct" else "-")
        instructions = entry.get("instructions_per_req")
        print(f"| {name} | {value:.1f} | {low:.1f}-{high:.1f} | {net:.1f} "
              f"| {net_low:.1f}-{net_high:.1f} | {versus} | {process_text} "
              f"| {entry.get('steal_s', 0):.2f} | {entry['cpu_p99_ms']:.3f} | {added} | {ratio} "
              f"| {f'{instructions:,.0f}' if instructions else '-'} |")


if __name__ == "__main__":
    main()
