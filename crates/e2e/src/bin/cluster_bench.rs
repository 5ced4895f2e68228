//! Central management benchmark (issue 10): five real nodes in network namespaces form a
//! cluster; each save is a `palisade policy apply` on one node (round robin), timed from
//! just before the command starts until the last node logs "policy revision live" for that
//! revision (all namespaces share the realtime clock the log stamps come from). Reports the
//! median and p99 of apply -> live on all 5, apply -> live on the saving node, and the store
//! commit time (fsync) the saving node reports; for a 100-rule policy, for the same policy
//! with an unchanged 1,000,000-entry list (content-addressed: not sent again), and with that
//! list changed (20 MB to every node); then what the idle cluster spends for 10 s (CPU per
//! node from /proc, bytes per second per pair from the veth counters).
//!
//! Usage: cluster-bench PALISADE_BINARY [SAVES] [BIG_SAVES] (needs root and iproute2)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_e2e::netns::{Lab, LabHost};

const PORT: u16 = 12346;

struct Node {
    host: LabHost,
    config: PathBuf,
    policy: PathBuf,
    log: PathBuf,
    pid: u32,
}

fn run(host: &LabHost, binary: &str, args: &[&str]) -> String {
    let output = host.run(binary, args);
    if !output.status.success() {
        panic!(
            "{binary} {args:?} on {}: {}{}",
            host.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `2026-11-30T04:02:00.645487Z` -> microseconds since the epoch.
fn parse_stamp(stamp: &str) -> Option<i64> {
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut date = date.split('-').map(|part| part.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|part| part.parse::<i64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    let micros: i64 = format!("{fraction:0<6}")[..6].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or(0)
}

/// When `node` logged the revision live (microseconds since the epoch).
fn live_at(node: &Node, revision: &str) -> Option<i64> {
    let text = std::fs::read_to_string(&node.log).ok()?;
    let needle = format!("policy revision live revision={revision}");
    text.lines()
        .find(|line| line.contains(&needle))
        .and_then(|line| parse_stamp(line.split_whitespace().next()?))
}

fn policy(rules: usize, note: &str, big_list: bool) -> String {
    let mut text = format!(
        "# {note}\ndefault_action = \"allow\"\n[access]\nclients = [\"127.0.0.0/8\", \"10.213.0.0/16\"]\n"
    );
    if big_list {
        text.push_str("[lists]\nbig = { file = \"lists/big.txt\" }\n");
    }
    text.push_str("[[ruleset]]\nname = \"bench\"\n");
    for rule in 0..rules {
        text.push_str(&format!(
            "  [[ruleset.rule]]\n  name = \"rule-{rule}\"\n  action = \"block\"\n  host = [\"site-{rule}.example\"]\n"
        ));
    }
    if big_list {
        text.push_str(
            "  [[ruleset.rule]]\n  name = \"big\"\n  action = \"block\"\n  host_list = [\"big\"]\n",
        );
    }
    text
}

/// Rewrites the node's policy file, keeping the revision header its node wrote back, once
/// the node has written back `head` (a big bundle's write-back lags its going live, and an
/// older header would be refused as a stale base).
fn write_policy(node: &Node, body: &str, head: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let current = loop {
        let current = std::fs::read_to_string(&node.policy).unwrap_or_default();
        let written = match head {
            Some(head) => current.starts_with(&format!("# palisade-revision: {head}\n")),
            None => true,
        };
        if written {
            break current;
        }
        assert!(
            Instant::now() < deadline,
            "{} never wrote back {head:?}",
            node.host.name
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let header = current
        .lines()
        .next()
        .filter(|line| line.starts_with("# palisade-revision: "))
        .map(|line| format!("{line}\n"))
        .unwrap_or_default();
    std::fs::write(&node.policy, format!("{header}{body}"))
        .unwrap_or_else(|error| panic!("{error}"));
}

fn write_big_list(dir: &Path, seed: usize) {
    let mut text = String::with_capacity(24 * 1_000_000);
    for entry in 0..1_000_000 {
        text.push_str(&format!("host-{entry}-{seed}.blocked.example\n"));
    }
    std::fs::write(dir.join("lists/big.txt"), text).unwrap_or_else(|error| panic!("{error}"));
}

struct Sample {
    revision: String,
    all_ms: f64,
    own_ms: f64,
    stored_ms: f64,
}

fn save(binary: &str, nodes: &[Node], on: usize) -> Sample {
    let node = &nodes[on];
    let started = now_micros();
    let output = run(
        &node.host,
        binary,
        &[
            "policy",
            "apply",
            &node.policy.display().to_string(),
            "-m",
            "bench",
        ],
    );
    let revision = output
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no revision in {output}"))
        .to_owned();
    let stored_ms: f64 = output
        .split("stored in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(f64::NAN);
    let deadline = Instant::now() + Duration::from_secs(60);
    let stamps: Vec<i64> = loop {
        let stamps: Vec<Option<i64>> = nodes.iter().map(|node| live_at(node, &revision)).collect();
        if stamps.iter().all(Option::is_some) {
            break stamps.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "revision {revision} not live everywhere: {stamps:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let last = stamps.iter().copied().max().unwrap_or(started);
    Sample {
        revision,
        all_ms: (last - started) as f64 / 1e3,
        own_ms: (stamps[on] - started) as f64 / 1e3,
        stored_ms,
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn report(label: &str, samples: &[Sample]) {
    let mut all: Vec<f64> = samples.iter().map(|sample| sample.all_ms).collect();
    let mut own: Vec<f64> = samples.iter().map(|sample| sample.own_ms).collect();
    let mut stored: Vec<f64> = samples.iter().map(|sample| sample.stored_ms).collect();
    println!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
        samples.len(),
        percentile(&mut all, 50.0),
        percentile(&mut all, 99.0),
        percentile(&mut all, 100.0),
        percentile(&mut own, 50.0),
        percentile(&mut stored, 50.0),
    );
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat, counted after the command name (state is 3).
    field(11) + field(12)
}

fn tx_bytes(host: &LabHost) -> u64 {
    let output = host.run("cat", &["/sys/class/net/eth0/statistics/tx_bytes"]);
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next() else {
        eprintln!("usage: cluster-bench PALISADE_BINARY [SAVES] [BIG_SAVES]");
        std::process::exit(2);
    };
    let saves: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let big_saves: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let names = ["node1", "node2", "node3", "node4", "node5"];
    let mut lab = Lab::new(&names);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-bench");
    let mut nodes: Vec<Node> = Vec::new();
    for name in names {
        let host = lab.host(name).clone();
        let home = dir.0.join(name);
        std::fs::create_dir_all(home.join("lists")).unwrap_or_else(|error| panic!("{error}"));
        let peers: Vec<String> = nodes
            .iter()
            .map(|node| format!("\"{}:{PORT}\"", node.host.addr))
            .collect();
        let policy_file = home.join("policy.toml");
        std::fs::write(&policy_file, policy(0, "initial", false))
            .unwrap_or_else(|error| panic!("{error}"));
        let config = home.join("palisade.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nhostname = \"{name}\"\ndata_dir = \"{data}\"\n[proxy]\nlisten = [\"0.0.0.0:9090\"]\ntest_listen = [\"0.0.0.0:9091\"]\n[dns]\nservers = [\"127.0.0.1:53\"]\n[policy]\nfile = \"{policy}\"\npoll_interval = \"1s\"\n[cluster]\nlisten = \"0.0.0.0:{PORT}\"\naddress = \"{addr}\"\npeers = [{peers}]\n",
                data = home.join("data").display(),
                policy = policy_file.display(),
                addr = host.addr,
                peers = peers.join(", "),
            ),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        nodes.push(Node {
            host,
            config,
            policy: policy_file,
            log: home.join("node.log"),
            pid: 0,
        });
    }
    let config = |node: &Node| node.config.display().to_string();
    run(
        &nodes[0].host,
        &binary,
        &["cluster", "init", "--config", &config(&nodes[0])],
    );
    for index in 0..nodes.len() {
        if index > 0 {
            let token = run(
                &nodes[0].host,
                &binary,
                &["cluster", "token", "--config", &config(&nodes[0])],
            );
            run(
                &nodes[index].host,
                &binary,
                &[
                    "cluster",
                    "join",
                    &format!("{}:{PORT}", nodes[0].host.addr),
                    token.trim(),
                    "--config",
                    &config(&nodes[index]),
                ],
            );
        }
        let node = &nodes[index];
        let pid = lab.spawn(
            &node.host.name,
            &binary,
            &["run", "--config", &config(node)],
            &node.log,
        );
        nodes[index].pid = pid;
        let started = Instant::now();
        while !std::fs::read_to_string(&nodes[index].log)
            .unwrap_or_default()
            .contains("Cluster port listening")
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "node did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for node in &nodes {
        let started = Instant::now();
        loop {
            let status = node.host.run(&binary, &["cluster", "status", "--json"]);
            let value: serde_json::Value =
                serde_json::from_slice(&status.stdout).unwrap_or_default();
            let replicating = value["peers"].as_array().map_or(0, |peers| {
                peers
                    .iter()
                    .filter(|peer| peer["replicating"] == true)
                    .count()
            });
            if replicating == nodes.len() - 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} never linked to every node",
                node.host.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!(
        "| policy | saves | apply -> live on all 5, median ms | p99 ms | max ms | live on the saving node, median ms | store commits (fsync), median ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");

    let mut samples: Vec<Sample> = Vec::new();
    let mut head: Option<String> = None;
    for save_index in 0..saves {
        let on = save_index % nodes.len();
        let body = policy(100, &format!("save {save_index}"), false);
        write_policy(&nodes[on], &body, head.as_deref());
        let sample = save(&binary, &nodes, on);
        head = Some(sample.revision.clone());
        samples.push(sample);
    }
    report("100 rules", &samples);

    if big_saves > 0 {
        // Every node's file names the list relative to itself: the saving node's copy is read.
        let mut unchanged = Vec::new();
        let mut changed = Vec::new();
        let home = |node: &Node| {
            node.policy
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        write_policy(
            &nodes[0],
            &policy(100, "big list first", true),
            head.as_deref(),
        );
        write_big_list(&home(&nodes[0]), 0);
        head = Some(save(&binary, &nodes, 0).revision);
        for save_index in 0..big_saves {
            let on = save_index % nodes.len();
            let body = policy(100, &format!("big list, document save {save_index}"), true);
            write_policy(&nodes[on], &body, head.as_deref());
            let sample = save(&binary, &nodes, on);
            head = Some(sample.revision.clone());
            unchanged.push(sample);
        }
        for save_index in 0..big_saves {
            let on = save_index % nodes.len();
            let body = policy(100, &format!("big list changed {save_index}"), true);
            write_policy(&nodes[on], &body, head.as_deref());
            write_big_list(&home(&nodes[on]), save_index + 1);
            let sample = save(&binary, &nodes, on);
            head = Some(sample.revision.clone());
            changed.push(sample);
        }
        report("100 rules + unchanged 1,000,000-entry list", &unchanged);
        report(
            "100 rules + changed 1,000,000-entry list (~31 MB)",
            &changed,
        );
    }

    // Idle: nothing saved for 10 s.
    std::thread::sleep(Duration::from_secs(2));
    let ticks_before: Vec<u64> = nodes.iter().map(|node| cpu_ticks(node.pid)).collect();
    let tx_before: Vec<u64> = nodes.iter().map(|node| tx_bytes(&node.host)).collect();
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let ticks: Vec<u64> = nodes
        .iter()
        .zip(&ticks_before)
        .map(|(node, before)| cpu_ticks(node.pid) - before)
        .collect();
    let tx: u64 = nodes
        .iter()
        .zip(&tx_before)
        .map(|(node, before)| tx_bytes(&node.host) - before)
        .sum();
    let hz = 100.0; // USER_HZ
    let cpu: Vec<String> = ticks
        .iter()
        .map(|ticks| format!("{:.2}%", *ticks as f64 / hz / window.as_secs_f64() * 100.0))
        .collect();
    let pairs = nodes.len() * (nodes.len() - 1) / 2;
    println!();
    println!(
        "idle 5-node cluster over {window:?}: CPU per node {} ; {:.0} bytes/s per pair (both directions, IP and TLS included, {pairs} pairs)",
        cpu.join(" "),
        tx as f64 / window.as_secs_f64() / pairs as f64
    );
}
