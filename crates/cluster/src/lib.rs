//! The cluster plane's driver (issue 10): one [`Replica`] per node, fed by the peer links'
//! replication plane, backed by the store, activating the head's policy bundle. Every
//! decision is the replica's (sans-IO); this file only moves bytes between it, the mesh and
//! the store, in the order that keeps a crash safe: a revision and its contents are stored
//! before anything acts on them.

pub mod join;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_identity::{NodeId, NodePriority};
use palisade_peer_link::mesh::{MeshEvent, MeshHandle};
use palisade_policy::{Manifest, PolicyBundle};
use palisade_replication::coordinator::{Gate, VersionMatch};
use palisade_replication::{
    Base, ContentId, History, HlcTime, Replica, ReplicaEvent, Revision, RevisionId, SyncMessage,
};
use palisade_store::Store;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct ClusterConfig {
    pub me: NodeId,
    pub priority: NodePriority,
    /// How far ahead of this node's clock a peer's revision may be stamped (the seeds' 2 min).
    pub max_ahead: Duration,
    /// Anti-entropy digests (and hellos) this often.
    pub digest_interval: Duration,
    /// This node's release, checked against each peer's at `version_match`.
    pub release: String,
    pub version_match: VersionMatch,
    pub metrics: metrics::ClusterMetrics,
    /// This node's record: its node-local configuration without secrets (JSON), copied to
    /// every member.
    pub own_record: Vec<u8>,
    /// Where the trust bundle is kept (`None`: no trust bundle handling, as in tests).
    pub trust: Option<palisade_cluster_trust::files::TrustDir>,
    /// The removed nodes the links refuse; the trust bundle updates it.
    pub denied: DeniedNodes,
    /// Swaps the links' TLS after a renewal or a change of trusted CAs (`None` in tests).
    pub tls: Option<TlsReloader>,
}

/// Node ids removed from the cluster (`palisade cluster remove`): no link with them.
pub type DeniedNodes = Arc<std::sync::RwLock<std::collections::BTreeSet<NodeId>>>;

/// Replaces the TLS configurations of a member's links (after a renewal or a change of the
/// trusted CAs): new links use them at once, links up keep their session.
#[derive(Clone)]
pub struct TlsReloader {
    configs: Arc<arc_swap::ArcSwap<palisade_peer_link::TlsConfigs>>,
    accept_joins: bool,
}

impl TlsReloader {
    pub fn reload(
        &self,
        identity: &palisade_cluster_trust::TlsIdentity,
    ) -> Result<(), palisade_cluster_trust::TrustError> {
        self.configs
            .store(Arc::new(tls_configs(identity, self.accept_joins)?));
        Ok(())
    }
}

fn tls_configs(
    identity: &palisade_cluster_trust::TlsIdentity,
    accept_joins: bool,
) -> Result<palisade_peer_link::TlsConfigs, palisade_cluster_trust::TrustError> {
    Ok(palisade_peer_link::TlsConfigs {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config(accept_joins)?)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(identity.client_config()?)),
    })
}

/// The peer links' authentication for a member: mutual TLS with the cluster's CAs, its
/// certificate naming its node, which must not be a removed one; `joins` serves nodes
/// joining with a token (the CA holder). The reloader swaps in new certificates and CAs.
pub fn link_auth(
    identity: &palisade_cluster_trust::TlsIdentity,
    joins: Option<palisade_peer_link::JoinHandler>,
    denied: DeniedNodes,
) -> Result<(palisade_peer_link::LinkAuth, TlsReloader), palisade_cluster_trust::TrustError> {
    let accept_joins = joins.is_some();
    let configs = Arc::new(arc_swap::ArcSwap::from_pointee(tls_configs(
        identity,
        accept_joins,
    )?));
    let server_name = rustls_pki_types::ServerName::try_from(
        palisade_cluster_trust::member_dns_name(&identity.cluster),
    )
    .map_err(|error| palisade_cluster_trust::TrustError::Malformed {
        what: "member name",
        detail: error.to_string(),
    })?;
    let cluster = identity.cluster.clone();
    let reloader = TlsReloader {
        configs: configs.clone(),
        accept_joins,
    };
    let auth = palisade_peer_link::LinkAuth::Tls(palisade_peer_link::TlsLinks {
        configs,
        server_name,
        node_of: Arc::new(move |der| {
            let node = palisade_cluster_trust::NodeCertificate::read(der, &cluster)
                .ok()?
                .node;
            let removed = denied
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&node);
            (!removed).then_some(node)
        }),
        joins,
    });
    Ok((auth, reloader))
}

/// Called with each head whose bundle is complete, to validate and install it.
pub type Activate = Arc<dyn Fn(RevisionId, PolicyBundle) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("store: {0}")]
    Store(#[from] palisade_store::StoreError),
    #[error("{0}")]
    Save(#[from] palisade_replication::SaveError),
    #[error("the cluster driver has stopped")]
    Stopped,
    #[error("not saved: the revision could not be stored ({0})")]
    NotStored(String),
}

struct SaveRequest {
    bundle: PolicyBundle,
    base: Base,
    saved_by: String,
    message: String,
    reply: oneshot::Sender<Result<Saved, ClusterError>>,
}

/// One revision as the operator sees it (`palisade policy history`, status).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RevisionSummary {
    pub id: String,
    /// "save", "merge" or "refusal" (a member could not install its parent: `saved_by` is
    /// the member, `message` why).
    pub kind: &'static str,
    pub parents: Vec<String>,
    pub author: String,
    pub author_priority: u16,
    /// Hybrid-logical-clock time: milliseconds since the epoch and the logical counter.
    pub time_ms: u64,
    pub time_counter: u16,
    pub saved_by: String,
    pub message: String,
    /// The policy bundle's id (what `palisade status` shows as the live policy revision).
    pub bundle: String,
}

impl RevisionSummary {
    fn of(revision: &Revision) -> RevisionSummary {
        RevisionSummary {
            id: revision.id.to_string(),
            kind: match revision.kind {
                palisade_replication::RevisionKind::Save => "save",
                palisade_replication::RevisionKind::Merge => "merge",
                palisade_replication::RevisionKind::Refusal => "refusal",
            },
            parents: revision.parents.iter().map(ToString::to_string).collect(),
            author: revision.author.to_string(),
            author_priority: revision.author_priority.value(),
            time_ms: revision.time.ms,
            time_counter: revision.time.counter,
            saved_by: revision.saved_by.clone(),
            message: revision.message.clone(),
            bundle: revision.content.to_string(),
        }
    }
}

/// Why a node did not install a head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotInstalled {
    /// Its policy does not compile on this node. If this node runs the revision the save was
    /// based on, it refuses the save cluster-wide (a refusal revision): the save is taken out
    /// of the head on every node, which go back to what it was based on.
    Invalid(String),
    /// Anything else (a task that died): reported, never refused.
    Failed(String),
}

impl NotInstalled {
    pub fn reason(&self) -> &str {
        match self {
            NotInstalled::Invalid(why) | NotInstalled::Failed(why) => why,
        }
    }
}

/// The replica's state for status.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    pub head: Option<RevisionSummary>,
    pub revisions: usize,
    /// Every peer with a link up, as replication sees it.
    pub peers: Vec<PeerReplication>,
}

/// One peer, for `palisade cluster status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerReplication {
    pub node_id: String,
    pub name: String,
    pub release: Option<String>,
    /// Its clock minus this node's at its last hello.
    pub clock_difference_ms: Option<i64>,
    /// Whether this node replicates with it (its hello passed the checks).
    pub replicating: bool,
    /// The seeds' error that stopped replication with it.
    pub refused: Option<String>,
    /// Cluster settings that differ from this node's.
    pub settings_differ: Option<String>,
    /// Its head, from its last digest.
    pub head: Option<String>,
    /// The revision live there, as it last said.
    pub live: Option<String>,
    /// The last revision it could not install, and why.
    pub cannot_install: Option<String>,
    /// Same head as this node.
    pub in_sync: bool,
}

enum Query {
    Status(oneshot::Sender<ClusterStatus>),
    /// Newest first.
    History(oneshot::Sender<Vec<RevisionSummary>>),
    /// Every member's record, this node's included.
    Records(oneshot::Sender<Vec<palisade_replication::records::NodeRecord>>),
    /// A new certificate for this node: signed here when the CA key is here, else asked of
    /// the member that holds it; answered with the new expiry.
    Renew(oneshot::Sender<Result<String, String>>),
    /// This node installed a head (`Ok`) or could not: told to every peer.
    Activated(RevisionId, Result<(), NotInstalled>),
    /// A newer trust bundle made here (`cluster remove`): apply it and pass it on.
    Trust(palisade_cluster_trust::trust_bundle::SignedTrustBundle),
    /// A revision (by id or unique prefix, or the head) and its bundle.
    Bundle(
        String,
        oneshot::Sender<Result<(RevisionSummary, PolicyBundle), String>>,
    ),
    /// One entry of the head's bundle, read alone (not the whole bundle with its lists).
    HeadEntry(String, oneshot::Sender<Option<String>>),
}

/// A save, stored and fsynced on this node (and pushed to every peer).
#[derive(Clone, Copy, Debug)]
pub struct Saved {
    pub revision: RevisionId,
    /// Time spent in store commits (contents, then the revision): the fsyncs.
    pub stored: Duration,
}

/// Talks to the running driver. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    saves: mpsc::Sender<SaveRequest>,
    queries: mpsc::Sender<Query>,
    active: watch::Receiver<Option<RevisionId>>,
    behind: watch::Receiver<Option<String>>,
}

impl ClusterHandle {
    /// Saves a policy bundle on top of `base` and pushes it to every peer; returns once it is
    /// stored on this node.
    pub async fn save(
        &self,
        bundle: PolicyBundle,
        base: Base,
        saved_by: &str,
        message: &str,
    ) -> Result<Saved, ClusterError> {
        let (reply, answer) = oneshot::channel();
        let request = SaveRequest {
            bundle,
            base,
            saved_by: saved_by.to_owned(),
            message: message.to_owned(),
            reply,
        };
        self.saves
            .send(request)
            .await
            .map_err(|_| ClusterError::Stopped)?;
        answer.await.map_err(|_| ClusterError::Stopped)?
    }

    pub async fn status(&self) -> Result<ClusterStatus, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.queries
            .send(Query::Status(reply))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        answer.await.map_err(|_| ClusterError::Stopped)
    }

    /// Every revision, newest first.
    pub async fn history(&self) -> Result<Vec<RevisionSummary>, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.queries
            .send(Query::History(reply))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        answer.await.map_err(|_| ClusterError::Stopped)
    }

    /// A revision and its policy bundle: `which` is a revision id, a unique prefix of one (6
    /// hex digits at least), or `head`.
    pub async fn bundle(&self, which: &str) -> Result<(RevisionSummary, PolicyBundle), String> {
        let (reply, answer) = oneshot::channel();
        self.queries
            .send(Query::Bundle(which.to_owned(), reply))
            .await
            .map_err(|_| ClusterError::Stopped.to_string())?;
        answer
            .await
            .map_err(|_| ClusterError::Stopped.to_string())?
    }

    /// Every member's node record held here (this node's included).
    pub async fn records(
        &self,
    ) -> Result<Vec<palisade_replication::records::NodeRecord>, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.queries
            .send(Query::Records(reply))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        answer.await.map_err(|_| ClusterError::Stopped)
    }

    /// Renews this node's certificate (new key, same node id); new
    /// links use it at once. Returns its expiry.
    pub async fn renew(&self) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.queries
            .send(Query::Renew(reply))
            .await
            .map_err(|_| ClusterError::Stopped.to_string())?;
        match tokio::time::timeout(Duration::from_secs(15), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClusterError::Stopped.to_string()),
            Err(_) => Err("no answer from the member that holds the CA key within 15 s".to_owned()),
        }
    }

    /// Reports whether this node installed `head`, so every peer knows (and a save's author
    /// can wait for it, or see why a node refused it).
    pub async fn report_activation(
        &self,
        head: RevisionId,
        result: Result<(), NotInstalled>,
    ) -> Result<(), ClusterError> {
        self.queries
            .send(Query::Activated(head, result))
            .await
            .map_err(|_| ClusterError::Stopped)
    }

    /// Applies a trust bundle made on this node and passes it to every peer.
    pub async fn publish_trust(
        &self,
        signed: palisade_cluster_trust::trust_bundle::SignedTrustBundle,
    ) -> Result<(), ClusterError> {
        self.queries
            .send(Query::Trust(signed))
            .await
            .map_err(|_| ClusterError::Stopped)
    }

    /// One entry of the head's bundle (`None`: no head, or no such entry), without reading
    /// its other lists (one may be a 1,000,000-entry list).
    pub async fn head_entry(&self, key: &str) -> Result<Option<String>, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.queries
            .send(Query::HeadEntry(key.to_owned(), reply))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        answer.await.map_err(|_| ClusterError::Stopped)
    }

    /// The revision whose bundle was last activated.
    pub fn active(&self) -> watch::Receiver<Option<RevisionId>> {
        self.active.clone()
    }

    /// Why this node is behind the cluster's policy (a reachable peer has run a revision
    /// this node has not refused but does not run, for more than [`BEHIND_AFTER`]), if it
    /// is: it then takes no director role and gets no clients until it catches up.
    pub fn behind(&self) -> watch::Receiver<Option<String>> {
        self.behind.clone()
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

/// Loads the history and contents from the store and starts the driver under `tasks`.
pub fn start(
    config: ClusterConfig,
    store: Arc<Store>,
    mesh: MeshHandle,
    activate: Activate,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<ClusterHandle, ClusterError> {
    let mut history = History::new();
    for bytes in store.revisions()? {
        match Revision::from_bytes(&bytes) {
            Ok(revision) => {
                if let Err(error) = history.insert(revision) {
                    tracing::error!(%error, store = %store.path().display(), "stored revision refused");
                }
            }
            Err(error) => {
                tracing::error!(%error, store = %store.path().display(), "stored revision unreadable")
            }
        }
    }
    let high_water = store
        .hlc_high_water()?
        .map(HlcTime::from_bytes)
        .unwrap_or_default();
    let held = store.content_ids()?;
    let mut replica = Replica::new(
        config.me,
        config.priority,
        history,
        high_water,
        config.max_ahead,
    )
    .with_contents(held.iter().map(|id| ContentId(*id)));
    for id in &held {
        if let Some(bytes) = store.content(id)? {
            resolve(&mut replica, ContentId(*id), &bytes);
        }
    }
    let mut records =
        palisade_replication::records::Records::new(store.node_records()?.into_iter().map(
            |(node, time, bytes)| palisade_replication::records::NodeRecord {
                node: NodeId::from_bytes(node),
                time: HlcTime::from_bytes(time),
                bytes,
            },
        ));
    if let Some(own) = records.set_own(config.me, wall_ms(), config.own_record.clone()) {
        store.put_node_record(own.node.as_bytes(), own.time.to_bytes(), &own.bytes)?;
    }
    let (saves_tx, saves) = mpsc::channel(16);
    let (queries_tx, queries) = mpsc::channel(16);
    let (active_tx, active) = watch::channel(None);
    let (behind_tx, behind) = watch::channel(None);
    let events = mesh.subscribe();
    let driver = Driver {
        replica,
        store,
        mesh,
        activate,
        active: active_tx,
        gate: Gate::new(&config.release, config.max_ahead, config.version_match),
        names: HashMap::new(),
        own_name: serde_json::from_slice::<serde_json::Value>(&config.own_record)
            .ok()
            .and_then(|record| record.get("name")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| config.me.to_string()),
        addresses: HashMap::new(),
        peer_heads: HashMap::new(),
        persisted: Ok(Duration::ZERO),
        tasks: tasks.clone(),
        tls: config.tls.clone(),
        metrics: config.metrics.clone(),
        trust: config.trust.clone(),
        denied: config.denied.clone(),
        activation: (None, None),
        peer_activation: HashMap::new(),
        renewal: None,
        records,
        behind_since: None,
        behind: behind_tx,
    };
    tasks.spawn(driver.run(config.digest_interval, events, saves, queries, stop));
    Ok(ClusterHandle {
        saves: saves_tx,
        queries: queries_tx,
        active,
        behind,
    })
}

/// Tells the replica what a held content names: a bundle manifest its lists, a list nothing.
fn resolve(replica: &mut Replica, id: ContentId, bytes: &[u8]) {
    match Manifest::from_bytes(bytes) {
        Ok(manifest) => replica.resolve(id, manifest.lists.values().map(|hash| ContentId(*hash))),
        Err(_) => replica.resolve(id, []),
    }
}

/// Hellos and node-record digests go out every this many digest ticks.
const SLOW_TICKS: u32 = 5;

/// The revision a node runs, and the last one it could not install (and why).
type Activation = (Option<RevisionId>, Option<(RevisionId, String)>);

struct Driver {
    replica: Replica,
    store: Arc<Store>,
    mesh: MeshHandle,
    activate: Activate,
    active: watch::Sender<Option<RevisionId>>,
    /// Which peers pass the release and clock checks: only they replicate.
    gate: Gate,
    /// Names of the peers with links up.
    names: HashMap<NodeId, String>,
    /// This node's name (from its record), for the refusals it makes.
    own_name: String,
    /// The node last seen at each address (for the seeds' line when it stops answering).
    addresses: HashMap<std::net::IpAddr, (NodeId, String)>,
    /// Each peer's head, from its digests.
    peer_heads: HashMap<NodeId, Option<RevisionId>>,
    /// Commit time of the revisions stored since it was reset, or why one failed.
    persisted: Result<Duration, String>,
    /// Content transfers run here.
    tasks: TaskTracker,
    tls: Option<TlsReloader>,
    metrics: metrics::ClusterMetrics,
    trust: Option<palisade_cluster_trust::files::TrustDir>,
    denied: DeniedNodes,
    /// What this node runs, and the last head it could not install.
    activation: Activation,
    /// The same, as each peer last said.
    peer_activation: HashMap<NodeId, Activation>,
    /// A renewal asked of the CA holder: the new key, and who waits for the answer.
    renewal: Option<(String, oneshot::Sender<Result<String, String>>)>,
    /// Every member's node record.
    records: palisade_replication::records::Records,
    /// Since when a peer has run a newer policy than this node.
    behind_since: Option<tokio::time::Instant>,
    /// Why this node is behind, once it has been for [`BEHIND_AFTER`].
    behind: watch::Sender<Option<String>>,
}

/// How long a node may run an older policy than a reachable peer before it is behind.
pub const BEHIND_AFTER: Duration = Duration::from_secs(10);

impl Driver {
    async fn run(
        mut self,
        digest_interval: Duration,
        mut events: broadcast::Receiver<MeshEvent>,
        mut saves: mpsc::Receiver<SaveRequest>,
        mut queries: mpsc::Receiver<Query>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(digest_interval);
        let mut ticks: u32 = 0;
        // Members known from the stored records are dialled from the start.
        self.dial_members();
        self.drive().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.replica.tick();
                    self.refresh_metrics();
                    self.review_behind();
                    ticks = ticks.wrapping_add(1);
                    // Clocks drift and peers upgrade: the checks are made again, and node
                    // records compared, every few ticks (a link coming up does both at once;
                    // activation reports go out when they change).
                    if ticks.is_multiple_of(SLOW_TICKS) {
                        for peer in self.names.keys() {
                            self.send_hello(*peer);
                        }
                        self.send_record_digest(None);
                    }
                }
                event = events.recv() => match event {
                    Ok(MeshEvent::PeerUp(peer)) => {
                        self.names.insert(peer.id, peer.name.as_str().to_owned());
                        self.addresses
                            .insert(peer.addr, (peer.id, peer.name.as_str().to_owned()));
                        // Replication starts once its hello passes (links are in order, and
                        // it sends its hello first too).
                        self.send_hello(peer.id);
                    }
                    Ok(MeshEvent::PeerDown { peer, .. }) => {
                        self.names.remove(&peer.id);
                        self.peer_heads.remove(&peer.id);
                        self.peer_activation.remove(&peer.id);
                        self.gate.peer_down(peer.id);
                        self.replica.peer_down(peer.id);
                    }
                    Ok(MeshEvent::Replication { from, bytes }) => match SyncMessage::decode(&bytes) {
                        Ok(SyncMessage::Hello(hello)) => self.hello(from, &hello),
                        Ok(SyncMessage::Activation { active, refused }) if self.gate.admitted(from) => {
                            self.peer_activated(from, active, refused);
                        }
                        Ok(SyncMessage::RecordDigest(digest)) if self.gate.admitted(from) => {
                            let newer = self.records.newer_than(&digest);
                            if !newer.is_empty() {
                                self.mesh.send_replication(from, SyncMessage::Records(newer).encode());
                            }
                        }
                        Ok(SyncMessage::Records(records)) if self.gate.admitted(from) => {
                            self.received_records(records).await;
                        }
                        Ok(SyncMessage::RenewRequest(csr)) if self.gate.admitted(from) => {
                            self.sign_renewal(from, csr).await;
                        }
                        Ok(SyncMessage::RenewResponse(answer)) if self.gate.admitted(from) => {
                            self.renewed(from, answer).await;
                        }
                        // Checked by its CA signature, not by the release and clock checks: taken
                        // from any member that got through the link's authentication (a peer
                        // admitted later must not miss a removal made meanwhile).
                        Ok(SyncMessage::Trust(bytes)) => {
                            self.received_trust(from, bytes).await;
                        }
                        Ok(message) if self.gate.admitted(from) => {
                            if let SyncMessage::Digest { head, .. } = &message {
                                self.peer_heads.insert(from, *head);
                            }
                            self.replica.handle(from, message, wall_ms());
                        }
                        // Not (or no longer) replicating with it: its hello said why.
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%from, %error, "replication message refused"),
                    },
                    Ok(MeshEvent::Ha { .. } | MeshEvent::Director { .. }) => {}
                    Ok(MeshEvent::Unreachable { addr, errno, error, last_action }) => {
                        self.unreachable(addr, errno, &error, last_action);
                    }
                    Ok(MeshEvent::Refused { remote, error }) => {
                        let failed = palisade_replication::coordinator::RequestFailed::not_authenticated(
                            "co_accept",
                            NodeId::from_bytes([0; 16]),
                            &remote.to_string(),
                            &error,
                        );
                        tracing::warn!("{}", failed.log_line(wall_ms()));
                    }
                    // Missed events: the next digests repair whatever they carried; the
                    // peers' names are read again from the mesh.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for peer in self.mesh.peers() {
                            self.names.insert(peer.id, peer.name.as_str().to_owned());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(query) = queries.recv() => self.answer(query).await,
                request = saves.recv() => match request {
                    Some(request) => {
                        let saved = self
                            .save(request.bundle, request.base, &request.saved_by, &request.message)
                            .await;
                        // "Saved" means stored: the answer waits for the revision's commit.
                        self.persisted = Ok(Duration::ZERO);
                        self.drive().await;
                        let persisted = std::mem::replace(&mut self.persisted, Ok(Duration::ZERO));
                        let result = match (saved, persisted) {
                            (Ok((revision, contents)), Ok(commit)) => Ok(Saved {
                                revision,
                                stored: contents + commit,
                            }),
                            (Ok(_), Err(error)) => Err(ClusterError::NotStored(error)),
                            (Err(error), _) => Err(error),
                        };
                        let _ = request.reply.send(result);
                        continue;
                    }
                    None => return,
                },
            }
            self.drive().await;
        }
    }

    fn send_hello(&self, peer: NodeId) {
        let hello = SyncMessage::Hello(self.gate.hello(wall_ms()));
        self.mesh.send_replication(peer, hello.encode());
    }

    /// A peer's hello: replication with it starts, stops or goes on as the checks say; a
    /// new refusal is logged once, in the seeds' words.
    /// A peer's name: from its link-up event, or (an event missed) from the mesh's peers.
    fn name_of(&mut self, peer: NodeId) -> String {
        if let Some(name) = self.names.get(&peer) {
            return name.clone();
        }
        let known = (self.mesh.peers().into_iter())
            .find(|linked| linked.id == peer)
            .map(|linked| linked.name.as_str().to_owned());
        match known {
            Some(name) => {
                self.names.insert(peer, name.clone());
                name
            }
            None => String::new(),
        }
    }

    fn hello(&mut self, from: NodeId, hello: &palisade_replication::Hello) {
        let name = self.name_of(from);
        let now = wall_ms();
        let checked = self.gate.receive(from, &name, hello, now);
        if let Some(refusal) = &checked.new_refusal {
            tracing::warn!("{}", refusal.log_line(now));
            let code = match refusal.code {
                palisade_replication::coordinator::FailureCode::VersionMismatch => "404",
                palisade_replication::coordinator::FailureCode::TimeDifferenceTooHigh => "405",
                palisade_replication::coordinator::FailureCode::CannotConnect => "301",
                palisade_replication::coordinator::FailureCode::NotAuthenticated => "306",
            };
            self.metrics
                .refusals
                .get_or_create(&metrics::CodeLabels { code })
                .inc();
        }
        if let Some(differ) = &checked.new_settings_differ {
            tracing::warn!(peer = %from, %name, "cluster settings differ from this node's ({differ}): set them alike on every node");
        }
        match (checked.was_admitted, checked.admitted) {
            (false, true) => {
                tracing::info!(peer = %from, %name, release = %hello.release, "replicating with peer");
                // Its hello came first: ours may have been missed (sent before the peer was
                // listening for it); answering once repairs that without waiting for a tick.
                self.send_hello(from);
                self.replica.peer_up(from);
                self.send_trust(Some(from));
                self.send_activation(Some(from));
                self.send_record_digest(Some(from));
            }
            (true, false) => {
                self.peer_heads.remove(&from);
                self.replica.peer_down(from);
            }
            _ => {}
        }
    }

    /// A configured peer that cannot be reached, in the seeds' words (the node as last seen
    /// at that address, or the nil id and the address).
    fn unreachable(
        &self,
        addr: std::net::SocketAddr,
        errno: Option<i32>,
        error: &str,
        last_action: &'static str,
    ) {
        let (node, name) = self
            .addresses
            .get(&addr.ip())
            .cloned()
            .unwrap_or_else(|| (NodeId::from_bytes([0; 16]), addr.to_string()));
        let text = match errno {
            Some(errno) => {
                let described = std::io::Error::from_raw_os_error(errno).to_string();
                let bare = described
                    .split(" (os error")
                    .next()
                    .unwrap_or(&described)
                    .to_owned();
                (errno, bare)
            }
            None => (0, error.to_owned()),
        };
        let failed = palisade_replication::coordinator::RequestFailed::cannot_connect(
            "co_connect",
            node,
            &name,
            text.0,
            &text.1,
            last_action,
        );
        tracing::warn!("{}", failed.log_line(wall_ms()));
    }

    fn refresh_metrics(&self) {
        let metrics = &self.metrics;
        metrics.revisions.set(self.replica.history().len() as i64);
        let head = self.replica.head();
        metrics
            .head_time
            .set(head.map_or(0.0, |head| head.time.ms as f64 / 1e3));
        let head = head.map(|head| head.id);
        metrics.clock_difference.clear();
        metrics.replicating.clear();
        metrics.in_sync.clear();
        metrics.peer_head_time.clear();
        for (id, name) in &self.names {
            let labels = metrics::PeerLabels {
                peer: name.clone(),
                peer_id: id.to_string(),
            };
            let check = self.gate.peers().get(id);
            if let Some(check) = check {
                metrics
                    .clock_difference
                    .get_or_create(&labels)
                    .set(check.clock_difference_ms as f64 / 1e3);
            }
            metrics
                .replicating
                .get_or_create(&labels)
                .set(i64::from(check.is_some_and(|check| check.admitted())));
            let in_sync = self
                .peer_heads
                .get(id)
                .is_some_and(|peer_head| *peer_head == head);
            metrics
                .in_sync
                .get_or_create(&labels)
                .set(i64::from(in_sync));
            // Each member's storage timestamp, as the seeds' status page compares them.
            let peer_head = (self.peer_heads.get(id).copied().flatten())
                .and_then(|peer_head| self.replica.history().get(&peer_head));
            if let Some(peer_head) = peer_head {
                metrics
                    .peer_head_time
                    .get_or_create(&labels)
                    .set(peer_head.time.ms as f64 / 1e3);
            }
        }
    }

    /// The revision `which` names: `head`, an id, or a unique prefix of one.
    fn find(&self, which: &str) -> Result<&Revision, String> {
        let which = which.trim().to_ascii_lowercase();
        if which == "head" {
            return self
                .replica
                .head()
                .ok_or_else(|| "nothing saved yet".to_owned());
        }
        if which.len() < 6 || !which.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(format!(
                "{which:?} is not a revision: give `head` or at least 6 hex digits of an id (`palisade policy history`)"
            ));
        }
        let mut found = self
            .replica
            .history()
            .revisions()
            .filter(|revision| revision.id.to_string().starts_with(&which));
        match (found.next(), found.next()) {
            (Some(revision), None) => Ok(revision),
            (None, _) => Err(format!("no revision {which} in this node's history")),
            (Some(_), Some(_)) => Err(format!(
                "{which} names more than one revision: give more digits"
            )),
        }
    }

    /// `to`, or every peer this node replicates with.
    fn targets(&self, to: Option<NodeId>) -> Vec<NodeId> {
        match to {
            Some(peer) => vec![peer],
            None => self
                .names
                .keys()
                .copied()
                .filter(|peer| self.gate.admitted(*peer))
                .collect(),
        }
    }

    /// The head's policy does not compile here: refused or reported, as the replica's rule
    /// says ([`Replica::cannot_install`]).
    fn refuse(&mut self, head: RevisionId, why: &str) {
        let name = self.own_name.clone();
        match (self.replica).cannot_install(wall_ms(), head, self.activation.0, &name, why) {
            palisade_replication::CannotInstall::Refused(refusal) => {
                let save = refusal.parents.first().copied();
                tracing::error!(revision = ?save, refusal = ?refusal.id, "this node cannot install policy revision {save:?}: refused cluster-wide, every node goes back to the revision it was based on: {why}");
            }
            palisade_replication::CannotInstall::Reported { save } => {
                tracing::warn!(revision = ?save, "this node cannot install revision {save:?} but does not run the revision it was based on: reported, not refused");
            }
            palisade_replication::CannotInstall::Nothing => {}
        }
    }

    /// Tells `to`, or every replicating peer, what this node runs.
    fn send_activation(&self, to: Option<NodeId>) {
        let (active, refused) = self.activation.clone();
        let message = SyncMessage::Activation { active, refused }.encode();
        let peers = self.targets(to);
        for peer in peers {
            self.mesh.send_replication(peer, message.clone());
        }
    }

    /// A peer's report: a refusal it had not reported before is logged here too, so the
    /// node an operator saved on says which member could not take the policy.
    fn peer_activated(
        &mut self,
        from: NodeId,
        active: Option<RevisionId>,
        refused: Option<(RevisionId, String)>,
    ) {
        let before = self
            .peer_activation
            .get(&from)
            .and_then(|(_, refused)| refused.as_ref().map(|(id, _)| *id));
        if let Some((id, why)) = &refused
            && before != Some(*id)
        {
            let name = self.names.get(&from).cloned().unwrap_or_default();
            tracing::error!(peer = %from, %name, revision = %id, "node {name} cannot install the cluster's policy revision {id:?} and keeps its last good policy: {why}");
        }
        self.peer_activation.insert(from, (active, refused));
        self.review_behind();
    }

    /// Whether a peer this node replicates with runs a newer policy than this node (one it
    /// has not refused), and for how long: past [`BEHIND_AFTER`] the node is behind.
    fn review_behind(&mut self) {
        let (mine, refused) = (
            self.activation.0,
            self.activation.1.as_ref().map(|(id, _)| *id),
        );
        let history = self.replica.history();
        let newer = (self.peer_activation.iter())
            .filter(|(peer, _)| self.gate.admitted(**peer))
            .find_map(|(peer, (active, _))| {
                let theirs = (*active)?;
                (Some(theirs) != refused && history.runs_newer(mine.as_ref(), &theirs))
                    .then_some((*peer, theirs))
            });
        let now = tokio::time::Instant::now();
        let why = match newer {
            None => {
                self.behind_since = None;
                None
            }
            Some((peer, theirs)) => {
                let since = *self.behind_since.get_or_insert(now);
                (now.duration_since(since) > BEHIND_AFTER).then(|| {
                    let name = self.names.get(&peer).cloned().unwrap_or_default();
                    let mine = mine.map_or_else(|| "none".to_owned(), |id| id.to_string());
                    format!(
                        "behind the cluster's policy: {name} runs revision {theirs}, this node {mine}"
                    )
                })
            }
        };
        self.behind.send_if_modified(|known| {
            if *known == why {
                return false;
            }
            match &why {
                Some(why) => tracing::warn!(
                    "{why} (for more than {} s): this node takes no director role and gets no clients until it catches up",
                    BEHIND_AFTER.as_secs()
                ),
                None => tracing::info!("no reachable peer runs a newer policy now: this node may direct and serve clients again"),
            }
            *known = why.clone();
            true
        });
    }

    /// Tells `to`, or every replicating peer, which node records this node holds.
    fn send_record_digest(&self, to: Option<NodeId>) {
        let message = SyncMessage::RecordDigest(self.records.digest()).encode();
        let peers = self.targets(to);
        for peer in peers {
            self.mesh.send_replication(peer, message.clone());
        }
    }

    /// Dials every member whose record says where it listens (`cluster.dial`), so members
    /// find each other through any one of them.
    fn dial_members(&self) {
        let me = self.replica.me();
        for record in self.records.all().filter(|record| record.node != me) {
            let dial = serde_json::from_slice::<serde_json::Value>(&record.bytes)
                .ok()
                .and_then(|config| config["cluster"]["dial"].as_str()?.parse().ok());
            if let Some(addr) = dial {
                self.mesh.add_peer(addr);
            }
        }
    }

    /// Keeps (and stores) the records newer than those held.
    async fn received_records(&mut self, records: Vec<palisade_replication::records::NodeRecord>) {
        let me = self.replica.me();
        let newer: Vec<palisade_replication::records::NodeRecord> = records
            .into_iter()
            // This node is the only writer of its own record.
            .filter(|record| record.node != me)
            .filter(|record| self.records.receive(record.clone()))
            .collect();
        if newer.is_empty() {
            return;
        }
        self.dial_members();
        let stored = self
            .stored(move |store| {
                newer.iter().try_for_each(|record| {
                    store.put_node_record(
                        record.node.as_bytes(),
                        record.time.to_bytes(),
                        &record.bytes,
                    )
                })
            })
            .await;
        if let Some(Err(error)) = stored {
            tracing::error!(%error, "cannot store a node record");
        }
    }

    /// Puts the certificate and CAs now on disk into the links' TLS (new links use them).
    async fn reload_tls(&self) {
        let (Some(trust), Some(tls)) = (self.trust.clone(), self.tls.clone()) else {
            return;
        };
        let me = self.replica.me();
        let reloaded = tokio::task::spawn_blocking(move || {
            let membership = trust.membership(me).map_err(|error| error.to_string())?;
            tls.reload(&membership.identity)
                .map_err(|error| error.to_string())
        })
        .await;
        match reloaded {
            Ok(Ok(())) => tracing::info!(
                "cluster TLS reloaded: new links use the node's current certificate and CAs"
            ),
            Ok(Err(error)) => tracing::error!(
                "cannot reload the cluster TLS (the links keep the previous one): {error}"
            ),
            Err(error) => tracing::error!(%error, "TLS reload task failed"),
        }
    }

    /// Starts a renewal of this node's certificate.
    async fn renew(&mut self, reply: oneshot::Sender<Result<String, String>>) {
        let Some(trust) = self.trust.clone() else {
            let _ = reply.send(Err("this node has no cluster trust".to_owned()));
            return;
        };
        let me = self.replica.me();
        let made = tokio::task::spawn_blocking(move || {
            let cluster = trust.cluster_id().map_err(|error| error.to_string())?;
            let (key, request) = palisade_cluster_trust::node_key_and_request(me, &cluster)
                .map_err(|error| error.to_string())?;
            // The CA holder signs its own at once.
            match trust.ca().map_err(|error| error.to_string())? {
                Some(ca) => {
                    let (_, cert) = ca
                        .sign(
                            &request,
                            time::OffsetDateTime::now_utc(),
                            palisade_cluster_trust::files::NODE_CERT_LIFETIME,
                        )
                        .map_err(|error| error.to_string())?;
                    let checked = install_renewal(&trust, me, &key, &cert)?;
                    Ok(Err(checked))
                }
                None => Ok(Ok((key, request))),
            }
        })
        .await
        .map_err(|error| error.to_string())
        .and_then(|made| made);
        match made {
            Err(error) => {
                let _ = reply.send(Err(error));
            }
            Ok(Err(expires)) => {
                self.reload_tls().await;
                let _ = reply.send(Ok(expires));
            }
            Ok(Ok((key, request))) => {
                let peers: Vec<NodeId> = self
                    .names
                    .keys()
                    .copied()
                    .filter(|peer| self.gate.admitted(*peer))
                    .collect();
                if peers.is_empty() {
                    let _ = reply.send(Err(
                        "no member is linked: the node that holds the CA key must be reachable"
                            .to_owned(),
                    ));
                    return;
                }
                // Every member is asked; only the CA holder answers with a certificate.
                let message = SyncMessage::RenewRequest(request).encode();
                for peer in peers {
                    self.mesh.send_replication(peer, message.clone());
                }
                self.renewal = Some((key, reply));
            }
        }
    }

    /// A member's renewal request: signed if the CA key is here and the request names the
    /// member the link authenticated.
    async fn sign_renewal(&mut self, from: NodeId, csr: String) {
        let Some(trust) = self.trust.clone() else {
            return;
        };
        let signed = tokio::task::spawn_blocking(move || {
            let Some(ca) = trust.ca().map_err(|error| error.to_string())? else {
                return Ok(None);
            };
            let (node, cert) = ca
                .sign(
                    &csr,
                    time::OffsetDateTime::now_utc(),
                    palisade_cluster_trust::files::NODE_CERT_LIFETIME,
                )
                .map_err(|error| error.to_string())?;
            if node != from {
                return Err(format!(
                    "the request names node {node}, not the member that sent it"
                ));
            }
            Ok(Some(cert))
        })
        .await
        .map_err(|error| error.to_string())
        .and_then(|signed| signed);
        let answer = match signed {
            Ok(None) => return,
            Ok(Some(cert)) => {
                let name = self.names.get(&from).cloned().unwrap_or_default();
                tracing::warn!(node = %from, %name, "certificate renewed for a member");
                Ok(cert)
            }
            Err(error) => {
                tracing::warn!(node = %from, "certificate renewal refused: {error}");
                Err(error)
            }
        };
        self.mesh
            .send_replication(from, SyncMessage::RenewResponse(answer).encode());
    }

    /// The CA holder's answer to this node's renewal.
    async fn renewed(&mut self, from: NodeId, answer: Result<String, String>) {
        let Some((key, reply)) = self.renewal.take() else {
            return;
        };
        let cert = match answer {
            Ok(cert) => cert,
            Err(why) => {
                let _ = reply.send(Err(format!("the CA holder refused: {why}")));
                return;
            }
        };
        let Some(trust) = self.trust.clone() else {
            return;
        };
        let me = self.replica.me();
        let installed =
            tokio::task::spawn_blocking(move || install_renewal(&trust, me, &key, &cert))
                .await
                .map_err(|error| error.to_string())
                .and_then(|installed| installed);
        if installed.is_ok() {
            tracing::warn!(signer = %from, "this node's cluster certificate was renewed");
            self.reload_tls().await;
        }
        let _ = reply.send(installed);
    }

    /// Sends the trust bundle held here to `to`, or to every replicating peer.
    fn send_trust(&self, to: Option<NodeId>) {
        let Some(trust) = &self.trust else {
            return;
        };
        let Ok(Some(signed)) = trust.trust_bundle() else {
            return;
        };
        let message = SyncMessage::Trust(signed.to_wire()).encode();
        let peers = self.targets(to);
        for peer in peers {
            self.mesh.send_replication(peer, message.clone());
        }
    }

    /// A peer's trust bundle: kept and applied if it is signed by a CA this node trusts and
    /// newer than the one held, then passed on.
    async fn received_trust(&mut self, from: NodeId, bytes: Vec<u8>) {
        let Some(trust) = self.trust.clone() else {
            return;
        };
        let checked = tokio::task::spawn_blocking(move || {
            let cas = trust.trusted_cas().map_err(|error| error.to_string())?;
            let signed =
                palisade_cluster_trust::trust_bundle::SignedTrustBundle::verify(&bytes, &cas)
                    .map_err(|error| error.to_string())?;
            let newer = trust
                .offer_trust_bundle(&signed)
                .map_err(|error| error.to_string())?;
            if !newer {
                return Ok(None);
            }
            // A rotation: the CAs the bundle names are the ones to trust from now on.
            let cas_changed = trust
                .adopt_cas(&signed.bundle.cas)
                .map_err(|error| error.to_string())?;
            Ok::<_, String>(Some((signed, cas_changed)))
        })
        .await;
        match checked {
            Ok(Ok(Some((signed, cas_changed)))) => {
                self.apply_trust(&signed.bundle, Some(from));
                if cas_changed {
                    tracing::warn!(
                        cas = signed.bundle.cas.len(),
                        "the cluster's trusted CAs changed (a CA rotation)"
                    );
                    self.reload_tls().await;
                }
                self.send_trust(None);
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => tracing::warn!(peer = %from, "trust bundle refused: {error}"),
            Err(error) => tracing::error!(%error, "trust bundle task failed"),
        }
    }

    /// Makes a trust bundle's removals take effect: refused from now on, links cut now.
    fn apply_trust(
        &self,
        bundle: &palisade_cluster_trust::trust_bundle::TrustBundle,
        from: Option<NodeId>,
    ) {
        *self
            .denied
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = bundle.denied.clone();
        tracing::warn!(serial = bundle.serial, from = ?from, removed = bundle.denied.len(), "cluster trust bundle applied");
        if bundle.denied.contains(&self.replica.me()) {
            tracing::error!(
                "this node has been removed from the cluster (`palisade cluster remove`): its peers refuse it; it serves alone with its last policy"
            );
        }
        for node in &bundle.denied {
            if self.names.contains_key(node) {
                tracing::warn!(%node, "node removed from the cluster: its links are closed");
                self.mesh.disconnect(*node);
            }
        }
    }

    async fn answer(&mut self, query: Query) {
        match query {
            Query::Renew(reply) => self.renew(reply).await,
            Query::Records(reply) => {
                let _ = reply.send(self.records.all().cloned().collect());
            }
            Query::Activated(head, result) => {
                match result {
                    Ok(()) => self.activation.0 = Some(head),
                    Err(not_installed) => {
                        if let NotInstalled::Invalid(why) = &not_installed {
                            self.refuse(head, why);
                            // The refusal goes out before the report, so a saver waiting
                            // for reports already holds it when it hears this one.
                            self.drive().await;
                        }
                        self.activation.1 = Some((head, not_installed.reason().to_owned()));
                    }
                }
                self.send_activation(None);
                self.review_behind();
            }
            Query::Trust(signed) => {
                self.apply_trust(&signed.bundle, None);
                // Made here: a rotation has rewritten this node's CAs and certificate too.
                self.reload_tls().await;
                self.send_trust(None);
            }
            Query::HeadEntry(key, reply) => {
                let content = self.replica.head().map(|head| head.content);
                let entry = match content {
                    None => None,
                    Some(content) => self
                        .stored(move |store| {
                            let manifest = store
                                .content(&content.0)
                                .ok()
                                .flatten()
                                .and_then(|bytes| Manifest::from_bytes(&bytes).ok())?;
                            let hash = manifest.lists.get(&key)?;
                            store
                                .content(hash)
                                .ok()
                                .flatten()
                                .and_then(|bytes| String::from_utf8(bytes).ok())
                        })
                        .await
                        .flatten(),
                };
                let _ = reply.send(entry);
            }
            Query::Bundle(which, reply) => {
                let found = self
                    .find(&which)
                    .map(|revision| (RevisionSummary::of(revision), revision.content));
                let result = match found {
                    Err(error) => Err(error),
                    Ok((summary, content)) => {
                        match self.stored(move |store| load_bundle(store, content)).await {
                            Some(Some(Ok(bundle))) => Ok((summary, bundle)),
                            Some(Some(Err(error))) => Err(error.to_string()),
                            Some(None) => Err(format!(
                                "revision {} is in the history but its content is not stored here (yet)",
                                summary.id
                            )),
                            None => Err("the store task failed".to_owned()),
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Query::Status(reply) => {
                let head = self.replica.head().map(|head| head.id);
                let checks = self.gate.peers();
                let peers = self
                    .names
                    .iter()
                    .map(|(id, name)| {
                        let check = checks.get(id);
                        let peer_head = self.peer_heads.get(id).copied().flatten();
                        let activation = self.peer_activation.get(id);
                        PeerReplication {
                            node_id: id.to_string(),
                            name: name.clone(),
                            release: check.map(|check| check.release.clone()),
                            clock_difference_ms: check.map(|check| check.clock_difference_ms),
                            replicating: check.is_some_and(|check| check.admitted()),
                            refused: check
                                .and_then(|check| check.refused.as_ref())
                                .map(ToString::to_string),
                            settings_differ: check.and_then(|check| check.settings_differ.clone()),
                            head: peer_head.map(|id| id.to_string()),
                            live: activation
                                .and_then(|(active, _)| *active)
                                .map(|id| id.to_string()),
                            cannot_install: activation
                                .and_then(|(_, refused)| refused.as_ref())
                                .map(|(id, why)| format!("{id}: {why}")),
                            in_sync: self.peer_heads.contains_key(id) && peer_head == head,
                        }
                    })
                    .collect();
                let _ = reply.send(ClusterStatus {
                    head: self.replica.head().map(RevisionSummary::of),
                    revisions: self.replica.history().len(),
                    peers,
                });
            }
            Query::History(reply) => {
                let mut revisions: Vec<&Revision> = self.replica.history().revisions().collect();
                revisions.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
                let _ = reply.send(revisions.into_iter().map(RevisionSummary::of).collect());
            }
        }
    }

    /// Runs a store call on a blocking thread (a commit waits for the disk).
    async fn stored<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Option<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || call(&store)).await {
            Ok(result) => Some(result),
            Err(error) => {
                tracing::error!(%error, "store call failed");
                None
            }
        }
    }

    async fn save(
        &mut self,
        bundle: PolicyBundle,
        base: Base,
        saved_by: &str,
        message: &str,
    ) -> Result<(RevisionId, Duration), ClusterError> {
        let started = std::time::Instant::now();
        let (manifest, lists) = bundle.split();
        let manifest_id = manifest.id();
        let list_ids: Vec<[u8; 32]> = lists.iter().map(|(hash, _)| *hash).collect();
        let mut owned: Vec<([u8; 32], Vec<u8>)> = vec![(manifest_id, manifest.to_bytes())];
        owned.extend(
            lists
                .iter()
                .map(|(hash, text)| (*hash, text.as_bytes().to_vec())),
        );
        // Contents first: a revision is never stored without what it names.
        self.stored(move |store| {
            let borrowed: Vec<([u8; 32], &[u8])> = owned
                .iter()
                .map(|(id, bytes)| (*id, bytes.as_slice()))
                .collect();
            store.put_contents(&borrowed)
        })
        .await
        .ok_or(ClusterError::Stopped)??;
        let contents = started.elapsed();
        let revision =
            self.replica
                .save(wall_ms(), base, ContentId(manifest_id), saved_by, message)?;
        for hash in &list_ids {
            self.replica.resolve(ContentId(*hash), []);
        }
        self.replica.resolve(
            ContentId(manifest_id),
            list_ids.iter().map(|hash| ContentId(*hash)),
        );
        Ok((revision.id, contents))
    }

    /// Applies what the replica decided: store, answer, activate, send.
    async fn drive(&mut self) {
        while let Some(event) = self.replica.poll_event() {
            match event {
                ReplicaEvent::Persist(revisions) => {
                    let high_water = self.replica.high_water().to_bytes();
                    let encoded: Vec<([u8; 32], Vec<u8>)> = revisions
                        .iter()
                        .map(|revision| (revision.id.0, revision.to_bytes()))
                        .collect();
                    let started = std::time::Instant::now();
                    let stored = self
                        .stored(move |store| {
                            encoded.iter().try_for_each(|(id, bytes)| {
                                store.save_revision(id, bytes, &[], high_water)
                            })
                        })
                        .await;
                    for refusal in revisions.iter().filter(|revision| {
                        revision.kind == palisade_replication::RevisionKind::Refusal
                    }) {
                        self.metrics.refused_revisions.inc();
                        if refusal.author == self.replica.me() {
                            continue;
                        }
                        let save = refusal.parents.first().copied();
                        tracing::error!(refused_by = %refusal.author, revision = ?save, "node {} cannot install policy revision {save:?} and refused it: it is not the head on any node; {}", refusal.saved_by, refusal.message);
                    }
                    match stored {
                        Some(Ok(())) => {
                            if let Ok(total) = &mut self.persisted {
                                *total += started.elapsed();
                            }
                        }
                        Some(Err(error)) => {
                            tracing::error!(%error, "cannot store a revision");
                            self.persisted = Err(error.to_string());
                        }
                        None => self.persisted = Err("the store task failed".to_owned()),
                    }
                }
                ReplicaEvent::ContentArrived { id, bytes } => {
                    let stored = self
                        .stored(move |store| store.put_contents(&[(id.0, &bytes)]).map(|()| bytes))
                        .await;
                    match stored {
                        Some(Ok(bytes)) => resolve(&mut self.replica, id, &bytes),
                        Some(Err(error)) => tracing::error!(%error, "cannot store a content"),
                        None => {}
                    }
                }
                ReplicaEvent::ContentWanted { from, ids } => {
                    let looked_up = self
                        .stored(move |store| {
                            ids.into_iter()
                                .map(|id| (id, store.content(&id.0).ok().flatten()))
                                .collect::<Vec<_>>()
                        })
                        .await
                        .unwrap_or_default();
                    let mut lacking = Vec::new();
                    let mut found = Vec::new();
                    for (id, bytes) in looked_up {
                        match bytes {
                            Some(bytes) => found.push((id, bytes)),
                            None => lacking.push(id),
                        }
                    }
                    self.replica.no_content(from, lacking);
                    if !found.is_empty() {
                        // On its own task, at the pace the link takes it: a 30 MB list is
                        // hundreds of frames, which would overflow the link's queue at once
                        // (and this loop must not wait for one slow peer).
                        let mesh = self.mesh.clone();
                        self.tasks.spawn(async move {
                            let Some(sender) = mesh.peer_sender(from).await else {
                                return;
                            };
                            for (id, bytes) in found {
                                for message in
                                    palisade_replication::wire::content_messages(id, &bytes)
                                {
                                    if !sender.send_replication(message.encode()).await {
                                        return;
                                    }
                                }
                            }
                        });
                    }
                }
                ReplicaEvent::HeadReady(head) => self.activate_head(head).await,
                ReplicaEvent::Settled(settled) => {
                    self.metrics.conflicts.inc();
                    tracing::warn!(merge = ?settled.merge, winner = ?settled.winner, losers = ?settled.losers, "concurrent policy saves settled by node priority, then time: the losers stay in history");
                }
                ReplicaEvent::ClockSkew { from, skew } => {
                    tracing::warn!(%from, "(405 - 'time difference too high') - \"{skew}\"");
                }
                ReplicaEvent::Refused { from, error } => {
                    tracing::warn!(%from, %error, "replicated revision refused");
                }
                ReplicaEvent::NewHead(head) => tracing::info!(?head, "new policy head"),
            }
        }
        while let Some((to, message)) = self.replica.poll_transmit() {
            self.mesh.send_replication(to, message.encode());
        }
    }

    async fn activate_head(&mut self, head: RevisionId) {
        let Some((content, saved_ms)) = self
            .replica
            .history()
            .get(&head)
            .map(|revision| (revision.content, revision.time.ms))
        else {
            return;
        };
        let bundle = self
            .stored(move |store| load_bundle(store, content))
            .await
            .flatten();
        match bundle {
            Some(Ok(bundle)) => {
                (self.activate)(head, bundle);
                self.active.send_replace(Some(head));
                self.metrics
                    .activation_lag
                    .set(wall_ms().saturating_sub(saved_ms) as f64 / 1e3);
                self.refresh_metrics();
            }
            Some(Err(error)) => tracing::error!(?head, %error, "policy head not activated"),
            None => tracing::error!(
                ?head,
                "policy head not activated: its manifest is not stored"
            ),
        }
    }
}

/// Checks a renewed certificate against this node's trust and takes it; returns its expiry.
fn install_renewal(
    trust: &palisade_cluster_trust::files::TrustDir,
    me: NodeId,
    key: &str,
    cert: &str,
) -> Result<String, String> {
    let cluster = trust.cluster_id().map_err(|error| error.to_string())?;
    let cas = trust.trusted_cas().map_err(|error| error.to_string())?;
    let checked = palisade_cluster_trust::check_own_certificate(cert, key, &cas, me, &cluster)
        .map_err(|error| format!("the renewed certificate is not usable: {error}"))?;
    trust
        .replace_certificate(key, cert)
        .map_err(|error| error.to_string())?;
    Ok(checked.not_after.to_string())
}

/// A stored bundle: its manifest and every list it names (`None`: the manifest is not stored).
fn load_bundle(
    store: &Store,
    content: ContentId,
) -> Option<Result<PolicyBundle, palisade_policy::BundleError>> {
    let manifest = store
        .content(&content.0)
        .ok()
        .flatten()
        .and_then(|bytes| Manifest::from_bytes(&bytes).ok())?;
    Some(PolicyBundle::join(manifest, |hash| {
        store
            .content(hash)
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    }))
}

#[cfg(test)]
mod tests;
