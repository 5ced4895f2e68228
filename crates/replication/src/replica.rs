//! One node's side of replication, sans-IO (quinn's shape): saves and received messages go
//! in with the wall-clock time, messages for peers and events for the node come out.
//!
//! - A save is pushed to every peer at once (fast path).
//! - [`Replica::tick`] (every few seconds) and [`Replica::peer_up`] send each peer a digest
//!   of the frontier; a peer that lacks something asks for it, and asks for the parents of
//!   anything that arrives ahead of them (anti-entropy: whatever the push missed).
//! - Every change settles the history and reports a new head, which the node validates and
//!   activates (through the policy installer).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use palisade_identity::{NodeId, NodePriority};

use crate::history::{History, HistoryError, Inserted, Settled};
use crate::hlc::{ClockSkew, Hlc, HlcTime};
use crate::revision::{ContentId, Revision, RevisionId};
use crate::wire::{MAX_IDS, MAX_MESSAGE_BYTES, MAX_REVISIONS, SyncMessage};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// The head changed: its content is the one to run.
    NewHead(RevisionId),
    /// Concurrent saves were settled; the losers stay in history.
    Settled(Settled),
    /// A peer's revision was refused: its time is too far ahead of this node's clock.
    ClockSkew { from: NodeId, skew: ClockSkew },
    /// A peer sent a revision that is not valid.
    Refused { from: NodeId, error: HistoryError },
}

/// What the save was based on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Whatever the head is now (a node's own saves, `--force`).
    Head,
    /// The revision the operator's copy came from: refused if the head has moved since.
    Revision(Option<RevisionId>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaveError {
    #[error(
        "the policy changed since your copy (based on {base}, the cluster is at {head}): merge the changes, or save with --force"
    )]
    Stale { base: String, head: String },
    #[error("{0} is too long")]
    TooLong(&'static str),
}

pub struct Replica {
    me: NodeId,
    priority: NodePriority,
    history: History,
    hlc: Hlc,
    peers: BTreeSet<NodeId>,
    head: Option<RevisionId>,
    outbox: VecDeque<(NodeId, SyncMessage)>,
    events: VecDeque<ReplicaEvent>,
}

impl Replica {
    /// A replica with `history` (from the store; empty at first), a clock that never goes
    /// below `high_water`, refusing peers' stamps more than `max_ahead` ahead.
    pub fn new(
        me: NodeId,
        priority: NodePriority,
        history: History,
        high_water: HlcTime,
        max_ahead: Duration,
    ) -> Replica {
        // Never stamp a save before something already held, even if the mark was persisted
        // late.
        let newest = history.revisions().map(|revision| revision.time).max();
        let high_water = newest.map_or(high_water, |newest| newest.max(high_water));
        let mut replica = Replica {
            me,
            priority,
            history,
            hlc: Hlc::new(high_water, max_ahead),
            peers: BTreeSet::new(),
            head: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        };
        replica.settle();
        replica
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn head(&self) -> Option<&Revision> {
        self.history.head()
    }

    /// Persist this before using a stamp durably (see [`Hlc::high_water`]).
    pub fn high_water(&self) -> HlcTime {
        self.hlc.high_water()
    }

    pub fn set_priority(&mut self, priority: NodePriority) {
        self.priority = priority;
    }

    /// A link to `peer` is up: tell it what this node has.
    pub fn peer_up(&mut self, peer: NodeId) {
        if peer != self.me && self.peers.insert(peer) {
            let digest = self.digest();
            self.outbox.push_back((peer, digest));
        }
    }

    pub fn peer_down(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// A save on this node: checked against `base`, stamped, pushed to every peer.
    pub fn save(
        &mut self,
        wall_ms: u64,
        base: Base,
        content: ContentId,
        saved_by: &str,
        message: &str,
    ) -> Result<Revision, SaveError> {
        if saved_by.len() > crate::wire::MAX_SAVED_BY {
            return Err(SaveError::TooLong("the saver's name"));
        }
        if message.len() > crate::wire::MAX_MESSAGE {
            return Err(SaveError::TooLong("the message"));
        }
        let head = self.history.head().map(|head| head.id);
        if let Base::Revision(base) = base
            && base != head
        {
            let name = |id: Option<RevisionId>| match id {
                Some(id) => format!("{id:?}"),
                None => "nothing".to_owned(),
            };
            return Err(SaveError::Stale {
                base: name(base),
                head: name(head),
            });
        }
        let time = self.hlc.now(wall_ms);
        let revision = Revision::save(
            head,
            self.me,
            self.priority,
            time,
            content,
            saved_by,
            message,
        );
        // Its parent is the head, and its id is its own hash: it goes in.
        let _ = self.history.insert(revision.clone());
        self.settle();
        let push = SyncMessage::Revisions(vec![revision.clone()]);
        for peer in &self.peers {
            self.outbox.push_back((*peer, push.clone()));
        }
        Ok(revision)
    }

    /// A message from `peer`.
    pub fn handle(&mut self, from: NodeId, message: SyncMessage, wall_ms: u64) {
        match message {
            SyncMessage::Revisions(revisions) => {
                let mut wanted = Vec::new();
                for revision in revisions {
                    if let Err(skew) = self.hlc.observe(revision.time, wall_ms) {
                        self.events
                            .push_back(ReplicaEvent::ClockSkew { from, skew });
                        continue;
                    }
                    match self.history.insert(revision) {
                        Ok(Inserted::Pending { missing }) => wanted.extend(missing),
                        Ok(Inserted::New | Inserted::Known) => {}
                        Err(error) => self.events.push_back(ReplicaEvent::Refused { from, error }),
                    }
                }
                self.want(from, wanted);
                self.settle();
            }
            SyncMessage::Digest { frontier, head } => {
                let missing = frontier
                    .into_iter()
                    .chain(head)
                    .filter(|id| !self.history.contains(id))
                    .collect();
                self.want(from, missing);
            }
            SyncMessage::Want(ids) => {
                // At most one message's worth per want: whatever more a peer lacks, its next
                // digest round asks for again (a want of a thousand ids cannot queue
                // megabytes).
                let found: Vec<Revision> = ids
                    .iter()
                    .filter_map(|id| self.history.get(id).cloned())
                    .take(MAX_REVISIONS)
                    .collect();
                // Cut to fit a peer-link frame.
                let mut batch = Vec::new();
                let mut size = 0;
                for revision in found {
                    let length = revision.to_bytes().len();
                    if !batch.is_empty() && size + length > MAX_MESSAGE_BYTES {
                        self.outbox
                            .push_back((from, SyncMessage::Revisions(std::mem::take(&mut batch))));
                        size = 0;
                    }
                    size += length;
                    batch.push(revision);
                }
                if !batch.is_empty() {
                    self.outbox.push_back((from, SyncMessage::Revisions(batch)));
                }
            }
        }
    }

    /// Anti-entropy: a digest to every peer.
    pub fn tick(&mut self) {
        let digest = self.digest();
        for peer in &self.peers {
            self.outbox.push_back((*peer, digest.clone()));
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(NodeId, SyncMessage)> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ReplicaEvent> {
        self.events.pop_front()
    }

    fn digest(&self) -> SyncMessage {
        SyncMessage::Digest {
            frontier: self
                .history
                .frontier()
                .map(|save| save.id)
                .take(MAX_IDS)
                .collect(),
            head: self.history.head().map(|head| head.id),
        }
    }

    fn want(&mut self, from: NodeId, mut ids: Vec<RevisionId>) {
        ids.sort();
        ids.dedup();
        for chunk in ids.chunks(MAX_IDS) {
            self.outbox
                .push_back((from, SyncMessage::Want(chunk.to_vec())));
        }
    }

    fn settle(&mut self) {
        if let Some(settled) = self.history.settle() {
            self.events.push_back(ReplicaEvent::Settled(settled));
        }
        let head = self.history.head().map(|head| head.id);
        if head != self.head {
            self.head = head;
            if let Some(head) = head {
                self.events.push_back(ReplicaEvent::NewHead(head));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(last: u8) -> Replica {
        Replica::new(
            NodeId::from_bytes([last; 16]),
            NodePriority::default(),
            History::new(),
            HlcTime::default(),
            Duration::from_secs(120),
        )
    }

    #[test]
    fn a_save_from_a_stale_copy_is_refused_and_force_saves_on_the_head() {
        let mut node = replica(1);
        let first = node.save(
            1_000,
            Base::Revision(None),
            ContentId::of(b"a"),
            "alice",
            "first",
        );
        let Ok(first) = first else {
            panic!("first save refused")
        };
        let Ok(second) = node.save(
            2_000,
            Base::Revision(Some(first.id)),
            ContentId::of(b"b"),
            "bob",
            "second",
        ) else {
            panic!("second save refused");
        };
        // Carol edited a copy of the first revision.
        assert!(matches!(
            node.save(
                3_000,
                Base::Revision(Some(first.id)),
                ContentId::of(b"c"),
                "carol",
                "stale"
            ),
            Err(SaveError::Stale { .. })
        ));
        let Ok(forced) = node.save(3_000, Base::Head, ContentId::of(b"c"), "carol", "forced")
        else {
            panic!("forced save refused");
        };
        assert_eq!(forced.parents, vec![second.id]);
    }

    #[test]
    fn answers_to_wants_fit_a_peer_link_frame() {
        let mut node = replica(1);
        let long = "x".repeat(crate::wire::MAX_MESSAGE);
        let mut ids = Vec::new();
        for index in 0..40u64 {
            let saved = node.save(
                1_000 + index,
                Base::Head,
                ContentId::of(&index.to_be_bytes()),
                "alice",
                &long,
            );
            let Ok(saved) = saved else {
                panic!("save refused")
            };
            ids.push(saved.id);
        }
        let peer = NodeId::from_bytes([2; 16]);
        node.handle(peer, SyncMessage::Want(ids.clone()), 2_000);
        let mut answered = 0;
        while let Some((to, message)) = node.poll_transmit() {
            assert_eq!(to, peer);
            assert!(
                message.encode().len() <= MAX_MESSAGE_BYTES + 8,
                "{}",
                message.encode().len()
            );
            if let SyncMessage::Revisions(revisions) = message {
                answered += revisions.len();
            }
        }
        assert_eq!(answered, ids.len());
    }

    #[test]
    fn two_replicas_exchange_a_save_and_a_late_peer_catches_up_by_digest() {
        let (mut a, mut b) = (replica(1), replica(2));
        let Ok(saved) = a.save(
            1_000,
            Base::Head,
            ContentId::of(b"x"),
            "alice",
            "before b was up",
        ) else {
            panic!("save refused");
        };
        // b comes up later: the push went to nobody; the digest on link-up repairs it.
        a.peer_up(b.me());
        b.peer_up(a.me());
        for _ in 0..4 {
            while let Some((to, message)) = a.poll_transmit() {
                assert_eq!(to, b.me());
                b.handle(a.me(), message, 1_000);
            }
            while let Some((to, message)) = b.poll_transmit() {
                assert_eq!(to, a.me());
                a.handle(b.me(), message, 1_000);
            }
        }
        assert_eq!(b.head().map(|head| head.id), Some(saved.id));
        assert_eq!(b.poll_event(), Some(ReplicaEvent::NewHead(saved.id)));
    }
}
