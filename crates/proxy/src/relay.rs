//! The director's relay (issue 11). A client connection accepted on a redirect port may be
//! for a VIP this node directs: the binary's [`Dispatch`] says where it goes. Served here, it
//! is an ordinary client connection; relayed, the director connects to the chosen node's scan
//! port (trying the next candidate on a refused or timed-out connect, and serving the client
//! itself when none is left), writes an authenticated PROXY v2 header naming the client, and
//! splices bytes both ways in the kernel until both sides close. Every relayed connection is
//! logged with its client, node, bytes each way and how it ended: scanning nodes never see a
//! relay failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use palisade_identity::NodeId;
use palisade_scan_header::{PairKey, RelayEnds, seal};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{Proxy, conn, tunnel};

/// A connect to a scan port taking longer than this counts as a timeout (members share a
/// network: a healthy one answers in well under a millisecond).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
}

/// How a relayed connection ended, for its log line.
enum Ended {
    Relayed(tunnel::TunnelBytes),
    HeaderUnsent(std::io::Error),
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
        mut stream: TcpStream,
        client: SocketAddr,
        local: SocketAddr,
        targets: Vec<RelayTarget>,
        dispatch: Arc<dyn Dispatch>,
        shutdown: CancellationToken,
    ) {
        let me = dispatch.me();
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
                    conn::serve_connection(self.clone(), stream, client, shutdown).await;
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
            let _later = take(target.node);
            let ended = self
                .relay_to(&mut stream, &mut relay, client, local, me, key)
                .await;
            match ended {
                Ended::Relayed(bytes) => tracing::info!(
                    %client,
                    node = %target.name,
                    bytes_from_client = bytes.from_client,
                    bytes_to_client = bytes.to_client,
                    "relayed connection closed"
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
        conn::serve_connection(self.clone(), stream, client, shutdown).await;
    }

    async fn relay_to(
        &self,
        stream: &mut TcpStream,
        relay: &mut TcpStream,
        client: SocketAddr,
        local: SocketAddr,
        me: NodeId,
        key: &PairKey,
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
        let bytes = tunnel::run(
            stream,
            BytesMut::new(),
            relay,
            BytesMut::new(),
            self.config.tunnel_idle_timeout,
        )
        .await;
        Ended::Relayed(bytes)
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

    /// Only `route`'s count of the first target is released when its connect fails; a later
    /// candidate that fails was never counted and must not be released (counts drifted to
    /// zero under failures before); whoever takes the connection is counted and released
    /// once.
    #[tokio::test]
    async fn every_count_is_taken_and_released_once_whatever_the_connects_do() {
        let policy = palisade_policy::compile(
            palisade_policy::default_source(),
            std::path::Path::new("default.toml"),
            &palisade_policy::NodeIdentity::default(),
        )
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        let proxy = Proxy::new(
            crate::Config::default(),
            Arc::new(ArcSwap::from_pointee(policy)),
            ProxyMetrics::new(&mut Registry::default()),
            AccessLog::start(LogTarget::Off, LogFormat::Json, Default::default())
                .unwrap_or_else(|error| panic!("{error}")),
            OwnAddresses::new(Vec::new()),
        )
        .unwrap_or_else(|error| panic!("{error}"));
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
        };
        proxy
            .relay(
                accepted,
                peer,
                local,
                vec![target(1, port1), target(2, port2)],
                recorder.clone(),
                CancellationToken::new(),
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
}
