//! The scan port (issue 11): connections a director relays to this node. Each must open with
//! an authenticated PROXY v2 header (`palisade-scan-header`) naming the real client; after it
//! the connection is served exactly like a client's own, under that client's address (the
//! policy's client allowlist, per-source caps, the access log). A connection that sends
//! anything else, too slowly, or too much is reset, counted, and logged at a bounded rate.
//!
//! Nobody hangs (issue 12): a scan-port socket closes with a reset unless its connection ends
//! in order (`SO_LINGER` 0, so also when this process dies: the director passes the reset on
//! to its client), gives up on unacknowledged data after `TCP_USER_TIMEOUT`, and every
//! connection is listed under its director ([`RelayedClients`]): the binary cuts a confirmed
//! dead director's connections (and their upstream fetches), and tells a new director the
//! clients the dead one relayed here, whom it then tickles.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_identity::NodeId;
use palisade_log_throttle::LogThrottle;
use palisade_scan_header::{
    MAX_HEADER, PREFIX_LEN, PairKey, Refusal, RelayEnds, Verifier, header_length,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{self, ConnectionSlot, SourceKey};
use crate::metrics::ReasonLabels;
use crate::{Proxy, conn, ssrf};

/// The keys this node shares with a director, by the director's node id (the current one,
/// and the previous one while links re-key); none for a node that is not a member.
pub type ScanKeys = Arc<dyn Fn(NodeId) -> Vec<PairKey> + Send + Sync>;

/// Whether an address is a member's (only members may open a scan-port connection at all).
pub type ScanMembers = Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>;

/// The header must be complete this soon after accept (the PROXY spec: at least 3 s, to cover
/// a TCP retransmit).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections whose header has not been checked yet, at most.
pub const MAX_UNAUTHENTICATED: usize = 256;
/// Timestamps within this of the node's clock pass: more than central management's two
/// minutes, so members it keeps together never refuse each other's relays here.
const WINDOW_MS: u64 = 150_000;
/// Nonces remembered at most (beyond, the oldest are forgotten: ~10 MB at most).
const MAX_NONCES: usize = 200_000;
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Every reason a scan-port connection is refused, as counted.
pub const REFUSAL_REASONS: [&str; 14] = [
    "not_a_member",
    "not_proxy_v2",
    "too_long",
    "malformed",
    "not_relay",
    "unauthenticated",
    "unknown_director",
    "bad_mac",
    "stale",
    "replayed",
    "header_timeout",
    "too_many_unauthenticated",
    "client_not_allowed",
    "per_source_limit",
];

fn reason_of(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::NotProxyV2 => "not_proxy_v2",
        Refusal::TooLong(_) => "too_long",
        Refusal::Malformed(_) => "malformed",
        Refusal::NotRelay => "not_relay",
        Refusal::Unauthenticated => "unauthenticated",
        Refusal::UnknownDirector(_) => "unknown_director",
        Refusal::BadMac => "bad_mac",
        Refusal::Stale { .. } => "stale",
        Refusal::Replayed => "replayed",
    }
}

/// The connections relayed to this node, by director; those that ended within
/// [`RECENT`] too: a connection whose director's host died often fails here (its socket's
/// user timeout) before anyone has taken over, and its client still needs its tickle.
#[derive(Default)]
pub struct RelayedClients {
    next: AtomicU64,
    by_director: Mutex<HashMap<NodeId, DirectorRelays>>,
    recent: Mutex<std::collections::VecDeque<Ended>>,
}

/// A connection that ended: when, its director, (client, the address it connected to).
type Ended = (std::time::Instant, NodeId, (SocketAddr, SocketAddr));

/// How long an ended connection is still listed for tickles.
pub const RECENT: Duration = Duration::from_secs(15);
/// Ended connections listed at most.
const RECENT_MAX: usize = 65_536;

#[derive(Default)]
struct DirectorRelays {
    /// Cancelled to cut every connection this director relays here.
    cut: CancellationToken,
    /// Cancelled when this director drains: its connections close after their response.
    close: CancellationToken,
    /// Until when this director drains (what it relays meanwhile closes after one response);
    /// kept while it drains even with no connection listed.
    draining_until: Option<std::time::Instant>,
    /// Each connection's client and the address it connected to (a VIP and redirect port).
    clients: HashMap<u64, (SocketAddr, SocketAddr)>,
}

impl DirectorRelays {
    /// Whether the director drains now; a drain that lapsed is forgotten, and connections
    /// relayed from then on are kept alive again.
    fn draining(&mut self) -> bool {
        match self.draining_until {
            Some(until) if until > std::time::Instant::now() => true,
            Some(_) => {
                self.draining_until = None;
                self.close = CancellationToken::new();
                false
            }
            None => false,
        }
    }
}

/// One listed connection: unlisted when dropped.
struct Listed<'a> {
    relayed: &'a RelayedClients,
    director: NodeId,
    id: u64,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        let mut by_director = self.relayed.lock();
        let Some(relays) = by_director.get_mut(&self.director) else {
            return;
        };
        let ended = relays.clients.remove(&self.id);
        if relays.clients.is_empty() && !relays.draining() {
            by_director.remove(&self.director);
        }
        drop(by_director);
        if let Some(connection) = ended {
            let mut recent = self.relayed.recent();
            if recent.len() >= RECENT_MAX {
                recent.pop_front();
            }
            recent.push_back((std::time::Instant::now(), self.director, connection));
        }
    }
}

impl RelayedClients {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, DirectorRelays>> {
        self.by_director
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connections that ended within [`RECENT`] (older ones pruned).
    fn recent(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Ended>> {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while recent
            .front()
            .is_some_and(|(ended, _, _)| ended.elapsed() > RECENT)
        {
            recent.pop_front();
        }
        recent
    }

    /// Lists a connection `director` relays here: its listing, what cuts it and what
    /// closes it after its response.
    fn list(
        &self,
        director: NodeId,
        client: SocketAddr,
        to: SocketAddr,
    ) -> (Listed<'_>, CancellationToken, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut by_director = self.lock();
        let relays = by_director.entry(director).or_default();
        relays.clients.insert(id, (client, to));
        // A lapsed drain is forgotten here (a fresh close token).
        relays.draining();
        let (cut, close) = (relays.cut.clone(), relays.close.clone());
        (
            Listed {
                relayed: self,
                director,
                id,
            },
            cut,
            close,
        )
    }

    /// `director` drains: every connection it relays here (and those it relays within
    /// `for_at_most`) closes after its current response, idle ones at once. Its clients'
    /// packets reach it only until its drain ends.
    pub fn close_director(&self, director: NodeId, for_at_most: Duration) {
        let mut by_director = self.lock();
        let relays = by_director.entry(director).or_default();
        relays.draining_until = Some(std::time::Instant::now() + for_at_most);
        relays.close.cancel();
    }

    /// `director` is back in service (or its drain ended): connections it relays from now on
    /// are kept alive as usual.
    pub fn resume_director(&self, director: NodeId) {
        let mut by_director = self.lock();
        if let Some(relays) = by_director.get_mut(&director) {
            relays.draining_until = None;
            relays.close = CancellationToken::new();
            if relays.clients.is_empty() {
                by_director.remove(&director);
            }
        }
    }

    /// Cuts every connection `director` relays here (it is confirmed dead): each is reset
    /// and its upstream fetch dropped. Returns them: (client, the address it connected to).
    /// Those that ended within [`RECENT`] come with them (and are forgotten).
    pub fn cut(&self, director: NodeId) -> Vec<(SocketAddr, SocketAddr)> {
        let mut cut: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        if let Some(relays) = self.lock().remove(&director) {
            relays.cut.cancel();
            cut.extend(relays.clients.into_values());
        }
        let mut recent = self.recent();
        recent.retain(|(_, of, connection)| {
            if *of == director {
                cut.push(*connection);
            }
            *of != director
        });
        cut
    }

    /// Every connection `director` relays here, and those that ended within [`RECENT`]:
    /// (client, the address it connected to).
    pub fn clients_of(&self, director: NodeId) -> Vec<(SocketAddr, SocketAddr)> {
        let mut clients: Vec<(SocketAddr, SocketAddr)> = (self.lock().get(&director))
            .map(|relays| relays.clients.values().copied().collect())
            .unwrap_or_default();
        clients.extend(
            (self.recent().iter())
                .filter(|(_, of, _)| *of == director)
                .map(|(_, _, connection)| *connection),
        );
        clients
    }

    /// The directors that relay connections here now or did within [`RECENT`].
    pub fn directors(&self) -> Vec<NodeId> {
        // A draining director stays in the map without connections: not listed here.
        let mut directors: Vec<NodeId> = (self.lock().iter())
            .filter(|(_, relays)| !relays.clients.is_empty())
            .map(|(director, _)| *director)
            .collect();
        for (_, director, _) in self.recent().iter() {
            if !directors.contains(director) {
                directors.push(*director);
            }
        }
        directors
    }
}

/// What the scan port checks headers with.
pub struct ScanGate {
    verifier: Mutex<Verifier>,
    keys: ScanKeys,
    members: ScanMembers,
    unauthenticated: Arc<Semaphore>,
    log: LogThrottle,
    relayed: Arc<RelayedClients>,
}

impl ScanGate {
    /// Headers checked with `keys`; connections from addresses `members` does not know are
    /// reset at accept, before they hold one of the unauthenticated slots.
    pub fn new(keys: ScanKeys, members: ScanMembers) -> Arc<ScanGate> {
        Arc::new(ScanGate {
            verifier: Mutex::new(Verifier::new(WINDOW_MS, MAX_NONCES)),
            keys,
            members,
            unauthenticated: Arc::new(Semaphore::new(MAX_UNAUTHENTICATED)),
            log: LogThrottle::new(LOG_INTERVAL),
            relayed: Arc::default(),
        })
    }

    /// The connections relayed here now, by director.
    pub fn relayed(&self) -> Arc<RelayedClients> {
        self.relayed.clone()
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Reads exactly the header (never a byte of the client's after it).
async fn read_header(stream: &mut TcpStream) -> Result<Vec<u8>, Refusal> {
    let mut header = vec![0u8; PREFIX_LEN];
    let io = |_| Refusal::Malformed("connection closed before the header was complete".to_owned());
    stream.read_exact(&mut header).await.map_err(io)?;
    let Some(length) = header_length(&header)? else {
        return Err(Refusal::NotProxyV2);
    };
    debug_assert!(length <= MAX_HEADER);
    header.resize(length, 0);
    stream
        .read_exact(&mut header[PREFIX_LEN..])
        .await
        .map_err(io)?;
    Ok(header)
}

impl Proxy {
    /// Accepts relayed connections on the scan port until `shutdown` fires.
    pub async fn serve_scan_port(
        self: Arc<Self>,
        listener: TcpListener,
        gate: Arc<ScanGate>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        while let Some((stream, peer)) = crate::accept_next(&listener, &shutdown, "scan port").await
        {
            if !(gate.members)(peer.ip().to_canonical()) {
                self.refuse_scan(stream, peer, "not_a_member", &gate, None);
                continue;
            }
            let Ok(permit) = gate.unauthenticated.clone().try_acquire_owned() else {
                self.refuse_scan(stream, peer, "too_many_unauthenticated", &gate, None);
                continue;
            };
            // A reset unless the connection ends in order (also when this process dies), and
            // no waiting on a dead director's host for unacknowledged data.
            let socket = socket2::SockRef::from(&stream);
            let _ = socket.set_linger(Some(Duration::ZERO));
            let _ = socket.set_tcp_user_timeout(Some(crate::relay::USER_TIMEOUT));
            let (proxy, gate) = (self.clone(), gate.clone());
            tracker.spawn(async move {
                proxy.scan_connection(stream, peer, gate, permit).await;
            });
        }
    }

    async fn scan_connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: std::net::SocketAddr,
        gate: Arc<ScanGate>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let header = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut stream)).await {
            Ok(Ok(header)) => header,
            Ok(Err(refusal)) => {
                let reason = reason_of(&refusal);
                self.refuse_scan(stream, peer, reason, &gate, Some(&refusal));
                return;
            }
            Err(_) => {
                self.refuse_scan(stream, peer, "header_timeout", &gate, None);
                return;
            }
        };
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let relay = RelayEnds {
            director: peer,
            scanner: local,
        };
        let verified = {
            let mut verifier = gate
                .verifier
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            verifier.verify(&header, relay, wall_ms(), |id| (gate.keys)(id))
        };
        drop(permit);
        let verified = match verified {
            Ok(verified) => verified,
            Err(refusal) => {
                let reason = reason_of(&refusal);
                self.refuse_scan(stream, peer, reason, &gate, Some(&refusal));
                return;
            }
        };
        // From here on the client is the one the header names: the same admission as at the
        // redirect port (security review F1), on its address.
        let client = verified.client;
        let client_ip = ssrf::canonical(client.ip());
        if !self.policy.load().client_allowed(client_ip) {
            self.refuse_scan(stream, client, "client_not_allowed", &gate, None);
            return;
        }
        let Some(source_slot) = self.sources.try_take(SourceKey::of(client_ip)) else {
            self.refuse_scan(stream, client, "per_source_limit", &gate, None);
            return;
        };
        if self.metrics.active_connections.get() as usize >= self.config.max_connections {
            admission::reset(stream);
            self.metrics.shed_connections.inc();
            return;
        }
        let _slots = (
            ConnectionSlot::take(&self.metrics.active_connections),
            source_slot,
        );
        self.metrics.scan_relayed.inc();
        let (_listed, cut, director_close) =
            gate.relayed
                .list(verified.director, client, verified.destination);
        let ending = self.drain.ending().with_director(director_close);
        tokio::select! {
            () = conn::serve_connection(self.clone(), stream, client, ending, conn::UncleanClose::Reset) => {}
            // Its director is confirmed dead: the connection (reset as it drops) and its
            // upstream fetch end now.
            () = cut.cancelled() => {}
        }
    }

    fn refuse_scan(
        &self,
        stream: TcpStream,
        from: std::net::SocketAddr,
        reason: &'static str,
        gate: &ScanGate,
        refusal: Option<&Refusal>,
    ) {
        admission::reset(stream);
        self.metrics
            .scan_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
        if let Some(suppressed) = gate.log.admit() {
            let why = refusal.map_or_else(|| reason.to_owned(), ToString::to_string);
            tracing::warn!(
                %from,
                reason,
                suppressed,
                "scan port: connection refused: {why} (lines for others are suppressed for {}s; see palisade_scan_port_refused_connections_total)",
                LOG_INTERVAL.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn connections_are_listed_by_director_cut_together_and_unlisted_when_they_end() {
        let relayed = RelayedClients::default();
        let (a, b) = (NodeId::from_bytes([1; 16]), NodeId::from_bytes([2; 16]));
        let vip = addr(3128);
        let (first, cut_a, _) = relayed.list(a, addr(1), vip);
        let (second, cut_a2, _) = relayed.list(a, addr(2), vip);
        let (other, cut_b, _) = relayed.list(b, addr(3), vip);
        let sorted = |mut list: Vec<(SocketAddr, SocketAddr)>| {
            list.sort();
            list
        };
        assert_eq!(
            sorted(relayed.clients_of(a)),
            vec![(addr(1), vip), (addr(2), vip)]
        );
        // One that ended is still listed for a while (its client may still need a tickle).
        drop(first);
        assert_eq!(
            sorted(relayed.clients_of(a)),
            vec![(addr(1), vip), (addr(2), vip)]
        );
        assert_eq!(sorted(relayed.cut(a)), vec![(addr(1), vip), (addr(2), vip)]);
        assert!(cut_a.is_cancelled() && cut_a2.is_cancelled());
        assert!(!cut_b.is_cancelled(), "another director's connections stay");
        assert_eq!(relayed.directors(), vec![b]);
        assert!(relayed.clients_of(a).is_empty(), "a cut forgets them");
        // A connection that ends after its director was cut lists nothing again.
        drop(second);
        assert!(relayed.clients_of(a).is_empty());
        assert_eq!(relayed.clients_of(b), vec![(addr(3), vip)]);
        drop(other);
        assert_eq!(relayed.directors(), vec![b], "ended, still recent");
        // The next connection from a cut director gets a fresh, uncut token.
        let (_again, cut_again, _) = relayed.list(a, addr(4), vip);
        assert!(!cut_again.is_cancelled());
    }

    #[test]
    fn a_directors_drain_closes_its_connections_and_those_it_relays_until_it_resumes() {
        let relayed = RelayedClients::default();
        let (a, b) = (NodeId::from_bytes([1; 16]), NodeId::from_bytes([2; 16]));
        let vip = addr(3128);
        let (_first, _, close_first) = relayed.list(a, addr(1), vip);
        let (_other, _, close_other) = relayed.list(b, addr(2), vip);
        relayed.close_director(a, Duration::from_secs(60));
        assert!(close_first.is_cancelled());
        assert!(
            !close_other.is_cancelled(),
            "another director's connections stay open"
        );
        let (_later, cut_later, close_later) = relayed.list(a, addr(3), vip);
        assert!(
            close_later.is_cancelled(),
            "relayed during its drain: closes after one response"
        );
        assert!(!cut_later.is_cancelled(), "closed in order, not cut");
        relayed.resume_director(a);
        let (_resumed, _, close_resumed) = relayed.list(a, addr(4), vip);
        assert!(!close_resumed.is_cancelled());
        // A drain that is never ended lapses.
        relayed.close_director(b, Duration::ZERO);
        let (_lapsed, _, close_lapsed) = relayed.list(b, addr(5), vip);
        assert!(close_other.is_cancelled() && !close_lapsed.is_cancelled());
    }
}
