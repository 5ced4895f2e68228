//! The scan port (issue 11) on loopback, with the real binary: a connection relayed by a
//! director (played here by the test, holding the HA group key) is served for the client its
//! authenticated PROXY v2 header names, and the access log shows that client; a header lifted
//! onto another connection, one sealed with another key, plain HTTP, a client the policy
//! refuses and a silent connection are all reset and counted; a PROXY header on the redirect
//! port is a bad request.

use std::net::SocketAddr;
use std::time::Duration;

use palisade_e2e::node::NodeProcess;
use palisade_e2e::origin::Origin;
use palisade_e2e::{curl, raw_exchange, status_of};
use palisade_identity::NodeId;
use palisade_scan_header::{PairKey, RelayEnds, seal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const WAIT: Duration = Duration::from_secs(10);
const GROUP_KEY: &str = "0123456789abcdef-group-key";

const POLICY: &str = r#"
default_action = "allow"
[access]
clients = ["127.0.0.0/8"]
allow_destinations = ["127.0.0.1/32"]
"#;

struct ScanNode {
    node: NodeProcess,
    scan: SocketAddr,
    id: NodeId,
}

fn scan_node() -> ScanNode {
    let node = NodeProcess::start(
        BIN,
        &format!(
            "[heartbeat]\nlisten = \"127.0.0.1:19192\"\npeers = [\"127.0.0.1:9\"]\nkey = \"{GROUP_KEY}\"\n[director]\nscan_listen = \"127.0.0.1:0\"\n"
        ),
        POLICY,
    );
    node.wait_stderr("Scan port listening", WAIT);
    let scan = node
        .logged_addr(&["Scan port listening"])
        .unwrap_or_else(|| panic!("no scan port in the log:\n{}", node.stderr()));
    let status = curl(&[&format!("http://{}/status", node.admin)]);
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap_or_default();
    let id = status["node_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no node id in {status}"));
    ScanNode { node, scan, id }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn director() -> NodeId {
    NodeId::from_bytes([7; 16])
}

/// Connects to the scan port, writes a header sealed by `key` for `client` (on this
/// connection, or on `lifted_from`'s ends), then `request`; returns what came back.
async fn relay(
    node: &ScanNode,
    key: &PairKey,
    client: SocketAddr,
    request: &[u8],
    nonce: u8,
) -> Vec<u8> {
    let mut stream = TcpStream::connect(node.scan)
        .await
        .unwrap_or_else(|error| panic!("scan port: {error}"));
    let ends = RelayEnds {
        director: stream
            .local_addr()
            .unwrap_or_else(|error| panic!("{error}")),
        scanner: stream.peer_addr().unwrap_or_else(|error| panic!("{error}")),
    };
    let vip: SocketAddr = "127.0.0.1:9090".parse().unwrap_or_else(|_| unreachable!());
    let mut bytes = seal(client, vip, director(), key, ends, now_ms(), [nonce; 16]);
    bytes.extend_from_slice(request);
    let _ = stream.write_all(&bytes).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await;
    got
}

fn get(origin: &Origin) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        origin.url("/small"),
        origin.addr
    )
    .into_bytes()
}

fn refused(node: &ScanNode, reason: &str) -> f64 {
    node.node.metric(&format!(
        "palisade_scan_port_refused_connections_total{{reason=\"{reason}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_is_served_for_the_client_its_header_names() {
    let origin = Origin::start().await;
    let node = scan_node();
    let key = PairKey::from_group_key(GROUP_KEY.as_bytes(), director(), node.id);
    let client: SocketAddr = "127.0.0.9:4242".parse().unwrap_or_else(|_| unreachable!());
    let answer = relay(&node, &key, client, &get(&origin), 1).await;
    assert_eq!(status_of(&answer), 200, "{}", node.node.stderr());
    let record = node
        .node
        .wait_access_log(|record| record["status"] == 200, WAIT);
    assert_eq!(record["client"], "127.0.0.9:4242");
    assert_eq!(
        node.node
            .metric("palisade_scan_port_relayed_connections_total"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_lifted_plain_refused_and_silent_connections_are_reset() {
    let origin = Origin::start().await;
    let node = scan_node();
    let key = PairKey::from_group_key(GROUP_KEY.as_bytes(), director(), node.id);
    let client: SocketAddr = "127.0.0.9:4242".parse().unwrap_or_else(|_| unreachable!());

    // Another group's key.
    let stranger = PairKey::from_group_key(b"another-group-key-0123456789", director(), node.id);
    assert!(
        relay(&node, &stranger, client, &get(&origin), 2)
            .await
            .is_empty()
    );
    node.node.wait_metric(
        "palisade_scan_port_refused_connections_total{reason=\"bad_mac\"}",
        |count| count >= 1.0,
        WAIT,
    );

    // A header sealed for one connection, sent on another.
    let mut first = TcpStream::connect(node.scan)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let ends = RelayEnds {
        director: first.local_addr().unwrap_or_else(|error| panic!("{error}")),
        scanner: first.peer_addr().unwrap_or_else(|error| panic!("{error}")),
    };
    let vip: SocketAddr = "127.0.0.1:9090".parse().unwrap_or_else(|_| unreachable!());
    let lifted = seal(client, vip, director(), &key, ends, now_ms(), [3; 16]);
    let _ = first.shutdown().await;
    let mut bytes = lifted.clone();
    bytes.extend_from_slice(&get(&origin));
    let (answer, _) = raw_exchange(node.scan, &bytes, WAIT).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    node.node.wait_metric(
        "palisade_scan_port_refused_connections_total{reason=\"bad_mac\"}",
        |count| count >= 2.0,
        WAIT,
    );

    // Plain HTTP on the scan port.
    let (answer, _) = raw_exchange(node.scan, &get(&origin), WAIT).await;
    assert!(answer.is_empty());
    node.node.wait_metric(
        "palisade_scan_port_refused_connections_total{reason=\"not_proxy_v2\"}",
        |count| count >= 1.0,
        WAIT,
    );

    // A genuine header naming a client the policy does not admit.
    let outsider: SocketAddr = "192.0.2.7:4242".parse().unwrap_or_else(|_| unreachable!());
    assert!(
        relay(&node, &key, outsider, &get(&origin), 4)
            .await
            .is_empty()
    );
    assert_eq!(refused(&node, "client_not_allowed"), 1.0);

    // A genuine header from an address that is no member's (the heartbeat lists 127.0.0.1):
    // reset at accept, before it reads a byte.
    let outsider_socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|error| panic!("{error}"));
    outsider_socket
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap_or_else(|error| panic!("{error}"));
    // Both ends are known before connecting: the node resets at accept, after which
    // getpeername() fails (ENOTCONN), so they cannot be read from the socket afterwards.
    let ends = RelayEnds {
        director: outsider_socket
            .local_addr()
            .ok()
            .and_then(|address| address.as_socket())
            .unwrap_or_else(|| panic!("bound socket has an address")),
        scanner: node.scan,
    };
    outsider_socket
        .connect(&node.scan.into())
        .unwrap_or_else(|error| panic!("{error}"));
    outsider_socket
        .set_nonblocking(true)
        .unwrap_or_else(|error| panic!("{error}"));
    let mut stranger_stream =
        TcpStream::from_std(outsider_socket.into()).unwrap_or_else(|error| panic!("{error}"));
    let mut bytes = seal(client, vip, director(), &key, ends, now_ms(), [5; 16]);
    bytes.extend_from_slice(&get(&origin));
    let _ = stranger_stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stranger_stream.read_to_end(&mut answer)).await;
    assert!(answer.is_empty());
    assert_eq!(refused(&node, "not_a_member"), 1.0);

    // Nothing at all: reset after the 3 s header timeout.
    let started = std::time::Instant::now();
    let (answer, closed) = raw_exchange(node.scan, b"", Duration::from_secs(8)).await;
    assert!(answer.is_empty() && closed);
    assert!(
        started.elapsed() >= Duration::from_millis(2_900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused(&node, "header_timeout"), 1.0);

    // A PROXY header on the redirect port is a bad request, never a client address ...
    let mut bytes = lifted;
    bytes.extend_from_slice(&get(&origin));
    let (answer, _) = raw_exchange(node.node.proxy, &bytes, WAIT).await;
    assert_eq!(
        status_of(&answer),
        400,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // ... and on the test port.
    let (answer, _) = raw_exchange(node.node.test_port, &bytes, WAIT).await;
    assert_eq!(
        status_of(&answer),
        400,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(origin.requests().is_empty(), "nothing reached the origin");
    assert_eq!(
        node.node
            .metric("palisade_scan_port_relayed_connections_total"),
        0.0
    );
}
