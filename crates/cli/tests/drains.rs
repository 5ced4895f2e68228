//! Drains that drop nothing (issue 12 §2), under steady load through the VIP from urllib3
//! (kept-alive connections, retrying an idempotent request whose connection failed before
//! any response byte, as RFC 9112 §9.3.1 allows).
//!
//! A scanning node's drain: the director stops choosing it, its kept-alive clients get
//! `Connection: close` on their next response (idle ones are closed) and come back through
//! the director to another node; a tunnel still open at `drain_timeout` is cut with a reset.
//! The test fails if the drained node keeps its clients (they must be served by the other
//! node within a few seconds), if a request fails, or if the tunnel outlives the deadline.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use palisade_e2e::director_lab::{DirectorLab, ORIGIN_PORT};
use palisade_e2e::ha::connect_from;
use palisade_e2e::netns::{LabHost, require_netns, wait_for};
use palisade_e2e::steady_load::{Load, SteadyLoad, epoch_now};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// A CONNECT tunnel from `source` through the VIP to the origin, established and idle.
fn open_tunnel(lab: &DirectorLab, source: Ipv4Addr) -> TcpStream {
    let mut tunnel = connect_from(&lab.client, source, lab.vip).expect("connect to the VIP");
    let target = format!("{}:{ORIGIN_PORT}", lab.origin.addr);
    tunnel
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .expect("send CONNECT");
    tunnel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tunnel.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("CONNECT answer: {other:?}"),
        }
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "CONNECT refused: {}",
        String::from_utf8_lossy(&head)
    );
    tunnel
}

/// The connections `host`'s node has open, from `palisade status`.
fn open_connections(host: &LabHost) -> Option<u64> {
    let output = host.run(BIN, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    status["connections"]["open"].as_u64()
}

#[test]
fn a_scanning_nodes_drain_moves_its_clients_and_fails_no_request() {
    if !require_netns("a_scanning_nodes_drain_moves_its_clients_and_fails_no_request") {
        return;
    }
    let lab = DirectorLab::with_proxy_settings(
        BIN,
        &format!("drain_timeout = \"{}s\"\n", DRAIN_TIMEOUT.as_secs()),
    );
    let node2 = &lab.hosts[1];
    // Clients whose node is node2: relayed to it by the director (node1).
    let url = format!("http://{}:{ORIGIN_PORT}/big/2000", lab.origin.addr);
    let proxy = format!("http://{}:9090", lab.vip);
    let load = SteadyLoad::start(
        &lab.client,
        &lab.dir.0,
        &Load {
            proxy: &proxy,
            url: &url,
            source: lab.on[1],
            rate: 40,
            workers: 4,
            seconds: 10,
        },
    );
    let mut tunnel = open_tunnel(&lab, lab.on[1]);
    // The load's kept-alive connections and the tunnel are open on node2.
    wait_for("node2 serves the load", Duration::from_secs(10), || {
        open_connections(node2).is_some_and(|open| open >= 3)
    });

    let drained_at = Instant::now();
    let drained_epoch = epoch_now();
    let drain = node2.run(BIN, &["drain", "--admin", "127.0.0.1:4711"]);
    assert!(
        drain.status.success(),
        "drain: {}{}",
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr)
    );

    // The idle tunnel is cut at the deadline, with a reset, not before.
    tunnel
        .set_read_timeout(Some(DRAIN_TIMEOUT + Duration::from_secs(5)))
        .expect("timeout");
    let read = tunnel.read(&mut [0u8; 64]);
    let cut_after = drained_at.elapsed();
    assert!(
        matches!(&read, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
        "the tunnel should be reset at the drain's deadline, read {read:?} after {cut_after:?}"
    );
    assert!(
        cut_after >= DRAIN_TIMEOUT - Duration::from_millis(300)
            && cut_after < DRAIN_TIMEOUT + Duration::from_secs(2),
        "tunnel cut after {cut_after:?}, drain_timeout {DRAIN_TIMEOUT:?}"
    );
    wait_for(
        "node2 has no connection left",
        Duration::from_secs(5),
        || open_connections(node2) == Some(0),
    );

    let report = load.finish();
    eprintln!(
        "load: {} ok, {} failed, {} retried; errors {:?}",
        report.ok, report.failed, report.retried, report.errors
    );
    assert_eq!(
        report.failed,
        0,
        "no request may fail in a drain: {:?}\n{}",
        report.errors,
        lab.logs()
    );
    assert!(report.ok >= 300, "the load ran: {} requests", report.ok);
    assert!(
        report.served_by_after(0.0).contains(&"node2".to_owned()),
        "node2 served the load before its drain: {:?}",
        report.served_by_after(0.0)
    );
    // Every client has left node2 within 2 s: the director stopped choosing it (its next
    // report) and each kept-alive connection closed after one more response.
    assert_eq!(
        report.served_by_after(drained_epoch + 2.0),
        vec!["node1".to_owned()],
        "after the drain only node1 serves"
    );
}
