//! Drains that drop nothing (issue 12 §2), under steady load through the VIP from urllib3
//! (kept-alive connections, retrying an idempotent request whose connection failed before
//! any response byte, as RFC 9112 §9.3.1 allows).
//!
//! A scanning node's drain: the director stops choosing it, its kept-alive clients get
//! `Connection: close` on their next response (idle ones are closed) and come back through
//! the director to another node; a tunnel still open at `drain_timeout` is cut with a reset.
//! The test fails if the drained node keeps its clients (they must be served by the other
//! node within a few seconds), if a request fails, or if the tunnel outlives the deadline.
//!
//! A director's drain: it hands the VIP over but keeps the connections it has; the next
//! director sends their packets back to it (the second chance) until they end. Downloads in
//! flight when the VIP moves complete, a tunnel through the old director still carries a
//! request after the move (without the second chance the new director's kernel resets it),
//! and is reset at `drain_timeout`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use palisade_e2e::director_lab::{DirectorLab, ORIGIN_PORT};
use palisade_e2e::netns::{LabHost, require_netns, wait_for};
use palisade_e2e::steady_load::{Load, SteadyLoad, epoch_now};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// The connections `host`'s node has open, from `palisade status`.
fn open_connections(host: &LabHost) -> Option<u64> {
    let output = host.run(BIN, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    status["connections"]["open"].as_u64()
}

/// Waits for `tunnel` to be reset at the drain's deadline (not before), then for `host`'s
/// node to have no connection left.
fn assert_cut_at_the_deadline(mut tunnel: TcpStream, drained_at: Instant, host: &LabHost) {
    tunnel
        .set_read_timeout(Some(DRAIN_TIMEOUT + Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    let read = tunnel.read_to_end(&mut rest);
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
        &format!("{} has no connection left", host.name),
        Duration::from_secs(5),
        || open_connections(host) == Some(0),
    );
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
    let tunnel = lab.tunnel(lab.on[1], lab.vip);
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
    assert_cut_at_the_deadline(tunnel, drained_at, node2);

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

/// One request through an established tunnel to the origin: its status line.
fn through_tunnel(tunnel: &mut TcpStream, origin: Ipv4Addr) -> std::io::Result<String> {
    tunnel.write_all(
        format!("GET /big/100 HTTP/1.1\r\nHost: {origin}:{ORIGIN_PORT}\r\n\r\n").as_bytes(),
    )?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = tunnel.read(&mut buf)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..read]);
    }
    Ok(String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

#[test]
fn a_directors_drain_keeps_its_connections_after_the_vip_moves() {
    if !require_netns("a_directors_drain_keeps_its_connections_after_the_vip_moves") {
        return;
    }
    let lab = DirectorLab::with_proxy_settings(
        BIN,
        &format!("drain_timeout = \"{}s\"\n", DRAIN_TIMEOUT.as_secs()),
    );
    let (node1, node2) = (&lab.hosts[0], &lab.hosts[1]);
    // Downloads that take 125 ms each (the origin sends 800 KB/s): some are always in
    // flight, from a client node1 serves in-process and from one it relays to node2.
    let url = format!("http://{}:{ORIGIN_PORT}/drip/100000", lab.origin.addr);
    let proxy = format!("http://{}:9090", lab.vip);
    let loads: Vec<SteadyLoad> = (lab.on.iter())
        .map(|source| {
            SteadyLoad::start(
                &lab.client,
                &lab.dir.0,
                &Load {
                    proxy: &proxy,
                    url: &url,
                    source: *source,
                    rate: 16,
                    workers: 4,
                    seconds: 12,
                },
            )
        })
        .collect();
    let mut tunnel = lab.tunnel(lab.on[0], lab.vip);
    wait_for("node1 serves the load", Duration::from_secs(10), || {
        open_connections(node1).is_some_and(|open| open >= 5)
    });

    let drained_at = Instant::now();
    let drained_epoch = epoch_now();
    let drain = node1.run(BIN, &["drain", "--admin", "127.0.0.1:4711"]);
    let said = String::from_utf8_lossy(&drain.stdout).into_owned();
    assert!(
        drain.status.success(),
        "drain: {said}{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    wait_for("node2 holds the VIP", Duration::from_secs(5), || {
        node2.has_address(lab.vip)
    });
    assert!(!node1.has_address(lab.vip), "node1 handed the VIP over");

    // The tunnel node1 serves still works after the move: its packets come back to node1.
    tunnel
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let answer = through_tunnel(&mut tunnel, lab.origin.addr);
    assert!(
        matches!(&answer, Ok(status) if status.starts_with("HTTP/1.1 200")),
        "a request through node1's tunnel after the VIP moved: {answer:?}\n{}",
        lab.logs()
    );
    // ... until the drain's deadline resets it.
    assert_cut_at_the_deadline(tunnel, drained_at, node1);

    for (load, source) in loads.into_iter().zip(lab.on) {
        let report = load.finish();
        eprintln!(
            "load from {source}: {} ok, {} failed, {} retried; errors {:?}",
            report.ok, report.failed, report.retried, report.errors
        );
        assert_eq!(
            report.failed,
            0,
            "no request may fail in a director's drain: {:?}\n{}",
            report.errors,
            lab.logs()
        );
        assert!(report.ok >= 120, "the load ran: {} requests", report.ok);
        assert_eq!(
            report.served_by_after(drained_epoch + 3.0),
            vec!["node2".to_owned()],
            "after the drain node2 directs and serves every client"
        );
    }
}
