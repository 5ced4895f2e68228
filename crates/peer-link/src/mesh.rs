//! The node's links to its peers: one per pair of nodes, keyed by the peer's `NodeId` and a
//! per-link id, kept up for the life of the node and turned into [`MeshEvent`]s.
//!
//! - Of each pair, the node with the lower address dials (again every 200 ms while no link
//!   is up) and the other accepts; either side may also dial once to confirm a death
//!   ([`MeshHandle::confirm_death`]), and that link then becomes the pair's link.
//! - A peer is up while any link to it is; it is down only when the last one ends. A link
//!   that ends while another remains changes nothing (security review F5), and a link from
//!   a new incarnation of the peer closes the old incarnation's links: that process is gone.
//! - Under the HA group key only configured peer addresses may connect; others are refused
//!   and logged at a bounded rate. Under the cluster's TLS the certificate admits a peer
//!   from any address, both sides dial, and peers learnt at run time are dialled too
//!   ([`MeshHandle::add_peer`]). At most [`MAX_PENDING_HANDSHAKES`] handshakes run at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_identity::{Incarnation, NodeId, NodeName};
use palisade_log_throttle::LogThrottle;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Role;
use crate::handshake::{LocalIdentity, PeerIdentity};
use crate::link::{self, Link, LinkAuth, LinkEnd, LinkError, Outgoing};
use crate::message::{HaMessage, Message};
use crate::metrics::MeshMetrics;

/// Handshakes from configured addresses allowed in flight at once ...
pub const MAX_PENDING_HANDSHAKES: usize = 16;
/// ... and from any one of them (any local user of a peer host can connect from its address).
pub const MAX_PENDING_PER_ADDRESS: usize = 4;
/// Links kept up to one peer at once; a newer one closes the oldest.
pub const MAX_LINKS_PER_PEER: usize = 4;
/// How often the dialling side retries while its link is down.
const REDIAL: Duration = Duration::from_millis(200);
/// The whole budget of one death confirmation.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct MeshConfig {
    pub listen: SocketAddr,
    /// The other nodes' link addresses (their primary address and link port).
    pub peers: Vec<SocketAddr>,
    /// This node's primary address: the source of the links it dials, so peers know it by
    /// the address VRRP knows it by.
    pub local_addr: IpAddr,
    pub auth: LinkAuth,
    pub identity: LocalIdentity,
    pub metrics: MeshMetrics,
    /// How the links ping and when silence drops one.
    pub timing: link::LinkTiming,
}

/// A peer as its links proved it to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub name: NodeName,
    pub addr: IpAddr,
    pub incarnation: Incarnation,
}

/// Why a peer is down (its last link ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Down {
    /// It said goodbye: an orderly stop.
    Left,
    /// Closed, reset, silent or garbled without a goodbye: a hint that it died, never proof.
    Lost,
    /// A link from a new incarnation arrived: the process this node knew is gone.
    Restarted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshEvent {
    PeerUp(Peer),
    PeerDown {
        peer: Peer,
        why: Down,
    },
    Ha {
        from: IpAddr,
        message: HaMessage,
    },
    /// A replication message from a peer (its plane's own encoding).
    Replication {
        from: NodeId,
        bytes: Vec<u8>,
    },
    /// A director message from a peer (its plane's own encoding), with the link's address.
    Director {
        from: NodeId,
        addr: IpAddr,
        bytes: Vec<u8>,
    },
    /// A configured peer address could not be reached (at most once per 10 s per address).
    Unreachable {
        addr: SocketAddr,
        /// The OS error number, when the failure was one.
        errno: Option<i32>,
        error: String,
        /// The step that failed: `connect` or `handshake`.
        last_action: &'static str,
    },
    /// A connection was refused during its handshake: no valid certificate, another
    /// cluster's, a wrong key (at most one event per 10 s for all such refusals).
    Refused {
        remote: SocketAddr,
        error: String,
    },
}

/// The answer of [`MeshHandle::confirm_death`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Its link port refused the connection: nothing listens there, the process is gone.
    Refused,
    /// A handshake completed with another incarnation: the process was restarted.
    NewIncarnation,
    /// A handshake completed with the incarnation it had: alive (the link is back up).
    Alive,
    /// No answer within [`CONFIRM_TIMEOUT`], or no way to tell: proves nothing.
    Unknown,
}

impl Confirmation {
    pub fn proves_death(self) -> bool {
        matches!(self, Confirmation::Refused | Confirmation::NewIncarnation)
    }
}

enum Command {
    /// Re-emit every live peer and its latest status (for a subscriber that joined late).
    Replay,
    /// The newest link to a peer, for bulk sends.
    Sender(NodeId, oneshot::Sender<Option<PeerSender>>),
    /// Close every link to a peer (removed from the cluster).
    Disconnect(NodeId),
    /// Dial this address too, while no link to it is up (a member learnt at run time).
    AddPeer(SocketAddr),
    Broadcast(HaMessage),
    To(IpAddr, HaMessage),
    Replication(NodeId, Vec<u8>),
    /// A director message to every peer with a link up.
    Director(Vec<u8>),
    Confirm(IpAddr, oneshot::Sender<Confirmation>),
    Leave(oneshot::Sender<()>),
}

enum Internal {
    Up {
        link_id: u64,
        peer: PeerIdentity,
        addr: IpAddr,
        /// The configured address this node dialled, for links it dialled.
        dialled: Option<SocketAddr>,
        sender: mpsc::Sender<Outgoing>,
        scan_secret: Option<[u8; 32]>,
    },
    Received {
        link_id: u64,
        message: Message,
    },
    Ended {
        link_id: u64,
        end: Option<LinkEnd>,
    },
    /// A dial of ours reached the expected peer at this configured address.
    Verified(SocketAddr),
    /// For the plane's log: an address that did not answer, a peer refused.
    Event(MeshEvent),
}

/// Queue slots a bulk sender leaves free, so pings and control messages never wait behind
/// (or are dropped for) a large transfer.
const RESERVED_FOR_CONTROL: usize = 16;

/// A peer's newest link, for bulk replication (a large content) that waits for room in the
/// link's queue instead of being dropped when it is full.
#[derive(Clone)]
pub struct PeerSender(mpsc::Sender<Outgoing>);

impl PeerSender {
    /// Sends once the link's queue has room beyond the slots kept for control messages;
    /// `false` once the link is gone.
    pub async fn send_replication(&self, bytes: Vec<u8>) -> bool {
        // Polled, not `reserve_many`: a waiter for many permits keeps the freed ones for
        // itself, and the mesh's `try_send` of pings and HA messages would then find none.
        while self.0.capacity() <= RESERVED_FOR_CONTROL {
            if self.0.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.0
            .send(Outgoing::Send(Message::Replication(bytes)))
            .await
            .is_ok()
    }
}

/// Talks to the mesh task. Cheap to clone.
#[derive(Clone)]
pub struct MeshHandle {
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<MeshEvent>,
    peers: watch::Receiver<Vec<Peer>>,
    listen_addr: SocketAddr,
    scan_secrets: Arc<std::sync::RwLock<HashMap<NodeId, Vec<[u8; 32]>>>>,
}

impl MeshHandle {
    /// The address the link listener is bound to (its port, when configured as 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Events from now on, starting with every live peer and its latest status.
    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        let receiver = self.events.subscribe();
        let _ = self.commands.send(Command::Replay);
        receiver
    }

    /// The scan-port secrets this node shares with `peer`, one per TLS link up to it,
    /// oldest first (empty without such a link). Both ends of a link export the same secret;
    /// a director seals with its newest link's, a scanning node tries each (the two may each
    /// have dialled a link of their own).
    pub fn scan_secrets(&self, peer: NodeId) -> Vec<[u8; 32]> {
        self.scan_secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&peer)
            .cloned()
            .unwrap_or_default()
    }

    /// The peers with a link up now.
    pub fn peers(&self) -> Vec<Peer> {
        self.peers.borrow().clone()
    }

    /// The peers with a link up, now and as they change.
    pub fn watch_peers(&self) -> watch::Receiver<Vec<Peer>> {
        self.peers.clone()
    }

    /// Sends to every peer (a `Status` is also sent to peers that connect later).
    pub fn broadcast(&self, message: HaMessage) {
        let _ = self.commands.send(Command::Broadcast(message));
    }

    pub fn send_to(&self, peer: IpAddr, message: HaMessage) {
        let _ = self.commands.send(Command::To(peer, message));
    }

    /// A replication message to the peer with this id (dropped if no link to it is up: the
    /// next digest repairs it).
    pub fn send_replication(&self, peer: NodeId, bytes: Vec<u8>) {
        let _ = self.commands.send(Command::Replication(peer, bytes));
    }

    /// A director message (a load report) to every peer with a link up; dropped for a peer
    /// whose queue is full (the next one a second later replaces it).
    pub fn broadcast_director(&self, bytes: Vec<u8>) {
        let _ = self.commands.send(Command::Director(bytes));
    }

    /// The newest link to the peer with this id, for [`PeerSender::send_replication`].
    pub async fn peer_sender(&self, peer: NodeId) -> Option<PeerSender> {
        let (answer, wait) = oneshot::channel();
        self.commands.send(Command::Sender(peer, answer)).ok()?;
        wait.await.ok().flatten()
    }

    /// Dials `addr` too from now on, while no link to it is up: a cluster member learnt at
    /// run time (its record, `palisade cluster add`). Under the cluster's TLS only: the
    /// certificate admits it; a group-key mesh keeps its configured peers.
    pub fn add_peer(&self, addr: SocketAddr) {
        let _ = self.commands.send(Command::AddPeer(addr));
    }

    /// Closes every link to the peer with this id (with a goodbye); whether it may link again
    /// is the authenticator's decision.
    pub fn disconnect(&self, peer: NodeId) {
        let _ = self.commands.send(Command::Disconnect(peer));
    }

    /// Dials the peer at `addr` once to learn whether the process this node knew is dead.
    pub async fn confirm_death(&self, addr: IpAddr) -> Confirmation {
        let (answer, wait) = oneshot::channel();
        if self.commands.send(Command::Confirm(addr, answer)).is_err() {
            return Confirmation::Unknown;
        }
        wait.await.unwrap_or(Confirmation::Unknown)
    }

    /// Says goodbye on every link; returns once the goodbyes are written (at most 1 s).
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
    }
}

#[derive(Clone)]
struct Shared {
    config: MeshConfig,
    internal: mpsc::UnboundedSender<Internal>,
    link_ids: Arc<AtomicU64>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Cancelled by [`MeshHandle::leave`]: no new links from then on.
    leaving: CancellationToken,
    /// Each peer's scan-port keys, from its TLS links (see [`MeshHandle::scan_secrets`]).
    scan_secrets: Arc<std::sync::RwLock<HashMap<NodeId, Vec<[u8; 32]>>>>,
}

/// Binds the link listener and starts the mesh's tasks under `tasks`; they all end once
/// `stop` is cancelled (say goodbye first: [`MeshHandle::leave`]).
pub async fn start(
    config: MeshConfig,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> std::io::Result<MeshHandle> {
    let listener = TcpListener::bind(config.listen).await?;
    let listen_addr = listener.local_addr()?;
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(256);
    let (internal_tx, internal) = mpsc::unbounded_channel();
    let (peers_tx, peers) = watch::channel(Vec::new());
    let tls = matches!(config.auth, LinkAuth::Tls(_));
    let shared = Shared {
        config: config.clone(),
        internal: internal_tx,
        link_ids: Arc::new(AtomicU64::new(1)),
        tasks: tasks.clone(),
        stop,
        leaving: CancellationToken::new(),
        scan_secrets: Arc::default(),
    };
    let shared_scan_secrets = shared.scan_secrets.clone();
    tasks.spawn(accept_loop(listener, shared.clone()));
    for peer in &config.peers {
        // Of a pair, the lower address dials. Cluster members may know each other from one
        // side only (a member added later lists the old ones, not the reverse), so under TLS
        // each side dials its configured peers while no link to them is up.
        if tls || config.local_addr < peer.ip() {
            tasks.spawn(dial_loop(*peer, shared.clone(), peers.clone()));
        }
    }
    let mesh = Mesh {
        shared,
        events: events.clone(),
        peers_watch: peers_tx,
        peers: HashMap::new(),
        link_owner: HashMap::new(),
        incarnations: HashMap::new(),
        verified: HashSet::new(),
        dialling: config
            .peers
            .iter()
            .copied()
            .filter(|peer| tls || config.local_addr < peer.ip())
            .collect(),
        our_statuses: BTreeMap::new(),
        peer_statuses: BTreeMap::new(),
        send_warnings: LogThrottle::new(Duration::from_secs(10)),
        scan_secrets: BTreeMap::new(),
    };
    tasks.spawn(mesh.run(commands, internal));
    Ok(MeshHandle {
        commands: commands_tx,
        events,
        peers,
        listen_addr,
        scan_secrets: shared_scan_secrets,
    })
}

async fn accept_loop(listener: TcpListener, shared: Shared) {
    // Anyone who can reach the port can cause these lines: one per interval each.
    let unknown_log = Arc::new(LogThrottle::new(Duration::from_secs(10)));
    let refused_log = Arc::new(LogThrottle::new(Duration::from_secs(10)));
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let pending_per_address = Arc::new(std::sync::Mutex::new(HashMap::new()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stop.cancelled() => return,
        };
        let Ok((stream, remote)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        if shared.leaving.is_cancelled() {
            continue;
        }
        // Only configured peers may hold a link; under the cluster's TLS the certificate
        // is what admits a peer (members come and go, and join from any address), so any
        // address may try, within the same bounds on handshakes in flight.
        let tls = matches!(shared.config.auth, LinkAuth::Tls(_));
        if !tls
            && !shared
                .config
                .peers
                .iter()
                .any(|peer| peer.ip() == remote.ip())
        {
            shared.config.metrics.refused("unknown_address");
            if let Some(suppressed) = unknown_log.admit() {
                tracing::warn!(%remote, suppressed, "peer-link connection from an unknown address refused");
            }
            continue;
        }
        let per_address = PendingSlot::take(&pending_per_address, remote.ip());
        let (Ok(permit), Some(per_address)) = (pending.clone().try_acquire_owned(), per_address)
        else {
            shared.config.metrics.refused("busy");
            if let Some(suppressed) = refused_log.admit() {
                tracing::warn!(%remote, suppressed, "peer-link connection refused: too many handshakes in progress");
            }
            continue;
        };
        let task_shared = shared.clone();
        let refused_log = refused_log.clone();
        shared.tasks.spawn(async move {
            let shared = task_shared;
            let config = &shared.config;
            let handshake =
                link::establish(stream, Role::Server, &config.auth, config.identity.clone()).await;
            drop((permit, per_address));
            match handshake {
                Ok(link) => serve_link(link, &shared, None).await,
                Err(LinkError::JoinSession) => {}
                Err(error) => {
                    config.metrics.refused("handshake");
                    if let Some(suppressed) = refused_log.admit() {
                        tracing::warn!(%remote, %error, suppressed, "peer-link peer refused");
                        let _ = shared.internal.send(Internal::Event(MeshEvent::Refused {
                            remote,
                            error: error.to_string(),
                        }));
                    }
                }
            }
        });
    }
}

async fn dial_loop(peer: SocketAddr, shared: Shared, mut up: watch::Receiver<Vec<Peer>>) {
    let stop = shared.stop.clone();
    let unreachable_log = LogThrottle::new(Duration::from_secs(10));
    let redial = async {
        // Leaving stops the redialling, never a link in use: its goodbye must go out.
        while !shared.leaving.is_cancelled() {
            // A link the peer dialled serves the pair (both sides dial under TLS).
            if up
                .borrow_and_update()
                .iter()
                .any(|known| known.addr == peer.ip())
            {
                tokio::select! {
                    changed = up.changed() => if changed.is_err() { return },
                    () = shared.leaving.cancelled() => {}
                }
                continue;
            }
            match dial(peer, &shared.config).await {
                Ok(link) if shared.leaving.is_cancelled() => link.close_with_bye().await,
                Ok(link) => serve_link(link, &shared, Some(peer)).await,
                Err(error) => {
                    tracing::debug!(%peer, %error, "peer-link dial failed");
                    if unreachable_log.admit().is_some() {
                        let (errno, last_action) = match &error {
                            LinkError::Io(io) if io.raw_os_error().is_some() => {
                                (io.raw_os_error(), "connect")
                            }
                            // The dial's own deadline: connect did not complete.
                            LinkError::Timeout => (Some(ETIMEDOUT), "connect"),
                            _ => (None, "handshake"),
                        };
                        let _ = shared
                            .internal
                            .send(Internal::Event(MeshEvent::Unreachable {
                                addr: peer,
                                errno,
                                error: error.to_string(),
                                last_action,
                            }));
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(REDIAL) => {}
                () = shared.leaving.cancelled() => {}
            }
        }
    };
    tokio::select! {
        () = redial => {}
        () = stop.cancelled() => {}
    }
}

/// Linux's ETIMEDOUT: the dial's deadline passed before connect completed.
const ETIMEDOUT: i32 = 110;

/// One pending handshake from an address; dropping it frees the slot.
struct PendingSlot {
    slots: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    addr: IpAddr,
}

impl PendingSlot {
    fn take(
        slots: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
        addr: IpAddr,
    ) -> Option<PendingSlot> {
        let mut map = slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(addr).or_insert(0);
        if *count >= MAX_PENDING_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            slots: slots.clone(),
            addr,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut map = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

async fn connect(peer: SocketAddr, config: &MeshConfig) -> std::io::Result<TcpStream> {
    // Dial from the primary address, so the peer sees the address VRRP knows us by.
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    // Unspecified: the cluster's links leave from whatever address routes to the peer.
    if !config.local_addr.is_unspecified() {
        socket.bind(SocketAddr::new(config.local_addr, 0))?;
    }
    socket.connect(peer).await
}

async fn dial(peer: SocketAddr, config: &MeshConfig) -> Result<Link, LinkError> {
    let stream = tokio::time::timeout(link::HANDSHAKE_TIMEOUT, connect(peer, config))
        .await
        .map_err(|_| LinkError::Timeout)??;
    link::establish(stream, Role::Client, &config.auth, config.identity.clone()).await
}

/// Hands the link to the mesh and runs it until it ends.
async fn serve_link(link: Link, shared: &Shared, dialled: Option<SocketAddr>) {
    let link_id = shared.link_ids.fetch_add(1, Ordering::Relaxed);
    let (sender, outgoing) = mpsc::channel(64);
    let up = Internal::Up {
        link_id,
        peer: link.peer.clone(),
        addr: link.remote.ip().to_canonical(),
        dialled,
        sender,
        scan_secret: link.scan_secret,
    };
    if shared.internal.send(up).is_err() {
        return;
    }
    let internal = shared.internal.clone();
    let skipped = shared.config.metrics.skipped_frames.clone();
    let end = link
        .run(shared.config.timing, outgoing, skipped, |message| {
            let _ = internal.send(Internal::Received { link_id, message });
        })
        .await;
    let _ = shared.internal.send(Internal::Ended { link_id, end });
}

/// One dial to learn whether the peer at `target` is the process this node knew.
async fn confirm(
    target: SocketAddr,
    known: Option<Incarnation>,
    verified: bool,
    shared: Shared,
) -> Confirmation {
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    // Every other I/O failure is asked again until the deadline: a socket caught while the
    // peer's process exits can fail in several ways (reset after the accept, a reset socket
    // refusing options) before its port refuses cleanly.
    let mut last_error = String::from("no answer");
    loop {
        let connected = tokio::time::timeout_at(deadline, connect(target, &shared.config)).await;
        let stream = match connected {
            Err(_) => break,
            // A refusal proves a death only where this node has reached the peer before:
            // a wrong port in `peers` or a firewall's reject proves nothing.
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                if verified {
                    return Confirmation::Refused;
                }
                tracing::warn!(%target, "peer-link dial refused where this node never reached the peer: not proof of a death (check heartbeat.peers)");
                return Confirmation::Unknown;
            }
            Ok(Err(error)) => {
                last_error = format!("connect: {error}");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Ok(Ok(stream)) => stream,
        };
        let config = &shared.config;
        let handshake =
            link::establish(stream, Role::Client, &config.auth, config.identity.clone());
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(link)) => {
                let answer = match known {
                    Some(known) if known != link.peer.incarnation => Confirmation::NewIncarnation,
                    _ => Confirmation::Alive,
                };
                let link_shared = shared.clone();
                shared
                    .tasks
                    .spawn(async move { serve_link(link, &link_shared, Some(target)).await });
                return answer;
            }
            Ok(Err(LinkError::Io(error))) => {
                last_error = format!("handshake: {error}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Err(error)) => {
                tracing::info!(%target, %error, "death confirmation: the peer answered but the handshake failed");
                return Confirmation::Unknown;
            }
            Err(_) => break,
        }
    }
    tracing::info!(%target, error = %last_error, "death confirmation: no answer within {CONFIRM_TIMEOUT:?}");
    Confirmation::Unknown
}

/// Dials a configured peer address once to learn whether a refusal there would mean
/// anything: a handshake with the expected node proves the address right; the link is then
/// closed with a goodbye (the pair keeps its one link).
async fn verify(target: SocketAddr, expected: NodeId, shared: Shared) {
    match dial(target, &shared.config).await {
        Ok(link) if link.peer.node_id == expected => {
            let _ = shared.internal.send(Internal::Verified(target));
            link.close_with_bye().await;
        }
        Ok(link) => {
            tracing::warn!(%target, expected = %expected, answered = %link.peer.node_id, "peer-link address answered by another node: a lost link to the expected one will wait for the advert timers (check heartbeat.peers)");
        }
        Err(error) => {
            tracing::warn!(%target, %error, "cannot dial the peer at its configured address: a lost link to it will wait for the advert timers (check heartbeat.peers and firewalls)");
        }
    }
}

struct PeerLinks {
    peer: Peer,
    /// Every link up to this peer; the newest sends.
    links: BTreeMap<u64, mpsc::Sender<Outgoing>>,
}

struct Mesh {
    shared: Shared,
    events: broadcast::Sender<MeshEvent>,
    peers_watch: watch::Sender<Vec<Peer>>,
    peers: HashMap<NodeId, PeerLinks>,
    link_owner: HashMap<u64, NodeId>,
    /// The last incarnation seen at each address, kept after its links end: what a
    /// confirmation compares against.
    incarnations: HashMap<IpAddr, Incarnation>,
    /// Configured addresses where a dial of ours reached the expected peer.
    verified: HashSet<SocketAddr>,
    /// Addresses a dial loop runs for.
    dialling: HashSet<SocketAddr>,
    /// Our latest status per VRID, for peers that connect later.
    our_statuses: BTreeMap<u8, HaMessage>,
    /// Peers' latest status per (address, VRID), for late subscribers.
    peer_statuses: BTreeMap<(IpAddr, u8), HaMessage>,
    send_warnings: LogThrottle,
    /// The exported scan-port secret of each TLS link up, and its peer.
    scan_secrets: BTreeMap<u64, (NodeId, [u8; 32])>,
}

impl Mesh {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        let stop = self.shared.stop.clone();
        loop {
            tokio::select! {
                // Dropping every link's sender closes the links.
                () = stop.cancelled() => return,
                event = internal.recv() => match event {
                    Some(event) => self.on_internal(event),
                    None => return,
                },
                command = commands.recv() => match command {
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                    }
                    Some(command) => self.on_command(command),
                    None => return,
                },
            }
        }
    }

    fn emit(&self, event: MeshEvent) {
        let _ = self.events.send(event);
    }

    fn publish_peers(&self) {
        let up_count = self.peers.values().filter(|p| !p.links.is_empty()).count();
        self.shared.config.metrics.peers_up.set(up_count as i64);
        let mut up: Vec<Peer> = self
            .peers
            .values()
            .filter(|p| !p.links.is_empty())
            .map(|p| p.peer.clone())
            .collect();
        up.sort_by_key(|peer| peer.addr);
        self.peers_watch.send_replace(up);
    }

    fn on_internal(&mut self, event: Internal) {
        match event {
            Internal::Up {
                link_id,
                peer,
                addr,
                dialled,
                sender,
                scan_secret,
            } => {
                if let Some(secret) = scan_secret {
                    self.scan_secrets.insert(link_id, (peer.node_id, secret));
                }
                self.link_up(link_id, peer, addr, dialled, sender);
                self.publish_scan_secrets();
            }
            Internal::Verified(target) => {
                self.verified.insert(target);
            }
            Internal::Event(event) => self.emit(event),
            Internal::Received { link_id, message } => {
                let Some((from, from_id)) = self
                    .link_owner
                    .get(&link_id)
                    .and_then(|id| self.peers.get(id))
                    .map(|links| (links.peer.addr, links.peer.id))
                else {
                    return;
                };
                if let Message::Replication(bytes) = message {
                    self.emit(MeshEvent::Replication {
                        from: from_id,
                        bytes,
                    });
                    return;
                }
                if let Message::Director(bytes) = message {
                    self.emit(MeshEvent::Director {
                        from: from_id,
                        addr: from,
                        bytes,
                    });
                    return;
                }
                if let Message::Ha(message) = message {
                    if let HaMessage::Status { vrid, .. } = message {
                        self.peer_statuses.insert((from, vrid), message);
                    }
                    self.emit(MeshEvent::Ha { from, message });
                }
            }
            Internal::Ended { link_id, end } => self.link_ended(link_id, end),
        }
    }

    fn link_up(
        &mut self,
        link_id: u64,
        identity: PeerIdentity,
        addr: IpAddr,
        dialled: Option<SocketAddr>,
        sender: mpsc::Sender<Outgoing>,
    ) {
        if self.shared.leaving.is_cancelled() {
            // Dropping the sender closes it: this node is leaving.
            return;
        }
        let PeerIdentity {
            node_id,
            incarnation,
            name,
        } = identity;
        self.incarnations.insert(addr, incarnation);
        match dialled {
            Some(target) => {
                self.verified.insert(target);
            }
            None => {
                let target = self
                    .shared
                    .config
                    .peers
                    .iter()
                    .find(|peer| peer.ip() == addr);
                if let Some(&target) = target
                    && !self.verified.contains(&target)
                {
                    let shared = self.shared.clone();
                    self.shared.tasks.spawn(verify(target, node_id, shared));
                }
            }
        }
        let peer = Peer {
            id: node_id,
            name,
            addr,
            incarnation,
        };
        let metrics = self.shared.config.metrics.clone();
        let known = self.peers.contains_key(&node_id);
        let entry = self.peers.entry(node_id).or_insert_with(|| PeerLinks {
            peer: peer.clone(),
            links: BTreeMap::new(),
        });
        // Another incarnation than the one this node knew, with its links up or not: the
        // process it knew is gone (it may have crashed and come back before anyone could
        // confirm the crash).
        let restarted =
            (known && entry.peer.incarnation != incarnation).then(|| entry.peer.clone());
        if restarted.is_some() {
            // Dropping the senders closes the old incarnation's links quietly.
            for old in std::mem::take(&mut entry.links).into_keys() {
                self.link_owner.remove(&old);
                metrics.ended("replaced");
            }
        }
        if entry.links.len() >= MAX_LINKS_PER_PEER
            && let Some((oldest, _)) = entry.links.pop_first()
        {
            self.link_owner.remove(&oldest);
            metrics.ended("replaced");
        }
        entry.peer = peer.clone();
        for status in self.our_statuses.values() {
            let _ = sender.try_send(Outgoing::Send(Message::Ha(*status)));
        }
        let first = entry.links.is_empty();
        entry.links.insert(link_id, sender);
        self.link_owner.insert(link_id, node_id);
        if let Some(old) = restarted {
            tracing::warn!(peer = %old.name, id = %old.id, addr = %old.addr, old = %old.incarnation, new = %incarnation, "peer restarted: the process this node knew is gone");
            self.peer_statuses
                .retain(|(known, _), _| *known != old.addr);
            self.emit(MeshEvent::PeerDown {
                peer: old,
                why: Down::Restarted,
            });
        }
        if first {
            tracing::info!(peer = %peer.name, id = %peer.id, addr = %peer.addr, incarnation = %peer.incarnation, "peer link up");
            self.emit(MeshEvent::PeerUp(peer));
            self.publish_peers();
        } else {
            tracing::debug!(peer = %peer.name, addr = %peer.addr, link_id, "another link to a peer");
        }
    }

    /// Every peer's scan-port keys (its links' exported secrets, oldest first) where the
    /// scan port and the director read them.
    fn publish_scan_secrets(&mut self) {
        let link_owner = &self.link_owner;
        self.scan_secrets
            .retain(|link_id, _| link_owner.contains_key(link_id));
        let mut by_node: HashMap<NodeId, Vec<[u8; 32]>> = HashMap::new();
        for (node, secret) in self.scan_secrets.values() {
            by_node.entry(*node).or_default().push(*secret);
        }
        *self
            .shared
            .scan_secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = by_node;
    }

    fn link_ended(&mut self, link_id: u64, end: Option<LinkEnd>) {
        self.end_link(link_id, end);
        self.publish_scan_secrets();
    }

    fn end_link(&mut self, link_id: u64, end: Option<LinkEnd>) {
        // Links this node closed itself are no longer owned: nothing to report.
        let Some(node_id) = self.link_owner.remove(&link_id) else {
            return;
        };
        self.shared.config.metrics.ended(match &end {
            Some(LinkEnd::Bye) | None => "bye",
            Some(LinkEnd::Lost(_)) => "lost",
            Some(LinkEnd::Rejected(_)) => "rejected",
        });
        let Some(entry) = self.peers.get_mut(&node_id) else {
            return;
        };
        entry.links.remove(&link_id);
        let peer = entry.peer.clone();
        if !entry.links.is_empty() {
            tracing::info!(peer = %peer.name, addr = %peer.addr, ?end, "a peer link ended; another link to the peer remains");
            return;
        }
        self.peer_statuses
            .retain(|(known, _), _| *known != peer.addr);
        self.publish_peers();
        let why = match end {
            Some(LinkEnd::Bye) => {
                tracing::info!(peer = %peer.name, addr = %peer.addr, "peer left");
                Down::Left
            }
            Some(LinkEnd::Lost(lost)) => {
                tracing::warn!(peer = %peer.name, addr = %peer.addr, why = %lost, "peer link lost");
                Down::Lost
            }
            Some(LinkEnd::Rejected(error)) => {
                tracing::warn!(peer = %peer.name, addr = %peer.addr, %error, "peer link dropped");
                Down::Lost
            }
            None => Down::Left,
        };
        self.emit(MeshEvent::PeerDown { peer, why });
    }

    fn send_on(&self, links: &PeerLinks, message: HaMessage) {
        let Some(sender) = links.links.values().next_back() else {
            return;
        };
        if sender
            .try_send(Outgoing::Send(Message::Ha(message)))
            .is_err()
            && let Some(suppressed) = self.send_warnings.admit()
        {
            // The link's own write timeout ends a link that stopped moving.
            tracing::warn!(peer = %links.peer.name, suppressed, "peer link queue full: message dropped");
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Replay => {
                for links in self.peers.values().filter(|links| !links.links.is_empty()) {
                    self.emit(MeshEvent::PeerUp(links.peer.clone()));
                }
                for ((from, _), message) in &self.peer_statuses {
                    self.emit(MeshEvent::Ha {
                        from: *from,
                        message: *message,
                    });
                }
            }
            Command::Broadcast(message) => {
                if let HaMessage::Status { vrid, .. } = message {
                    self.our_statuses.insert(vrid, message);
                }
                for links in self.peers.values() {
                    self.send_on(links, message);
                }
            }
            Command::To(addr, message) => {
                if let Some(links) = self
                    .peers
                    .values()
                    .find(|links| links.peer.addr == addr && !links.links.is_empty())
                {
                    self.send_on(links, message);
                }
            }
            Command::AddPeer(addr) => {
                let tls = matches!(self.shared.config.auth, LinkAuth::Tls(_));
                let own = addr == self.shared.config.listen
                    || (addr.ip() == self.shared.config.local_addr
                        && addr.port() == self.shared.config.listen.port());
                if tls && !own && self.dialling.insert(addr) {
                    tracing::info!(%addr, "dialling a cluster member learnt at run time");
                    self.shared.tasks.spawn(dial_loop(
                        addr,
                        self.shared.clone(),
                        self.peers_watch.subscribe(),
                    ));
                }
            }
            Command::Disconnect(peer) => {
                if let Some(links) = self.peers.get(&peer) {
                    for sender in links.links.values() {
                        let (done, _) = oneshot::channel();
                        let _ = sender.try_send(Outgoing::Bye(done));
                    }
                }
            }
            Command::Sender(peer, answer) => {
                let sender = self
                    .peers
                    .get(&peer)
                    .and_then(|links| links.links.values().next_back())
                    .map(|sender| PeerSender(sender.clone()));
                let _ = answer.send(sender);
            }
            Command::Replication(peer, bytes) => {
                if let Some(links) = self.peers.get(&peer) {
                    let sender = links.links.values().next_back();
                    if let Some(sender) = sender
                        && sender
                            .try_send(Outgoing::Send(Message::Replication(bytes)))
                            .is_err()
                        && let Some(suppressed) = self.send_warnings.admit()
                    {
                        tracing::warn!(peer = %links.peer.name, suppressed, "peer link queue full: replication message dropped");
                    }
                }
            }
            Command::Director(bytes) => {
                for links in self.peers.values() {
                    if let Some(sender) = links.links.values().next_back() {
                        let _ = sender.try_send(Outgoing::Send(Message::Director(bytes.clone())));
                    }
                }
            }
            Command::Confirm(addr, answer) => {
                let target = self
                    .shared
                    .config
                    .peers
                    .iter()
                    .find(|peer| peer.ip() == addr);
                let Some(target) = target.copied() else {
                    let _ = answer.send(Confirmation::Unknown);
                    return;
                };
                let known = self.incarnations.get(&addr).copied();
                let verified = self.verified.contains(&target);
                let shared = self.shared.clone();
                self.shared.tasks.spawn(async move {
                    let confirmation = confirm(target, known, verified, shared.clone()).await;
                    shared.config.metrics.confirmed(match confirmation {
                        Confirmation::Refused => "refused",
                        Confirmation::NewIncarnation => "new_incarnation",
                        Confirmation::Alive => "alive",
                        Confirmation::Unknown => "unknown",
                    });
                    let _ = answer.send(confirmation);
                });
            }
            Command::Leave(_) => {}
        }
    }

    async fn leave(&mut self) {
        // No new links from now on: a peer redialling would only see them cut at exit.
        self.shared.leaving.cancel();
        let mut written = Vec::new();
        for links in self.peers.values_mut() {
            for (link_id, sender) in std::mem::take(&mut links.links) {
                self.link_owner.remove(&link_id);
                let (done, wait) = oneshot::channel();
                if sender.try_send(Outgoing::Bye(done)).is_ok() {
                    written.push(wait);
                }
            }
        }
        for wait in written {
            let _ = wait.await;
        }
        self.publish_peers();
        self.publish_scan_secrets();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_identity::NodeName;

    struct Running {
        handle: MeshHandle,
        stop: CancellationToken,
        tasks: TaskTracker,
        id: NodeId,
    }

    async fn mesh(local: [u8; 4], peer: SocketAddr, name: &str) -> Running {
        let auth = LinkAuth::group_key(b"test key");
        mesh_with(local, peer, name, auth, NodeId::random()).await
    }

    async fn mesh_with(
        local: [u8; 4],
        peer: SocketAddr,
        name: &str,
        auth: LinkAuth,
        id: NodeId,
    ) -> Running {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let Ok(name) = NodeName::new(name) else {
            panic!("name");
        };
        let local_addr = IpAddr::from(local);
        let config = MeshConfig {
            listen: SocketAddr::new(local_addr, 0),
            peers: vec![peer],
            local_addr,
            auth,
            identity: LocalIdentity {
                node_id: id,
                incarnation: Incarnation::random(),
                name,
            },
            metrics: MeshMetrics::default(),
            timing: Default::default(),
        };
        let Ok(handle) = start(config, &tasks, stop.clone()).await else {
            panic!("mesh did not start");
        };
        Running {
            handle,
            stop,
            tasks,
            id,
        }
    }

    async fn next(events: &mut broadcast::Receiver<MeshEvent>) -> MeshEvent {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(event)) => event,
            other => panic!("no mesh event: {other:?}"),
        }
    }

    /// 127.0.0.1 dials 127.0.0.2 (lower address dials); the other only accepts, so its
    /// configured port for the first is never used.
    #[tokio::test]
    async fn links_come_up_carry_status_and_a_stopped_peer_is_confirmed_dead() {
        let b = mesh(
            [127, 0, 0, 2],
            "127.0.0.1:9"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9))),
            "b",
        )
        .await;
        let mut b_events = b.handle.subscribe();
        let a = mesh([127, 0, 0, 1], b.handle.listen_addr(), "a").await;
        let mut a_events = a.handle.subscribe();
        let MeshEvent::PeerUp(seen_by_a) = next(&mut a_events).await else {
            panic!("expected PeerUp");
        };
        assert_eq!(seen_by_a.id, b.id);
        assert!(matches!(next(&mut b_events).await, MeshEvent::PeerUp(peer) if peer.id == a.id));

        let status = HaMessage::Status {
            vrid: 51,
            vrrp_priority: 100,
            master: false,
            primary: std::net::IpAddr::from([10, 213, 0, 11]),
            group: 7,
        };
        a.handle.broadcast(status);
        assert_eq!(
            next(&mut b_events).await,
            MeshEvent::Ha {
                from: IpAddr::from([127, 0, 0, 1]),
                message: status
            }
        );
        // The replication plane, addressed by node id.
        a.handle.send_replication(b.id, vec![1, 2, 3]);
        loop {
            match next(&mut b_events).await {
                MeshEvent::Replication { from, bytes } => {
                    assert_eq!((from, bytes), (a.id, vec![1, 2, 3]));
                    break;
                }
                MeshEvent::PeerUp(_)
                | MeshEvent::Ha { .. }
                | MeshEvent::Director { .. }
                | MeshEvent::PeerDown { .. }
                | MeshEvent::Unreachable { .. }
                | MeshEvent::Refused { .. } => {}
            }
        }
        // The director plane: to every peer, with the link's address.
        a.handle.broadcast_director(vec![4, 5]);
        loop {
            if let MeshEvent::Director { from, addr, bytes } = next(&mut b_events).await {
                assert_eq!(
                    (from, addr, bytes),
                    (a.id, IpAddr::from([127, 0, 0, 1]), vec![4, 5])
                );
                break;
            }
        }
        let b_addr = IpAddr::from([127, 0, 0, 2]);
        assert_eq!(a.handle.confirm_death(b_addr).await, Confirmation::Alive);
        // b's configuration has a wrong port for a: b's dial is refused although a is alive,
        // and since b never reached a there, the refusal proves nothing.
        let a_addr = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(b.handle.confirm_death(a_addr).await, Confirmation::Unknown);
        // Nobody configured at this address.
        assert_eq!(
            a.handle.confirm_death(IpAddr::from([127, 0, 0, 3])).await,
            Confirmation::Unknown
        );

        // b stops without a goodbye (its tasks end, its sockets close): a hint at a, then
        // proof from the dial.
        b.stop.cancel();
        b.tasks.close();
        b.tasks.wait().await;
        loop {
            match next(&mut a_events).await {
                MeshEvent::PeerDown { peer, why } => {
                    assert_eq!((peer.id, why), (b.id, Down::Lost));
                    break;
                }
                // A confirmation's link may come and go first.
                MeshEvent::PeerUp(_)
                | MeshEvent::Ha { .. }
                | MeshEvent::Replication { .. }
                | MeshEvent::Director { .. }
                | MeshEvent::Unreachable { .. }
                | MeshEvent::Refused { .. } => {}
            }
        }
        assert_eq!(a.handle.confirm_death(b_addr).await, Confirmation::Refused);
        a.stop.cancel();
        a.tasks.close();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), a.tasks.wait())
                .await
                .is_ok(),
            "every task of the mesh ends on stop"
        );
    }

    /// A node that leaves says goodbye (its peers see `Left`, not `Lost`) and takes no new
    /// links afterwards: its peer does not see it come back before it exits.
    #[tokio::test]
    async fn a_leaving_node_says_goodbye_and_takes_no_new_links() {
        let b = mesh([127, 0, 0, 4], SocketAddr::from(([127, 0, 0, 3], 9)), "b").await;
        let a = mesh([127, 0, 0, 3], b.handle.listen_addr(), "a").await;
        let mut b_events = b.handle.subscribe();
        loop {
            if let MeshEvent::PeerUp(peer) = next(&mut b_events).await {
                assert_eq!(peer.id, a.id);
                break;
            }
        }
        a.handle.leave().await;
        loop {
            match next(&mut b_events).await {
                MeshEvent::PeerDown { peer, why } => {
                    assert_eq!((peer.id, why), (a.id, Down::Left));
                    break;
                }
                MeshEvent::PeerUp(_)
                | MeshEvent::Ha { .. }
                | MeshEvent::Replication { .. }
                | MeshEvent::Director { .. }
                | MeshEvent::Unreachable { .. }
                | MeshEvent::Refused { .. } => {}
            }
        }
        // a would redial every 200 ms if it still took links.
        let quiet = tokio::time::timeout(REDIAL * 5, async {
            loop {
                if let MeshEvent::PeerUp(_) = next(&mut b_events).await {
                    return;
                }
            }
        })
        .await;
        assert!(quiet.is_err(), "a linked up again after leaving");
        assert!(b.handle.peers().is_empty());
    }

    /// A member of `ca`'s cluster at `local`, linked by mutual TLS.
    async fn tls_mesh(
        ca: &palisade_cluster_trust::ClusterCa,
        local: [u8; 4],
        peer: SocketAddr,
    ) -> Running {
        use palisade_cluster_trust::{
            NodeCertificate, TlsIdentity, member_dns_name, node_key_and_request,
        };
        let id = NodeId::random();
        let now = time::OffsetDateTime::now_utc();
        let Ok((key_pem, csr)) = node_key_and_request(id, &ca.cluster) else {
            panic!("request");
        };
        let Ok((_, cert_pem)) = ca.sign(&csr, now, Duration::from_secs(86_400)) else {
            panic!("sign");
        };
        let identity = TlsIdentity {
            cluster: ca.cluster.clone(),
            node: id,
            cert_pem,
            key_pem,
            trusted_ca_pems: vec![ca.cert_pem.clone()],
        };
        let (Ok(server), Ok(client)) = (identity.server_config(false), identity.client_config())
        else {
            panic!("tls configs");
        };
        let Ok(server_name) =
            tokio_rustls::rustls::pki_types::ServerName::try_from(member_dns_name(&ca.cluster))
        else {
            panic!("name");
        };
        let cluster = ca.cluster.clone();
        let auth = LinkAuth::Tls(crate::link::TlsLinks {
            configs: Arc::new(arc_swap::ArcSwap::from_pointee(crate::link::TlsConfigs {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
                connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            })),
            server_name,
            node_of: Arc::new(move |der| {
                NodeCertificate::read(der, &cluster)
                    .ok()
                    .map(|read| read.node)
            }),
            joins: None,
        });
        mesh_with(local, peer, "member", auth, id).await
    }

    /// Members of one cluster CA link over mutual TLS and carry replication; a node of
    /// another CA never gets a link.
    #[tokio::test]
    async fn cluster_members_link_over_mutual_tls_and_strangers_do_not() {
        let now = time::OffsetDateTime::now_utc();
        let year = Duration::from_secs(365 * 86_400);
        let (Ok(ca), Ok(other)) = (
            palisade_cluster_trust::ClusterCa::create(
                palisade_cluster_trust::ClusterId::random(),
                now,
                year,
            ),
            palisade_cluster_trust::ClusterCa::create(
                palisade_cluster_trust::ClusterId::random(),
                now,
                year,
            ),
        ) else {
            panic!("CAs");
        };
        let b = tls_mesh(&ca, [127, 0, 0, 6], SocketAddr::from(([127, 0, 0, 5], 9))).await;
        let mut b_events = b.handle.subscribe();
        let a = tls_mesh(&ca, [127, 0, 0, 5], b.handle.listen_addr()).await;
        loop {
            if let MeshEvent::PeerUp(peer) = next(&mut b_events).await {
                assert_eq!(peer.id, a.id);
                break;
            }
        }
        a.handle.send_replication(b.id, vec![9, 9]);
        loop {
            if let MeshEvent::Replication { from, bytes } = next(&mut b_events).await {
                assert_eq!((from, bytes), (a.id, vec![9, 9]));
                break;
            }
        }
        // Both ends of a link export the same scan-port secret: the two nodes hold one in
        // common (each may also hold one of a link it dialled itself, not yet the other's).
        let (from_a, from_b) = (a.handle.scan_secrets(b.id), b.handle.scan_secrets(a.id));
        assert!(
            from_a.iter().any(|secret| from_b.contains(secret)),
            "{} and {} secrets, none shared",
            from_a.len(),
            from_b.len()
        );
        assert!(
            a.handle
                .scan_secrets(NodeId::from_bytes([1; 16]))
                .is_empty()
        );
        // A node of another cluster's CA at an address b accepts links from.
        let stranger = tls_mesh(&other, [127, 0, 0, 5], b.handle.listen_addr()).await;
        let quiet = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                if let MeshEvent::PeerUp(peer) = next(&mut b_events).await
                    && peer.id == stranger.id
                {
                    return;
                }
            }
        })
        .await;
        assert!(quiet.is_err(), "a stranger linked up");
        assert_eq!(b.handle.peers().len(), 1);
    }
}
