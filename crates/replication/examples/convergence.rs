//! Convergence figures in the simulator (issue 10's benchmark, simulator part): N nodes split
//! in two, a save on each side, then the partition heals; how long until every node has the
//! same head, and how many messages and bytes that took. Also what an idle cluster sends.
//!
//! `cargo run --release -p palisade-replication --example convergence [NODES] [DIGEST_S]`

use std::time::Duration;

use palisade_replication::sim::{Cluster, Network};

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(50);
    let digest_s: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let network = Network {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(10),
        digest_interval: Duration::from_secs(digest_s),
        ..Network::default()
    };
    println!("| nodes | digest every | measure | value |");
    println!("|---:|---:|---|---:|");
    let mut heal = Vec::new();
    for seed in 1..=5u64 {
        let specs: Vec<(u16, i64)> = (0..nodes).map(|_| (100, 0)).collect();
        let mut cluster = Cluster::new(&specs, network, seed, 1_800_000_000_000);
        cluster.save(0, "first");
        let _ = cluster.run_until_converged(Duration::from_secs(60));
        let half: Vec<usize> = (0..nodes / 2).collect();
        cluster.split(&half);
        cluster.save(0, "left side");
        cluster.save(nodes - 1, "right side");
        cluster.run_for(Duration::from_secs(digest_s * 2));
        cluster.heal();
        let (messages, bytes) = (cluster.messages, cluster.bytes);
        let took = cluster.run_until_converged(Duration::from_secs(120));
        heal.push((took, cluster.messages - messages, cluster.bytes - bytes));
    }
    heal.sort_by_key(|(took, _, _)| *took);
    let (took, messages, bytes) = heal[heal.len() / 2];
    let took = took
        .map(|took| format!("{} ms", took.as_millis()))
        .unwrap_or_else(|| "not converged".into());
    println!(
        "| {nodes} | {digest_s} s | partition heal -> same head everywhere (median of 5) | {took} |"
    );
    println!("| {nodes} | {digest_s} s | messages / bytes sent meanwhile | {messages} / {bytes} |");

    // Idle: nothing saved for a minute; only digests flow.
    let specs: Vec<(u16, i64)> = (0..nodes).map(|_| (100, 0)).collect();
    let mut cluster = Cluster::new(&specs, network, 9, 1_800_000_000_000);
    cluster.save(0, "policy");
    let _ = cluster.run_until_converged(Duration::from_secs(60));
    let bytes = cluster.bytes;
    cluster.run_for(Duration::from_secs(60));
    let per_pair = (cluster.bytes - bytes) as f64 / 60.0 / (nodes * (nodes - 1)) as f64;
    println!(
        "| {nodes} | {digest_s} s | idle: bytes per second per ordered pair | {per_pair:.1} |"
    );
}
