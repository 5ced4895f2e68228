//! The director in the node (issue 11): every second each member of an HA group tells the
//! others its load on the peer links; the member holding the group's VIP (the director)
//! chooses, for each client connection that reached the VIP, the scanning node that serves
//! it (`palisade-director`), and the proxy relays it there (`palisade_proxy::relay`).
//! Connections to a node's own address, and every test-port connection, are served where
//! they land.
//!
//! Members authenticate on the peer links with the HA group key, and the scan port's pair
//! keys derive from it; a group without peer links (keepalived as a peer) has no director:
//! its VIP holder serves alone, as before. In a cluster, the group's members, their weights
//! and caps come from the replicated node records (every node computes the same choice from
//! the same configuration); a report from a node whose record does not declare the group is
//! refused. Without a cluster they come from the members' own reports.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_director::takeover::{self, Known, Share};
use palisade_director::wire::Connection;
use palisade_director::{
    ConnectionList, Director, DirectorMessage, ListKind, Load, LoadReport, Member, Reason, Settings,
};
use palisade_identity::NodeId;
use palisade_peer_link::mesh::{MeshEvent, MeshHandle};
use palisade_proxy::relay::{Dispatch, RelayOutcome, RelayTarget, Route};
use palisade_scan_header::PairKey;
use palisade_vrrp::State;
use palisade_vrrp_linux::driver::{GroupHandle, GroupStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod handover;

/// Members report this often.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A director shares the changes to its in-process connections at most this often; a new
/// director's first report, and dead directors, are looked at this often too.
const SHARE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the cluster's node records are read again for the members.
const RECORDS_INTERVAL: Duration = Duration::from_secs(2);

/// A member of HA groups as the cluster's replicated configuration (its node record)
/// declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Declared {
    name: String,
    /// Its groups: VRID and VIPs (sorted). A group is the same VRID with the same VIPs: a
    /// cluster may span segments that each use VRID 51 for a group of their own.
    groups: Vec<(u8, Vec<IpAddr>)>,
    weight: u32,
    max_connections: u32,
}

impl Declared {
    /// From a node record (`cluster_plane::node_record`); `None` if it is unreadable.
    fn of(bytes: &[u8]) -> Option<Declared> {
        let record: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let groups = (record["vrrp"].as_array()?.iter())
            .filter_map(|group| {
                let vrid = u8::try_from(group["vrid"].as_u64()?).ok()?;
                let mut vips: Vec<IpAddr> = (group["vips"].as_array()?.iter())
                    .filter_map(|vip| vip.as_str()?.parse().ok())
                    .collect();
                vips.sort_unstable();
                vips.dedup();
                Some((vrid, vips))
            })
            .collect();
        Some(Declared {
            name: record["name"].as_str()?.to_owned(),
            groups,
            weight: u32::try_from(record["director"]["weight"].as_u64()?).ok()?,
            max_connections: u32::try_from(record["director"]["max_connections"].as_u64()?).ok()?,
        })
    }
}

impl Declared {
    /// Whether it declares `group`: its VRID with the same VIPs.
    fn declares(&self, group: &Group) -> bool {
        self.declares_vips(group.vrid, &group.settings.vips)
    }

    fn declares_vips(&self, vrid: u8, vips: &[IpAddr]) -> bool {
        let mut vips = vips.to_vec();
        vips.sort_unstable();
        vips.dedup();
        (self.groups.iter()).any(|(declared, theirs)| *declared == vrid && *theirs == vips)
    }
}

/// What this node says about itself.
pub struct OwnReport {
    pub weight: u32,
    pub max_connections: u32,
    /// Its scan port (an unspecified address: peers use the link's address).
    pub scan: Option<SocketAddr>,
    /// Each group's settings, by VRID.
    pub settings: HashMap<u8, palisade_director::GroupSettings>,
    pub active_connections: prometheus_client::metrics::gauge::Gauge,
    /// Why this node fails (port monitor, deep check), if it does.
    pub failure: watch::Receiver<Option<String>>,
    /// Why this node is behind the cluster's policy, if it is.
    pub behind: watch::Receiver<Option<String>>,
    /// The policy revision live here.
    pub policy: watch::Receiver<crate::policy_install::PolicyRevision>,
    /// Per group (by VRID): told whether another member reports healthy (the fault gate's
    /// fail-open).
    pub others_healthy: HashMap<u8, watch::Sender<bool>>,
    /// The connections directors relay to this node's scan port (none without one).
    pub relayed: Option<Arc<palisade_proxy::scan_port::RelayedClients>>,
}

/// One listed connection of a group's [`Share`]: unlisted when dropped.
struct Shared {
    share: Arc<Mutex<Share>>,
    id: u64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        (self.share.lock())
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unlist(self.id);
    }
}

struct Group {
    vrid: u8,
    /// This node's in-process connections while it directs.
    share: Arc<Mutex<Share>>,
    /// Whether it directed at the last share tick (a new director reports at once).
    was_directing: std::sync::atomic::AtomicBool,
    status: watch::Receiver<GroupStatus>,
    state: Mutex<GroupState>,
    /// This member's settings of the group (every member must have them alike).
    settings: palisade_director::GroupSettings,
    /// Whether another member reports healthy, as last told to the fault gate.
    others_healthy: std::sync::atomic::AtomicBool,
}

struct GroupState {
    director: Director,
    /// Each member's scan port as it can be reached.
    scans: HashMap<NodeId, SocketAddr>,
    /// Why each member was out at the last tick (`None`: in), to log changes once.
    was_out: HashMap<NodeId, Option<palisade_director::Out>>,
    /// Members whose group settings differ from this one's, and how.
    settings_differ: HashMap<NodeId, Vec<String>>,
    /// The sticky table as LVS persistence shows it (`mfend-lb -s`): each client this
    /// director gave a node within [`STICKY_WINDOW`], and when. Status only: the choice
    /// itself remembers nothing.
    sticky: HashMap<palisade_director::ClientKey, (NodeId, u64)>,
    /// The member whose latest report says it directs (holds the VIP), and when.
    directed_by: Option<(NodeId, u64)>,
    /// Per member: cancelled to cut every relay to it (its host is gone).
    cuts: HashMap<NodeId, CancellationToken>,
    /// Members whose scan port is being probed now.
    probing: std::collections::HashSet<NodeId>,
}

/// A probe of a silent member's scan port fails after this (members share a network).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a client counts as a node's sticky client after its last new connection.
const STICKY_WINDOW: Duration = Duration::from_secs(300);
/// At most this many clients in a sticky table (about 12 MiB); beyond it new clients are
/// not counted until old ones expire.
const STICKY_MAX: usize = 262_144;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct MemberLabels {
    vrid: u8,
    node: String,
}

/// The director's metrics, per group and member.
#[derive(Clone, Default)]
struct DirectorMetrics {
    /// 1 while a member may get new clients.
    member_in: prometheus_client::metrics::family::Family<
        MemberLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
    /// The director's live connections to each member (relayed, or served in-process).
    connections: prometheus_client::metrics::family::Family<
        MemberLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

/// Where the scan port's pair keys come from.
#[derive(Clone)]
pub enum PairKeys {
    /// Derived from the HA group key, for a group without a cluster.
    GroupKey(Vec<u8>),
    /// Exported from the pair's mutual-TLS cluster links (RFC 5705): no configured secret.
    Links(MeshHandle),
}

impl PairKeys {
    /// The key this node, directing, seals a relay to `node` with (its newest link's);
    /// `None` while no link to `node` is up.
    fn sealing(&self, me: NodeId, node: NodeId) -> Option<PairKey> {
        match self {
            PairKeys::GroupKey(key) => Some(PairKey::from_group_key(key, me, node)),
            PairKeys::Links(mesh) => mesh
                .scan_secrets(node)
                .last()
                .map(|secret| PairKey::from_secret(secret)),
        }
    }

    /// The keys a header from `director` may be sealed with (this node scanning): one per
    /// link up to it, since each end may have dialled its own.
    pub fn verifying(&self, me: NodeId, director: NodeId) -> Vec<PairKey> {
        match self {
            PairKeys::GroupKey(key) => vec![PairKey::from_group_key(key, director, me)],
            PairKeys::Links(mesh) => (mesh.scan_secrets(director).iter())
                .map(|secret| PairKey::from_secret(secret))
                .collect(),
        }
    }
}

/// The director of every HA group this node is in.
pub struct DirectorPlane {
    me: NodeId,
    name: Arc<str>,
    keys: PairKeys,
    groups: Vec<Group>,
    names: Mutex<HashMap<NodeId, Arc<str>>>,
    epoch: Instant,
    metrics: DirectorMetrics,
    /// The process's CPU time at the last report, for its CPU share.
    cpu: Mutex<Option<(Instant, u64)>>,
    /// Why this node fails, if it does (for status).
    failure: watch::Receiver<Option<String>>,
    /// Why this node is behind the cluster's policy, if it is (for status).
    behind: watch::Receiver<Option<String>>,
    /// In a cluster: every member as its replicated node record declares it (`None`: no
    /// cluster, or the records are not read yet; members then come from their reports).
    declared: Mutex<Option<HashMap<NodeId, Declared>>>,
    /// Reports refused because the sender's record does not declare the group, logged once.
    undeclared: Mutex<std::collections::HashSet<(NodeId, u8)>>,
    /// Peers with a link up now.
    linked: Mutex<std::collections::HashSet<NodeId>>,
    /// Other directors' connections, by group and director: their shares, and scanning
    /// nodes' orphans of them. Tickled when that director is confirmed dead and this node
    /// directs the group.
    known: Mutex<Known>,
    tickled: prometheus_client::metrics::counter::Counter,
    /// The links, once [`DirectorPlane::run`] has them.
    mesh: std::sync::OnceLock<MeshHandle>,
    /// A drain's second chance: what this node forwards or receives.
    handovers: Mutex<handover::Handovers>,
    /// Members that confirmed they forward this director's connections, by group.
    ready: watch::Sender<std::collections::HashSet<(u8, NodeId)>>,
}

impl DirectorPlane {
    pub fn new(
        me: NodeId,
        name: &str,
        keys: PairKeys,
        groups: &[GroupHandle],
        settings: &crate::config::DirectorSettings,
        own: &OwnReport,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Arc<DirectorPlane> {
        let metrics = DirectorMetrics::default();
        registry.register(
            "palisade_director_member_in",
            "1 while the group's director may give the member new clients (0: out, see palisade status)",
            metrics.member_in.clone(),
        );
        registry.register(
            "palisade_director_connections",
            "The director's live connections to each member (relayed, or served in-process)",
            metrics.connections.clone(),
        );
        let tickled = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "palisade_director_tickled_connections",
            "Client connections of a dead director this node tickled after taking its VIP over (each with 3 out-of-window ACKs, so the client fails at once)",
            tickled.clone(),
        );
        let groups = groups
            .iter()
            .map(|handle| {
                let vrid = handle.status.borrow().vrid;
                let settings = Settings {
                    // Every member computes the same choice: the seed is the group's.
                    seed: u64::from(vrid),
                    balance_factor: settings.balance_factor,
                    slow_start: settings.slow_start,
                    report_interval: REPORT_INTERVAL,
                    ..Settings::default()
                };
                let me_member = Member {
                    id: me,
                    name: name.to_owned(),
                    weight: own.weight,
                    max_connections: own.max_connections,
                };
                Group {
                    vrid,
                    share: Arc::default(),
                    was_directing: std::sync::atomic::AtomicBool::new(false),
                    status: handle.status.clone(),
                    state: Mutex::new(GroupState {
                        director: Director::new(settings, [me_member]),
                        scans: HashMap::new(),
                        was_out: HashMap::new(),
                        settings_differ: HashMap::new(),
                        sticky: HashMap::new(),
                        directed_by: None,
                        cuts: HashMap::new(),
                        probing: std::collections::HashSet::new(),
                    }),
                    settings: own.settings.get(&vrid).cloned().unwrap_or_default(),
                    others_healthy: std::sync::atomic::AtomicBool::new(true),
                }
            })
            .collect();
        Arc::new(DirectorPlane {
            me,
            name: Arc::from(name),
            keys,
            groups,
            names: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            metrics,
            cpu: Mutex::new(None),
            failure: own.failure.clone(),
            behind: own.behind.clone(),
            declared: Mutex::new(None),
            undeclared: Mutex::new(std::collections::HashSet::new()),
            linked: Mutex::new(std::collections::HashSet::new()),
            known: Mutex::new(Known::default()),
            tickled,
            mesh: std::sync::OnceLock::new(),
            handovers: Mutex::default(),
            ready: watch::Sender::new(std::collections::HashSet::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The group whose VIP `local` is, if this node directs it now.
    fn directing(&self, local: IpAddr) -> Option<&Group> {
        let local = local.to_canonical();
        self.groups.iter().find(|group| {
            let status = group.status.borrow();
            status.state == State::Master && status.vips.contains(&local)
        })
    }

    fn group_of(&self, local: IpAddr) -> Option<&Group> {
        let local = local.to_canonical();
        self.groups
            .iter()
            .find(|group| group.status.borrow().vips.contains(&local))
    }

    fn name_of(&self, node: NodeId) -> Arc<str> {
        if node == self.me {
            return self.name.clone();
        }
        let names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names
            .get(&node)
            .cloned()
            .unwrap_or_else(|| Arc::from(node.to_string()))
    }

    /// This node's load now, for its own report (`cpu_permille` measured once per tick).
    fn own_load(&self, group: &Group, own: &OwnReport, cpu_permille: u16) -> Load {
        let status = group.status.borrow();
        // The node's own health, not its VRRP state: a node that fails open is not in FAULT
        // but still fails. A FAULT for any other reason than health or a stale policy is a
        // lost link on the VRRP interface: no healthy member for the others' fail-open.
        let failure = if status.drained {
            Some("drained".to_owned())
        } else if let Some(why) = own.failure.borrow().clone() {
            Some(why)
        } else if status.state == State::Fault && own.behind.borrow().is_none() {
            Some("FAULT: its VRRP interface has no link".to_owned())
        } else {
            None
        };
        Load {
            active_connections: own.active_connections.get().max(0) as u32,
            cpu_permille,
            memory_bytes: resident_bytes(),
            failure,
            behind: own.behind.borrow().is_some(),
            policy_revision: Some(*own.policy.borrow().as_bytes()),
        }
    }

    /// Every second: this node's report to every peer, and to its own director.
    fn report(self: &Arc<Self>, mesh: &MeshHandle, own: &OwnReport) {
        let now = self.now_ms();
        let cpu = self.cpu_permille();
        for group in &self.groups {
            let load = self.own_load(group, own, cpu);
            let report = LoadReport {
                vrid: group.vrid,
                weight: own.weight,
                max_connections: own.max_connections,
                scan: own.scan,
                load: load.clone(),
                settings: group.settings.clone(),
                directing: group.status.borrow().state == State::Master,
            };
            mesh.broadcast_director(DirectorMessage::Load(report).encode());
            let mut state = group
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.director.report(self.me, load, now);
            self.review(group.vrid, &mut state, now);
            self.tell_fault_gate(group, &state, own, now);
        }
    }

    /// Whether `director` is confirmed dead as the director of group `vrid`
    /// ([`takeover::confirmed_dead`]), `linked` being the peers with a link up.
    fn confirmed_dead(
        &self,
        director: NodeId,
        vrid: u8,
        linked: &std::collections::HashSet<NodeId>,
        now: u64,
    ) -> bool {
        let Some(group) = self.groups.iter().find(|group| group.vrid == vrid) else {
            return false;
        };
        let directing = group.status.borrow().state == State::Master;
        let fresh = 3 * REPORT_INTERVAL.as_millis() as u64;
        let directed_by = (group.state.lock())
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .directed_by
            .filter(|(_, at)| now.saturating_sub(*at) <= fresh)
            .map(|(id, _)| id);
        takeover::confirmed_dead(
            director,
            self.me,
            linked.contains(&director),
            directing,
            directed_by,
        )
    }

    /// Every director confirmed dead: a scanning node cuts the connections it relayed here
    /// (reset, their upstream fetches dropped) and hands their list to whoever directs now
    /// (itself, or the group); the member that directs tickles every client of the dead one
    /// it knows of (its own list, the scanning nodes', the dead one's shared in-process
    /// share).
    fn settle_dead(&self, mesh: &MeshHandle, own: &OwnReport, now: u64) {
        let linked = self
            .linked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Each director that may be dead, with the groups it directed (by its connections).
        let mut candidates: HashMap<NodeId, std::collections::HashSet<u8>> = HashMap::new();
        if let Some(relayed) = &own.relayed {
            for director in relayed.directors() {
                if director == self.me || linked.contains(&director) {
                    continue;
                }
                let vrids = candidates.entry(director).or_default();
                for (_, vip) in relayed.clients_of(director) {
                    vrids.extend(self.group_of(vip.ip()).map(|group| group.vrid));
                }
            }
        }
        for (vrid, director) in (self.known.lock())
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .directors()
        {
            if !linked.contains(&director) {
                candidates.entry(director).or_default().insert(vrid);
            }
        }
        for (director, vrids) in candidates {
            if !(vrids.iter()).any(|vrid| self.confirmed_dead(director, *vrid, &linked, now)) {
                continue;
            }
            let name = self.name_of(director);
            // Its packets must no longer go to it: its clients' answers to the tickles
            // must reach this node's kernel.
            self.expire_forwarding(Some(director));
            let mut tickle = Vec::new();
            let cut = (own.relayed.as_ref()).map_or_else(Vec::new, |relayed| relayed.cut(director));
            if !cut.is_empty() {
                tracing::warn!(director = %name, connections = cut.len(), "director {name} is confirmed dead (another member directs now and no link to it is up): the {} connections it relayed here are reset and their upstream fetches dropped", cut.len());
            }
            // Those of a VIP this node holds it tickles; the others go to the group.
            let mut orphans: HashMap<u8, Vec<Connection>> = HashMap::new();
            for (client, vip) in cut {
                if self.directing(vip.ip()).is_some() {
                    tickle.push((client, vip));
                } else if let Some(group) = self.group_of(vip.ip()) {
                    orphans.entry(group.vrid).or_default().push((client, vip));
                }
            }
            for (vrid, connections) in orphans {
                let messages =
                    ConnectionList::messages(vrid, director, ListKind::Orphans, &connections, &[]);
                for list in messages {
                    mesh.broadcast_director(DirectorMessage::Connections(list).encode());
                }
            }
            let mut known = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for group in &self.groups {
                // Known but not directing: whoever directs has its own copy.
                let connections = known.take(group.vrid, director);
                if group.status.borrow().state == State::Master {
                    tickle.extend(connections);
                }
            }
            drop(known);
            self.tickle(director, tickle);
        }
    }

    /// Tickles each client of a dead director from the VIP it connected to (only VIPs this
    /// node holds), [`palisade_director::tickle::REPEAT`] times.
    fn tickle(&self, director: NodeId, mut connections: Vec<Connection>) {
        connections.retain(|(_, vip)| self.directing(vip.ip()).is_some());
        connections.sort_unstable();
        connections.dedup();
        if connections.is_empty() {
            return;
        }
        let name = self.name_of(director);
        let first: Vec<String> = (connections.iter().take(8))
            .map(|(client, vip)| format!("{client}->{vip}"))
            .collect();
        tracing::warn!(director = %name, connections = connections.len(), first = ?first, "tickling the {} client connections of dead director {name} from the VIP, so each fails now instead of hanging", connections.len());
        self.tickled.inc_by(connections.len() as u64);
        tokio::task::spawn_blocking(move || send_tickles(&connections));
    }

    /// A member's relays, cut (its scan port stopped answering while its reports stopped:
    /// its host is gone). Each client is reset at once rather than left waiting.
    fn cut_relays_to(&self, vrid: u8, node: NodeId) {
        let Some(group) = self.groups.iter().find(|group| group.vrid == vrid) else {
            return;
        };
        let mut state = group
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.probing.remove(&node);
        let relays = state.director.active(&node);
        if let Some(cut) = state.cuts.remove(&node) {
            cut.cancel();
            let name = self.name_of(node);
            tracing::warn!(instance = vrid, node = %name, relays, "Scanning partner {name} does not answer on its scan port and sends no reports: its {relays} relayed connections are cut (their clients reset)");
        }
    }

    /// Probes the scan port of a member that stopped reporting while the director relays
    /// to it: a failed probe cuts those relays.
    fn probe(self: &Arc<Self>, vrid: u8, node: NodeId, scan: SocketAddr) {
        let plane = self.clone();
        tokio::spawn(async move {
            let probe =
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(scan)).await;
            match probe {
                Ok(Ok(_alive)) => {
                    if let Some(group) = plane.groups.iter().find(|group| group.vrid == vrid) {
                        let mut state = group
                            .state
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        state.probing.remove(&node);
                    }
                }
                Ok(Err(_)) | Err(_) => plane.cut_relays_to(vrid, node),
            }
        });
    }

    /// Whether another member of `group` reports healthy, for the group's fault gate. For
    /// the first three report intervals nothing is known yet, so another member is taken to
    /// be healthy: a node that fails at start faults rather than fail open.
    fn tell_fault_gate(&self, group: &Group, state: &GroupState, own: &OwnReport, now: u64) {
        let Some(gate) = own.others_healthy.get(&group.vrid) else {
            return;
        };
        let settled = now > 3 * REPORT_INTERVAL.as_millis() as u64;
        let others = !settled || state.director.others_healthy(self.me, now);
        group
            .others_healthy
            .store(others, std::sync::atomic::Ordering::Relaxed);
        gate.send_if_modified(|known| {
            let modified = *known != others;
            *known = others;
            modified
        });
    }

    /// Every second: each member's state, logged when it changes (the seeds' words) and in
    /// the metrics. A member goes out by silence as well as by events, so it is looked at
    /// on the clock, not only when something arrives.
    fn review(self: &Arc<Self>, vrid: u8, state: &mut GroupState, now: u64) {
        let window = STICKY_WINDOW.as_millis() as u64;
        state
            .sticky
            .retain(|_, (_, seen)| now.saturating_sub(*seen) <= window);
        let members: Vec<(NodeId, String)> = (state.director.members())
            .map(|member| (member.id, member.name.clone()))
            .collect();
        for (id, name) in members {
            let out = state.director.out(&id, now);
            let labels = MemberLabels {
                vrid,
                node: name.clone(),
            };
            self.metrics
                .member_in
                .get_or_create(&labels)
                .set(i64::from(out.is_none()));
            self.metrics
                .connections
                .get_or_create(&labels)
                .set(i64::from(state.director.active(&id)));
            if out == Some(palisade_director::Out::NoReports)
                && id != self.me
                && state.director.active(&id) > 0
                && state.cuts.contains_key(&id)
                && let Some(scan) = state.scans.get(&id).copied()
                && state.probing.insert(id)
            {
                self.probe(vrid, id, scan);
            }
            let before = state.was_out.insert(id, out.clone());
            match (before.flatten(), out) {
                (None, Some(why)) if id != self.me => {
                    tracing::warn!(instance = vrid, node = %name, "Scanning partner has failed: {name} gets no new clients ({why})")
                }
                (Some(_), None) if id != self.me => {
                    tracing::info!(instance = vrid, node = %name, "Scanning partner {name} is back: it gets clients again (slow start)")
                }
                _ => {}
            }
        }
    }

    /// Every [`SHARE_INTERVAL`]: a new director reports at once (scanning nodes then know
    /// whom to give a dead director's connections), a director shares what changed in its
    /// in-process connections, and dead directors are settled.
    fn share_tick(self: &Arc<Self>, mesh: &MeshHandle, own: &OwnReport) {
        let mut new_director = false;
        for group in &self.groups {
            let directing = group.status.borrow().state == State::Master;
            let was = group
                .was_directing
                .swap(directing, std::sync::atomic::Ordering::Relaxed);
            new_director |= directing && !was;
            let (added, removed) = (group.share.lock())
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .changes();
            if directing {
                self.send_share(mesh, group.vrid, ListKind::ShareDelta, &added, &removed);
            }
        }
        if new_director {
            self.report(mesh, own);
        }
        self.expire_forwarding(None);
        self.settle_dead(mesh, own, self.now_ms());
    }

    /// This node's whole in-process share of every group it directs (a peer just linked).
    fn share_all(&self, mesh: &MeshHandle) {
        for group in &self.groups {
            if group.status.borrow().state != State::Master {
                continue;
            }
            let all = (group.share.lock())
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .all();
            self.send_share(mesh, group.vrid, ListKind::ShareFull, &all, &[]);
        }
    }

    /// This node's share of group `vrid`, in as many messages as it takes.
    fn send_share(
        &self,
        mesh: &MeshHandle,
        vrid: u8,
        kind: ListKind,
        added: &[Connection],
        removed: &[Connection],
    ) {
        for list in ConnectionList::messages(vrid, self.me, kind, added, removed) {
            mesh.broadcast_director(DirectorMessage::Connections(list).encode());
        }
    }

    /// Another member's connection list: a director's share, or a scanning node's orphans
    /// of a dead director (settled at once: the tickles should not wait).
    fn received_connections(
        &self,
        from: NodeId,
        list: ConnectionList,
        mesh: &MeshHandle,
        own: &OwnReport,
    ) {
        if !self.groups.iter().any(|group| group.vrid == list.vrid) {
            return;
        }
        let orphans = list.kind == ListKind::Orphans;
        let applied = (self.known.lock())
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(from, self.me, list);
        if let Err(error) = applied {
            tracing::warn!(node = %self.name_of(from), "director: connection list refused: {error}");
            return;
        }
        if orphans {
            self.settle_dead(mesh, own, self.now_ms());
        }
    }

    /// A member's report.
    fn received(
        self: &Arc<Self>,
        from: NodeId,
        addr: IpAddr,
        bytes: &[u8],
        mesh: &MeshHandle,
        own: &OwnReport,
    ) {
        let report = match DirectorMessage::decode(bytes) {
            Ok(DirectorMessage::Load(report)) => report,
            Ok(DirectorMessage::Connections(list)) => {
                self.received_connections(from, list, mesh, own);
                return;
            }
            Ok(DirectorMessage::Handover(handover)) => {
                self.received_handover(from, handover, own);
                return;
            }
            Err(error) => {
                tracing::warn!(%from, %error, "director message refused");
                return;
            }
        };
        let Some(group) = self.groups.iter().find(|group| group.vrid == report.vrid) else {
            return;
        };
        let name = self.name_of(from);
        let now = self.now_ms();
        let declared = self
            .declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|declared| {
                declared
                    .get(&from)
                    .is_some_and(|member| member.declares(group))
            });
        if declared == Some(false) {
            let first = self
                .undeclared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((from, report.vrid));
            if first {
                tracing::warn!(instance = report.vrid, node = %name, node_id = %from, "director: load report from {name} refused: the cluster's configuration does not declare it a member of VRID {} (it gets no clients)", report.vrid);
            }
            return;
        }
        let mut state = group
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let member = Member {
            id: from,
            name: name.to_string(),
            weight: report.weight,
            max_connections: report.max_connections,
        };
        // In a cluster the records decide the members (`set_declared`).
        if declared.is_none()
            && state.director.members().find(|known| known.id == from) != Some(&member)
        {
            let members: Vec<Member> = state
                .director
                .members()
                .filter(|known| known.id != from)
                .cloned()
                .chain([member])
                .collect();
            tracing::info!(instance = group.vrid, node = %name, weight = report.weight, "director: member of the group");
            state.director.set_members(members);
        }
        match report.scan {
            // An unspecified address: the one this link runs on.
            Some(scan) if scan.ip().is_unspecified() => {
                state.scans.insert(from, SocketAddr::new(addr, scan.port()));
            }
            Some(scan) => {
                state.scans.insert(from, scan);
            }
            None => {
                state.scans.remove(&from);
            }
        }
        // Settings that must agree: a difference is logged once (and shown in status).
        let differ = group.settings.differences(&report.settings);
        let before = if differ.is_empty() {
            state.settings_differ.remove(&from)
        } else {
            state.settings_differ.insert(from, differ.clone())
        };
        if !differ.is_empty() && before.as_ref() != Some(&differ) {
            tracing::warn!(instance = group.vrid, node = %name, "HA group settings differ from {name}'s: {}; set them alike on every member", differ.join("; "));
        }
        if report.directing {
            state.directed_by = Some((from, now));
        } else if state.directed_by.is_some_and(|(id, _)| id == from) {
            state.directed_by = None;
        }
        let mut load = report.load;
        if report.scan.is_none() && load.failure.is_none() {
            // Nothing to relay to: never a client's node.
            load.failure = Some("no scan port (director.scan_listen = \"off\")".to_owned());
        }
        state.director.report(from, load, now);
        self.tell_fault_gate(group, &state, own, now);
    }

    /// Each group's director as this node sees it; with `client`, that client's choice and
    /// why (the seeds' "why does one box get all the traffic?").
    pub fn describe(&self, client: Option<IpAddr>) -> serde_json::Value {
        let now = self.now_ms();
        let groups: Vec<serde_json::Value> = self
            .groups
            .iter()
            .map(|group| {
                let (directing, master) = {
                    let status = group.status.borrow();
                    (status.state == State::Master, status.master)
                };
                let state = group.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let director = &state.director;
                let mut sticky: HashMap<NodeId, usize> = HashMap::new();
                for (node, _) in state.sticky.values() {
                    *sticky.entry(*node).or_default() += 1;
                }
                // The director: this node, or the member whose fresh report says it directs,
                // else the member whose address is the group's master address.
                let fresh = 3 * REPORT_INTERVAL.as_millis() as u64;
                let director_id = if directing {
                    Some(self.me)
                } else {
                    (state.directed_by)
                        .filter(|(_, at)| now.saturating_sub(*at) <= fresh)
                        .map(|(id, _)| id)
                        .or_else(|| {
                            master.and_then(|master| {
                                (state.scans.iter())
                                    .find(|(_, scan)| {
                                        scan.ip().to_canonical() == master.to_canonical()
                                    })
                                    .map(|(id, _)| *id)
                            })
                        })
                };
                // As `mfend-lb -s`: the director shows every member, a scanning node the
                // director and itself.
                let members: Vec<serde_json::Value> = director
                    .members()
                    .filter(|member| {
                        directing || member.id == self.me || Some(member.id) == director_id
                    })
                    .map(|member| {
                        let load = director.load(&member.id);
                        serde_json::json!({
                            "name": member.name,
                            "node_id": member.id.to_string(),
                            "weight": member.weight,
                            "max_connections": member.max_connections,
                            "state": match director.out(&member.id, now) {
                                None => "in".to_owned(),
                                Some(out) => format!("out: {out}"),
                            },
                            "relayed_connections": director.active(&member.id),
                            "sticky_clients": sticky.get(&member.id).copied().unwrap_or(0),
                            "active_connections": load.map(|load| load.active_connections),
                            "memory_bytes": load.map(|load| load.memory_bytes),
                            "policy_revision": load
                                .and_then(|load| load.policy_revision)
                                .map(|revision| revision.iter().map(|byte| format!("{byte:02x}")).collect::<String>()),
                            "cpu_permille": load.map(|load| load.cpu_permille),
                            "scan": state.scans.get(&member.id).map(ToString::to_string),
                            "settings_differ": state.settings_differ.get(&member.id),
                        })
                    })
                    .collect();
                let client = client.map(|client| {
                    let choice = director.choose(client, self.me, now);
                    let name = |id: Option<&NodeId>| id.map(|id| self.name_of(*id).to_string());
                    let why = match &choice.reason {
                        Reason::Home => "its own node (rendezvous hashing of its address over the members' weights)".to_owned(),
                        Reason::Overflow { home, active, bound } => format!(
                            "its own node {} holds {active} connections, above its bound {bound} (bounded loads): the next node in its order",
                            self.name_of(*home)
                        ),
                        Reason::HomeAtCap { home, cap } => format!(
                            "its own node {} is at its cap of {cap} connections: the next node in its order",
                            self.name_of(*home)
                        ),
                        Reason::FailOpen => "no node is eligible: the director serves it (fail-open)".to_owned(),
                        Reason::AllAtCap => "every node is at its connection cap: refused".to_owned(),
                    };
                    serde_json::json!({
                        "client": client.to_string(),
                        "served_by": name(choice.order.first()),
                        "home": name(choice.home.as_ref()),
                        "why": why,
                        "candidates": choice.candidates.iter().map(|candidate| serde_json::json!({
                            "name": candidate.name,
                            "score": candidate.score,
                            "effective_weight": candidate.effective_weight,
                            "out": candidate.out.as_ref().map(ToString::to_string),
                            "relayed_connections": candidate.active,
                            "bound": (candidate.bound != u32::MAX).then_some(candidate.bound),
                        })).collect::<Vec<_>>(),
                    })
                });
                let director_name = director_id.map(|id| self.name_of(id).to_string());
                let failure = (self.failure.borrow().clone())
                    .or_else(|| self.behind.borrow().clone());
                let fail_open = failure.is_some()
                    && !group.others_healthy.load(std::sync::atomic::Ordering::Relaxed);
                serde_json::json!({
                    "vrid": group.vrid,
                    "directing": directing,
                    "failure": failure,
                    "fail_open": fail_open,
                    "director": director_name,
                    "members": members,
                    "client": client,
                })
            })
            .collect();
        serde_json::json!({ "groups": groups })
    }

    /// In a cluster: the members of each group, with their weights and caps, as the node
    /// records declare them (this node always, from its own configuration).
    fn set_declared(&self, records: &[palisade_replication::records::NodeRecord]) {
        let declared: HashMap<NodeId, Declared> = (records.iter())
            .filter_map(|record| Some((record.node, Declared::of(&record.bytes)?)))
            .collect();
        let mut known = self
            .declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.as_ref() == Some(&declared) {
            return;
        }
        {
            let mut names = self
                .names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (id, member) in &declared {
                names.insert(*id, Arc::from(member.name.as_str()));
            }
        }
        for group in &self.groups {
            let mut state = group
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let own = state
                .director
                .members()
                .find(|member| member.id == self.me)
                .cloned();
            let members: Vec<Member> = (declared.iter())
                .filter(|(id, member)| **id != self.me && member.declares(group))
                .map(|(id, member)| Member {
                    id: *id,
                    name: member.name.clone(),
                    weight: member.weight,
                    max_connections: member.max_connections,
                })
                .chain(own)
                .collect();
            if state.director.members().cloned().collect::<Vec<_>>() != members {
                let names: Vec<&str> = members.iter().map(|member| member.name.as_str()).collect();
                tracing::info!(instance = group.vrid, members = ?names, "director: members of the group from the cluster's configuration");
                state.director.set_members(members);
            }
        }
        *known = Some(declared);
    }

    /// Reports every second and takes the members' reports until `stop`; in a cluster
    /// (`declared_by`) reads the members from its node records.
    pub async fn run(
        self: Arc<Self>,
        mesh: MeshHandle,
        own: OwnReport,
        declared_by: Option<palisade_cluster::ClusterHandle>,
        stop: CancellationToken,
    ) {
        let mut events = mesh.subscribe();
        let _ = self.mesh.set(mesh.clone());
        let mut tick = tokio::time::interval(REPORT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut records = tokio::time::interval(RECORDS_INTERVAL);
        records.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut share_tick = tokio::time::interval(SHARE_INTERVAL);
        share_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.report(&mesh, &own),
                _ = share_tick.tick() => self.share_tick(&mesh, &own),
                _ = records.tick(), if declared_by.is_some() => {
                    if let Some(cluster) = &declared_by
                        && let Ok(records) = cluster.records().await
                    {
                        self.set_declared(&records);
                    }
                }
                event = events.recv() => match event {
                    Ok(MeshEvent::PeerUp(peer)) => {
                        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        names.insert(peer.id, Arc::from(peer.name.as_str()));
                        drop(names);
                        self.linked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(peer.id);
                        // It is alive: what was known of its connections is stale (its full
                        // share follows), and it hears this node's whole share.
                        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).forget(peer.id);
                        self.share_all(&mesh);
                    }
                    Ok(MeshEvent::PeerDown { peer, why }) => self.peer_down(&mesh, &own, peer, why),
                    Ok(MeshEvent::Director { from, addr, bytes }) => self.received(from, addr, &bytes, &mesh, &own),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

impl DirectorPlane {
    /// A peer's last link ended. A new incarnation proves its process gone; a lost link is
    /// only a hint, proved by one dial (a refused port); an orderly stop drains its own
    /// relays.
    fn peer_down(
        self: &Arc<Self>,
        mesh: &MeshHandle,
        own: &OwnReport,
        peer: palisade_peer_link::mesh::Peer,
        why: palisade_peer_link::mesh::Down,
    ) {
        use palisade_peer_link::mesh::Down;
        self.linked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&peer.id);
        if why == Down::Restarted {
            // Its sockets are gone: what a drain of it still sent back would reach nobody. (Its
            // new link is already up: it stays in the choice.)
            self.expire_forwarding(Some(peer.id));
        } else {
            // No report can come without a link: new clients go elsewhere now rather than
            // after three missed reports, each first trying a relay connect that may time out.
            let now = self.now_ms();
            for group in &self.groups {
                let mut state = group
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.director.link_lost(peer.id, why == Down::Left, now);
                self.review(group.vrid, &mut state, now);
                self.tell_fault_gate(group, &state, own, now);
            }
        }
        let relays_here =
            (own.relayed.as_ref()).is_some_and(|relayed| relayed.directors().contains(&peer.id));
        match why {
            Down::Restarted if relays_here => {
                // Its kernel reset its clients' connections when the process died.
                if let Some(relayed) = &own.relayed {
                    let cut = relayed.cut(peer.id).len();
                    let name = self.name_of(peer.id);
                    tracing::warn!(director = %name, connections = cut, "director {name} came back as a new process: the {cut} connections it relayed here are reset and their upstream fetches dropped");
                }
            }
            Down::Lost if relays_here => {
                let (mesh, relayed) = (mesh.clone(), own.relayed.clone());
                let name = self.name_of(peer.id);
                tokio::spawn(async move {
                    if mesh.confirm_death(peer.addr).await.proves_death()
                        && let Some(relayed) = relayed
                    {
                        let cut = relayed.cut(peer.id).len();
                        if cut > 0 {
                            tracing::warn!(director = %name, connections = cut, "director {name} is confirmed dead (its link port refused a dial): the {cut} connections it relayed here are reset and their upstream fetches dropped");
                        }
                    }
                });
            }
            _ => {}
        }
    }
}

impl Dispatch for DirectorPlane {
    fn route(&self, client: SocketAddr, local: SocketAddr) -> Route {
        let Some(group) = self.directing(local.ip()) else {
            return Route::Serve;
        };
        let now = self.now_ms();
        let mut state = group
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let choice = state.director.choose(client.ip(), self.me, now);
        let Some(first) = choice.order.first() else {
            return Route::Refuse;
        };
        // Counted under the same lock as the choice: concurrent choices see it.
        state.director.reserve(*first);
        let key = palisade_director::client_key(client.ip());
        if state.sticky.len() < STICKY_MAX || state.sticky.contains_key(&key) {
            state.sticky.insert(key, (*first, now));
        }
        let targets = choice
            .order
            .iter()
            .map(|node| {
                // A node without a key (no link up to it) is skipped by the relay.
                let (scan, key, cut) = if *node == self.me {
                    (None, None, CancellationToken::new())
                } else {
                    (
                        state.scans.get(node).copied(),
                        self.keys.sealing(self.me, *node),
                        state.cuts.entry(*node).or_default().clone(),
                    )
                };
                RelayTarget {
                    node: *node,
                    name: self.name_of(*node),
                    scan,
                    key,
                    cut,
                }
            })
            .collect();
        Route::Relay(targets)
    }

    fn outcome(&self, local: SocketAddr, node: NodeId, outcome: RelayOutcome) {
        let Some(group) = self.group_of(local.ip()) else {
            return;
        };
        let now = self.now_ms();
        let mut state = group
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            RelayOutcome::Established => state.director.relay_up(node),
            RelayOutcome::Connected => state.director.connected(node),
            RelayOutcome::Closed => state.director.closed(node),
            RelayOutcome::Refused => state.director.connect_refused(node, now),
            RelayOutcome::TimedOut => state.director.connect_timed_out(node, now),
        }
    }

    fn me(&self) -> NodeId {
        self.me
    }

    fn serving_here(&self, client: SocketAddr, local: SocketAddr) -> Option<Box<dyn Send + Sync>> {
        let group = self.directing(local.ip())?;
        let id = (group.share.lock())
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .list((client, local))?;
        Some(Box::new(Shared {
            share: group.share.clone(),
            id,
        }))
    }
}

impl DirectorPlane {
    /// The process's CPU use since the last call, in thousandths of all the machine's cores
    /// (0 the first time, or where /proc cannot be read).
    fn cpu_permille(&self) -> u16 {
        let Some(ticks) = process_cpu_ticks() else {
            return 0;
        };
        let now = Instant::now();
        let mut last = self
            .cpu
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let share = last.map_or(0.0, |(then, before)| {
            let elapsed = now.duration_since(then).as_secs_f64();
            let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .unwrap_or(100) as f64;
            let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
            if elapsed <= 0.0 {
                0.0
            } else {
                ticks.saturating_sub(before) as f64 / per_second / elapsed / cores
            }
        });
        *last = Some((now, ticks));
        (share * 1000.0).round().clamp(0.0, 1000.0) as u16
    }
}

/// User and system CPU time of this process, in clock ticks (from /proc/self/stat).
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces) start after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // utime and stime are fields 14 and 15; the state (field 3) is the first after ')'.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The process's resident memory (from /proc/self/statm; 0 if unreadable).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The dispatch the proxy's listeners start with, filled in once the HA groups run.
#[derive(Default)]
pub struct LateDispatch(std::sync::OnceLock<Arc<DirectorPlane>>);

impl LateDispatch {
    pub fn set(&self, plane: Arc<DirectorPlane>) {
        let _ = self.0.set(plane);
    }
}

impl Dispatch for LateDispatch {
    fn route(&self, client: SocketAddr, local: SocketAddr) -> Route {
        match self.0.get() {
            Some(plane) => plane.route(client, local),
            None => Route::Serve,
        }
    }

    fn outcome(&self, local: SocketAddr, node: NodeId, outcome: RelayOutcome) {
        if let Some(plane) = self.0.get() {
            plane.outcome(local, node, outcome);
        }
    }

    fn me(&self) -> NodeId {
        self.0
            .get()
            .map_or(NodeId::from_bytes([0; 16]), |plane| plane.me)
    }

    fn serving_here(&self, client: SocketAddr, local: SocketAddr) -> Option<Box<dyn Send + Sync>> {
        self.0.get()?.serving_here(client, local)
    }
}

/// Sends each connection's client its tickles from the VIP it connected to, on raw sockets
/// (this node holds the VIP now); [`palisade_director::tickle::REPEAT`] rounds,
/// [`palisade_director::tickle::SPACING`] apart. Blocking: run on a blocking thread.
fn send_tickles(connections: &[Connection]) {
    use palisade_director::tickle;
    use socket2::{Domain, Protocol, Socket, Type};
    // IPPROTO_RAW: the packet carries its own IP header (the VIP as source).
    let raw = |domain| Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)));
    let (v4, v6) = (raw(Domain::IPV4), raw(Domain::IPV6));
    let mut unsent = 0usize;
    let mut last_error = None;
    let packets: Vec<(SocketAddr, Vec<u8>)> = (connections.iter())
        .filter_map(|(client, vip)| Some((*client, tickle::packet(*vip, *client)?)))
        .collect();
    for round in 0..tickle::REPEAT {
        if round > 0 {
            std::thread::sleep(tickle::SPACING);
        }
        for (client, packet) in &packets {
            let socket = match client {
                SocketAddr::V4(_) => v4.as_ref(),
                SocketAddr::V6(_) => v6.as_ref(),
            };
            let to = socket2::SockAddr::from(SocketAddr::new(client.ip(), 0));
            let sent = match socket {
                Ok(socket) => socket.send_to(packet, &to).map(drop),
                Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
            };
            if let Err(error) = sent {
                unsent += 1;
                last_error = Some(error);
            }
        }
    }
    if let Some(error) = last_error {
        tracing::warn!(unsent, %error, "{unsent} of {} tickles were not sent: those clients wait for their own timeouts", packets.len() * tickle::REPEAT as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_declares_a_group_by_its_vrid_and_the_same_vips() {
        let record = serde_json::json!({
            "name": "node2",
            "director": {"weight": 100, "max_connections": 0},
            "vrrp": [{"vrid": 51, "vips": ["10.0.0.100", "10.0.0.101"]}],
        });
        let Some(declared) = Declared::of(record.to_string().as_bytes()) else {
            panic!("a readable record");
        };
        let ip = |text: &str| text.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert!(declared.declares_vips(51, &[ip("10.0.0.101"), ip("10.0.0.100")]));
        // Another segment's group with the same VRID, or another VRID: not this group.
        assert!(!declared.declares_vips(51, &[ip("10.9.0.100")]));
        assert!(!declared.declares_vips(52, &[ip("10.0.0.100"), ip("10.0.0.101")]));
        assert!(Declared::of(b"not json").is_none());
    }

    #[test]
    fn this_process_cpu_time_is_read_and_grows_with_work() {
        let Some(before) = process_cpu_ticks() else {
            panic!("/proc/self/stat unreadable");
        };
        let started = Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let after = process_cpu_ticks().unwrap_or(0);
        assert!(after > before, "{before} -> {after}");
    }
}
