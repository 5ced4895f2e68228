//! What the director's relay costs (issue 12, section 4): one client address whose node is
//! node2, sent the same traffic straight to node2's own address (served there: "direct") and
//! to the VIP (node1 directs and relays it to node2's scan port: "relayed"), in the same run
//! and alternating, in network namespaces on one machine:
//! - bulk CONNECT: a 1 GiB download through a tunnel, MB/s;
//! - a fixed rate of new connections each with one small GET (`Connection: close`): latency
//!   p50 / p99, and the machine's CPU (all cores, from /proc/stat) per request;
//! - the new-connection rate, closed loop (32 at a time);
//! - machine CPU per relayed GiB.
//!
//! Usage: relay-bench PALISADE_BINARY [RUNS] [RATE] (needs root, iproute2, nftables)

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use palisade_e2e::director_lab::{DirectorLab, ORIGIN_PORT, read_head};
use palisade_e2e::netns::in_namespace;

const BULK: u64 = 1 << 30;
const FIXED_FOR: Duration = Duration::from_secs(10);
const CLOSED_FOR: Duration = Duration::from_secs(5);
const CLOSED_CONCURRENCY: usize = 32;

/// Busy and total jiffies of all cores, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = (stat.lines().next().unwrap_or_default().split_whitespace())
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user, nice, system, irq, softirq: not idle, iowait or steal (another guest's time).
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    (busy, fields.iter().take(8).sum())
}

/// CPU-seconds the machine was busy (all cores) while `work` ran, and its result.
fn measure_cpu<T>(work: impl FnOnce() -> T) -> (f64, T) {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let (busy_before, _) = cpu_jiffies();
    let result = work();
    let (busy_after, _) = cpu_jiffies();
    ((busy_after - busy_before) as f64 / ticks, result)
}

/// User + system CPU-seconds of process `pid` so far (from /proc/PID/stat).
fn process_cpu(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the state, which is no number).
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Downloads `BULK` bytes through a CONNECT tunnel to the origin; MB/s.
fn bulk(lab: &DirectorLab, source: Ipv4Addr, to: Ipv4Addr) -> f64 {
    let mut stream = lab.tunnel(source, to);
    let target = format!("{}:{ORIGIN_PORT}", lab.origin.addr);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let started = Instant::now();
    let get = format!("GET /big/{BULK} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(get.as_bytes())
        .unwrap_or_else(|error| panic!("{error}"));
    let _ = read_head(&mut stream);
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < BULK {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(read) => got += read as u64,
            Err(error) => panic!("bulk read after {got} bytes: {error}"),
        }
    }
    assert_eq!(got, BULK, "the whole body");
    BULK as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// Kernel memory in use, KiB: `MemTotal - MemAvailable`, unreclaimable slab, and TCP
/// buffers (`/proc/net/sockstat`'s pages, counted for every namespace), machine-wide.
fn kernel_memory() -> (i64, i64, i64) {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp_pages: i64 = (sockstat.lines())
        .find_map(|line| line.strip_prefix("TCP:"))
        .and_then(|rest| {
            rest.split_whitespace()
                .skip_while(|word| *word != "mem")
                .nth(1)
        })
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> i64 {
        (meminfo.lines())
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("MemTotal:") - field("MemAvailable:"),
        field("SUnreclaim:"),
        tcp_pages * 4,
    )
}

/// Opens `many` CONNECT tunnels to the origin through `to` and reports the memory they hold per
/// tunnel (client, director and scanning node together, as the machine sees it): idle and
/// just opened (small pipes), then after a 1 MiB download through each (pipes grown, empty).
fn many_tunnels(lab: &DirectorLab, source: Ipv4Addr, to: Ipv4Addr, many: usize, name: &str) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // Each tunnel holds a client socket here and an origin connection in this process.
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let settle = || std::thread::sleep(Duration::from_secs(2));
    settle();
    let before = kernel_memory();
    let target = format!("{}:{ORIGIN_PORT}", lab.origin.addr);
    let mut tunnels: Vec<std::net::TcpStream> = (0..many)
        .map(|_| {
            let stream = lab.tunnel(source, to);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            stream
        })
        .collect();
    settle();
    let idle = kernel_memory();
    let mut buf = vec![0u8; 256 * 1024];
    for stream in &mut tunnels {
        let get = format!("GET /big/1048576 HTTP/1.1\r\nHost: {target}\r\n\r\n");
        stream
            .write_all(get.as_bytes())
            .unwrap_or_else(|error| panic!("{error}"));
        let _ = read_head(stream);
        let mut left = 1u64 << 20;
        while left > 0 {
            match stream.read(&mut buf[..(left.min(256 * 1024) as usize)]) {
                Ok(0) | Err(_) => panic!("download cut with {left} bytes left"),
                Ok(read) => left -= read as u64,
            }
        }
    }
    // Just after (pipes grown, empty), then once they have shrunk back (2 s idle).
    std::thread::sleep(Duration::from_millis(500));
    let grown = kernel_memory();
    std::thread::sleep(Duration::from_secs(3));
    let shrunk = kernel_memory();
    let per = |after: (i64, i64, i64)| {
        let each = |now: i64, then: i64| (now - then) as f64 / many as f64;
        format!(
            "{:.1} used, {:.1} unreclaimable slab, {:.1} TCP buffers",
            each(after.0, before.0),
            each(after.1, before.1),
            each(after.2, before.2)
        )
    };
    let rss = |pid: Option<u32>| palisade_e2e::node::rss_kib(pid.unwrap_or(0));
    println!(
        "{many} {name} tunnels, KiB each (machine-wide: client, nodes, origin): idle {}; just after 1 MiB each {}; 3.5 s later {}; RSS now node1 {} KiB, node2 {} KiB",
        per(idle),
        per(grown),
        per(shrunk),
        rss(lab.nodes[0].pid),
        rss(lab.nodes[1].pid),
    );
    drop(tunnels);
}

/// One small GET on a new connection from `source` to `to`; its latency.
async fn one_request(source: Ipv4Addr, to: Ipv4Addr, origin: Ipv4Addr) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).ok()?;
    let mut stream = socket
        .connect(SocketAddr::new(IpAddr::V4(to), 9090))
        .await
        .ok()?;
    let request = format!(
        "GET http://{origin}:{ORIGIN_PORT}/small HTTP/1.1\r\nHost: {origin}:{ORIGIN_PORT}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    response
        .starts_with(b"HTTP/1.1 200")
        .then(|| started.elapsed())
}

/// `rate` requests a second for `FIXED_FOR`, open loop; (latencies sorted, failures).
fn fixed_rate(
    lab: &DirectorLab,
    source: Ipv4Addr,
    to: Ipv4Addr,
    rate: u32,
) -> (Vec<Duration>, usize) {
    let origin = lab.origin.addr;
    in_client(lab, async move {
        let count = (rate as u64 * FIXED_FOR.as_secs()) as usize;
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / f64::from(rate)))
                .await;
            tasks.push(tokio::spawn(one_request(source, to, origin)));
        }
        let mut latencies = Vec::with_capacity(count);
        let mut failed = 0;
        for task in tasks {
            match task.await {
                Ok(Some(latency)) => latencies.push(latency),
                _ => failed += 1,
            }
        }
        latencies.sort();
        (latencies, failed)
    })
}

/// Runs `work` on a runtime of its own inside the client's namespace (its sockets are the
/// client's).
fn in_client<T: Send>(lab: &DirectorLab, work: impl std::future::Future<Output = T> + Send) -> T {
    in_namespace(&lab.client.ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("{error}"))
            .block_on(work)
    })
}

/// New connections (one small GET each) per second, `CLOSED_CONCURRENCY` at a time.
fn closed_loop(lab: &DirectorLab, source: Ipv4Addr, to: Ipv4Addr) -> f64 {
    let origin = lab.origin.addr;
    in_client(lab, async move {
        let deadline = tokio::time::Instant::now() + CLOSED_FOR;
        let workers: Vec<_> = (0..CLOSED_CONCURRENCY)
            .map(|_| {
                tokio::spawn(async move {
                    let mut done = 0u64;
                    while tokio::time::Instant::now() < deadline {
                        if one_request(source, to, origin).await.is_some() {
                            done += 1;
                        }
                    }
                    done
                })
            })
            .collect();
        let mut done = 0;
        for worker in workers {
            done += worker.await.unwrap_or(0);
        }
        done as f64 / CLOSED_FOR.as_secs_f64()
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted
        .get(index)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next() else {
        eprintln!("usage: relay-bench PALISADE_BINARY [RUNS] [RATE]");
        std::process::exit(2);
    };
    let runs: usize = args.next().and_then(|runs| runs.parse().ok()).unwrap_or(3);
    let rate: u32 = args
        .next()
        .and_then(|rate| rate.parse().ok())
        .unwrap_or(500);
    let lab = DirectorLab::new(&binary);
    // PIN=1: the director (node1) on CPU 1, everything else (node2, the client, the origin)
    // on CPU 0, as if the director were its own machine, which it is in a deployment: on
    // this 2-core VM its hop otherwise takes CPU from the client, origin and scanning node.
    if std::env::var_os("PIN").is_some() {
        let pins = [
            (lab.nodes[0].pid, "1"),
            (lab.nodes[1].pid, "0"),
            (Some(std::process::id()), "0"),
        ];
        for (pid, cpu) in pins {
            let pid = pid.unwrap_or_else(|| panic!("a node without a pid"));
            let pinned = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", cpu, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap_or_else(|error| panic!("taskset: {error}"));
            assert!(pinned.success(), "taskset -c {cpu} {pid}");
        }
        eprintln!("pinned: director on CPU 1, node2, client and origin on CPU 0");
    }
    let source = lab.on[1];
    let paths = [("direct", lab.hosts[1].addr), ("relayed", lab.vip)];
    // MANY=N: the kernel memory N tunnels hold (idle, then after each moved 1 MiB), relayed
    // and direct.
    if let Some(many) = std::env::var("MANY")
        .ok()
        .and_then(|many| many.parse().ok())
    {
        for (name, to) in paths {
            many_tunnels(&lab, source, to, many, name);
        }
        return;
    }
    let mut results: Vec<[Vec<f64>; 7]> = vec![Default::default(), Default::default()];
    for run in 0..runs {
        for (index, (name, to)) in paths.iter().enumerate() {
            let (cpu, mbps) = measure_cpu(|| bulk(&lab, source, *to));
            let cpu_per_gib = cpu / (BULK as f64 / (1u64 << 30) as f64);
            // BULK_ONLY=1: the bulk figure alone (quick turns while tuning the splice loop).
            if std::env::var_os("BULK_ONLY").is_some() {
                eprintln!("run {run} {name}: bulk {mbps:.0} MB/s ({cpu_per_gib:.2} CPU-s/GiB)");
                results[index][0].push(mbps);
                results[index][1].push(cpu_per_gib);
                continue;
            }
            let nodes_before = [process_cpu(lab.nodes[0].pid), process_cpu(lab.nodes[1].pid)];
            // PERF=FILE: a profile of the director (node1) during the relayed fixed rate.
            let perf = (std::env::var("PERF").ok())
                .filter(|_| *name == "relayed" && run == 0)
                .and_then(|file| {
                    std::process::Command::new("perf")
                        .args(["record", "-F", "999", "-g", "-o", &file, "-p"])
                        .arg(lab.nodes[0].pid.unwrap_or(0).to_string())
                        .args(["--", "sleep", "8"])
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .ok()
                });
            let (cpu_fixed, (latencies, failed)) =
                measure_cpu(|| fixed_rate(&lab, source, *to, rate));
            let per_request_ms = cpu_fixed * 1000.0 / latencies.len().max(1) as f64;
            if let Some(mut perf) = perf {
                let _ = perf.wait();
            }
            let per_node: Vec<String> = (0..2)
                .map(|node| {
                    let used = process_cpu(lab.nodes[node].pid) - nodes_before[node];
                    format!(
                        "node{} {:.3}",
                        node + 1,
                        used * 1000.0 / latencies.len().max(1) as f64
                    )
                })
                .collect();
            eprintln!("  CPU-ms per request by process: {}", per_node.join(", "));
            let closed = closed_loop(&lab, source, *to);
            let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
            eprintln!(
                "run {run} {name}: bulk {mbps:.0} MB/s ({cpu_per_gib:.2} CPU-s/GiB), {rate}/s: p50 {p50:.3} ms p99 {p99:.3} ms, {per_request_ms:.3} CPU-ms/request, {failed} failed; closed loop {closed:.0} conn/s"
            );
            let row = &mut results[index];
            row[0].push(mbps);
            row[1].push(cpu_per_gib);
            row[2].push(p50);
            row[3].push(p99);
            row[4].push(per_request_ms);
            row[5].push(closed);
            row[6].push(failed as f64);
        }
    }
    println!(
        "| path | bulk CONNECT MB/s | CPU-s per GiB | p50 ms at {rate}/s | p99 ms at {rate}/s | CPU-ms per request | new conn/s (closed loop) | failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (index, (name, _)) in paths.iter().enumerate() {
        let row: Vec<f64> = results[index]
            .iter_mut()
            .map(|values| median(values))
            .collect();
        println!(
            "| {name} | {:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} |",
            row[0], row[1], row[2], row[3], row[4], row[5], row[6]
        );
        medians.push(row);
    }
    let (direct, relayed) = (&medians[0], &medians[1]);
    println!(
        "\nrelayed / direct: bulk {:.0}% (goal >= 85%), p99 added {:.3} ms (goal <= 0.3), CPU per request +{:.3} ms, per GiB +{:.2} s, new connections {:.0}%; medians of {runs} runs",
        100.0 * relayed[0] / direct[0],
        relayed[3] - direct[3],
        relayed[4] - direct[4],
        relayed[1] - direct[1],
        100.0 * relayed[5] / direct[5],
    );
    drop(lab);
}
