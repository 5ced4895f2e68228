//! One link over TCP: the handshake on a connected stream, then a task that opens what
//! arrives, sends what the mesh queues, pings every second (faster with fast VRRP adverts:
//! [`LinkTiming`]) and drops a link that carries nothing for three of the peer's pings.
//! Sockets keep TCP keepalive and a 3 s `TCP_USER_TIMEOUT`, so a peer that vanishes without a
//! FIN (host down, path cut) surfaces as an error instead of a link that looks up for hours
//! (security review F3).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{Authenticator, Role};
use crate::frame::{FrameError, Opened, Opener, Sealer};
use crate::handshake::{Handshake, HandshakeError, LocalIdentity, NONCE_LEN, PeerIdentity};
use crate::message::Message;

/// A handshake must complete within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Both ends send a ping this often, by default.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// A link that carried nothing for this long is dropped (a hint, not proof, of a death), by
/// default.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(3);
/// The fastest pings a link sends, whatever the adverts.
pub const FASTEST_PING: Duration = Duration::from_millis(100);
/// The shortest silence that drops a link: one lost segment and its retransmission (Linux's
/// 200 ms minimum RTO) must not pass for a death.
pub const SHORTEST_SILENCE: Duration = Duration::from_millis(500);
/// Missed pings (at the peer's pace) that drop a link.
const MISSED_PINGS: u32 = 3;
/// Unacknowledged data for this long fails the socket (`TCP_USER_TIMEOUT`).
pub const USER_TIMEOUT: Duration = Duration::from_secs(3);

/// How often this end pings. The other end drops the link after three of its pings'
/// worth of silence, at the pace it sees them arrive ([`PeerPace`]): two nodes with
/// different adverts each time out on the other's pace, not their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTiming {
    pub ping: Duration,
}

impl Default for LinkTiming {
    fn default() -> LinkTiming {
        LinkTiming {
            ping: PING_INTERVAL,
        }
    }
}

impl LinkTiming {
    /// Pings as often as the node's fastest VRRP adverts (at most every second, at least
    /// every [`FASTEST_PING`]). A dead peer's link is then down about when VRRP's
    /// Master_Down_Interval (three adverts and the skew) moves its VIP, and the new
    /// director's tickles need wait little longer than the takeover: with a fixed 3 s
    /// silence, 100 ms adverts moved the VIP in 0.35 s and the clients waited till 3 s.
    pub fn for_advert_interval(fastest_advert: Duration) -> LinkTiming {
        LinkTiming {
            ping: fastest_advert.clamp(FASTEST_PING, PING_INTERVAL),
        }
    }
}

/// The peer's ping pace as this end sees it: the longest of the last three gaps between its
/// pings (pings queued behind a stall arrive together, with short gaps; the longest gap is
/// the pace), and the default pace until three gaps were seen.
#[derive(Debug, Default)]
struct PeerPace {
    last: Option<tokio::time::Instant>,
    gaps: [Duration; 3],
    seen: usize,
}

impl PeerPace {
    fn ping(&mut self, now: tokio::time::Instant) {
        if let Some(last) = self.last {
            self.gaps[self.seen % self.gaps.len()] = now.saturating_duration_since(last);
            self.seen += 1;
        }
        self.last = Some(now);
    }

    /// How long the link may carry nothing before it is dropped.
    fn silence(&self) -> Duration {
        if self.seen < self.gaps.len() {
            return SILENCE_TIMEOUT;
        }
        let pace = (self.gaps.iter().copied().max())
            .unwrap_or(PING_INTERVAL)
            .min(PING_INTERVAL);
        (pace * MISSED_PINGS).max(SHORTEST_SILENCE)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("handshake timed out")]
    Timeout,
    #[error("no randomness available")]
    Random,
    #[error("TLS: {0}")]
    Tls(String),
    /// A TLS session without a client certificate, handed to the join service.
    #[error("handed to the join service")]
    JoinSession,
    #[error("the peer's certificate names node {certificate}, its handshake node {claimed}")]
    Identity {
        certificate: String,
        claimed: palisade_identity::NodeId,
    },
}

/// How a mesh's links prove who is at the other end.
#[derive(Clone)]
pub enum LinkAuth {
    /// The HA group key (HMAC) over plain TCP: a node in an HA group without a cluster.
    GroupKey(Arc<crate::auth::GroupKey>),
    /// The cluster's mutual TLS; the link's own handshake then runs inside it, its proofs and
    /// frame keys bound to the TLS session (RFC 5705 exporter), and the node id it claims must
    /// be the one its certificate names.
    Tls(TlsLinks),
}

impl LinkAuth {
    pub fn group_key(secret: &[u8]) -> LinkAuth {
        LinkAuth::GroupKey(Arc::new(crate::auth::GroupKey::new(secret)))
    }
}

/// The TLS side of [`LinkAuth::Tls`].
#[derive(Clone)]
pub struct TlsLinks {
    /// The TLS configurations, replaced whole when the node's certificate or trusted CAs
    /// change (a renewal, a CA rotation): new links use the new ones at once.
    pub configs: Arc<arc_swap::ArcSwap<TlsConfigs>>,
    /// The name every member's certificate carries, so a member is dialled by address.
    pub server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
    /// The node a peer's certificate (DER) names, if it is one of the cluster's.
    pub node_of: NodeOfCertificate,
    /// Takes accepted TLS sessions without a client certificate (a node joining the cluster);
    /// `None`: the acceptor requires a certificate and there are none.
    pub joins: Option<JoinHandler>,
}

/// A node's TLS side of its links: accepting and dialling.
pub struct TlsConfigs {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

/// Serves one certificate-less TLS session (the join exchange) on its own task.
pub type JoinHandler =
    Arc<dyn Fn(tokio_rustls::server::TlsStream<TcpStream>, std::net::SocketAddr) + Send + Sync>;

/// Reads the node a certificate (DER) names (`palisade_cluster_trust::NodeCertificate`).
pub type NodeOfCertificate = Arc<dyn Fn(&[u8]) -> Option<palisade_identity::NodeId> + Send + Sync>;

/// The exporter label binding a link's handshake to its TLS session.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-palisade-peer-link";
/// The exporter label of the pair's scan-port key (issue 11): both ends of a TLS link
/// export the same secret, which no one else can, so a director and a scanning node share a
/// key without any configured secret.
const SCAN_KEY_LABEL: &[u8] = b"EXPORTER-palisade-scan-port";

/// What the link takes from a TLS session: the exporter secret its handshake is bound to,
/// and the peer's certificate (DER).
fn session_facts<Data>(
    connection: &tokio_rustls::rustls::ConnectionCommon<Data>,
) -> Result<SessionFacts, LinkError> {
    let export = |label: &[u8]| {
        let mut secret = [0u8; 32];
        connection
            .export_keying_material(&mut secret, label, None)
            .map_err(|error| LinkError::Tls(error.to_string()))?;
        Ok::<_, LinkError>(secret)
    };
    let certificate = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| der.to_vec());
    Ok(SessionFacts {
        secret: export(EXPORTER_LABEL)?,
        scan_secret: export(SCAN_KEY_LABEL)?,
        certificate,
    })
}

/// What a link takes from its TLS session.
struct SessionFacts {
    /// Binds the link's handshake to the session.
    secret: [u8; 32],
    /// The pair's scan-port key.
    scan_secret: [u8; 32],
    /// The peer's certificate (DER).
    certificate: Option<Vec<u8>>,
}

/// Authenticates a connected TCP stream as `role` by `auth` and runs the link handshake.
pub async fn establish(
    stream: TcpStream,
    role: Role,
    auth: &LinkAuth,
    local: LocalIdentity,
) -> Result<Link, LinkError> {
    let tls = match auth {
        LinkAuth::GroupKey(key) => return handshake(stream, role, key.clone(), local).await,
        LinkAuth::Tls(tls) => tls,
    };
    let remote = stream.peer_addr()?;
    tune(&stream)?;
    let tls_error = |error: io::Error| LinkError::Tls(error.to_string());
    let configs = tls.configs.load_full();
    let secured = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let secured: (Box<dyn LinkStream>, _) = match role {
            Role::Client => {
                let stream = configs
                    .connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(tls_error)?;
                let facts = session_facts(&**stream.get_ref().1)?;
                (Box::new(stream), facts)
            }
            Role::Server => {
                let stream = configs.acceptor.accept(stream).await.map_err(tls_error)?;
                let facts = session_facts(&**stream.get_ref().1)?;
                if facts.certificate.is_none()
                    && let Some(joins) = &tls.joins
                {
                    joins(stream, remote);
                    return Err(LinkError::JoinSession);
                }
                (Box::new(stream), facts)
            }
        };
        Ok::<_, LinkError>(secured)
    })
    .await
    .map_err(|_| LinkError::Timeout)??;
    let (stream, facts) = secured;
    let certified = (facts.certificate.as_deref()).and_then(|der| (tls.node_of)(der));
    let auth: Arc<dyn Authenticator> = Arc::new(crate::auth::GroupKey::new(&facts.secret));
    let mut link = handshake_over(stream, remote, role, auth, local).await?;
    link.scan_secret = Some(facts.scan_secret);
    if certified != Some(link.peer.node_id) {
        return Err(LinkError::Identity {
            certificate: certified
                .map_or_else(|| "none of this cluster".to_owned(), |id| id.to_string()),
            claimed: link.peer.node_id,
        });
    }
    Ok(link)
}

/// How a link ended, as its task saw it.
#[derive(Debug)]
pub enum LinkEnd {
    /// The peer said `Bye` before closing: an orderly stop.
    Bye,
    /// Closed or reset without `Bye`, or silent for three of its pings: the peer's process
    /// may have died, or the path failed. A hint only.
    Lost(Lost),
    /// A frame failed authentication or made no sense: the link is dropped. Proves nothing
    /// about the peer (anyone on the path can inject bytes).
    Rejected(FrameError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    Closed,
    Error(io::ErrorKind),
    Silent(Duration),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Closed => f.write_str("closed without a goodbye"),
            Lost::Error(kind) => write!(f, "{kind}"),
            Lost::Silent(silence) => write!(f, "nothing received for {silence:?}"),
        }
    }
}

/// Keepalive, user timeout and no Nagle on a link's socket.
pub fn tune(stream: &TcpStream) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(1))
            .with_interval(Duration::from_secs(1))
            .with_retries(3),
    )?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

pub(crate) fn nonce() -> Result<[u8; NONCE_LEN], LinkError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| LinkError::Random)?;
    Ok(nonce)
}

/// What a link runs over: a TCP stream, or TLS over one (the cluster's mutual TLS).
pub trait LinkStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> LinkStream for T {}

/// An established link, not yet running.
pub struct Link {
    stream: Box<dyn LinkStream>,
    sealer: Sealer,
    opener: Opener,
    /// Bytes that arrived behind the handshake.
    leftover: Vec<u8>,
    pub peer: PeerIdentity,
    pub remote: SocketAddr,
    /// The pair's scan-port key, exported from the link's TLS session (none on a link
    /// authenticated by the HA group key, whose pairs derive theirs from it).
    pub scan_secret: Option<[u8; 32]>,
}

/// Runs the handshake as `role` on a connected TCP stream (tuned here).
pub async fn handshake(
    stream: TcpStream,
    role: Role,
    auth: Arc<dyn Authenticator>,
    local: LocalIdentity,
) -> Result<Link, LinkError> {
    let remote = stream.peer_addr()?;
    tune(&stream)?;
    handshake_over(Box::new(stream), remote, role, auth, local).await
}

/// Runs the handshake as `role` on any stream to `remote` (TLS over a tuned TCP stream).
pub async fn handshake_over(
    mut stream: Box<dyn LinkStream>,
    remote: SocketAddr,
    role: Role,
    auth: Arc<dyn Authenticator>,
    local: LocalIdentity,
) -> Result<Link, LinkError> {
    let nonce = nonce()?;
    let mut handshake = match role {
        Role::Client => Handshake::client(auth, local, nonce),
        Role::Server => Handshake::server(auth, local, nonce),
    };
    let mut buffer = Vec::with_capacity(1024);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            let outgoing = handshake.take_outgoing();
            if !outgoing.is_empty() {
                stream.write_all(&outgoing).await?;
            }
            if handshake.is_established() {
                return Ok(());
            }
            if stream.read_buf(&mut buffer).await? == 0 {
                return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            let used = handshake.receive(&buffer)?;
            buffer.drain(..used);
        }
    })
    .await
    .map_err(|_| LinkError::Timeout)??;
    let Some(established) = handshake.finish() else {
        return Err(LinkError::Timeout);
    };
    Ok(Link {
        stream,
        sealer: established.sealer,
        opener: established.opener,
        leftover: buffer,
        peer: established.peer,
        remote,
        scan_secret: None,
    })
}

impl Link {
    /// Says goodbye and closes, without running the link.
    pub(crate) async fn close_with_bye(mut self) {
        let mut frame = Vec::new();
        self.sealer.seal(&Message::Bye, &mut frame);
        let _ = tokio::time::timeout(USER_TIMEOUT, self.stream.write_all(&frame)).await;
        let _ = self.stream.shutdown().await;
    }
}

/// What the mesh asks of a running link.
pub(crate) enum Outgoing {
    Send(Message),
    /// Say goodbye and close; answers once written.
    Bye(oneshot::Sender<()>),
}

impl Link {
    /// Runs the link until it ends or `outgoing` closes (the mesh dropped it: it closes
    /// quietly). Every received message goes to `received`.
    pub(crate) async fn run(
        self,
        timing: LinkTiming,
        mut outgoing: mpsc::Receiver<Outgoing>,
        skipped_frames: prometheus_client::metrics::counter::Counter,
        mut received: impl FnMut(Message),
    ) -> Option<LinkEnd> {
        let Link {
            stream,
            mut sealer,
            mut opener,
            leftover,
            ..
        } = self;
        let (mut read, mut write) = tokio::io::split(stream);
        let mut input = leftover;
        let mut frame = Vec::with_capacity(64);
        let mut ping = tokio::time::interval(timing.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        let mut pace = PeerPace::default();
        loop {
            // Open whatever whole frames are buffered.
            loop {
                match opener.open(&input) {
                    Ok(Some((opened, used))) => {
                        input.drain(..used);
                        heard = tokio::time::Instant::now();
                        match opened {
                            Opened::Message(Message::Bye) => return Some(LinkEnd::Bye),
                            Opened::Message(Message::Ping) => pace.ping(heard),
                            Opened::Message(message) => received(message),
                            Opened::Skipped { plane, version } => {
                                skipped_frames.inc();
                                tracing::debug!(
                                    plane,
                                    version,
                                    "peer-link frame of a plane this build does not speak skipped"
                                );
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return Some(LinkEnd::Rejected(error)),
                }
            }
            let silence = pace.silence();
            // Biased: whatever arrived (after a stalled write, say) is read before the
            // silence is judged.
            let to_send = tokio::select! {
                biased;
                _ = ping.tick() => Outgoing::Send(Message::Ping),
                read_result = read.read_buf(&mut input) => match read_result {
                    Ok(0) => return Some(LinkEnd::Lost(Lost::Closed)),
                    Ok(_) => {
                        // Any byte is a sign of life, a whole frame or not.
                        heard = tokio::time::Instant::now();
                        continue;
                    }
                    Err(error) => return Some(LinkEnd::Lost(Lost::Error(error.kind()))),
                },
                next = outgoing.recv() => match next {
                    Some(next) => next,
                    None => return None,
                },
                () = tokio::time::sleep_until(heard + silence) => {
                    return Some(LinkEnd::Lost(Lost::Silent(silence)));
                }
            };
            frame.clear();
            let (message, done) = match to_send {
                Outgoing::Send(message) => (message, None),
                Outgoing::Bye(done) => (Message::Bye, Some(done)),
            };
            sealer.seal(&message, &mut frame);
            // A peer that stops reading fails the write within the user timeout; bound it
            // here too, so a full send buffer cannot hold the link task.
            match tokio::time::timeout(USER_TIMEOUT, write.write_all(&frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Some(LinkEnd::Lost(Lost::Error(error.kind()))),
                Err(_) => return Some(LinkEnd::Lost(Lost::Silent(USER_TIMEOUT))),
            }
            if let Some(done) = done {
                let _ = write.shutdown().await;
                let _ = done.send(());
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_ping_as_fast_as_the_adverts_within_bounds() {
        let at = |ms| LinkTiming::for_advert_interval(Duration::from_millis(ms)).ping;
        assert_eq!(at(1_000), PING_INTERVAL);
        assert_eq!(at(3_000), PING_INTERVAL);
        assert_eq!(at(250), Duration::from_millis(250));
        // Never faster than every 100 ms.
        assert_eq!(at(20), FASTEST_PING);
    }

    #[test]
    fn the_silence_that_drops_a_link_follows_the_peers_pace() {
        let start = tokio::time::Instant::now();
        let after = |pings: &[u64]| {
            let mut pace = PeerPace::default();
            for at in pings {
                pace.ping(start + Duration::from_millis(*at));
            }
            pace.silence()
        };
        // Until three gaps are seen: the default.
        assert_eq!(after(&[0, 100, 200]), SILENCE_TIMEOUT);
        // A peer pinging every 250 ms: three of its pings.
        assert_eq!(after(&[0, 250, 500, 750]), Duration::from_millis(750));
        // Every 100 ms: not below the floor.
        assert_eq!(after(&[0, 100, 200, 300]), SHORTEST_SILENCE);
        // A peer with 1 s adverts seen by one with 100 ms adverts: its own pace, 3 s.
        assert_eq!(after(&[0, 1_000, 2_000, 3_000]), SILENCE_TIMEOUT);
        // Pings queued behind a stall arrive together: the longest recent gap counts.
        assert_eq!(
            after(&[0, 1_000, 2_000, 2_001, 2_002]),
            SILENCE_TIMEOUT,
            "a burst does not shorten the silence"
        );
    }
}
