//! Peer links in network namespaces: the regressions of security review 2 (F3, F4, F5),
//! each with the node doing what today's product must not do if the fix is undone.
//!
//! - A reset link to a master that is alive: the backup dials once, finds it alive, and does
//!   not take over (F3).
//! - A blackholed link: pings, keepalive and `TCP_USER_TIMEOUT` notice it within seconds,
//!   and that too is only a hint: no take-over while adverts flow (F3).
//! - A peer that reflects a node's own frames gets its link dropped and changes nothing (F4).
//! - A second link from the same peer survives the first one's end; a link from a new
//!   incarnation of the peer replaces the old one (F5).
//!
//! The fake peers speak the protocol with `palisade_peer_link`'s sans-IO handshake over
//! blocking sockets created inside the peer's namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_e2e::ha::{
    HaNode, SCHEDULING_MARGIN, heartbeat_section as heartbeat, master_down_interval, never_holds,
    wait_status,
};
use palisade_e2e::netns::{Lab, LabHost, in_namespace, require_netns, wait_for};
use palisade_identity::{Incarnation, NodeId, NodeName};
use palisade_peer_link::frame::{Opened, Opener, Sealer};
use palisade_peer_link::handshake::Handshake;
use palisade_peer_link::{GroupKey, HaMessage, LocalIdentity, Message};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const KEY: &str = palisade_e2e::ha::HEARTBEAT_KEY;
const LINK_PORT: u16 = palisade_e2e::ha::HEARTBEAT_PORT;
fn status(host: &LabHost) -> serde_json::Value {
    let output = host.run(BIN, &["status", "--json"]);
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

/// A sample's value on the node's /metrics (`name{labels}` as printed).
fn metric(host: &LabHost, sample: &str) -> Option<f64> {
    let output = host.run("curl", &["-s", "http://127.0.0.1:4711/metrics"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

fn successor(host: &LabHost) -> serde_json::Value {
    status(host)["groups"][0]["successor"].clone()
}

/// node1 (150) and node2 (100) with peer links, node1 Master, each knowing the other: the
/// hosts and a closure that prints both logs.
fn live_pair(
    lab: &mut Lab,
    dir: &std::path::Path,
    vip: Ipv4Addr,
) -> (HaNode, HaNode, impl Fn() -> String + use<>) {
    let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
    let (node1, node2, logs) = palisade_e2e::ha::start_pair(lab, dir, vip, "1s", &heartbeat, BIN);
    wait_for("node1 master", Duration::from_secs(15), || {
        host1.has_address(vip)
    });
    wait_for("node2 in line on node1", Duration::from_secs(10), || {
        successor(&host1) == host2.addr.to_string()
    });
    wait_for("node2 hears node1", Duration::from_secs(10), || {
        status(&host2)["groups"][0]["master"] == host1.addr.to_string()
    });
    (node1, node2, logs)
}

/// F3: one RST on the link while the master is alive. Today's product took over at once
/// (VIP on both, gratuitous ARPs, `notify_master`); now the backup dials the master, finds
/// the same process, and the link is simply back.
#[test]
fn a_reset_link_to_a_live_master_is_not_a_failover() {
    if !require_netns("a_reset_link_to_a_live_master_is_not_a_failover") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-link-reset");
    let vip = lab.spare_addr(100);
    let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
    let (node1, node2, logs) = live_pair(&mut lab, &dir.0, vip);

    // SOCK_DESTROY: the kernel aborts node1's end and sends node2 a reset, as a firewall or
    // an expired conntrack entry would.
    let killed = host1.run(
        "ss",
        &[
            "-K",
            "state",
            "established",
            &format!("( sport = :{LINK_PORT} or dport = :{LINK_PORT} )"),
        ],
    );
    assert!(
        killed.status.success(),
        "ss -K: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
    wait_for("node2 confirms", Duration::from_secs(5), || {
        node2.log_text().contains("master is alive")
    });
    // Within Master_Down_Interval the backup would have taken over by the RFC rules if
    // adverts had stopped; they did not, so it never holds the VIP.
    let window = master_down_interval(Duration::from_secs(1), 100) + SCHEDULING_MARGIN;
    assert_eq!(never_holds(&host2, vip, window), Ok(()), "{}", logs());
    assert!(host1.has_address(vip));
    assert!(
        !node2.log_text().contains("Transition to MASTER"),
        "{}",
        logs()
    );
    assert_eq!(
        node1.log_text().matches("Entering BACKUP").count(),
        1,
        "node1 left MASTER\n{}",
        logs()
    );
    // The link is back: node1 knows its successor again.
    wait_for("link back", Duration::from_secs(5), || {
        successor(&host1) == host2.addr.to_string()
    });
    let alive = "palisade_peer_death_confirmations_total{answer=\"alive\"}";
    assert_eq!(metric(&host2, alive), Some(1.0));
    let lost = "palisade_peer_link_ends_total{why=\"lost\"}";
    assert_eq!(metric(&host2, lost), Some(1.0));
}

/// F3 (liveness): a link whose packets vanish (a blackhole on the path, the peer host frozen)
/// is noticed by the pings and the socket's user timeout within seconds, where today's idle
/// link looked up for hours. Its loss is a hint: the backup's dial cannot reach the master,
/// proves nothing, and adverts keep it Backup. The link returns with the path.
#[test]
fn a_blackholed_link_is_noticed_and_is_only_a_hint() {
    if !require_netns("a_blackholed_link_is_noticed_and_is_only_a_hint") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-link-blackhole");
    let vip = lab.spare_addr(100);
    let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
    let (node1, node2, logs) = live_pair(&mut lab, &dir.0, vip);

    // Drop every link packet arriving at node1 (nftables in its namespace); VRRP (IP
    // protocol 112) still flows.
    let nft = |rules: &str| {
        let output = host1.run("nft", &[rules]);
        assert!(
            output.status.success(),
            "nft {rules}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    nft(&format!(
        "add table inet blackhole; add chain inet blackhole input {{ type filter hook input priority 0; }}; add rule inet blackhole input tcp dport {LINK_PORT} drop; add rule inet blackhole input tcp sport {LINK_PORT} drop"
    ));
    let cut = Instant::now();
    // node1 hears nothing: silent for 3 s. node2's writes go unacknowledged: user timeout.
    wait_for(
        "node1 drops the silent link",
        Duration::from_secs(10),
        || node1.log_text().contains("peer link lost"),
    );
    wait_for("node2 drops the link", Duration::from_secs(10), || {
        node2.log_text().contains("peer link lost")
    });
    assert!(
        cut.elapsed() < Duration::from_secs(9),
        "noticed after {:?}",
        cut.elapsed()
    );
    assert!(successor(&host1).is_null(), "{}", logs());
    wait_for(
        "node2's dial proves nothing",
        Duration::from_secs(5),
        || node2.log_text().contains("master's death not confirmed"),
    );
    let window = master_down_interval(Duration::from_secs(1), 100) + SCHEDULING_MARGIN;
    assert_eq!(never_holds(&host2, vip, window), Ok(()), "{}", logs());

    nft("delete table inet blackhole");
    wait_for("link back", Duration::from_secs(10), || {
        successor(&host1) == host2.addr.to_string()
    });
    let unknown = "palisade_peer_death_confirmations_total{answer=\"unknown\"}";
    assert!(metric(&host2, unknown).is_some_and(|count| count >= 1.0));
    assert_eq!(metric(&host1, "palisade_peer_links_peers_up"), Some(1.0));
}

/// Split brain seen over the links (issue 11): the VRRP adverts between the two nodes are
/// blocked (multicast filtered on the path) while their peer link works. node2 cannot tell
/// that from node1's death and takes over when its timer runs out, but node1's next status
/// on the link proves node1 alive and Master: node2, which would lose the election, steps
/// down, says so, counts it, and stays Backup while the adverts stay blocked.
#[test]
fn blocked_adverts_with_working_links_make_the_loser_step_down_and_stay_backup() {
    if !require_netns("blocked_adverts_with_working_links_make_the_loser_step_down_and_stay_backup")
    {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-split-brain");
    let vip = lab.spare_addr(100);
    let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
    let (_node1, node2, logs) = live_pair(&mut lab, &dir.0, vip);
    let nft = |rules: &str| {
        let output = host2.run("nft", &[rules]);
        assert!(
            output.status.success(),
            "nft {rules}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    // VRRP is IP protocol 112; the link (TCP) still flows.
    nft(
        "add table inet split; add chain inet split input { type filter hook input priority 0; }; add chain inet split output { type filter hook output priority 0; }; add rule inet split input ip protocol 112 drop; add rule inet split output ip protocol 112 drop",
    );
    wait_for(
        "node2 steps down for node1",
        Duration::from_secs(15),
        || {
            node2
                .log_text()
                .contains(&format!("split brain: {} is MASTER too", host1.addr))
        },
    );
    assert!(
        node2.log_text().contains("Transition to MASTER"),
        "node2 took over first\n{}",
        logs()
    );
    wait_for("node2 releases the VIP", Duration::from_secs(5), || {
        !host2.has_address(vip)
    });
    assert!(host1.has_address(vip), "{}", logs());
    assert_eq!(
        metric(
            &host2,
            "palisade_vrrp_split_brain_stepdowns_total{instance=\"VI_1\"}"
        ),
        Some(1.0),
        "{}",
        logs()
    );
    // Still no adverts: node2 stays Backup for several Master_Down_Intervals.
    let window = master_down_interval(Duration::from_secs(1), 100) * 2;
    assert_eq!(never_holds(&host2, vip, window), Ok(()), "{}", logs());
    assert!(host1.has_address(vip));

    nft("delete table inet split");
    wait_status(
        &host2,
        BIN,
        "master",
        &host1.addr.to_string(),
        Duration::from_secs(10),
    );
    assert!(host1.has_address(vip) && !host2.has_address(vip));
}

/// A fake peer on a blocking socket in its own namespace.
struct FakePeer {
    stream: TcpStream,
    sealer: Sealer,
    opener: Opener,
    input: Vec<u8>,
}

fn identity(incarnation: Incarnation, node_id: NodeId) -> LocalIdentity {
    let Ok(name) = NodeName::new("fake") else {
        panic!("name");
    };
    LocalIdentity {
        node_id,
        incarnation,
        name,
    }
}

impl FakePeer {
    /// Connects to `node` from inside `host` and completes the handshake.
    fn connect(host: &LabHost, node: SocketAddr, local: LocalIdentity) -> FakePeer {
        let ns = host.ns.clone();
        let stream = in_namespace(&ns, || {
            TcpStream::connect_timeout(&node, Duration::from_secs(3))
        });
        let mut stream = stream.unwrap_or_else(|error| panic!("connect {node}: {error}"));
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let nonce = *NodeId::random().as_bytes();
        let mut handshake =
            Handshake::client(Arc::new(GroupKey::new(KEY.as_bytes())), local, nonce);
        let mut input = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !handshake.is_established() {
            assert!(Instant::now() < deadline, "handshake with {node} timed out");
            let outgoing = handshake.take_outgoing();
            if !outgoing.is_empty() {
                stream
                    .write_all(&outgoing)
                    .unwrap_or_else(|error| panic!("write: {error}"));
            }
            let mut chunk = [0u8; 1024];
            if let Ok(read) = stream.read(&mut chunk) {
                assert!(read > 0, "node closed the handshake");
                input.extend_from_slice(&chunk[..read]);
            }
            let used = handshake
                .receive(&input)
                .unwrap_or_else(|error| panic!("handshake: {error}"));
            input.drain(..used);
        }
        let outgoing = handshake.take_outgoing();
        stream
            .write_all(&outgoing)
            .unwrap_or_else(|error| panic!("write: {error}"));
        let Some(established) = handshake.finish() else {
            panic!("not established");
        };
        FakePeer {
            stream,
            sealer: established.sealer,
            opener: established.opener,
            input,
        }
    }

    fn send(&mut self, message: &Message) -> std::io::Result<()> {
        let mut frame = Vec::new();
        self.sealer.seal(message, &mut frame);
        self.stream.write_all(&frame)
    }

    /// Reads for `window`, keeping the link alive with pings; the messages opened, or the
    /// reason the link ended.
    fn listen(&mut self, window: Duration) -> Result<Vec<Message>, String> {
        let mut opened = Vec::new();
        let started = Instant::now();
        while started.elapsed() < window {
            self.send(&Message::Ping)
                .map_err(|error| format!("write: {error}"))?;
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("closed by the node".to_owned()),
                Ok(read) => self.input.extend_from_slice(&chunk[..read]),
                // The read timeout passed, or a signal interrupted the read: try again.
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => return Err(format!("read: {error}")),
            }
            while let Some((message, used)) = self
                .opener
                .open(&self.input)
                .map_err(|error| error.to_string())?
            {
                self.input.drain(..used);
                if let Opened::Message(message) = message {
                    opened.push(message);
                }
            }
        }
        Ok(opened)
    }

    /// Closes with a reset (no goodbye, no FIN).
    fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// node1 alone (150), Master, with peer links to node2's address where only fake peers run.
fn lone_master(lab: &mut Lab, dir: &std::path::Path, vip: Ipv4Addr) -> HaNode {
    let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
    let mut node1 = HaNode::new(dir, &host1, "1s", 150, vip, &heartbeat(host2.addr));
    node1.start(lab, BIN);
    wait_for("node1 master", Duration::from_secs(15), || {
        host1.has_address(vip)
    });
    node1
}

/// F4: the fake peer holds a proper link but writes back every byte the node sends. The
/// node's own Status, reflected, must not verify: the link is dropped and node1 never takes
/// itself for its successor's peer (today: `successor` became the reflector).
#[test]
fn reflected_frames_are_refused() {
    if !require_netns("reflected_frames_are_refused") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-link-reflect");
    let vip = lab.spare_addr(100);
    let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
    let node1 = lone_master(&mut lab, &dir.0, vip);
    let mut peer = FakePeer::connect(
        &host2,
        SocketAddr::from((host1.addr, LINK_PORT)),
        identity(Incarnation::random(), NodeId::random()),
    );
    // Echo everything after the handshake (the node's Status comes first) for a while.
    let started = Instant::now();
    let mut echoed = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let mut chunk = [0u8; 1024];
        match peer.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => {
                echoed += read;
                if peer.stream.write_all(&chunk[..read]).is_err() {
                    break;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    assert!(echoed > 0, "the node sent nothing to reflect");
    wait_for("link dropped", Duration::from_secs(5), || {
        node1.log_text().contains("frame failed authentication")
    });
    assert!(successor(&host1).is_null(), "{}", node1.log_text());
    assert!(host1.has_address(vip));
    let rejected = "palisade_peer_link_ends_total{why=\"rejected\"}";
    assert_eq!(metric(&host1, rejected), Some(1.0));
}

/// F5: two links from the same peer process; the first one reset. Today the old link's end
/// dropped the new link's writer and reported the peer lost. Now the peer stays up on the
/// second link, which keeps carrying the node's frames. Then a link from a new incarnation
/// (the peer restarted) replaces the old process's link.
#[test]
fn a_second_link_survives_the_first_and_a_new_incarnation_replaces_both() {
    if !require_netns("a_second_link_survives_the_first_and_a_new_incarnation_replaces_both") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-link-second");
    let vip = lab.spare_addr(100);
    let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
    let node1 = lone_master(&mut lab, &dir.0, vip);
    let node = SocketAddr::from((host1.addr, LINK_PORT));
    let (node_id, first_run) = (NodeId::random(), Incarnation::random());
    let mut first = FakePeer::connect(&host2, node, identity(first_run, node_id));
    let in_line = Message::Ha(HaMessage::Status {
        vrid: 51,
        vrrp_priority: 100,
        master: false,
        primary: std::net::IpAddr::V4(host2.addr),
        group: palisade_vrrp_linux::driver::group_fingerprint(&[std::net::IpAddr::V4(vip)]),
    });
    first
        .send(&in_line)
        .unwrap_or_else(|error| panic!("{error}"));
    wait_for("fake peer in line", Duration::from_secs(5), || {
        successor(&host1) == host2.addr.to_string()
    });
    let mut second = FakePeer::connect(&host2, node, identity(first_run, node_id));
    assert!(second.listen(Duration::from_millis(500)).is_ok());
    first.reset();
    // The node pings every second: the second link keeps carrying authentic frames well past
    // the first one's end, and the peer stays in line.
    let heard = second.listen(Duration::from_millis(2500));
    assert!(
        heard.is_ok(),
        "second link: {heard:?}\n{}",
        node1.log_text()
    );
    assert!(
        node1
            .log_text()
            .contains("another link to the peer remains"),
        "{}",
        node1.log_text()
    );
    assert!(
        !node1.log_text().contains("peer link lost"),
        "{}",
        node1.log_text()
    );
    assert_eq!(successor(&host1), host2.addr.to_string());

    // The peer restarts: a link from a new incarnation. The old process's link is closed.
    let second_run = Incarnation::random();
    let mut third = FakePeer::connect(&host2, node, identity(second_run, node_id));
    wait_for("old link closed", Duration::from_secs(5), || {
        second.listen(Duration::from_millis(100)).is_err()
    });
    assert!(third.listen(Duration::from_millis(1500)).is_ok());
    assert!(
        node1.log_text().contains("peer restarted"),
        "{}",
        node1.log_text()
    );
    let peers = status(&host1)["peers"].clone();
    assert_eq!(peers[0]["incarnation"], second_run.to_string(), "{peers}");
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "{peers}");
    let replaced = "palisade_peer_link_ends_total{why=\"replaced\"}";
    assert_eq!(metric(&host1, replaced), Some(1.0));
    assert_eq!(metric(&host1, "palisade_peer_links_peers_up"), Some(1.0));
}
