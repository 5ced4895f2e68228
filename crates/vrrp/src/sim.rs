//! A LAN of VRRP routers in virtual time, for deterministic tests (quinn's `Pair`, turmoil's
//! `partition` / `crash`, holo-vrrp's conformance scenarios).
//!
//! Every router sits on one segment. An advert a router sends is encoded by the real codec,
//! carried over each directed link (which may delay it, lose it or be cut) and decoded again
//! by each receiver with TTL 255, so the codec runs in every test. The clock is virtual:
//! [`Lan::step`] jumps to the next delivery or timer, so a test of a 1 s interval takes no
//! time, and every instant is exact to the microsecond.
//!
//! With [`Lan::enable_peer_links`], the nodes also have the peer links of the driver: each
//! node's status reaches the others, a crash closes its links (a [`PeerEvent::LinkLost`] at
//! every other node), [`Action::ConfirmDeath`] is answered as a dial would be (the death
//! proved if the node is down, nothing if it is up), and [`Action::SendHandover`] arrives as
//! [`PeerEvent::Handover`]; [`Lan::cut_peer_link`] loses a link between two live nodes.
//!
//! Events at the same instant run in a fixed order: first every packet due (in the order
//! sent, including those sent with zero delay while delivering), then the timers of the
//! routers in index order. Loss draws from a PRNG seeded in [`Lan::new`], so a failing seed
//! replays exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use crate::packet::{DecodeContext, REQUIRED_TTL, multicast_group};
use crate::router::{
    Action, Command, CommandError, ConfigErrors, PeerEvent, Router, RouterConfig, STATUS_REPEAT,
    State,
};
use crate::time::Instant;
use crate::types::VrrpPriority;

/// What one router did and when: the LAN's log, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub at: Instant,
    pub node: usize,
    pub action: Action,
}

/// N routers on one segment; see the [module docs](self).
#[derive(Debug)]
pub struct Lan {
    now: Instant,
    nodes: Vec<Node>,
    /// Packets on the wire, by delivery time, then by order of sending.
    in_flight: BTreeMap<(Instant, u64), Delivery>,
    next_seq: u64,
    /// Directed links (from, to); absent means a perfect link.
    links: HashMap<(usize, usize), Link>,
    rng_state: u64,
    log: Vec<Record>,
    peer_links: bool,
}

#[derive(Debug)]
struct Node {
    cfg: RouterConfig,
    router: Router,
    /// False after a crash: the router neither hears nor acts, and its VIPs stay configured,
    /// as on a host whose daemon was killed.
    up: bool,
    /// The VIPs configured on this node's interface.
    vips: BTreeSet<IpAddr>,
    /// The priority its peer links last reported (peer links only).
    published: Option<(VrrpPriority, bool)>,
    /// Which run of the process this is (a restart is a new incarnation).
    incarnation: u64,
    /// The incarnation of each other node this node last heard from.
    known: HashMap<usize, u64>,
    /// When it next repeats its status on the peer links (peer links only).
    status_due: Option<Instant>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Link {
    delay: Duration,
    /// Probability of losing a packet, in millionths.
    loss_ppm: u32,
    cut: bool,
    /// Adverts are lost, the peer link still carries (multicast filtered on the path).
    adverts_cut: bool,
}

#[derive(Debug)]
struct Delivery {
    to: usize,
    what: Delivered,
}

#[derive(Debug)]
enum Delivered {
    Packet { ctx: DecodeContext, bytes: Vec<u8> },
    Peer(PeerEvent),
}

impl Lan {
    /// An empty LAN at time zero; `seed` drives packet loss.
    pub fn new(seed: u64) -> Lan {
        Lan {
            now: Instant::ZERO,
            nodes: Vec::new(),
            in_flight: BTreeMap::new(),
            next_seq: 0,
            links: HashMap::new(),
            rng_state: seed,
            log: Vec::new(),
            peer_links: false,
        }
    }

    /// Adds a router (in Initialize state, not started) and returns its index.
    pub fn add_router(&mut self, cfg: RouterConfig) -> Result<usize, ConfigErrors> {
        let router = Router::new(cfg.clone(), self.now)?;
        self.nodes.push(Node {
            cfg,
            router,
            up: true,
            vips: BTreeSet::new(),
            published: None,
            incarnation: 0,
            known: HashMap::new(),
            status_due: None,
        });
        Ok(self.nodes.len() - 1)
    }

    // === getters ===

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn router(&self, node: usize) -> &Router {
        &self.nodes[node].router
    }

    /// False once crashed, until restarted.
    pub fn is_up(&self, node: usize) -> bool {
        self.nodes[node].up
    }

    /// The VIPs configured on the node's interface (a crashed node keeps its own).
    pub fn vips(&self, node: usize) -> &BTreeSet<IpAddr> {
        &self.nodes[node].vips
    }

    /// Every node with `vip` configured, crashed or not.
    pub fn vip_holders(&self, vip: IpAddr) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&node| self.nodes[node].vips.contains(&vip))
            .collect()
    }

    /// The running nodes in Master state.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&node| self.nodes[node].up && self.nodes[node].router.state() == State::Master)
            .collect()
    }

    /// Everything every router did, in order.
    pub fn log(&self) -> &[Record] {
        &self.log
    }

    /// The actions of `node` at or after `since`, with their time.
    pub fn actions_since(&self, node: usize, since: Instant) -> Vec<(Instant, Action)> {
        self.log
            .iter()
            .filter(|record| record.node == node && record.at >= since)
            .map(|record| (record.at, record.action.clone()))
            .collect()
    }

    /// When the next packet is due or the next timer of a running router fires.
    pub fn next_event_at(&self) -> Option<Instant> {
        let packet = self.in_flight.keys().next().map(|&(at, _)| at);
        let timers = (self.nodes.iter())
            .filter(|node| node.up)
            .filter_map(|node| {
                node.router
                    .poll_timeout()
                    .into_iter()
                    .chain(node.status_due)
                    .min()
            });
        packet.into_iter().chain(timers).min()
    }

    // === events ===

    /// The Startup event for `node`.
    pub fn start(&mut self, node: usize) {
        if self.nodes[node].up {
            self.nodes[node].router.handle_startup(self.now);
            self.drain(node);
        }
    }

    /// Starts every node, in index order.
    pub fn start_all(&mut self) {
        for node in 0..self.nodes.len() {
            self.start(node);
        }
    }

    /// Gives every node peer links to every other (see the [module docs](self)).
    pub fn enable_peer_links(&mut self) {
        self.peer_links = true;
    }

    /// Stops `node` silently (kill -9): no priority-0 advert, its VIPs stay configured. Its
    /// kernel closes its peer links.
    pub fn crash(&mut self, node: usize) {
        self.nodes[node].up = false;
        self.nodes[node].published = None;
        self.nodes[node].status_due = None;
        let peer = self.nodes[node].cfg.primary_address;
        for to in self.others(node) {
            self.send_peer(node, to, PeerEvent::LinkLost { peer });
        }
    }

    /// The peer link between two live nodes is lost (a reset on the path): each gets a
    /// [`PeerEvent::LinkLost`] for the other, although both are alive.
    pub fn cut_peer_link(&mut self, a: usize, b: usize) {
        let (addr_a, addr_b) = (
            self.nodes[a].cfg.primary_address,
            self.nodes[b].cfg.primary_address,
        );
        self.schedule(
            self.now,
            b,
            Delivered::Peer(PeerEvent::LinkLost { peer: addr_a }),
        );
        self.schedule(
            self.now,
            a,
            Delivered::Peer(PeerEvent::LinkLost { peer: addr_b }),
        );
    }

    /// A fresh process on a crashed (or running) node: a new router from the same config,
    /// started at once. It removes the VIPs its predecessor left.
    pub fn restart(&mut self, node: usize) {
        let router = Router::new(self.nodes[node].cfg.clone(), self.now);
        let Ok(router) = router else {
            unreachable!("the config was validated by add_router");
        };
        self.nodes[node].router = router;
        self.nodes[node].up = true;
        self.nodes[node].incarnation += 1;
        self.nodes[node].published = None;
        self.nodes[node].status_due = None;
        self.start(node);
    }

    /// A graceful stop: the Shutdown command (a Master sends priority 0 and hands over),
    /// then goodbyes on the peer links.
    pub fn shutdown(&mut self, node: usize) {
        // Shutdown is never refused.
        let _ = self.command(node, Command::Shutdown);
        let peer = self.nodes[node].cfg.primary_address;
        for to in self.others(node) {
            self.send_peer(node, to, PeerEvent::Left { peer });
        }
    }

    /// Tracked health of `node`: `true` means unhealthy.
    pub fn set_fault(&mut self, node: usize, faulty: bool) {
        // Fault is never refused.
        let _ = self.command(node, Command::Fault(faulty));
    }

    /// Any command; a crashed node ignores it.
    pub fn command(&mut self, node: usize, command: Command) -> Result<(), CommandError> {
        if !self.nodes[node].up {
            return Ok(());
        }
        let res = self.nodes[node].router.handle_command(self.now, command);
        self.drain(node);
        res
    }

    /// Delivers raw bytes (a forged or broken packet) to `node` now, with the IP-layer facts
    /// in `ctx`.
    pub fn inject(&mut self, node: usize, ctx: DecodeContext, bytes: Vec<u8>) {
        self.schedule(self.now, node, Delivered::Packet { ctx, bytes });
    }

    /// Delivers a peer-link event to `node` now (a message a peer could send).
    pub fn peer_event(&mut self, node: usize, event: PeerEvent) {
        self.schedule(self.now, node, Delivered::Peer(event));
    }

    // === the network ===

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&mut self, a: usize, b: usize) {
        self.link(a, b).cut = true;
        self.link(b, a).cut = true;
    }

    /// Adverts between `a` and `b` are lost both ways while their peer link still works:
    /// the VRRP network split, the links not (a split brain the links detect).
    pub fn split_adverts(&mut self, a: usize, b: usize) {
        self.link(a, b).adverts_cut = true;
        self.link(b, a).adverts_cut = true;
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&mut self, node: usize) {
        for other in (0..self.nodes.len()).filter(|&other| other != node) {
            self.partition(node, other);
        }
    }

    /// Repairs every cut and stops all loss; delays stay.
    pub fn heal(&mut self) {
        for link in self.links.values_mut() {
            link.cut = false;
            link.adverts_cut = false;
            link.loss_ppm = 0;
        }
    }

    /// Latency of both directions between `a` and `b`.
    pub fn set_delay(&mut self, a: usize, b: usize, delay: Duration) {
        self.link(a, b).delay = delay;
        self.link(b, a).delay = delay;
    }

    /// Loss in millionths on both directions between `a` and `b`.
    pub fn set_loss(&mut self, a: usize, b: usize, loss_ppm: u32) {
        self.link(a, b).loss_ppm = loss_ppm;
        self.link(b, a).loss_ppm = loss_ppm;
    }

    // === time ===

    /// Runs every event due at the next event time; false when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(at) = self.next_event_at() else {
            return false;
        };
        self.now = self.now.max(at);
        let now = self.now;
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let delivery = entry.remove();
            let node = &mut self.nodes[delivery.to];
            if node.up {
                match delivery.what {
                    // Refused packets are counted in the router's stats.
                    Delivered::Packet { ctx, bytes } => {
                        let _ = node.router.handle_packet(now, &ctx, &bytes);
                    }
                    // A refused handover changes nothing; the RFC rules go on.
                    Delivered::Peer(event) => {
                        let _ = node.router.handle_peer(now, event);
                    }
                }
                self.drain(delivery.to);
            }
        }
        for idx in 0..self.nodes.len() {
            let node = &mut self.nodes[idx];
            if node.up && node.router.poll_timeout().is_some_and(|at| at <= now) {
                node.router.handle_timeout(now);
                self.drain(idx);
            }
        }
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].up && self.nodes[idx].status_due.is_some_and(|at| at <= now) {
                self.repeat_status(idx);
            }
        }
        true
    }

    /// Steps until `pred` holds (true) or the next event is after `deadline` (then `pred`
    /// decides). The clock stops at the event that made `pred` true.
    pub fn drive_until(&mut self, mut pred: impl FnMut(&Lan) -> bool, deadline: Instant) -> bool {
        loop {
            if pred(self) {
                return true;
            }
            match self.next_event_at() {
                Some(at) if at <= deadline => {
                    self.step();
                }
                _ => return pred(self),
            }
        }
    }

    /// Runs every event up to and including `deadline`, then sets the clock to it.
    pub fn run_until(&mut self, deadline: Instant) {
        while self.next_event_at().is_some_and(|at| at <= deadline) {
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// [`Lan::run_until`] `now + duration`.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now + duration);
    }

    // === internals ===

    fn link(&mut self, from: usize, to: usize) -> &mut Link {
        self.links.entry((from, to)).or_default()
    }

    /// Applies the actions of `node` to the LAN.
    fn drain(&mut self, node: usize) {
        while let Some(action) = self.nodes[node].router.poll_action() {
            match &action {
                Action::SendAdvert(advert) => {
                    let src = self.nodes[node].cfg.primary_address;
                    let dst = multicast_group(src);
                    let Ok(bytes) = advert.encode(src, dst) else {
                        unreachable!("a validated router only sends adverts that encode");
                    };
                    let ctx = DecodeContext::new(src, dst, REQUIRED_TTL);
                    for to in (0..self.nodes.len()).filter(|&to| to != node) {
                        let link = self.links.get(&(node, to)).copied().unwrap_or_default();
                        if link.cut || link.adverts_cut || self.lose(link.loss_ppm) {
                            continue;
                        }
                        let what = Delivered::Packet {
                            ctx,
                            bytes: bytes.clone(),
                        };
                        self.schedule(self.now + link.delay, to, what);
                    }
                }
                Action::AddVip(vip) => {
                    self.nodes[node].vips.insert(*vip);
                }
                Action::RemoveVip(vip) => {
                    self.nodes[node].vips.remove(vip);
                }
                Action::SendGratuitous { .. } | Action::Notify(_) => {}
                Action::ConfirmDeath { peer } => {
                    // One dial: refused if the node is down, or answered by a new
                    // incarnation: proof. The same incarnation: the link is back and both
                    // statuses cross it again.
                    if let Some(target) = self.node_at(*peer) {
                        let known = self.nodes[node].known.get(&target).copied();
                        let same = known == Some(self.nodes[target].incarnation);
                        if self.nodes[target].up && same {
                            self.exchange_statuses(node, target);
                        } else {
                            let delay = self.link(node, target).delay;
                            let event = Delivered::Peer(PeerEvent::Died { peer: *peer });
                            self.schedule(self.now + delay + delay, node, event);
                        }
                    }
                }
                Action::SendHandover { to } => {
                    let from = self.nodes[node].cfg.primary_address;
                    if let Some(target) = self.node_at(*to) {
                        self.send_peer(node, target, PeerEvent::Handover { from });
                    }
                }
            }
            self.log.push(Record {
                at: self.now,
                node,
                action,
            });
        }
        self.publish_status(node);
    }

    /// What the driver does after every batch of actions: report this node's priority on
    /// its peer links when it changed (0 while not in the election).
    fn publish_status(&mut self, node: usize) {
        if !self.peer_links || !self.nodes[node].up {
            return;
        }
        let router = &self.nodes[node].router;
        let priority = match router.state() {
            State::Initialize | State::Fault => VrrpPriority::STOP,
            State::Backup | State::Master => router.priority(),
        };
        let master = router.state() == State::Master;
        if self.nodes[node].status_due.is_none() {
            self.nodes[node].status_due = Some(self.now + STATUS_REPEAT);
        }
        if self.nodes[node].published == Some((priority, master)) {
            return;
        }
        self.nodes[node].published = Some((priority, master));
        self.send_status(node);
    }

    /// The driver repeats its status every [`STATUS_REPEAT`], so that a peer can tell a
    /// live node from one whose host died before its link timed out.
    fn repeat_status(&mut self, node: usize) {
        self.nodes[node].status_due = Some(self.now + STATUS_REPEAT);
        self.send_status(node);
    }

    /// `node`'s last published status, as its peers get it.
    fn published_status(&self, node: usize) -> Option<PeerEvent> {
        let (priority, master) = self.nodes[node].published?;
        Some(PeerEvent::Status {
            peer: self.nodes[node].cfg.primary_address,
            priority,
            master,
        })
    }

    /// Sends `node`'s last published status to every other node.
    fn send_status(&mut self, node: usize) {
        if let Some(status) = self.published_status(node) {
            for to in self.others(node) {
                self.send_peer(node, to, status);
            }
        }
    }

    /// Both nodes send their current status over their (re-made) link.
    fn exchange_statuses(&mut self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            if let Some(status) = self.published_status(from) {
                self.send_peer(from, to, status);
            }
        }
    }

    fn others(&self, node: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&to| to != node).collect()
    }

    fn node_at(&self, address: IpAddr) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.cfg.primary_address == address)
    }

    /// A peer-link message from `from` to `to` over their link (TCP: never lost, but not
    /// through a cut).
    fn send_peer(&mut self, from: usize, to: usize, event: PeerEvent) {
        if !self.peer_links {
            return;
        }
        let link = self.links.get(&(from, to)).copied().unwrap_or_default();
        if link.cut {
            return;
        }
        let at = self.now + link.delay;
        if let PeerEvent::Status { peer, .. } = event {
            // A link from a new incarnation of `from`: the receiver's mesh reports the old
            // process gone (`Down::Restarted`) before the new one's status.
            let incarnation = self.nodes[from].incarnation;
            let known = self.nodes[to].known.insert(from, incarnation);
            if known.is_some_and(|known| known != incarnation) {
                self.schedule(at, to, Delivered::Peer(PeerEvent::Died { peer }));
            }
        }
        self.schedule(at, to, Delivered::Peer(event));
    }

    fn schedule(&mut self, at: Instant, to: usize, what: Delivered) {
        self.next_seq += 1;
        self.in_flight
            .insert((at, self.next_seq), Delivery { to, what });
    }

    fn lose(&mut self, loss_ppm: u32) -> bool {
        loss_ppm > 0 && self.next_random() % 1_000_000 < u64::from(loss_ppm)
    }

    /// SplitMix64: small, seedable, good enough to pick lost packets.
    fn next_random(&mut self) -> u64 {
        self.rng_state = self.rng_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
