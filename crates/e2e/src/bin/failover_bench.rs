//! Failover benchmark: palisade vs keepalived, same settings, same run, in network
//! namespaces (issue 3, section 6). Measures, from the fault to the first HTTP response
//! through the VIP seen by a client namespace (probing every 2 ms), for process crash (kill -9
//! of every process of the node), node death (kill -9 and link down) and graceful stop, at
//! 1 s and 100 ms adverts; the client's longest outage when the higher-priority node
//! returns (preemption); and, after a split brain (a multicast partition: the bridge stops
//! flooding VRRP to both nodes, so both become master and the client follows the backup's
//! gratuitous ARPs), the time from the heal until the client is answered by the winner again.
//! Faults are injected at a random phase of the advert interval.
//!
//! Usage: failover-bench PALISADE_BINARY [RUNS] (needs root, keepalived, iproute2)
//!
//! For keepalived the HTTP answer on the VIP comes from a palisade instance without VRRP
//! (a stand-in for the node's proxy, as Squid would be), so both sides answer the same way.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use palisade_e2e::netns::{Lab, LabHost, in_namespace, ip};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Palisade,
    Keepalived,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Crash,
    NodeDeath,
    GracefulStop,
    Preemption,
    SplitBrain,
    /// `palisade drain` on the master (keepalived has no such command: its planned
    /// handover is the graceful stop).
    Drain,
}

/// How long a split brain's heal may take before the run counts as failed: beyond a stale
/// neighbour entry's lifetime (base_reachable_time 30 s, randomised up to 45 s, + 5 s delay).
const SPLIT_BRAIN_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next() else {
        eprintln!("usage: failover-bench PALISADE_BINARY [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.next().and_then(|runs| runs.parse().ok()).unwrap_or(5);
    let dir = palisade_e2e::node::TempDir::new("palisade-failover");
    println!("| system | advert interval | fault | median ms | runs (ms) |");
    println!("|---|---|---|---:|---|");
    let only = std::env::var("ONLY_FAULT").unwrap_or_default();
    for interval_ms in [1000u64, 100] {
        for fault in [
            Fault::Crash,
            Fault::NodeDeath,
            Fault::GracefulStop,
            Fault::Preemption,
            Fault::SplitBrain,
            Fault::Drain,
        ] {
            if !only.is_empty() && !format!("{fault:?}").eq_ignore_ascii_case(&only) {
                continue;
            }
            for system in [System::Palisade, System::Keepalived] {
                if fault == Fault::Drain && system == System::Keepalived {
                    continue;
                }
                // A failed run counts as infinitely slow: the median says so if most failed.
                let mut figures = Vec::new();
                for run in 0..runs {
                    match measure(&binary, &dir.0, system, fault, interval_ms, run) {
                        Ok(figure) => figures.push(figure),
                        Err(error) => {
                            eprintln!("{system:?} {fault:?} {interval_ms} ms run {run}: {error}");
                            figures.push(f64::INFINITY);
                        }
                    }
                }
                let mut sorted = figures.clone();
                sorted.sort_by(f64::total_cmp);
                let median = match sorted.get(sorted.len() / 2) {
                    Some(median) if median.is_finite() => format!("{median:.0}"),
                    Some(_) => "failed".to_owned(),
                    None => "-".to_owned(),
                };
                let list: Vec<String> = figures
                    .iter()
                    .map(|ms| {
                        if ms.is_finite() {
                            format!("{ms:.0}")
                        } else {
                            "failed".to_owned()
                        }
                    })
                    .collect();
                println!(
                    "| {} | {} ms | {} | {median} | {} |",
                    match system {
                        System::Palisade => "palisade",
                        System::Keepalived => "keepalived 2.2.7",
                    },
                    interval_ms,
                    match fault {
                        Fault::Crash => "process crash (kill -9)",
                        Fault::NodeDeath => "node death (kill -9 + link down)",
                        Fault::GracefulStop => "graceful stop",
                        Fault::Preemption => "preemption: client outage",
                        Fault::SplitBrain => "split brain heal: client reaches the winner",
                        Fault::Drain => "`palisade drain` of the master",
                    },
                    list.join(", ")
                );
            }
        }
    }
}

struct Node {
    host: LabHost,
}

/// What every node of one measurement shares.
struct Setup<'a> {
    binary: &'a str,
    dir: &'a Path,
    system: System,
    vip: Ipv4Addr,
    interval_ms: u64,
}

fn start_node(
    lab: &mut Lab,
    setup: &Setup<'_>,
    host: &LabHost,
    priority: u8,
    peer: Ipv4Addr,
) -> Node {
    let Setup {
        binary,
        dir,
        system,
        vip,
        interval_ms,
    } = *setup;
    let tag = format!(
        "{}-{}",
        host.name,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let data = dir.join(format!("{tag}-data"));
    let vrrp = match system {
        System::Palisade => format!(
            "[[vrrp]]\nname = \"VI_1\"\nvrid = 51\ninterface = \"eth0\"\npriority = {priority}\nadvert_interval = \"{interval_ms}ms\"\nvips = [\"{vip}/24\"]\n[heartbeat]\nlisten = \"0.0.0.0:9192\"\npeers = [\"{peer}:9192\"]\nkey = \"benchmark-group-key-0123456789\"\n[health]\ninterval = \"50ms\"\n"
        ),
        System::Keepalived => String::new(),
    };
    let policy = palisade_e2e::ha::lab_policy(dir, &tag);
    let config = format!(
        "[node]\nhostname = \"{name}\"\ndata_dir = \"{data}\"\n[policy]\nfile = \"{policy}\"\n[proxy]\nlisten = [\"0.0.0.0:9090\"]\ntest_listen = [\"0.0.0.0:9091\"]\n[admin]\nlisten = \"127.0.0.1:4711\"\n[log]\nlevel = \"warn\"\n[access_log]\npath = \"off\"\n{vrrp}",
        name = host.name,
        data = data.display(),
        policy = policy.display(),
    );
    let config_path = dir.join(format!("{tag}.toml"));
    let _ = std::fs::write(&config_path, config);
    let log = dir.join(format!("{tag}.log"));
    lab.spawn(
        &host.name,
        binary,
        &["run", "--config", &config_path.display().to_string()],
        &log,
    );
    if system == System::Keepalived {
        let ka_config = format!(
            "global_defs {{\n  router_id {name}\n  vrrp_version 3\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {interval}\n  version 3\n  virtual_ipaddress {{\n    {vip}/24 dev eth0\n  }}\n}}\n",
            name = host.name,
            interval = interval_ms as f64 / 1000.0,
        );
        let ka_path = dir.join(format!("{tag}-ka.conf"));
        let _ = std::fs::write(&ka_path, ka_config);
        palisade_e2e::ha::spawn_keepalived(
            lab,
            &host.name,
            &ka_path,
            &dir.join(format!("{tag}-ka")),
        );
    }
    Node { host: host.clone() }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Every process in the namespace (keepalived forks a VRRP child): stopped first, then
/// killed, so no process gets to clean up (vrrp-lab.md pitfall 1).
fn kill_all(host: &LabHost) {
    let pids = ip(&["netns", "pids", &host.ns]);
    let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for signal in ["-STOP", "-KILL"] {
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args([signal, pid])
                .status();
        }
    }
}

/// Waits until every process of the namespace is dead (gone or a zombie, so its sockets are
/// released and a restart can bind the same ports).
fn wait_dead(host: &LabHost) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let pids = ip(&["netns", "pids", &host.ns]);
        let alive = String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .any(|pid| !palisade_e2e::ha::is_dead(pid));
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn terminate(node: &Node, system: System) {
    // Graceful: palisade gets SIGTERM; for keepalived only keepalived stops (its proxy stays).
    let target = match system {
        System::Palisade => "palisade",
        System::Keepalived => "keepalived",
    };
    let pids = ip(&["netns", "pids", &node.host.ns]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == target {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", pid])
                .status();
        }
    }
}

fn has_vip(host: &LabHost, vip: Ipv4Addr) -> bool {
    host.addresses().contains(&format!(" {vip}/"))
}

/// One probe from the client, with timeouts short enough to resolve a few milliseconds.
fn probe(vip: Ipv4Addr) -> Option<String> {
    palisade_e2e::ha::probe(vip, Duration::from_millis(10), Duration::from_millis(50))
}

fn wait(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > timeout {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn measure(
    binary: &str,
    dir: &Path,
    system: System,
    fault: Fault,
    interval_ms: u64,
    run: usize,
) -> Result<f64, String> {
    let mut lab = Lab::new(&["node1", "node2", "client"]);
    let vip = lab.spare_addr(100);
    let node1_host = lab.host("node1").clone();
    let node2_host = lab.host("node2").clone();
    let client = lab.host("client").clone();
    let setup = Setup {
        binary,
        dir,
        system,
        vip,
        interval_ms,
    };
    let _node2 = start_node(&mut lab, &setup, &node2_host, 100, node1_host.addr);
    let node1 = start_node(&mut lab, &setup, &node1_host, 150, node2_host.addr);
    let settle = Duration::from_millis(5 * interval_ms + 3000);
    wait("node1 master", settle + Duration::from_secs(5), || {
        has_vip(&node1_host, vip) && !has_vip(&node2_host, vip)
    })?;
    // Let node2 learn the master and the heartbeat come up.
    std::thread::sleep(Duration::from_millis(3 * interval_ms + 500));
    wait("client reaches node1", Duration::from_secs(5), || {
        in_namespace(&client.ns, || probe(vip)).as_deref() == Some("node1")
    })?;
    // A random phase within the advert interval.
    let phase = (run as u64 * 7919 + std::process::id() as u64 * 104_729) % interval_ms;
    std::thread::sleep(Duration::from_millis(phase));
    match fault {
        Fault::Preemption => {
            // node1 leaves abruptly, node2 takes over; then node1 returns and preempts. The
            // figure is the client's longest gap between answers while that happens.
            kill_all(&node1_host);
            wait("node2 master", Duration::from_secs(10), || {
                has_vip(&node2_host, vip)
            })?;
            wait("client reaches node2", Duration::from_secs(10), || {
                in_namespace(&client.ns, || probe(vip)).as_deref() == Some("node2")
            })?;
            wait_dead(&node1_host);
            ip(&[
                "-n",
                &node1_host.ns,
                "addr",
                "flush",
                "dev",
                "eth0",
                "to",
                &format!("{vip}/32"),
            ]);
            let _returned = start_node(&mut lab, &setup, &node1_host, 150, node2_host.addr);
            let outage = in_namespace(&client.ns, || {
                let start = Instant::now();
                let mut last_answer = Instant::now();
                let mut longest = Duration::ZERO;
                while start.elapsed() < Duration::from_millis(10 * interval_ms + 8000) {
                    let answer = probe(vip);
                    let now = Instant::now();
                    if answer.is_some() {
                        longest = longest.max(now - last_answer);
                        last_answer = now;
                        if answer.as_deref() == Some("node1") {
                            return Some(longest);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                None
            });
            return outage.map(|gap| gap.as_secs_f64() * 1000.0).ok_or_else(|| {
                let logs: Vec<String> = std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        name.starts_with("node1") && name.ends_with(".log")
                    })
                    .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
                    .collect();
                format!(
                    "node1 never answered again; node1 logs:\n{}",
                    logs.join("\n---\n")
                )
            });
        }
        Fault::SplitBrain => {
            node1_host.set_multicast(&lab, false);
            node2_host.set_multicast(&lab, false);
            wait("client follows node2", Duration::from_secs(10), || {
                in_namespace(&client.ns, || probe(vip)).as_deref() == Some("node2")
            })?;
            if !has_vip(&node1_host, vip) {
                return Err("node1 gave up the VIP: not a split brain".to_owned());
            }
            // Both masters advertise for a while, as in a real partition.
            std::thread::sleep(Duration::from_millis(2 * interval_ms + phase));
            let healed = in_namespace(&client.ns, || {
                node1_host.set_multicast(&lab, true);
                node2_host.set_multicast(&lab, true);
                let start = Instant::now();
                while start.elapsed() < SPLIT_BRAIN_LIMIT {
                    if probe(vip).as_deref() == Some("node1") {
                        return Some(start.elapsed());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                None
            });
            return healed
                .map(|took| took.as_secs_f64() * 1000.0)
                .ok_or_else(|| {
                    format!(
                        "the client did not reach the winner within {SPLIT_BRAIN_LIMIT:?} of the heal (node2 holds the VIP: {})",
                        has_vip(&node2_host, vip)
                    )
                });
        }
        Fault::Crash | Fault::NodeDeath | Fault::GracefulStop | Fault::Drain => {}
    }
    let measured = in_namespace(&client.ns, || {
        let start = Instant::now();
        match fault {
            Fault::Crash => kill_all(&node1_host),
            Fault::NodeDeath => {
                // The link goes first: a dead host sends nothing, not even the FIN or RST
                // its kernel would send for a killed process.
                node1_host.set_link(&lab, false);
                kill_all(&node1_host);
            }
            Fault::GracefulStop => terminate(&node1, system),
            Fault::Drain => {
                // Started, not awaited: the command returns once the new master's first
                // advert is heard, which is after the client can already reach it.
                let drain = node1_host
                    .command(binary)
                    .arg("drain")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
                if let Ok(mut drain) = drain {
                    std::thread::spawn(move || drain.wait());
                }
            }
            Fault::Preemption | Fault::SplitBrain => {}
        }
        while start.elapsed() < Duration::from_secs(15) {
            if probe(vip).as_deref() == Some("node2") {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    measured
        .map(|took| took.as_secs_f64() * 1000.0)
        .ok_or_else(|| "node2 never answered".to_owned())
}
