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

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use palisade_e2e::director_lab::{DirectorLab, ORIGIN_PORT};
use palisade_e2e::netns::{LabHost, require_netns, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
/// The download: long enough at the origin's pace (800 KB/s) to be in flight when the
/// director dies.
const SIZE: u64 = 40_000_000;

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

#[test]
fn when_the_directors_host_dies_every_client_fails_at_once_and_resumes_through_the_next() {
    if !require_netns(
        "when_the_directors_host_dies_every_client_fails_at_once_and_resumes_through_the_next",
    ) {
        return;
    }
    let mut setup = DirectorLab::new(BIN);
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

/// What the client's idle tunnel reads within `within`: it must be a reset.
fn assert_reset_within(stream: &mut std::net::TcpStream, within: Duration, setup: &DirectorLab) {
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
    let mut setup = DirectorLab::new(BIN);
    let mut tunnel = setup.tunnel(setup.on[1], setup.vip);
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
    let setup = DirectorLab::new(BIN);
    let mut tunnel = setup.tunnel(setup.on[1], setup.vip);
    // node2's host is cut off: nothing in flight on the idle relay, so only the director's
    // probe (after three missed load reports) can tell; then it cuts node2's relays.
    setup.hosts[1].partition(&setup.lab, true);
    assert_reset_within(&mut tunnel, Duration::from_secs(10), &setup);
    let text = setup.logs();
    assert!(text.contains("does not answer on its scan port"), "{text}");
}
