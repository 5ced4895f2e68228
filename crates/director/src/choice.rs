//! Members, their state as the director sees it, and the choice.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use palisade_identity::NodeId;

/// A member of the HA group, from replicated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    /// Its share of clients relative to the others' (0: maintenance, no new clients).
    pub weight: u32,
    /// Connections at most (0: no cap).
    pub max_connections: u32,
}

/// The group's settings (replicated: every director decides alike).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Seeds the rendezvous hash (from the cluster's configuration).
    pub seed: u64,
    /// ε of bounded loads (0.25: no node above 1.25 times its share); `None`: no overflow,
    /// a client always goes home.
    pub balance_factor: Option<f64>,
    /// How long a returning node takes to get all its clients back.
    pub slow_start: Duration,
    /// Load reports are expected this often; three missed take the node out.
    pub report_interval: Duration,
    /// A node out for a refused connect or timeouts is tried again no sooner than this,
    /// and only once it has reported since.
    pub retry_after: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            seed: 0,
            balance_factor: Some(0.25),
            slow_start: Duration::from_secs(60),
            report_interval: Duration::from_secs(1),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// What a node says about itself every second.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub active_connections: u32,
    /// CPU use, in thousandths of all its cores.
    pub cpu_permille: u16,
    pub memory_bytes: u64,
    /// Its port monitor and deep health check; `Some(why)` when failing.
    pub failure: Option<String>,
    /// Behind the cluster's policy for too long (central management).
    pub behind: bool,
    /// The policy revision it runs (its compiled bundle's id), for status.
    pub policy_revision: Option<[u8; 32]>,
}

/// Why a node gets no new clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Weight 0.
    Maintenance,
    /// No load report yet, or three missed.
    NoReports,
    /// It reports failure (port monitor, deep health check).
    Failed(String),
    /// It runs a stale policy.
    Behind,
    /// A relay connect to its scan port was refused.
    Refused,
    /// Three relay connects in a row timed out.
    TimedOut,
    /// Its peer link went down, and no report came since.
    LinkDown,
    /// It said goodbye on its peer link (an orderly stop), and no report came since.
    Stopping,
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Out::Maintenance => f.write_str("maintenance (weight 0)"),
            Out::NoReports => f.write_str("missed its load reports"),
            Out::Failed(why) => write!(f, "current state: failure ({why})"),
            Out::Behind => f.write_str("behind the cluster's policy"),
            Out::Refused => f.write_str("refused a relay connect"),
            Out::TimedOut => f.write_str("three relay connects timed out"),
            Out::LinkDown => f.write_str("its peer link is down"),
            Out::Stopping => f.write_str("it is stopping"),
        }
    }
}

/// Why the first node of a [`Choice`] was picked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The client's own node (rendezvous hashing).
    Home,
    /// Home holds more than its bound of live connections: the next node in the client's
    /// order that is below its own.
    Overflow {
        home: NodeId,
        active: u32,
        bound: u32,
    },
    /// Home is at its connection cap.
    HomeAtCap { home: NodeId, cap: u32 },
    /// No node is eligible: the director serves the client itself.
    FailOpen,
    /// Every eligible node is at its cap: the client is refused.
    AllAtCap,
}

/// The client's key: its IPv4 address, or the /64 of its IPv6 address (one host's privacy
/// addresses share it). An IPv4-mapped IPv6 address is its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    bytes: [u8; 8],
    len: u8,
}

pub fn client_key(client: IpAddr) -> ClientKey {
    let mut bytes = [0u8; 8];
    match client.to_canonical() {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            ClientKey { bytes, len: 4 }
        }
        IpAddr::V6(v6) => {
            bytes.copy_from_slice(&v6.octets()[..8]);
            ClientKey { bytes, len: 8 }
        }
    }
}

impl ClientKey {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// One member as the choice saw it (for `palisade status --client`).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub id: NodeId,
    pub name: String,
    pub weight: u32,
    /// The weight used now (lower during a slow start).
    pub effective_weight: f64,
    /// Its rendezvous score for this client (higher first).
    pub score: f64,
    pub out: Option<Out>,
    /// The director's live connections to it.
    pub active: u32,
    /// Its bound under bounded loads (`u32::MAX`: none).
    pub bound: u32,
}

/// Where a connection goes: nodes to try in order (a refused or timed-out connect moves on
/// to the next), and why the first.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub order: Vec<NodeId>,
    pub reason: Reason,
    /// The client's home, if any node is eligible.
    pub home: Option<NodeId>,
    /// Every member, eligible ones first in the client's order.
    pub candidates: Vec<Candidate>,
}

#[derive(Clone, Debug, Default)]
struct State {
    last_report_ms: Option<u64>,
    load: Option<Load>,
    refused_ms: Option<u64>,
    timeouts: u32,
    last_timeout_ms: u64,
    /// It has been eligible before: coming back is a return (slow start).
    ever_in: bool,
    /// Its weight went from 0 (maintenance) to more: its next eligibility is a return.
    returning: bool,
    /// When it came back after being out: its slow start runs from here.
    back_ms: Option<u64>,
    /// The director's live connections to it.
    active: u32,
    /// How its last peer link ended, if no report came since.
    link_down: Option<LinkDown>,
}

/// How a member's last peer link ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkDown {
    Lost,
    /// With a goodbye: it is stopping.
    Goodbye,
}

/// Missed reports before a node is out.
const MISSED_REPORTS: u64 = 3;
/// Timeouts in a row before a node is out.
const TIMEOUTS: u32 = 3;
/// A slow start raises the weight in this many steps.
const SLOW_START_STEPS: u64 = 10;

/// The director's view of the group, and its choice for each new connection.
#[derive(Clone, Debug)]
pub struct Director {
    settings: Settings,
    members: BTreeMap<NodeId, Member>,
    state: HashMap<NodeId, State>,
}

impl Director {
    pub fn new(settings: Settings, members: impl IntoIterator<Item = Member>) -> Director {
        let mut director = Director {
            settings,
            members: BTreeMap::new(),
            state: HashMap::new(),
        };
        director.set_members(members);
        director
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The replicated member list changed; what is known of members that stay is kept. A
    /// member whose weight comes back from 0 (maintenance) returns through a slow start.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = Member>) {
        let members: BTreeMap<NodeId, Member> = members
            .into_iter()
            .map(|member| (member.id, member))
            .collect();
        for (id, member) in &members {
            let was_maintenance = self.members.get(id).is_some_and(|old| old.weight == 0);
            if was_maintenance
                && member.weight > 0
                && let Some(state) = self.state.get_mut(id)
            {
                state.returning = true;
            }
        }
        self.members = members;
        let members = &self.members;
        self.state.retain(|id, _| members.contains_key(id));
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// A load report from `node` (the director reports its own too).
    pub fn report(&mut self, node: NodeId, load: Load, now_ms: u64) {
        if !self.members.contains_key(&node) {
            return;
        }
        let was_out = self.out(&node, now_ms).is_some();
        let state = self.state.entry(node).or_default();
        state.last_report_ms = Some(now_ms);
        state.load = Some(load);
        // A report came over a link that is up (events arrive in order).
        state.link_down = None;
        self.settle(node, was_out, now_ms);
    }

    /// The last peer link to `node` went down (`goodbye`: it said so, an orderly stop): out
    /// until it reports again (over a new link). No report could arrive meanwhile, so it
    /// would be out after three missed reports anyway; this spares the clients sent to it in
    /// between a relay connect that times out (a dead host) before the next node is tried.
    /// A lost link turns into [`Out::NoReports`] once three reports are missed (the driver
    /// then probes the node's scan port); a stopping node stays [`Out::Stopping`] (it is
    /// draining what it has: no probe must cut that).
    pub fn link_lost(&mut self, node: NodeId, goodbye: bool, now_ms: u64) {
        if !self.members.contains_key(&node) {
            return;
        }
        let was_out = self.out(&node, now_ms).is_some();
        self.state.entry(node).or_default().link_down = Some(if goodbye {
            LinkDown::Goodbye
        } else {
            LinkDown::Lost
        });
        self.settle(node, was_out, now_ms);
    }

    /// A relay connect to `node` was refused: out at once.
    pub fn connect_refused(&mut self, node: NodeId, now_ms: u64) {
        let was_out = self.out(&node, now_ms).is_some();
        self.state.entry(node).or_default().refused_ms = Some(now_ms);
        self.settle(node, was_out, now_ms);
    }

    /// A relay connect to `node` timed out: out after three in a row.
    pub fn connect_timed_out(&mut self, node: NodeId, now_ms: u64) {
        let was_out = self.out(&node, now_ms).is_some();
        let state = self.state.entry(node).or_default();
        state.timeouts = state.timeouts.saturating_add(1);
        state.last_timeout_ms = now_ms;
        self.settle(node, was_out, now_ms);
    }

    /// A connection to `node` is up (relayed, or served here): counted until [`closed`].
    ///
    /// [`closed`]: Director::closed
    pub fn connected(&mut self, node: NodeId) {
        self.reserve(node);
        self.relay_up(node);
    }

    /// Counts a connection for `node` before its relay is up (at the choice, so concurrent
    /// choices see it); [`closed`] releases it, whatever became of the relay.
    ///
    /// [`closed`]: Director::closed
    pub fn reserve(&mut self, node: NodeId) {
        let state = self.state.entry(node).or_default();
        state.active = state.active.saturating_add(1);
    }

    /// A relay connect to `node` succeeded: its run of timeouts ends.
    pub fn relay_up(&mut self, node: NodeId) {
        self.state.entry(node).or_default().timeouts = 0;
    }

    pub fn closed(&mut self, node: NodeId) {
        if let Some(state) = self.state.get_mut(&node) {
            state.active = state.active.saturating_sub(1);
        }
    }

    /// The director's live connections to `node`.
    pub fn active(&self, node: &NodeId) -> u32 {
        self.state.get(node).map_or(0, |state| state.active)
    }

    /// The last load `node` reported.
    pub fn load(&self, node: &NodeId) -> Option<&Load> {
        self.state.get(node)?.load.as_ref()
    }

    /// Notes a return (the start of a slow start) after any input about `node`.
    fn settle(&mut self, node: NodeId, was_out: bool, now_ms: u64) {
        let is_out = self.out(&node, now_ms).is_some();
        let state = self.state.entry(node).or_default();
        // Back after having been in (whether it went out by an event or by silence): a slow
        // start. A node's first eligibility (at the director's start) is no return.
        if (was_out || state.returning) && !is_out && state.ever_in {
            state.back_ms = Some(now_ms);
            state.returning = false;
        }
        state.ever_in |= !is_out;
    }

    /// Why `node` gets no new clients now, if it does not.
    pub fn out(&self, node: &NodeId, now_ms: u64) -> Option<Out> {
        let member = self.members.get(node)?;
        if member.weight == 0 {
            return Some(Out::Maintenance);
        }
        let Some(state) = self.state.get(node) else {
            return Some(Out::NoReports);
        };
        let interval = self.settings.report_interval.as_millis() as u64;
        // State without a report (a connect counted first) is no report.
        let Some(last) = state.last_report_ms else {
            return Some(Out::NoReports);
        };
        if state.link_down == Some(LinkDown::Goodbye) {
            return Some(Out::Stopping);
        }
        if now_ms.saturating_sub(last) > MISSED_REPORTS * interval {
            return Some(Out::NoReports);
        }
        if state.link_down == Some(LinkDown::Lost) {
            return Some(Out::LinkDown);
        }
        let retry = self.settings.retry_after.as_millis() as u64;
        // Out until retry_after has passed and a report came since.
        let recovered = |at: u64| now_ms >= at.saturating_add(retry) && last > at;
        if let Some(refused) = state.refused_ms
            && !recovered(refused)
        {
            return Some(Out::Refused);
        }
        if state.timeouts >= TIMEOUTS && !recovered(state.last_timeout_ms) {
            return Some(Out::TimedOut);
        }
        let Some(load) = state.load.as_ref() else {
            return Some(Out::NoReports);
        };
        if let Some(why) = &load.failure {
            return Some(Out::Failed(why.clone()));
        }
        if load.behind {
            return Some(Out::Behind);
        }
        None
    }

    /// Whether a member other than `me` reports itself healthy (a fresh report without a
    /// failure, and not behind the cluster's policy). While none does, a failing node fails open (as AWS NLB does when every
    /// target is unhealthy): it stays in the VRRP election and serves, so priority, not
    /// health, decides who holds the VIP and the best-priority node keeps it, instead of
    /// every member faulting in turn (a traffic spike that fills each node's connection limit
    /// would fail each deep check). A member that stopped reporting is gone, not healthy; a
    /// drained one reports failure.
    pub fn others_healthy(&self, me: NodeId, now_ms: u64) -> bool {
        let interval = self.settings.report_interval.as_millis() as u64;
        self.members.keys().any(|id| {
            *id != me
                && self.state.get(id).is_some_and(|state| {
                    let fresh = state.last_report_ms.is_some_and(|last| {
                        now_ms.saturating_sub(last) <= MISSED_REPORTS * interval
                    });
                    fresh
                        && (state.load.as_ref())
                            .is_some_and(|load| load.failure.is_none() && !load.behind)
                })
        })
    }

    /// The weight a node has now: its configured weight, a tenth at a time during a slow
    /// start.
    fn effective_weight(&self, member: &Member, now_ms: u64) -> f64 {
        let weight = f64::from(member.weight);
        let slow = self.settings.slow_start.as_millis() as u64;
        let Some(back) = self.state.get(&member.id).and_then(|state| state.back_ms) else {
            return weight;
        };
        if slow == 0 {
            return weight;
        }
        let elapsed = now_ms.saturating_sub(back);
        let step = (elapsed * SLOW_START_STEPS / slow + 1).min(SLOW_START_STEPS);
        weight * step as f64 / SLOW_START_STEPS as f64
    }

    /// Where a new connection from `client` goes now (see the crate docs). Changes nothing:
    /// the caller reports what happened ([`connected`], [`connect_refused`], ...).
    ///
    /// [`connected`]: Director::connected
    /// [`connect_refused`]: Director::connect_refused
    pub fn choose(&self, client: IpAddr, me: NodeId, now_ms: u64) -> Choice {
        let key = client_key(client);
        let mut candidates: Vec<Candidate> = self
            .members
            .values()
            .map(|member| {
                let effective_weight = self.effective_weight(member, now_ms);
                Candidate {
                    id: member.id,
                    name: member.name.clone(),
                    weight: member.weight,
                    effective_weight,
                    score: score(self.settings.seed, key, member.id, effective_weight),
                    out: self.out(&member.id, now_ms),
                    active: self.active(&member.id),
                    bound: u32::MAX,
                }
            })
            .collect();
        // Eligible first, each group by score (ties by id: the same order everywhere).
        candidates.sort_by(|a, b| {
            (a.out.is_some())
                .cmp(&b.out.is_some())
                .then(b.score.total_cmp(&a.score))
                .then(a.id.cmp(&b.id))
        });
        let eligible = candidates.iter().take_while(|c| c.out.is_none()).count();
        if eligible == 0 {
            return Choice {
                order: vec![me],
                reason: Reason::FailOpen,
                home: None,
                candidates,
            };
        }
        if let Some(epsilon) = self.settings.balance_factor {
            // Each node's share of the live connections, this one counted, times 1 + ε.
            let total: u64 = candidates[..eligible]
                .iter()
                .map(|c| u64::from(c.active))
                .sum::<u64>()
                + 1;
            let weights: f64 = candidates[..eligible]
                .iter()
                .map(|c| c.effective_weight)
                .sum();
            for candidate in &mut candidates[..eligible] {
                let share = total as f64 * candidate.effective_weight / weights;
                // One more than the paper's bound: at a handful of connections ((1 + ε)
                // times a share below 1 is 1), a node holding one would be full and its
                // clients would bounce between nodes; stickiness must hold at low load.
                candidate.bound = ((1.0 + epsilon) * share).ceil() as u32 + 1;
            }
        }
        let home = candidates[0].id;
        let cap = |c: &Candidate| {
            self.members
                .get(&c.id)
                .map_or(0, |member| member.max_connections)
        };
        let under_cap = |c: &Candidate| cap(c) == 0 || c.active < cap(c);
        let order: Vec<NodeId> = candidates[..eligible]
            .iter()
            .filter(|c| c.active < c.bound && under_cap(c))
            .map(|c| c.id)
            .collect();
        let first = &candidates[0];
        let reason = match order.first() {
            None => Reason::AllAtCap,
            Some(id) if *id == home => Reason::Home,
            Some(_) if !under_cap(first) => Reason::HomeAtCap {
                home,
                cap: cap(first),
            },
            Some(_) => Reason::Overflow {
                home,
                active: first.active,
                bound: first.bound,
            },
        };
        Choice {
            order,
            reason,
            home: Some(home),
            candidates,
        }
    }
}

/// The rendezvous score of `node` for `key`: −w / ln(u), u uniform in (0, 1) from a hash
/// of the seed, the key and the node id (the "logarithmic method" of weighted HRW: a node
/// wins a share of keys proportional to its weight, and changing one node's weight moves
/// keys only to or from that node).
fn score(seed: u64, key: ClientKey, node: NodeId, weight: f64) -> f64 {
    // The key's length goes in too: an IPv4 address and a /64 beginning with its bytes
    // are different clients.
    let mut input = [0u8; 25];
    let bytes = key.as_bytes();
    input[..bytes.len()].copy_from_slice(bytes);
    input[8..24].copy_from_slice(node.as_bytes());
    input[24] = key.len;
    let hash = twox_hash::XxHash3_64::oneshot_with_seed(seed, &input);
    // 53 bits, centred in their interval: never 0 nor 1.
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / unit.ln()
}
