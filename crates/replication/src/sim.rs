//! Nodes replicating revisions in virtual time, for property tests.
//!
//! Each node holds a [`History`] and an [`Hlc`] over its own wall clock (a skew per node).
//! A save is pushed to every peer at once; every `digest_interval` each node sends each peer
//! its heads; a node that hears of a revision it lacks asks for it, and asks again for the
//! parents of anything that arrives ahead of them. Messages are delayed, lost, duplicated
//! and reordered by a seeded PRNG, and pairs can be partitioned and healed.

use std::collections::BTreeMap;
use std::time::Duration;

use palisade_identity::{NodeId, NodePriority};

use crate::history::{History, Inserted, Settled};
use crate::hlc::{Hlc, HlcTime};
use crate::revision::{ContentId, Revision, RevisionId};

#[derive(Clone, Debug)]
enum Message {
    Push(Revision),
    Digest(Vec<RevisionId>),
    Want(Vec<RevisionId>),
}

#[derive(Debug)]
pub struct SimNode {
    pub id: NodeId,
    pub priority: NodePriority,
    pub history: History,
    pub hlc: Hlc,
    /// Added to the LAN's time to give this node's wall clock.
    pub skew_ms: i64,
    /// Settlements this node made (conflicts resolved).
    pub settled: Vec<Settled>,
    /// Revisions refused for a time too far ahead.
    pub refused: usize,
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
    queue: BTreeMap<(u64, u64), (usize, usize, Message)>,
    seq: u64,
    cut: Vec<(usize, usize)>,
    rng: u64,
    next_digest_ms: u64,
    /// Messages sent, for cost figures.
    pub messages: u64,
}

const MAX_AHEAD: Duration = Duration::from_secs(120);

impl Cluster {
    /// `nodes` (priority, clock skew in ms), starting at wall time `start_ms`.
    pub fn new(nodes: &[(u16, i64)], network: Network, seed: u64, start_ms: u64) -> Cluster {
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(index, &(priority, skew_ms))| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(index as u64 + 1).to_be_bytes());
                SimNode {
                    id: NodeId::from_bytes(id),
                    priority: NodePriority::new(priority),
                    history: History::new(),
                    hlc: Hlc::new(HlcTime::default(), MAX_AHEAD),
                    skew_ms,
                    settled: Vec::new(),
                    refused: 0,
                }
            })
            .collect();
        Cluster {
            nodes,
            network,
            now_ms: start_ms,
            queue: BTreeMap::new(),
            seq: 0,
            cut: Vec::new(),
            rng: seed,
            next_digest_ms: start_ms,
            messages: 0,
        }
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
        let time = self.nodes[node].hlc.now(wall);
        let parent = self.nodes[node].history.head().map(|head| head.id);
        let revision = Revision::save(
            parent,
            self.nodes[node].id,
            self.nodes[node].priority,
            time,
            ContentId::of(text.as_bytes()),
            "admin",
            text,
        );
        let id = revision.id;
        let _ = self.nodes[node].history.insert(revision.clone());
        self.settle(node);
        for to in 0..self.nodes.len() {
            if to != node {
                self.send(node, to, Message::Push(revision.clone()));
            }
        }
        id
    }

    pub fn partition(&mut self, a: usize, b: usize) {
        self.cut.push((a, b));
        self.cut.push((b, a));
    }

    /// Splits the nodes into two sides that cannot talk.
    pub fn split(&mut self, side: &[usize]) {
        for a in side.iter().copied() {
            for b in (0..self.nodes.len()).filter(|b| !side.contains(b)) {
                self.partition(a, b);
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn set_network(&mut self, network: Network) {
        self.network = network;
    }

    /// Runs every event up to `now + duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now_ms + duration.as_millis() as u64;
        loop {
            let next_message = self.queue.keys().next().map(|(at, _)| *at);
            let next = match next_message {
                Some(at) if at <= self.next_digest_ms => at,
                _ => self.next_digest_ms,
            };
            if next > until {
                break;
            }
            self.now_ms = self.now_ms.max(next);
            if next_message == Some(next) {
                if let Some(((_, _), (from, to, message))) = self.queue.pop_first() {
                    self.deliver(from, to, message);
                }
            } else {
                self.next_digest_ms = next + self.network.digest_interval.as_millis() as u64;
                for from in 0..self.nodes.len() {
                    let history = &self.nodes[from].history;
                    let heads: Vec<RevisionId> = history
                        .frontier()
                        .chain(history.head())
                        .map(|revision| revision.id)
                        .collect();
                    for to in 0..self.nodes.len() {
                        if to != from {
                            self.send(from, to, Message::Digest(heads.clone()));
                        }
                    }
                }
            }
        }
        self.now_ms = until;
    }

    /// Whether every node has one head, the same one.
    pub fn converged(&self) -> Option<RevisionId> {
        let first = self.nodes.first()?.history.head()?.id;
        self.nodes
            .iter()
            .all(|node| node.history.head().map(|head| head.id) == Some(first))
            .then_some(first)
    }

    fn settle(&mut self, node: usize) {
        while let Some(settled) = self.nodes[node].history.settle() {
            self.nodes[node].settled.push(settled);
        }
    }

    fn deliver(&mut self, from: usize, to: usize, message: Message) {
        match message {
            Message::Push(revision) => {
                let wall = self.wall(to);
                if self.nodes[to].hlc.observe(revision.time, wall).is_err() {
                    self.nodes[to].refused += 1;
                    return;
                }
                match self.nodes[to].history.insert(revision) {
                    Ok(Inserted::Pending { missing }) => {
                        self.send(to, from, Message::Want(missing))
                    }
                    Ok(Inserted::New | Inserted::Known) | Err(_) => {}
                }
                self.settle(to);
            }
            Message::Digest(heads) => {
                let missing: Vec<RevisionId> = heads
                    .into_iter()
                    .filter(|id| !self.nodes[to].history.contains(id))
                    .collect();
                if !missing.is_empty() {
                    self.send(to, from, Message::Want(missing));
                }
            }
            Message::Want(ids) => {
                for id in ids {
                    if let Some(revision) = self.nodes[to].history.get(&id).cloned() {
                        self.send(to, from, Message::Push(revision));
                    }
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        self.messages += 1;
        if self.cut.contains(&(from, to)) || self.chance(self.network.loss_ppm) {
            return;
        }
        let copies = if self.chance(self.network.duplicate_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let spread = self
                .network
                .max_delay
                .saturating_sub(self.network.min_delay)
                .as_millis() as u64;
            let delay = self.network.min_delay.as_millis() as u64 + self.random() % (spread + 1);
            self.seq += 1;
            self.queue
                .insert((self.now_ms + delay, self.seq), (from, to, message.clone()));
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
