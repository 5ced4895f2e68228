//! Failover that leaves no client hanging (issue 12), with real curl downloads through the
//! VIP. When the director's host dies (cut off at the switch, then its process killed, so
//! nothing it sends arrives), the member that takes the VIP over tickles every client of the
//! dead director (the one it served in-process, learnt from the director's shared list, and
//! the one it relayed, from the new director's own scan port), so each download fails at once
//! instead of hanging until curl's keepalive (60 s); `curl -C -` then completes it through the
//! new director. Without the tickles the test fails: the downloads are still running at the
//! deadline. When a scanning node's process dies, its kernel resets the relays (not a FIN a
//! client could take for an orderly end) and the director passes the reset on; when its
//! host dies, the director notices the missed reports, probes its scan port and cuts its
//! relays, so even an idle tunnel's client is told.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use palisade_e2e::ha::{HaNode, connect_from, heartbeat_section, served_by};
use palisade_e2e::netns::{Lab, LabHost, in_namespace, require_netns, wait_for};
use palisade_e2e::origin::Origin;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
/// The download: long enough at the origin's pace (800 KB/s) to be in flight when the
/// director dies.
const SIZE: u64 = 40_000_000;
const ORIGIN_PORT: u16 = 8080;

/// curl through the VIP from `source`, writing to `file` (`resume`: `-C -`).
fn download(
    client: &LabHost,
    source: Ipv4Addr,
    vip: Ipv4Addr,
    origin: Ipv4Addr,
    file: &Path,
    resume: bool,
) -> std::process::Command {
    let mut command = client.command("curl");
    command.args([
        "-s",
        "-S",
        "--interface",
        &source.to_string(),
        "-x",
        &format!("http://{vip}:9090"),
        "-o",
        &file.display().to_string(),
        "--max-time",
        "120",
    ]);
    // The origin sends slowly (so the download is in flight when the director dies); curl
    // reads as it arrives (its own rate limit would pause reading, and a paused curl notices
    // nothing).
    if resume {
        command.args(["-C", "-"]);
        command.arg(format!("http://{origin}:{ORIGIN_PORT}/big/{SIZE}"));
    } else {
        command.arg(format!("http://{origin}:{ORIGIN_PORT}/drip/{SIZE}"));
    }
    command
}

fn size_of(file: &Path) -> u64 {
    std::fs::metadata(file).map_or(0, |meta| meta.len())
}

/// Waits up to `timeout` for `child` to exit; its exit code (`None`: still running).
fn exit_within(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// node1 (director, priority 150) and node2 (100) of one HA group with a director, a client
/// host with an address whose node is node1 (served in-process) and one whose node is node2
/// (relayed), and an origin on the lab's network.
struct Setup {
    lab: Lab,
    dir: palisade_e2e::node::TempDir,
    vip: Ipv4Addr,
    client: LabHost,
    origin: LabHost,
    hosts: [LabHost; 2],
    nodes: [HaNode; 2],
    /// A client address served by node1, one served by node2.
    on: [Ipv4Addr; 2],
    _origin: Origin,
    _runtime: tokio::runtime::Runtime,
}

impl Setup {
    fn new() -> Setup {
        let mut lab = Lab::new(&["node1", "node2", "client", "origin"]);
        let dir = palisade_e2e::node::TempDir::new("palisade-nobody-hangs");
        let vip = lab.spare_addr(100);
        let (client, origin_host) = (lab.host("client").clone(), lab.host("origin").clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("{error}"));
        let listener = in_namespace(&origin_host.ns, || {
            std::net::TcpListener::bind(("0.0.0.0", ORIGIN_PORT))
        })
        .unwrap_or_else(|error| panic!("origin bind: {error}"));
        let origin = runtime.block_on(Origin::start_listening(listener));
        let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
        let extra = |peer| {
            format!(
                "{}[director]\nslow_start = \"1s\"\n",
                heartbeat_section(peer)
            )
        };
        let mut node1 = HaNode::new(&dir.0, &host1, "1s", 150, vip, &extra(host2.addr));
        let mut node2 = HaNode::new(&dir.0, &host2, "1s", 100, vip, &extra(host1.addr));
        // The origin is on the lab's network, which the default rules keep clients from.
        for name in ["node1", "node2"] {
            std::fs::write(
                dir.0.join(format!("{name}-policy.toml")),
                "default_action = \"allow\"\n[access]\nclients = [\"127.0.0.0/8\", \"10.213.0.0/16\"]\nallow_destinations = [\"10.213.0.0/16\"]\nconnect_ports = [8080]\n",
            )
            .unwrap_or_else(|error| panic!("{error}"));
        }
        node2.start(&mut lab, BIN);
        node1.start(&mut lab, BIN);
        wait_for("node1 holds the VIP", Duration::from_secs(15), || {
            host1.has_address(vip)
        });
        // Client addresses: one whose node is node1 (the director serves it in-process), one
        // whose node is node2 (relayed to node2's scan port).
        let sources: Vec<Ipv4Addr> = (0..16).map(|i| lab.spare_addr(150 + i)).collect();
        for source in &sources {
            let output = client.run(
                "ip",
                &["addr", "add", &format!("{source}/24"), "dev", "eth0"],
            );
            assert!(output.status.success(), "{output:?}");
        }
        let mut homed = (None, None);
        wait_for("clients of both nodes", Duration::from_secs(20), || {
            for source in &sources {
                match served_by(&client, *source, vip).as_deref() {
                    Some("node1") => homed.0 = Some(*source),
                    Some("node2") => homed.1 = Some(*source),
                    _ => {}
                }
            }
            homed.0.is_some() && homed.1.is_some()
        });
        let (Some(on_node1), Some(on_node2)) = homed else {
            panic!("no clients of both nodes");
        };
        Setup {
            lab,
            dir,
            vip,
            client,
            origin: origin_host,
            hosts: [host1, host2],
            nodes: [node1, node2],
            on: [on_node1, on_node2],
            _origin: origin,
            _runtime: runtime,
        }
    }

    fn logs(&self) -> String {
        let read = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
        format!(
            "node1:\n{}\nnode2:\n{}",
            read(&self.nodes[0].log),
            read(&self.nodes[1].log)
        )
    }
}

#[test]
fn when_the_directors_host_dies_every_client_fails_at_once_and_resumes_through_the_next() {
    if !require_netns(
        "when_the_directors_host_dies_every_client_fails_at_once_and_resumes_through_the_next",
    ) {
        return;
    }
    let mut setup = Setup::new();
    let (vip, [on_node1, on_node2]) = (setup.vip, setup.on);
    let (client, origin_host) = (setup.client.clone(), setup.origin.clone());
    let [host1, host2] = setup.hosts.clone();
    let files = [
        setup.dir.0.join("served-by-node1.bin"),
        setup.dir.0.join("relayed-to-node2.bin"),
    ];
    let mut downloads: Vec<Child> = [on_node1, on_node2]
        .iter()
        .zip(&files)
        .map(|(source, file)| {
            download(&client, *source, vip, origin_host.addr, file, false)
                .spawn()
                .unwrap_or_else(|error| panic!("curl: {error}"))
        })
        .collect();
    wait_for("both downloads under way", Duration::from_secs(15), || {
        files.iter().all(|file| size_of(file) > 200_000)
    });
    // The director's host dies: cut off at the switch (nothing it sends arrives any more,
    // not even its kernel's resets), then its process is killed.
    host1.partition(&setup.lab, true);
    setup.nodes[0].kill9();
    let cut = Instant::now();
    wait_for("node2 takes the VIP over", Duration::from_secs(15), || {
        host2.has_address(vip)
    });
    let moved = Instant::now();
    // curl's own keepalive would notice after 60 s; the tickles end both at once.
    let deadline = Duration::from_secs(10);
    for (download, file) in downloads.iter_mut().zip(&files) {
        let code = exit_within(download, deadline.saturating_sub(moved.elapsed()));
        let Some(code) = code else {
            let counters = |host: &LabHost| {
                let output = host.run("nstat", &["-az"]);
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter(|line| {
                        ["Rst", "Skipped", "Challenge", "OutSegs", "InSegs", "Reset"]
                            .iter()
                            .any(|word| line.contains(word))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let pid = download.id();
            let proc = |what: &str| {
                std::fs::read_to_string(format!("/proc/{pid}/{what}")).unwrap_or_default()
            };
            let diagnosis = format!(
                "curl {pid}: {} {} {}\n{} still hangs {:?} after the VIP moved ({:?} after the cut)\nclient:\n{}\nnode2:\n{}\n{}",
                proc("cmdline").replace('\0', " "),
                proc("wchan"),
                proc("status").lines().take(3).collect::<Vec<_>>().join(" "),
                file.display(),
                moved.elapsed(),
                cut.elapsed(),
                counters(&client)
                    + &String::from_utf8_lossy(&client.run("ip", &["neigh"]).stdout)
                    + &String::from_utf8_lossy(&client.run("ss", &["-tnio"]).stdout),
                counters(&host2) + &String::from_utf8_lossy(&host2.run("ip", &["link"]).stdout),
                setup.logs()
            );
            let _ = download.kill();
            panic!("{diagnosis}");
        };
        assert_ne!(
            code,
            0,
            "{}: the download cannot have completed",
            file.display()
        );
        assert!(size_of(file) < SIZE, "{}", file.display());
    }
    eprintln!(
        "both downloads failed {:?} after the VIP moved ({:?} after the cut)",
        moved.elapsed(),
        cut.elapsed()
    );
    let text = setup.logs();
    assert!(text.contains("tickling the"), "{text}");
    // A retry with -C - completes each download through the new director.
    for (source, file) in [on_node1, on_node2].iter().zip(&files) {
        let output = download(&client, *source, vip, origin_host.addr, file, true)
            .output()
            .unwrap_or_else(|error| panic!("curl: {error}"));
        assert!(output.status.success(), "resume from {source}: {output:?}");
        assert_eq!(size_of(file), SIZE, "{}", file.display());
    }
}

/// A CONNECT tunnel to the origin through the VIP from `source`, established (200 read) and
/// left idle.
fn idle_tunnel(setup: &Setup, source: Ipv4Addr) -> std::net::TcpStream {
    let mut stream = connect_from(&setup.client, source, setup.vip)
        .unwrap_or_else(|| panic!("{source} cannot reach the VIP"));
    let target = format!("{}:{ORIGIN_PORT}", setup.origin.addr);
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|error| panic!("{error}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "tunnel head: {other:?} after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// What the client's idle tunnel reads within `within`: it must be a reset.
fn assert_reset_within(stream: &mut std::net::TcpStream, within: Duration, setup: &Setup) {
    let _ = stream.set_read_timeout(Some(within));
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = stream.read(&mut buf);
    match read {
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
            eprintln!(
                "the idle tunnel was reset {:?} after the fault",
                started.elapsed()
            );
        }
        other => panic!(
            "the idle tunnel read {other:?} after {:?}: a reset was due\n{}",
            started.elapsed(),
            setup.logs()
        ),
    }
}

#[test]
fn a_scanning_nodes_crash_reaches_its_relayed_clients_as_a_reset() {
    if !require_netns("a_scanning_nodes_crash_reaches_its_relayed_clients_as_a_reset") {
        return;
    }
    let mut setup = Setup::new();
    let mut tunnel = idle_tunnel(&setup, setup.on[1]);
    // node2's process dies; its host lives: its kernel closes the relay (SO_LINGER 0: a
    // reset), and node1 passes the reset on. A FIN would read as the tunnel's orderly end.
    setup.nodes[1].kill9();
    assert_reset_within(&mut tunnel, Duration::from_secs(5), &setup);
}

#[test]
fn a_scanning_nodes_host_death_cuts_even_an_idle_relay() {
    if !require_netns("a_scanning_nodes_host_death_cuts_even_an_idle_relay") {
        return;
    }
    let setup = Setup::new();
    let mut tunnel = idle_tunnel(&setup, setup.on[1]);
    // node2's host is cut off: nothing in flight on the idle relay, so only the director's
    // probe (after three missed load reports) can tell; then it cuts node2's relays.
    setup.hosts[1].partition(&setup.lab, true);
    assert_reset_within(&mut tunnel, Duration::from_secs(10), &setup);
    let text = setup.logs();
    assert!(text.contains("does not answer on its scan port"), "{text}");
}
