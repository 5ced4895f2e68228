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
    /// A content arrived whole and matches its id: store it, read it, and call
    /// [`Replica::resolve`] with what it names (a bundle: its lists; a list: nothing).
    ContentArrived { id: ContentId, bytes: Vec<u8> },
    /// A peer asks for contents: answer each one the store holds with
    /// [`Replica::send_content`], and the rest with [`Replica::no_content`].
    ContentWanted { from: NodeId, ids: Vec<ContentId> },
    /// Every content the head needs is here: validate and activate it.
    HeadReady(RevisionId),
    /// Revisions that joined the history (saved here, received, or merges made here), parents
    /// first: store them before acting on the head.
    Persist(Vec<Revision>),
}

/// Contents being received in chunks, at most this many at once.
const MAX_ASSEMBLING: usize = 64;

struct Assembly {
    total: u64,
    chunks: std::collections::BTreeMap<u64, Vec<u8>>,
    received: u64,
    /// A chunk arrived since the last tick.
    progressed: bool,
}

/// What [`Replica::cannot_install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CannotInstall {
    /// The save behind the head is refused cluster-wide (this refusal, pushed to every peer).
    Refused(Revision),
    /// This node does not run what that save was based on: only reported (its refusals would
    /// walk the cluster back through history).
    Reported { save: RevisionId },
    /// Nothing to refuse (no such save, or refused already).
    Nothing,
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
    /// Contents this node holds (from the store at start, then as they arrive).
    have: std::collections::HashSet<ContentId>,
    /// Contents the node has read, with what each needs ([`Replica::resolve`]).
    resolved: std::collections::HashMap<ContentId, Vec<ContentId>>,
    assembling: std::collections::HashMap<ContentId, Assembly>,
    /// The head reported ready last (a new head resets it).
    ready: Option<RevisionId>,
    /// Which peer content requests start from (round robin, so requests spread).
    next_source: usize,
    /// Whom each missing content was asked of and no answer has come from yet.
    outstanding: std::collections::HashMap<ContentId, NodeId>,
    /// Peers asked for each missing content since the last tick (each once).
    tried: std::collections::HashMap<ContentId, BTreeSet<NodeId>>,
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
        let mut history = history;
        // What was loaded is stored already.
        let _ = history.take_added();
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
            have: std::collections::HashSet::new(),
            resolved: std::collections::HashMap::new(),
            assembling: std::collections::HashMap::new(),
            ready: None,
            next_source: 0,
            outstanding: std::collections::HashMap::new(),
            tried: std::collections::HashMap::new(),
        };
        replica.settle();
        replica
    }

    /// Contents already held (from the store), before anything else happens.
    pub fn with_contents(mut self, held: impl IntoIterator<Item = ContentId>) -> Replica {
        self.have.extend(held);
        self.check_ready();
        self
    }

    /// The node has read content `id` (held) and it needs `needs` (a bundle: its lists).
    /// A head is ready once every content it needs is held and resolved, so it is never
    /// activated with a list missing.
    pub fn resolve(&mut self, id: ContentId, needs: impl IntoIterator<Item = ContentId>) {
        // Resolved means read, so held: a saver's own lists are never asked of its peers.
        self.have.insert(id);
        self.resolved.insert(id, needs.into_iter().collect());
        self.request_missing();
        self.check_ready();
    }

    /// Sends a held content to a peer that asked for it, in chunks.
    pub fn send_content(&mut self, to: NodeId, id: ContentId, bytes: &[u8]) {
        for message in crate::wire::content_messages(id, bytes) {
            self.outbox.push_back((to, message));
        }
    }

    /// What the head needs: its content, and what every resolved content needs in turn;
    /// and whether all of it is held and resolved.
    fn needed(&self) -> (BTreeSet<ContentId>, bool) {
        let mut needed = BTreeSet::new();
        let mut complete = true;
        let mut queue: Vec<ContentId> = self
            .history
            .head()
            .map(|head| head.content)
            .into_iter()
            .collect();
        while let Some(id) = queue.pop() {
            if !needed.insert(id) {
                continue;
            }
            match self.resolved.get(&id) {
                Some(needs) => queue.extend(needs.iter().copied()),
                None => complete = false,
            }
            complete &= self.have.contains(&id);
        }
        (needed, complete)
    }

    /// Tells a peer that asked for contents that this node holds none of `ids`, so it asks
    /// another at once instead of on its next tick.
    pub fn no_content(&mut self, to: NodeId, ids: Vec<ContentId>) {
        if !ids.is_empty() {
            self.outbox.push_back((to, SyncMessage::NoContent(ids)));
        }
    }

    /// Asks for every needed content that is neither held nor asked for already, each of one
    /// peer not yet tried since the last tick (so one big list is fetched once, not from
    /// every peer).
    fn request_missing(&mut self) {
        let (needed, _) = self.needed();
        let peers: Vec<NodeId> = self.peers.iter().copied().collect();
        if peers.is_empty() {
            return;
        }
        let start = self.next_source % peers.len();
        self.next_source = self.next_source.wrapping_add(1);
        let mut requests: std::collections::BTreeMap<NodeId, Vec<ContentId>> = Default::default();
        for id in needed {
            if self.have.contains(&id) || self.outstanding.contains_key(&id) {
                continue;
            }
            let tried = self.tried.entry(id).or_default();
            let untried = (0..peers.len())
                .map(|offset| peers[(start + offset) % peers.len()])
                .find(|peer| !tried.contains(peer));
            if let Some(peer) = untried {
                tried.insert(peer);
                self.outstanding.insert(id, peer);
                requests.entry(peer).or_default().push(id);
            }
        }
        for (peer, ids) in requests {
            for chunk in ids.chunks(MAX_IDS) {
                self.outbox
                    .push_back((peer, SyncMessage::WantContent(chunk.to_vec())));
            }
        }
    }

    fn check_ready(&mut self) {
        let Some(head) = self.history.head().map(|head| head.id) else {
            return;
        };
        let (_, complete) = self.needed();
        if self.ready != Some(head) && complete {
            self.ready = Some(head);
            self.events.push_back(ReplicaEvent::HeadReady(head));
        }
    }

    fn content_part(&mut self, id: ContentId, offset: u64, total: u64, bytes: Vec<u8>) {
        if self.have.contains(&id) || !self.needed().0.contains(&id) {
            return;
        }
        if !self.assembling.contains_key(&id) && self.assembling.len() >= MAX_ASSEMBLING {
            return;
        }
        let assembly = self.assembling.entry(id).or_insert_with(|| Assembly {
            total,
            chunks: std::collections::BTreeMap::new(),
            received: 0,
            progressed: false,
        });
        if assembly.total != total {
            // Chunks of two different claims about one id: start over.
            self.assembling.remove(&id);
            return;
        }
        let length = bytes.len() as u64;
        if assembly.chunks.insert(offset, bytes).is_none() {
            assembly.received += length;
            assembly.progressed = true;
        }
        if assembly.received < assembly.total {
            return;
        }
        let Some(assembly) = self.assembling.remove(&id) else {
            return;
        };
        let mut whole = Vec::with_capacity(assembly.total as usize);
        for (offset, chunk) in assembly.chunks {
            if offset != whole.len() as u64 {
                return;
            }
            whole.extend_from_slice(&chunk);
        }
        if whole.len() as u64 != assembly.total || ContentId::of(&whole) != id {
            // Corrupt or forged: dropped; asked again on the next tick.
            return;
        }
        self.have.insert(id);
        self.outstanding.remove(&id);
        self.tried.remove(&id);
        self.events
            .push_back(ReplicaEvent::ContentArrived { id, bytes: whole });
        self.check_ready();
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
        // What it was asked for goes to someone else.
        self.outstanding.retain(|_, asked| *asked != peer);
        self.request_missing();
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
        // The saver holds what it saves (its caller stored it first).
        self.have.insert(content);
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

    /// This node could not install `save` (its content does not compile here): a refusal,
    /// pushed to every peer, takes it out of the head on every node; the saves it built on
    /// are the head again. `None` if `save` is not a save held here, or already refused.
    pub fn refuse(
        &mut self,
        wall_ms: u64,
        save: RevisionId,
        node_name: &str,
        reason: &str,
    ) -> Option<Revision> {
        let target = self.history.get(&save)?;
        if target.kind != crate::revision::RevisionKind::Save || self.history.is_refused(&save) {
            return None;
        }
        let time = self.hlc.now(wall_ms);
        let refusal = Revision::refusal(
            target,
            self.me,
            self.priority,
            time,
            crate::wire::truncate(node_name, crate::wire::MAX_SAVED_BY),
            crate::wire::truncate(reason, crate::wire::MAX_MESSAGE),
        );
        // Its parent is held, and its id is its own hash: it goes in.
        let _ = self.history.insert(refusal.clone());
        self.settle();
        let push = SyncMessage::Revisions(vec![refusal.clone()]);
        for peer in &self.peers {
            self.outbox.push_back((*peer, push.clone()));
        }
        Some(refusal)
    }

    /// This node, running `running`, could not install `head` (its policy does not compile
    /// here). The save behind it is refused only when this node runs exactly what that save
    /// was based on: the change is what fails, not this node's own state, and the cluster
    /// goes back exactly to what this node runs. A node far behind, or on the losing side of
    /// a merge, only reports.
    pub fn cannot_install(
        &mut self,
        wall_ms: u64,
        head: RevisionId,
        running: Option<RevisionId>,
        node_name: &str,
        reason: &str,
    ) -> CannotInstall {
        let Some(save) = self.history.save_behind(&head) else {
            return CannotInstall::Nothing;
        };
        let based_on = (self.history.get(&save)).and_then(|save| save.parents.first().copied());
        if based_on != running {
            return CannotInstall::Reported { save };
        }
        match self.refuse(wall_ms, save, node_name, reason) {
            Some(refusal) => CannotInstall::Refused(refusal),
            None => CannotInstall::Nothing,
        }
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
            // The store knows what it holds (lists saved with a bundle, contents from
            // before a restart): the node answers what it can.
            SyncMessage::WantContent(ids) => {
                if !ids.is_empty() {
                    self.events
                        .push_back(ReplicaEvent::ContentWanted { from, ids });
                }
            }
            SyncMessage::Content {
                id,
                offset,
                total,
                bytes,
            } => {
                self.content_part(id, offset, total, bytes);
            }
            SyncMessage::NoContent(ids) => {
                for id in ids {
                    if self.outstanding.get(&id) == Some(&from) {
                        self.outstanding.remove(&id);
                    }
                }
                self.request_missing();
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
            // The driver's gate checks hellos, and the cluster plane the trust bundle.
            SyncMessage::Hello(_)
            | SyncMessage::Trust(_)
            | SyncMessage::Activation { .. }
            | SyncMessage::RenewRequest(_)
            | SyncMessage::RenewResponse(_)
            | SyncMessage::RecordDigest(_)
            | SyncMessage::Records(_) => {}
        }
    }

    /// Anti-entropy: a digest to every peer, and the head's missing contents asked for again
    /// (of another peer).
    pub fn tick(&mut self) {
        let digest = self.digest();
        for peer in &self.peers {
            self.outbox.push_back((*peer, digest.clone()));
        }
        // A request lost, or a peer that has the content by now: every peer may be asked
        // again; but a content still arriving (a chunk since the last tick) is left to
        // finish, not asked twice.
        let assembling = &mut self.assembling;
        self.outstanding.retain(|id, _| {
            assembling
                .get_mut(id)
                .is_some_and(|assembly| std::mem::take(&mut assembly.progressed))
        });
        let outstanding = &self.outstanding;
        self.tried.retain(|id, _| outstanding.contains_key(id));
        self.request_missing();
    }

    pub fn poll_transmit(&mut self) -> Option<(NodeId, SyncMessage)> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ReplicaEvent> {
        self.events.pop_front()
    }

    fn digest(&self) -> SyncMessage {
        // The refusals that keep saves out of the head travel with the frontier: a peer
        // lacking one asks for it like any revision.
        SyncMessage::Digest {
            frontier: (self.history.frontier().map(|save| save.id))
                .chain(self.history.live_refusals())
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
        let added: Vec<Revision> = self
            .history
            .take_added()
            .iter()
            .filter_map(|id| self.history.get(id).cloned())
            .collect();
        if !added.is_empty() {
            self.events.push_back(ReplicaEvent::Persist(added));
        }
        let head = self.history.head().map(|head| head.id);
        if head != self.head {
            self.head = head;
            if let Some(head) = head {
                self.events.push_back(ReplicaEvent::NewHead(head));
                // A new head needs its own bundle, and what it names (`resolve`).
                self.request_missing();
                self.check_ready();
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
    fn a_node_refuses_only_a_save_on_top_of_what_it_runs() {
        let mut node = replica(1);
        let saves: Vec<Revision> = (0..3u8)
            .map(|n| {
                let saved = node.save(
                    1_000 + u64::from(n),
                    Base::Head,
                    ContentId::of(&[n]),
                    "alice",
                    "x",
                );
                saved.unwrap_or_else(|error| panic!("{error}"))
            })
            .collect();
        // It runs the first save: the third builds on the second, not on what it runs.
        assert_eq!(
            node.cannot_install(2_000, saves[2].id, Some(saves[0].id), "node1", "bad"),
            CannotInstall::Reported { save: saves[2].id }
        );
        assert_eq!(node.head().map(|head| head.id), Some(saves[2].id));
        // It runs the second: the third is refused, and the second is the head again.
        let refused = node.cannot_install(2_000, saves[2].id, Some(saves[1].id), "node1", "bad");
        assert!(
            matches!(&refused, CannotInstall::Refused(refusal) if refusal.parents == vec![saves[2].id]),
            "{refused:?}"
        );
        assert_eq!(node.head().map(|head| head.id), Some(saves[1].id));
        // Once is enough.
        assert_eq!(
            node.cannot_install(2_000, saves[2].id, Some(saves[1].id), "node1", "bad"),
            CannotInstall::Nothing
        );
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

    /// Pumps messages both ways (reversing each batch: order must not matter) until quiet;
    /// answers content wants from `stores` and resolves arrivals by `needs`.
    fn pump(
        nodes: &mut [Replica; 2],
        stores: &mut [std::collections::HashMap<ContentId, Vec<u8>>; 2],
        needs: &std::collections::HashMap<ContentId, Vec<ContentId>>,
    ) -> Vec<ReplicaEvent> {
        let mut seen = Vec::new();
        for _ in 0..50 {
            let mut quiet = true;
            for from in 0..2 {
                let to = 1 - from;
                while let Some(event) = nodes[from].poll_event() {
                    match &event {
                        ReplicaEvent::ContentWanted { from: peer, ids } => {
                            for id in ids {
                                if let Some(bytes) = stores[from].get(id).cloned() {
                                    nodes[from].send_content(*peer, *id, &bytes);
                                }
                            }
                        }
                        ReplicaEvent::ContentArrived { id, bytes } => {
                            stores[from].insert(*id, bytes.clone());
                            let wanted = needs.get(id).cloned().unwrap_or_default();
                            nodes[from].resolve(*id, wanted);
                        }
                        _ => {}
                    }
                    if from == 1 {
                        seen.push(event);
                    }
                }
                let mut batch = Vec::new();
                while let Some((_, message)) = nodes[from].poll_transmit() {
                    batch.push(message);
                }
                quiet &= batch.is_empty();
                batch.reverse();
                let me = nodes[from].me();
                for message in batch {
                    nodes[to].handle(me, message, 1_000);
                }
            }
            if quiet {
                break;
            }
        }
        seen
    }

    #[test]
    fn a_head_is_ready_only_with_its_bundle_and_every_list_it_names() {
        let mut nodes = [replica(1), replica(2)];
        let (a_id, b_id) = (nodes[0].me(), nodes[1].me());
        nodes[0].peer_up(b_id);
        nodes[1].peer_up(a_id);
        let list: Vec<u8> = (0..200_000u32).flat_map(|n| n.to_be_bytes()).collect();
        let list_id = ContentId::of(&list);
        let bundle = b"document naming one list".to_vec();
        let bundle_id = ContentId::of(&bundle);
        let needs = std::collections::HashMap::from([(bundle_id, vec![list_id])]);
        let mut stores = [
            std::collections::HashMap::new(),
            std::collections::HashMap::new(),
        ];
        stores[0].insert(bundle_id, bundle.clone());
        stores[0].insert(list_id, list.clone());
        let Ok(saved) = nodes[0].save(1_000, Base::Head, bundle_id, "alice", "with a big list")
        else {
            panic!("save refused");
        };
        nodes[0].resolve(bundle_id, [list_id]);
        nodes[0].resolve(list_id, []);
        let seen = pump(&mut nodes, &mut stores, &needs);
        let arrived = |id: ContentId| {
            seen.iter().position(
                |event| matches!(event, ReplicaEvent::ContentArrived { id: got, .. } if *got == id),
            )
        };
        let ready = seen
            .iter()
            .position(|event| *event == ReplicaEvent::HeadReady(saved.id));
        let (Some(bundle_at), Some(list_at), Some(ready_at)) =
            (arrived(bundle_id), arrived(list_id), ready)
        else {
            panic!("missing events: {seen:?}");
        };
        assert!(bundle_at < list_at && list_at < ready_at, "{seen:?}");
        assert_eq!(stores[1].get(&list_id).map(Vec::len), Some(800_000));
    }

    /// A saver holds the lists it saved: its head is ready at once, with no peer to ask
    /// (the driver found this in a partitioned node that never activated its own save).
    #[test]
    fn a_save_with_lists_is_ready_on_its_own_node_without_peers() {
        let mut node = replica(1);
        let list_id = ContentId::of(b"blocked.example\n");
        let bundle_id = ContentId::of(b"document naming one list");
        let Ok(saved) = node.save(1_000, Base::Head, bundle_id, "alice", "alone") else {
            panic!("save refused");
        };
        node.resolve(list_id, []);
        node.resolve(bundle_id, [list_id]);
        let events: Vec<ReplicaEvent> = std::iter::from_fn(|| node.poll_event()).collect();
        assert!(
            events.contains(&ReplicaEvent::HeadReady(saved.id)),
            "{events:?}"
        );
        assert_eq!(node.poll_transmit(), None, "nothing asked of anyone");
    }

    /// A missing content is asked of one peer at a time (a big list is not sent by every
    /// peer); a peer without it says so and the next is asked at once; a tick starts over.
    #[test]
    fn a_missing_content_is_asked_of_one_peer_at_a_time() {
        let mut node = replica(9);
        let peers: Vec<NodeId> = (1..=3).map(|last| NodeId::from_bytes([last; 16])).collect();
        for peer in &peers {
            node.peer_up(*peer);
        }
        while node.poll_transmit().is_some() {}
        let content = ContentId::of(b"bundle");
        let saved = Revision::save(
            None,
            peers[0],
            NodePriority::default(),
            HlcTime {
                ms: 900,
                counter: 0,
            },
            content,
            "alice",
            "x",
        );
        node.handle(peers[0], SyncMessage::Revisions(vec![saved]), 1_000);
        let wants = |node: &mut Replica| -> Vec<NodeId> {
            std::iter::from_fn(|| node.poll_transmit())
                .filter(|(_, message)| matches!(message, SyncMessage::WantContent(_)))
                .map(|(to, _)| to)
                .collect()
        };
        let first = wants(&mut node);
        assert_eq!(first.len(), 1, "{first:?}");
        node.handle(first[0], SyncMessage::NoContent(vec![content]), 1_000);
        let second = wants(&mut node);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0], first[0]);
        node.handle(second[0], SyncMessage::NoContent(vec![content]), 1_000);
        let third = wants(&mut node);
        node.handle(third[0], SyncMessage::NoContent(vec![content]), 1_000);
        assert!(
            wants(&mut node).is_empty(),
            "every peer tried: wait for the tick"
        );
        node.tick();
        assert_eq!(wants(&mut node).len(), 1);
    }

    /// A content still arriving when the tick comes is left to finish (a 30 MB list is not
    /// asked of a second peer half-way); one that stalled for a whole tick is asked again.
    #[test]
    fn a_transfer_in_progress_is_not_asked_again_but_a_stalled_one_is() {
        let mut node = replica(9);
        let peers: Vec<NodeId> = (1..=2).map(|last| NodeId::from_bytes([last; 16])).collect();
        for peer in &peers {
            node.peer_up(*peer);
        }
        while node.poll_transmit().is_some() {}
        let bytes = vec![7u8; 3 * crate::wire::MAX_CONTENT_CHUNK];
        let content = ContentId::of(&bytes);
        let saved = Revision::save(
            None,
            peers[0],
            NodePriority::default(),
            HlcTime {
                ms: 900,
                counter: 0,
            },
            content,
            "alice",
            "x",
        );
        node.handle(peers[0], SyncMessage::Revisions(vec![saved]), 1_000);
        let wants = |node: &mut Replica| -> Vec<NodeId> {
            std::iter::from_fn(|| node.poll_transmit())
                .filter(|(_, message)| matches!(message, SyncMessage::WantContent(_)))
                .map(|(to, _)| to)
                .collect()
        };
        let asked = wants(&mut node);
        assert_eq!(asked.len(), 1);
        let mut chunks = crate::wire::content_messages(content, &bytes);
        if let Some(first) = chunks.next() {
            node.handle(asked[0], first, 1_000);
        }
        node.tick();
        assert!(
            wants(&mut node).is_empty(),
            "still arriving: not asked again"
        );
        node.tick();
        assert_eq!(wants(&mut node).len(), 1, "stalled for a tick: asked again");
        for chunk in chunks {
            node.handle(asked[0], chunk, 1_000);
        }
        let arrived = std::iter::from_fn(|| node.poll_event())
            .any(|event| matches!(event, ReplicaEvent::ContentArrived { id, .. } if id == content));
        assert!(arrived, "the first transfer still completes");
    }

    #[test]
    fn a_content_that_does_not_match_its_id_is_dropped() {
        let mut b = replica(2);
        let peer = NodeId::from_bytes([1; 16]);
        b.peer_up(peer);
        let real = ContentId::of(b"real");
        // Someone else's save whose bundle b has not got.
        let saved = Revision::save(
            None,
            peer,
            NodePriority::default(),
            HlcTime {
                ms: 900,
                counter: 0,
            },
            real,
            "alice",
            "x",
        );
        b.handle(peer, SyncMessage::Revisions(vec![saved]), 1_000);
        b.handle(
            peer,
            SyncMessage::Content {
                id: real,
                offset: 0,
                total: 4,
                bytes: b"fake".to_vec(),
            },
            1_000,
        );
        assert!(
            !std::iter::from_fn(|| b.poll_event())
                .any(|event| matches!(event, ReplicaEvent::ContentArrived { .. }))
        );
        b.handle(
            peer,
            SyncMessage::Content {
                id: real,
                offset: 0,
                total: 4,
                bytes: b"real".to_vec(),
            },
            1_000,
        );
        assert!(
            std::iter::from_fn(|| b.poll_event())
                .any(|event| matches!(event, ReplicaEvent::ContentArrived { .. }))
        );
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
        assert_eq!(
            b.poll_event(),
            Some(ReplicaEvent::Persist(vec![saved.clone()]))
        );
        assert_eq!(b.poll_event(), Some(ReplicaEvent::NewHead(saved.id)));
    }
}
