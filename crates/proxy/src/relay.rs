//! The director's relay (issue 11). A client connection accepted on a redirect port may be
//! for a VIP this node directs: the binary's [`Dispatch`] says where it goes. Served here, it
//! is an ordinary client connection; relayed, the director connects to the chosen node's scan
//! port (trying the next candidate on a refused or timed-out connect, and serving the client
//! itself when none is left), writes an authenticated PROXY v2 header naming the client, and
//! splices bytes both ways in the kernel until both sides close. Every relayed connection is
//! logged with its client, node, bytes each way and how it ended: scanning nodes never see a
//! relay failure.
//!
//! Nobody hangs (issue 12): the client's and the relay's sockets close with a reset unless
//! the relay ends in order (`SO_LINGER` 0 until then, so also when this process dies), a
//! reset or failure on either side is passed on to the other as a reset, the relay socket
//! gives up on unacknowledged data after [`USER_TIMEOUT`] (`TCP_USER_TIMEOUT`), and the
//! director cuts every relay to a node whose scan port stopped answering
//! ([`RelayTarget::cut`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_identity::NodeId;
use palisade_scan_header::{PairKey, RelayEnds, seal};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::drain::Ending;
use crate::{Proxy, conn, tunnel};

/// A connect to a scan port taking longer than this counts as a timeout (members share a
/// network: a healthy one answers in well under a millisecond).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A relay socket whose sent data stays unacknowledged this long fails (`TCP_USER_TIMEOUT`):
/// the other node's host is gone. Members share a network, so a live one acknowledges in
/// well under this, retransmits included.
pub const USER_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a client connection goes.
pub enum Route {
    /// Served by this node (not a VIP it directs, or its own share).
    Serve,
    /// To these nodes, in order (this node among them serves in-process).
    Relay(Vec<RelayTarget>),
    /// Nowhere: every candidate is at its connection cap.
    Refuse,
}

/// One candidate scanning node.
#[derive(Clone, Debug)]
pub struct RelayTarget {
    pub node: NodeId,
    pub name: Arc<str>,
    /// Its scan port (`None`: this node itself).
    pub scan: Option<SocketAddr>,
    pub key: Option<PairKey>,
    /// Fires when the director cuts every relay to this node (its scan port stopped
    /// answering while its reports stopped: the host is gone).
    pub cut: CancellationToken,
}

/// What happened to a relay attempt, for the director's bookkeeping. The first target of a
/// [`Route::Relay`] is counted as connected by `route` itself (so that concurrent choices see
/// each other: bounded loads must not overshoot); every count is released by one `Closed`,
/// sent by a guard, whether the relay failed, ended or panicked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayOutcome {
    /// The first target's relay is up (it was counted by `route`).
    Established,
    /// A later candidate took the connection (or this node serves it): counted until
    /// `Closed`.
    Connected,
    /// The node refused the connect (or is unreachable): out now.
    Refused,
    TimedOut,
    /// A counted connection ended, or its relay failed: its count is released.
    Closed,
}

/// The binary's director: where each new client connection goes, and what became of it.
pub trait Dispatch: Send + Sync {
    /// For a connection from `client` that reached `local` (a redirect port). A relay's first
    /// target is counted as connected from here on.
    fn route(&self, client: SocketAddr, local: SocketAddr) -> Route;
    /// `node`'s relay for a connection that reached `local`.
    fn outcome(&self, local: SocketAddr, node: NodeId, outcome: RelayOutcome);
    fn me(&self) -> NodeId;
    /// A connection from `client` to `local` this node serves in-process as its director:
    /// listed while the guard lives (the director shares its list with the group, so that
    /// whoever takes over from it can tickle these clients).
    fn serving_here(
        &self,
        _client: SocketAddr,
        _local: SocketAddr,
    ) -> Option<Box<dyn Send + Sync>> {
        None
    }
}

/// How a relayed connection ended, for its log line.
enum Ended {
    Relayed(tunnel::TunnelBytes, tunnel::RelayEnd),
    HeaderUnsent(std::io::Error),
}

/// Makes `stream` close with a reset unless [`orderly`] is called first.
fn reset_unless_orderly(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// An orderly end: close with a FIN after what was written.
fn orderly(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(None);
}

/// A connection counted for `node` in the director: released (`Closed`) when dropped, so a
/// relay that fails, ends or panics never leaves its count behind.
struct Counted {
    dispatch: Arc<dyn Dispatch>,
    local: SocketAddr,
    node: NodeId,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.dispatch
            .outcome(self.local, self.node, RelayOutcome::Closed);
    }
}

/// Whether a connect error says the node (not this one) cannot take connections.
fn refused_by_node(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
    )
}

impl Proxy {
    /// Serves `stream` from `client` (accepted on `local`) where `route` says.
    pub(crate) async fn relay(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        local: SocketAddr,
        targets: Vec<RelayTarget>,
        dispatch: Arc<dyn Dispatch>,
        ending: Ending,
    ) {
        let me = dispatch.me();
        // Until the relay ends in order, this client's socket closes with a reset (also when
        // this process dies).
        reset_unless_orderly(&stream);
        // This node directs: should it drain, the connection outlives its VIP here.
        crate::keep_replies_from_vip(&stream);
        let count = |node| Counted {
            dispatch: dispatch.clone(),
            local,
            node,
        };
        // `route` counted the first target; a later one is counted when it takes the
        // connection.
        let mut counted = targets.first().map(|first| count(first.node));
        for (index, target) in targets.into_iter().enumerate() {
            let take = |node| {
                if index == 0 {
                    dispatch.outcome(local, node, RelayOutcome::Established);
                    None
                } else {
                    dispatch.outcome(local, node, RelayOutcome::Connected);
                    Some(count(node))
                }
            };
            let (Some(scan), Some(key)) = (target.scan, target.key.as_ref()) else {
                if target.node == me {
                    let _later = take(me);
                    self.serve_here(stream, client, local, &*dispatch, ending)
                        .await;
                    return;
                }
                // No scan port known: the next one.
                if index == 0 {
                    counted = None;
                }
                continue;
            };
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(scan)).await;
            let mut relay = match connected {
                Ok(Ok(relay)) => relay,
                Ok(Err(error)) => {
                    tracing::warn!(%client, node = %target.name, %scan, %error, "relay connect failed: trying the next node");
                    if refused_by_node(&error) {
                        dispatch.outcome(local, target.node, RelayOutcome::Refused);
                    }
                    if index == 0 {
                        counted = None;
                    }
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%client, node = %target.name, %scan, "relay connect timed out: trying the next node");
                    dispatch.outcome(local, target.node, RelayOutcome::TimedOut);
                    if index == 0 {
                        counted = None;
                    }
                    continue;
                }
            };
            let _ = relay.set_nodelay(true);
            reset_unless_orderly(&relay);
            let _ = socket2::SockRef::from(&relay).set_tcp_user_timeout(Some(USER_TIMEOUT));
            let _later = take(target.node);
            let ended = self
                .relay_to(&stream, &mut relay, client, local, me, key, &target.cut)
                .await;
            match ended {
                Ended::Relayed(bytes, tunnel::RelayEnd::Closed) => {
                    orderly(&stream);
                    orderly(&relay);
                    tracing::info!(
                        %client,
                        node = %target.name,
                        bytes_from_client = bytes.from_client,
                        bytes_to_client = bytes.to_client,
                        "relayed connection closed"
                    );
                }
                Ended::Relayed(bytes, tunnel::RelayEnd::Reset) => tracing::info!(
                    %client,
                    node = %target.name,
                    bytes_from_client = bytes.from_client,
                    bytes_to_client = bytes.to_client,
                    "relayed connection failed on one side: both reset"
                ),
                Ended::Relayed(bytes, tunnel::RelayEnd::Aborted) => tracing::warn!(
                    %client,
                    node = %target.name,
                    bytes_from_client = bytes.from_client,
                    bytes_to_client = bytes.to_client,
                    "relayed connection cut: {} stopped answering (client reset)",
                    target.name
                ),
                Ended::HeaderUnsent(error) => tracing::warn!(
                    %client,
                    node = %target.name,
                    %error,
                    "relayed connection failed before its header was sent"
                ),
            }
            drop(counted);
            return;
        }
        // Nobody else took it: served here rather than failed.
        drop(counted);
        dispatch.outcome(local, me, RelayOutcome::Connected);
        let _served = count(me);
        self.serve_here(stream, client, local, &*dispatch, ending)
            .await;
    }

    /// Serves a client this node directs in-process, listed in its share while it lasts
    /// (so whoever takes over can tickle it) and reset should this process die.
    async fn serve_here(
        self: &Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        local: SocketAddr,
        dispatch: &dyn Dispatch,
        ending: Ending,
    ) {
        let _listed = dispatch.serving_here(client, local);
        conn::serve_connection(
            self.clone(),
            stream,
            client,
            ending,
            conn::UncleanClose::Reset,
        )
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn relay_to(
        &self,
        stream: &TcpStream,
        relay: &mut TcpStream,
        client: SocketAddr,
        local: SocketAddr,
        me: NodeId,
        key: &PairKey,
        cut: &CancellationToken,
    ) -> Ended {
        let ends = match (relay.local_addr(), relay.peer_addr()) {
            (Ok(director), Ok(scanner)) => RelayEnds { director, scanner },
            (Err(error), _) | (_, Err(error)) => return Ended::HeaderUnsent(error),
        };
        let mut nonce = [0u8; 16];
        if let Err(error) = SystemRandom::new().fill(&mut nonce) {
            return Ended::HeaderUnsent(std::io::Error::other(format!("{error:?}")));
        }
        let header = seal(client, local, me, key, ends, wall_ms(), nonce);
        if let Err(error) = relay.write_all(&header).await {
            return Ended::HeaderUnsent(error);
        }
        let (bytes, end) = tunnel::relay(stream, relay, self.config.tunnel_idle_timeout, cut).await;
        Ended::Relayed(bytes, end)
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use arc_swap::ArcSwap;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::access_log::{AccessLog, LogFormat, LogTarget};
    use crate::metrics::ProxyMetrics;
    use crate::ssrf::OwnAddresses;

    /// Records every outcome the relay reports.
    struct Recorder {
        me: NodeId,
        seen: Mutex<Vec<(NodeId, RelayOutcome)>>,
    }

    impl Dispatch for Recorder {
        fn route(&self, _: SocketAddr, _: SocketAddr) -> Route {
            Route::Serve
        }

        fn outcome(&self, _: SocketAddr, node: NodeId, outcome: RelayOutcome) {
            if let Ok(mut seen) = self.seen.lock() {
                seen.push((node, outcome));
            }
        }

        fn me(&self) -> NodeId {
            self.me
        }
    }

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn test_proxy() -> Arc<Proxy> {
        let policy = palisade_policy::compile(
            palisade_policy::default_source(),
            std::path::Path::new("default.toml"),
            &palisade_policy::NodeIdentity::default(),
        )
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        Proxy::new(
            crate::Config::default(),
            Arc::new(ArcSwap::from_pointee(policy)),
            ProxyMetrics::new(&mut Registry::default()),
            AccessLog::start(LogTarget::Off, LogFormat::Json, Default::default())
                .unwrap_or_else(|error| panic!("{error}")),
            OwnAddresses::new(Vec::new()),
        )
        .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Only `route`'s count of the first target is released when its connect fails; a later
    /// candidate that fails was never counted and must not be released (counts drifted to
    /// zero under failures before); whoever takes the connection is counted and released
    /// once.
    #[tokio::test]
    async fn every_count_is_taken_and_released_once_whatever_the_connects_do() {
        let proxy = test_proxy();
        let recorder = Arc::new(Recorder {
            me: node(9),
            seen: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let listener = listener.unwrap_or_else(|error| panic!("{error}"));
        let local = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("{error}"));
        let client = TcpStream::connect(local).await;
        let (accepted, peer) = listener
            .accept()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        // The client leaves at once: the node that takes it serves nothing.
        drop(client);
        let key = PairKey::from_secret(b"pair");
        // Scan ports where connects are refused (held bound, not listening).
        let (held1, port1) = palisade_e2e::node::closed_port();
        let (held2, port2) = palisade_e2e::node::closed_port();
        let target = |n: u8, port: u16| RelayTarget {
            node: node(n),
            name: Arc::from(format!("node{n}")),
            scan: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            key: Some(key.clone()),
            cut: CancellationToken::new(),
        };
        proxy
            .relay(
                accepted,
                peer,
                local,
                vec![target(1, port1), target(2, port2)],
                recorder.clone(),
                crate::drain::NodeDrain::default().ending(),
            )
            .await;
        drop((held1, held2));
        let seen = recorder
            .seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default();
        assert_eq!(
            seen,
            vec![
                (node(1), RelayOutcome::Refused),
                (node(1), RelayOutcome::Closed),
                (node(2), RelayOutcome::Refused),
                (node(9), RelayOutcome::Connected),
                (node(9), RelayOutcome::Closed),
            ]
        );
    }

    /// A relay between a client and a scan port we hold (`scan` end), from the director's
    /// side: returns the client's end, the scan port's end (header read), and the cut.
    async fn relayed_pair() -> (TcpStream, TcpStream, CancellationToken) {
        let proxy = test_proxy();
        let recorder = Arc::new(Recorder {
            me: node(9),
            seen: Mutex::new(Vec::new()),
        });
        let bind = |_| tokio::net::TcpListener::bind("127.0.0.1:0");
        let (front, scan) = (bind(0).await, bind(1).await);
        let (front, scan) = (
            front.unwrap_or_else(|error| panic!("{error}")),
            scan.unwrap_or_else(|error| panic!("{error}")),
        );
        let (local, scan_addr) = (
            front.local_addr().unwrap_or_else(|error| panic!("{error}")),
            scan.local_addr().unwrap_or_else(|error| panic!("{error}")),
        );
        let client = TcpStream::connect(local)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let (accepted, peer) = front
            .accept()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let cut = CancellationToken::new();
        let target = RelayTarget {
            node: node(1),
            name: Arc::from("node1"),
            scan: Some(scan_addr),
            key: Some(PairKey::from_secret(b"pair")),
            cut: cut.clone(),
        };
        tokio::spawn(proxy.relay(
            accepted,
            peer,
            local,
            vec![target],
            recorder,
            crate::drain::NodeDrain::default().ending(),
        ));
        let (mut scanner, _) = scan
            .accept()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let mut prefix = [0u8; palisade_scan_header::PREFIX_LEN];
        tokio::io::AsyncReadExt::read_exact(&mut scanner, &mut prefix)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let length = palisade_scan_header::header_length(&prefix)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a PROXY v2 header"));
        let mut rest = vec![0u8; length - prefix.len()];
        tokio::io::AsyncReadExt::read_exact(&mut scanner, &mut rest)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        (client, scanner, cut)
    }

    /// What the client's next read gives within 5 s: `Ok(n)` bytes (0: a FIN), or the error.
    async fn client_read(client: &mut TcpStream) -> std::io::Result<usize> {
        let mut buf = [0u8; 64];
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(client, &mut buf),
        )
        .await
        .unwrap_or_else(|_| panic!("the client was left hanging"))
    }

    /// A scanning node whose process dies resets its relay connections; the director passes
    /// the reset on to the client as a reset (a FIN could pass for the end of a body read
    /// until close), also while the client sends nothing.
    #[tokio::test]
    async fn a_reset_from_the_scanning_node_reaches_the_client_as_a_reset() {
        let (mut client, scanner, _cut) = relayed_pair().await;
        crate::admission::reset(scanner);
        let read = client_read(&mut client).await;
        assert_eq!(
            read.map_err(|error| error.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }

    /// An orderly end stays orderly: bytes written just before the scanning node's FIN all
    /// reach the client, then a FIN.
    #[tokio::test]
    async fn an_orderly_end_delivers_everything_then_a_fin() {
        let (mut client, mut scanner, _cut) = relayed_pair().await;
        let body = vec![7u8; 300_000];
        tokio::io::AsyncWriteExt::write_all(&mut scanner, &body)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        drop(scanner);
        let mut got = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got),
        )
        .await
        .unwrap_or_else(|_| panic!("hanging"))
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(got.len(), body.len());
    }

    /// The director cuts the relays to a node whose host is gone: the client is reset at once.
    #[tokio::test]
    async fn a_cut_relay_resets_its_client() {
        let (mut client, _scanner, cut) = relayed_pair().await;
        cut.cancel();
        let read = client_read(&mut client).await;
        assert_eq!(
            read.map_err(|error| error.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }
}
