//! Replicas in virtual time, for property tests and convergence figures.
//!
//! Every node is a real [`Replica`]; its messages go through the real codec ([`SyncMessage`]
//! bytes) over a network that delays, loses, duplicates and reorders them with a seeded
//! PRNG, and whose pairs can be partitioned and healed. Each node's wall clock has its own
//! skew. Every `digest_interval` each replica ticks (anti-entropy); a partition takes the
//! links down and healing brings them up, so each end sends a digest at once.

use std::collections::BTreeMap;
use std::time::Duration;

use palisade_identity::{NodeId, NodePriority};

use crate::history::{History, Settled};
use crate::hlc::HlcTime;
use crate::replica::{Base, Replica, ReplicaEvent};
use crate::revision::{ContentId, RevisionId};
use crate::wire::SyncMessage;

pub struct SimNode {
    pub replica: Replica,
    /// Added to the cluster's time to give this node's wall clock.
    pub skew_ms: i64,
    /// Settlements this node made (conflicts resolved).
    pub settled: Vec<Settled>,
    /// Revisions refused for a time too far ahead.
    pub refused: usize,
    /// The node's content store.
    pub contents: std::collections::HashMap<ContentId, Vec<u8>>,
    /// The head whose contents are all here (what the node would activate).
    pub ready: Option<RevisionId>,
    /// Revisions the replica asked to store, in order.
    pub persisted: Vec<RevisionId>,
}

impl SimNode {
    pub fn history(&self) -> &History {
        self.replica.history()
    }
}

/// The network's behaviour.
#[derive(Clone, Copy, Debug)]
pub struct Network {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Loss and duplication, in millionths.
    pub loss_ppm: u32,
    pub duplicate_ppm: u32,
    pub digest_interval: Duration,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            loss_ppm: 0,
            duplicate_ppm: 0,
            digest_interval: Duration::from_secs(5),
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<SimNode>,
    network: Network,
    now_ms: u64,
    queue: BTreeMap<(u64, u64), (usize, usize, Vec<u8>)>,
    seq: u64,
    cut: Vec<(usize, usize)>,
    rng: u64,
    next_digest_ms: u64,
    /// Messages and bytes sent (lost ones included), for cost figures.
    pub messages: u64,
    pub bytes: u64,
}

const MAX_AHEAD: Duration = Duration::from_secs(120);

impl Cluster {
    /// `nodes` (node priority, clock skew in ms), every pair linked, at wall time `start_ms`.
    pub fn new(nodes: &[(u16, i64)], network: Network, seed: u64, start_ms: u64) -> Cluster {
        let mut nodes: Vec<SimNode> = nodes
            .iter()
            .enumerate()
            .map(|(index, &(priority, skew_ms))| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(index as u64 + 1).to_be_bytes());
                SimNode {
                    replica: Replica::new(
                        NodeId::from_bytes(id),
                        NodePriority::new(priority),
                        History::new(),
                        HlcTime::default(),
                        MAX_AHEAD,
                    ),
                    skew_ms,
                    settled: Vec::new(),
                    refused: 0,
                    contents: std::collections::HashMap::new(),
                    ready: None,
                    persisted: Vec::new(),
                }
            })
            .collect();
        let ids: Vec<NodeId> = nodes.iter().map(|node| node.replica.me()).collect();
        for node in &mut nodes {
            for id in &ids {
                node.replica.peer_up(*id);
            }
        }
        let mut cluster = Cluster {
            nodes,
            network,
            now_ms: start_ms,
            queue: BTreeMap::new(),
            seq: 0,
            cut: Vec::new(),
            rng: seed,
            next_digest_ms: start_ms + network.digest_interval.as_millis() as u64,
            messages: 0,
            bytes: 0,
        };
        for node in 0..cluster.nodes.len() {
            cluster.flush(node);
        }
        cluster
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn wall(&self, node: usize) -> u64 {
        self.now_ms.saturating_add_signed(self.nodes[node].skew_ms)
    }

    /// A save on `node` on top of its current head, pushed to every peer.
    pub fn save(&mut self, node: usize, text: &str) -> RevisionId {
        let wall = self.wall(node);
        self.nodes[node]
            .contents
            .insert(ContentId::of(text.as_bytes()), text.as_bytes().to_vec());
        let saved = self.nodes[node].replica.save(
            wall,
            Base::Head,
            ContentId::of(text.as_bytes()),
            "admin",
            text,
        );
        self.nodes[node]
            .replica
            .resolve(ContentId::of(text.as_bytes()), []);
        self.flush(node);
        match saved {
            Ok(revision) => revision.id,
            Err(error) => {
                unreachable!("a save on the head with short texts is never refused: {error}")
            }
        }
    }

    /// `node` cannot install its head: it refuses the save behind it (see
    /// [`Replica::refuse`]); the refused save's id, if there was one to refuse.
    pub fn refuse(&mut self, node: usize) -> Option<RevisionId> {
        let wall = self.wall(node);
        let replica = &mut self.nodes[node].replica;
        let head = replica.head()?.id;
        let save = replica.history().save_behind(&head)?;
        replica.refuse(wall, save, "sim", "does not compile here")?;
        self.flush(node);
        Some(save)
    }

    /// Cuts `a` from `b`: their links go down (each replica hears of it).
    pub fn partition(&mut self, a: usize, b: usize) {
        if self.cut.contains(&(a, b)) {
            return;
        }
        self.cut.push((a, b));
        self.cut.push((b, a));
        let (id_a, id_b) = (self.nodes[a].replica.me(), self.nodes[b].replica.me());
        self.nodes[a].replica.peer_down(id_b);
        self.nodes[b].replica.peer_down(id_a);
    }

    /// Splits the nodes into two sides that cannot talk.
    pub fn split(&mut self, side: &[usize]) {
        for a in side.iter().copied() {
            for b in (0..self.nodes.len()).filter(|b| !side.contains(b)) {
                self.partition(a, b);
            }
        }
    }

    /// Repairs every cut: the links come back up, and each end sends the other its digest
    /// (the reconnect half of anti-entropy).
    pub fn heal(&mut self) {
        for (a, b) in std::mem::take(&mut self.cut) {
            let id_b = self.nodes[b].replica.me();
            self.nodes[a].replica.peer_up(id_b);
            self.flush(a);
        }
    }

    pub fn set_network(&mut self, network: Network) {
        self.network = network;
    }

    /// Runs every event up to `now + duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now_ms + duration.as_millis() as u64;
        while let Some(next) = self.next_event(until) {
            self.now_ms = self.now_ms.max(next);
            match self.queue.first_key_value() {
                Some(((at, _), _)) if *at <= self.next_digest_ms => {
                    if let Some((_, (from, to, bytes))) = self.queue.pop_first() {
                        self.deliver(from, to, &bytes);
                    }
                }
                _ => {
                    self.next_digest_ms = next + self.network.digest_interval.as_millis() as u64;
                    for node in 0..self.nodes.len() {
                        self.nodes[node].replica.tick();
                        self.flush(node);
                    }
                }
            }
        }
        self.now_ms = until;
    }

    /// Runs until every node has the same head (or `limit` passes); the time it took.
    pub fn run_until_converged(&mut self, limit: Duration) -> Option<Duration> {
        let start = self.now_ms;
        while self.now_ms - start < limit.as_millis() as u64 {
            if self.converged().is_some() {
                return Some(Duration::from_millis(self.now_ms - start));
            }
            self.run_for(Duration::from_millis(1));
        }
        None
    }

    fn next_event(&self, until: u64) -> Option<u64> {
        let next = match self.queue.first_key_value() {
            Some(((at, _), _)) => (*at).min(self.next_digest_ms),
            None => self.next_digest_ms,
        };
        (next <= until).then_some(next)
    }

    /// Whether every node has one head, the same one, with its content (ready to activate).
    pub fn converged(&self) -> Option<RevisionId> {
        let first = self.nodes.first()?.replica.head()?.id;
        self.nodes
            .iter()
            .all(|node| {
                node.replica.head().map(|head| head.id) == Some(first) && node.ready == Some(first)
            })
            .then_some(first)
    }

    fn node_index(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|node| node.replica.me() == id)
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let Ok(message) = SyncMessage::decode(bytes) else {
            unreachable!("the sim only carries encoded messages");
        };
        let wall = self.wall(to);
        let sender = self.nodes[from].replica.me();
        self.nodes[to].replica.handle(sender, message, wall);
        self.flush(to);
    }

    /// Sends what the replica queued and records its events.
    fn flush(&mut self, node: usize) {
        while let Some(event) = self.nodes[node].replica.poll_event() {
            let this = &mut self.nodes[node];
            match event {
                ReplicaEvent::Settled(settled) => this.settled.push(settled),
                ReplicaEvent::ClockSkew { .. } => this.refused += 1,
                ReplicaEvent::ContentArrived { id, bytes } => {
                    this.contents.insert(id, bytes);
                    // The sim's contents name nothing further.
                    this.replica.resolve(id, []);
                }
                ReplicaEvent::ContentWanted { from, ids } => {
                    let mut lacking = Vec::new();
                    for id in ids {
                        match this.contents.get(&id).cloned() {
                            Some(bytes) => this.replica.send_content(from, id, &bytes),
                            None => lacking.push(id),
                        }
                    }
                    this.replica.no_content(from, lacking);
                }
                ReplicaEvent::HeadReady(head) => this.ready = Some(head),
                ReplicaEvent::Persist(revisions) => {
                    this.persisted
                        .extend(revisions.iter().map(|revision| revision.id));
                }
                ReplicaEvent::NewHead(_) | ReplicaEvent::Refused { .. } => {}
            }
        }
        while let Some((to, message)) = self.nodes[node].replica.poll_transmit() {
            if let Some(to) = self.node_index(to) {
                self.send(node, to, message.encode());
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.messages += 1;
        self.bytes += bytes.len() as u64;
        if self.cut.contains(&(from, to)) || self.chance(self.network.loss_ppm) {
            return;
        }
        let copies = if self.chance(self.network.duplicate_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let spread = (self.network.max_delay)
                .saturating_sub(self.network.min_delay)
                .as_millis() as u64;
            let delay = self.network.min_delay.as_millis() as u64 + self.random() % (spread + 1);
            self.seq += 1;
            self.queue
                .insert((self.now_ms + delay, self.seq), (from, to, bytes.clone()));
        }
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.random() % 1_000_000 < u64::from(ppm)
    }

    /// SplitMix64.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
