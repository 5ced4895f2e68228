//! The set of revisions a node holds, and its head.
//!
//! The head is a pure function of the set of saves. The *frontier* is the saves no other save
//! builds on (through merges too): one save there is the head; several (saves on both sides
//! of a partition) are settled by one merge revision whose parents are exactly the frontier,
//! whose id is a hash of them and whose content is the winner's by the seeds' rule. Nodes
//! holding the same saves therefore make the same merge, whatever order anything arrived in,
//! and merges never pile up on merges: a merge is never in the frontier, it only lets a later
//! save name every save it settled as its ancestors. Nothing is ever removed: a losing save
//! stays in history, under the merge.
//!
//! A save some member could not install is *refused*: a refusal revision names it, and from
//! then on it is not a candidate for the head (the saves it built on are again, unless another
//! save builds on them), on every node that holds the refusal. The frontier is then the
//! saves that no unrefused save builds on, leaving the refused ones out.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use crate::revision::{Revision, RevisionId, RevisionKind};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("revision {claimed} does not hash to its id (computed {computed})")]
    BadId {
        claimed: RevisionId,
        computed: RevisionId,
    },
    #[error("revision {0} has the wrong parents for its kind")]
    BadParents(RevisionId),
    #[error("merge {0} does not carry what merging its parents gives")]
    BadMerge(RevisionId),
    #[error("refusal {0} does not name a save")]
    BadRefusal(RevisionId),
}

/// What [`History::insert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// New, with every parent known: part of the history now (with any pending revisions it
    /// completed).
    New,
    /// Already held.
    Known,
    /// Held aside until these parents arrive.
    Pending { missing: Vec<RevisionId> },
}

/// One settlement of concurrent heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub merge: RevisionId,
    pub winner: RevisionId,
    /// Heads whose content lost (still in history, restorable).
    pub losers: Vec<RevisionId>,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    revisions: HashMap<RevisionId, Revision>,
    /// The unrefused saves no other unrefused save builds on.
    frontier: BTreeSet<RevisionId>,
    /// Refused saves, each with the refusals that name it.
    refused: HashMap<RevisionId, Vec<RevisionId>>,
    /// Refused saves that no unrefused save builds on: their refusals are what a digest must
    /// advertise beside the frontier (elsewhere a refusal changes no head).
    refused_leaves: BTreeSet<RevisionId>,
    /// Revisions waiting for a parent, by the parent they wait for.
    pending: HashMap<RevisionId, Vec<Revision>>,
    pending_count: usize,
    /// Revisions added since [`History::take_added`], in the order they went in (parents
    /// first): what the node must store.
    added: Vec<RevisionId>,
}

/// Revisions held aside at most (a peer sending orphans cannot grow this without bound).
pub const MAX_PENDING: usize = 10_000;

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn len(&self) -> usize {
        self.revisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    pub fn get(&self, id: &RevisionId) -> Option<&Revision> {
        self.revisions.get(id)
    }

    pub fn contains(&self, id: &RevisionId) -> bool {
        self.revisions.contains_key(id)
    }

    /// Every revision held (in no particular order).
    pub fn revisions(&self) -> impl Iterator<Item = &Revision> {
        self.revisions.values()
    }

    /// The saves no other save builds on, by id (what a digest advertises).
    pub fn frontier(&self) -> impl Iterator<Item = &Revision> {
        self.frontier.iter().filter_map(|id| self.revisions.get(id))
    }

    /// The refusals that still matter to the head (see `refused_leaves`), for digests.
    pub fn live_refusals(&self) -> impl Iterator<Item = RevisionId> + '_ {
        (self.refused_leaves.iter())
            .filter_map(|save| self.refused.get(save))
            .flatten()
            .copied()
    }

    /// The save whose content revision `id` carries: itself, or a merge's winner (what a
    /// member that cannot install the content refuses).
    pub fn save_behind(&self, id: &RevisionId) -> Option<RevisionId> {
        let revision = self.revisions.get(id)?;
        match revision.kind {
            RevisionKind::Save => Some(revision.id),
            RevisionKind::Merge => (revision.parents.iter())
                .filter_map(|parent| self.revisions.get(parent))
                .find(|parent| {
                    parent.content == revision.content
                        && parent.author == revision.author
                        && parent.time == revision.time
                })
                .map(|winner| winner.id),
            RevisionKind::Refusal => None,
        }
    }

    /// Whether a member refused `save`.
    pub fn is_refused(&self, save: &RevisionId) -> bool {
        self.refused.contains_key(save)
    }

    /// The id the merge of the current frontier has (whether made yet or not).
    fn frontier_merge_id(&self) -> Option<RevisionId> {
        let frontier: Vec<&Revision> = self.frontier().collect();
        (frontier.len() >= 2)
            .then(|| Revision::merge(&frontier).map(|merge| merge.id))
            .flatten()
    }

    /// The head: the one latest save, or the merge of several once [`History::settle`] has
    /// made it.
    pub fn head(&self) -> Option<&Revision> {
        match self.frontier.len() {
            0 => None,
            1 => self.frontier().next(),
            _ => self.revisions.get(&self.frontier_merge_id()?),
        }
    }

    /// Adds a revision (checked against its id). One whose parents are not all here waits
    /// until they arrive; every pending revision a new one completes is added too.
    pub fn insert(&mut self, revision: Revision) -> Result<Inserted, HistoryError> {
        let computed = revision.computed_id();
        if computed != revision.id {
            return Err(HistoryError::BadId {
                claimed: revision.id,
                computed,
            });
        }
        let parents_ok = match revision.kind {
            RevisionKind::Save => revision.parents.len() <= 1,
            RevisionKind::Merge => {
                (2..=crate::wire::MAX_PARENTS).contains(&revision.parents.len())
                    && revision.parents.windows(2).all(|w| w[0] < w[1])
            }
            RevisionKind::Refusal => revision.parents.len() == 1,
        };
        if !parents_ok {
            return Err(HistoryError::BadParents(revision.id));
        }
        if revision.kind == RevisionKind::Merge
            && !Revision::merge_fields_match(&revision, |id| self.revisions.get(id))
        {
            return Err(HistoryError::BadMerge(revision.id));
        }
        if self.revisions.contains_key(&revision.id) {
            return Ok(Inserted::Known);
        }
        let missing: Vec<RevisionId> = (revision.parents.iter())
            .filter(|parent| !self.revisions.contains_key(parent))
            .copied()
            .collect();
        if let Some(first) = missing.first() {
            // Full at MAX_PENDING: the revision is dropped (anti-entropy offers it again
            // once its parents are here); no empty entries are left behind.
            if self.pending_count < MAX_PENDING {
                let waiting = self.pending.entry(*first).or_default();
                // The same id with other fields (a forged merge) must not shut out the real
                // one: only an identical revision is a duplicate.
                if !waiting.contains(&revision) {
                    waiting.push(revision);
                    self.pending_count += 1;
                }
            }
            return Ok(Inserted::Pending { missing });
        }
        let top = revision.id;
        let mut rejected = None;
        let mut refusals = false;
        let mut ready = VecDeque::from([revision]);
        while let Some(revision) = ready.pop_front() {
            let id = revision.id;
            if self.revisions.contains_key(&id) {
                continue;
            }
            let missing = revision
                .parents
                .iter()
                .find(|p| !self.revisions.contains_key(p));
            if let Some(parent) = missing.copied() {
                // Completed one parent; still waiting for another.
                self.pending.entry(parent).or_default().push(revision);
                self.pending_count += 1;
                continue;
            }
            if revision.kind == RevisionKind::Merge
                && (revision.parents.iter().any(|parent| {
                    self.revisions.get(parent).map(|p| p.kind) != Some(RevisionKind::Save)
                }) || !Revision::merge_fields_match(&revision, |id| self.revisions.get(id)))
            {
                // A merge settles saves only, and carries exactly what merging them gives;
                // anything else is not one of ours.
                if id == top {
                    rejected = Some(HistoryError::BadMerge(id));
                }
                continue;
            }
            if revision.kind == RevisionKind::Refusal
                && (revision.parents.iter()).any(|parent| {
                    self.revisions.get(parent).map(|p| p.kind) != Some(RevisionKind::Save)
                })
            {
                if id == top {
                    rejected = Some(HistoryError::BadRefusal(id));
                }
                continue;
            }
            match revision.kind {
                RevisionKind::Save => {
                    // Every save it builds on leaves the frontier (see `leave`).
                    for parent in &revision.parents {
                        self.leave(*parent);
                    }
                    // No save already held builds on a new one: children wait for parents.
                    self.frontier.insert(id);
                }
                RevisionKind::Refusal => {
                    for parent in &revision.parents {
                        self.refused.entry(*parent).or_default().push(id);
                    }
                    refusals = true;
                }
                RevisionKind::Merge => {}
            }
            self.revisions.insert(id, revision);
            self.added.push(id);
            if let Some(waiting) = self.pending.remove(&id) {
                self.pending_count -= waiting.len();
                ready.extend(waiting);
            }
        }
        if refusals {
            // Rare: a refused save leaves the frontier and what it covered may come back.
            self.recompute_frontier();
        }
        match rejected {
            Some(error) => Err(error),
            None => Ok(Inserted::New),
        }
    }

    /// A save builds on `id`: it leaves the frontier, and so does what it stood for: a
    /// merge's settled saves, a refused save's own parents (an unrefused save's ancestors
    /// left when it came).
    fn leave(&mut self, id: RevisionId) {
        let mut stack = vec![id];
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            self.frontier.remove(&id);
            self.refused_leaves.remove(&id);
            let Some(revision) = self.revisions.get(&id) else {
                continue;
            };
            let through = match revision.kind {
                RevisionKind::Merge => true,
                RevisionKind::Save => self.refused.contains_key(&id),
                RevisionKind::Refusal => false,
            };
            if through {
                stack.extend(revision.parents.iter().copied());
            }
        }
    }

    /// The frontier from scratch: the unrefused saves that are no unrefused save's ancestor.
    fn recompute_frontier(&mut self) {
        let mut covered = HashSet::new();
        let mut stack: Vec<RevisionId> = (self.revisions.values())
            .filter(|revision| {
                revision.kind == RevisionKind::Save && !self.refused.contains_key(&revision.id)
            })
            .flat_map(|save| save.parents.iter().copied())
            .collect();
        while let Some(id) = stack.pop() {
            if covered.insert(id)
                && let Some(revision) = self.revisions.get(&id)
            {
                stack.extend(revision.parents.iter().copied());
            }
        }
        let (mut frontier, mut refused_leaves) = (BTreeSet::new(), BTreeSet::new());
        for revision in self.revisions.values() {
            if revision.kind != RevisionKind::Save || covered.contains(&revision.id) {
                continue;
            }
            if self.refused.contains_key(&revision.id) {
                refused_leaves.insert(revision.id);
            } else {
                frontier.insert(revision.id);
            }
        }
        self.frontier = frontier;
        self.refused_leaves = refused_leaves;
    }

    /// Settles a frontier of several saves by their merge revision (see the module docs);
    /// returns what was settled, if a merge was made.
    pub fn settle(&mut self) -> Option<Settled> {
        // More concurrent saves than a merge may name (only a hostile member makes that
        // many): no merge, no head; the node keeps the policy it runs.
        if !(2..=crate::wire::MAX_PARENTS).contains(&self.frontier.len()) {
            return None;
        }
        let heads: Vec<&Revision> = self.frontier().collect();
        let merge = Revision::merge(&heads)?;
        if self.revisions.contains_key(&merge.id) {
            return None;
        }
        let winner = heads
            .iter()
            .find(|head| {
                head.content == merge.content
                    && head.author == merge.author
                    && head.time == merge.time
            })
            .map(|head| head.id)?;
        let losers = heads
            .iter()
            .filter(|head| head.content != merge.content)
            .map(|head| head.id)
            .collect();
        let settled = Settled {
            merge: merge.id,
            winner,
            losers,
        };
        // Its parents are all here, and its id is its own hash: it goes in.
        let _ = self.insert(merge);
        Some(settled)
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: &RevisionId, descendant: &RevisionId) -> bool {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([*descendant]);
        while let Some(id) = queue.pop_front() {
            if id == *ancestor {
                return true;
            }
            if !seen.insert(id) {
                continue;
            }
            if let Some(revision) = self.revisions.get(&id) {
                queue.extend(revision.parents.iter().copied());
            }
        }
        false
    }

    /// Whether a peer that runs `theirs` runs a newer policy than this node, which runs
    /// `mine`: a revision this node has not received, a descendant of its own, or the head
    /// when this node does not run it. A peer that runs an ancestor of `mine`, or a losing
    /// side of a merge, is behind itself, not this node.
    pub fn runs_newer(&self, mine: Option<&RevisionId>, theirs: &RevisionId) -> bool {
        let Some(mine) = mine else {
            return true;
        };
        if mine == theirs {
            return false;
        }
        !self.contains(theirs)
            || self.is_ancestor(mine, theirs)
            || self.head().is_some_and(|head| head.id == *theirs)
    }

    /// The revisions added since the last call, parents first.
    pub fn take_added(&mut self) -> Vec<RevisionId> {
        std::mem::take(&mut self.added)
    }

    /// Revisions held aside for missing parents.
    pub fn pending(&self) -> usize {
        self.pending_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::HlcTime;
    use crate::revision::ContentId;
    use palisade_identity::{NodeId, NodePriority};

    fn node(last: u8) -> NodeId {
        NodeId::from_bytes([last; 16])
    }

    fn save(parent: Option<&Revision>, author: u8, priority: u16, ms: u64, text: &str) -> Revision {
        Revision::save(
            parent.map(|parent| parent.id),
            node(author),
            NodePriority::new(priority),
            HlcTime { ms, counter: 0 },
            ContentId::of(text.as_bytes()),
            "admin",
            text,
        )
    }

    fn insert(history: &mut History, revision: &Revision) -> Inserted {
        match history.insert(revision.clone()) {
            Ok(inserted) => inserted,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn a_descendant_wins_even_over_a_better_priority() {
        let mut history = History::new();
        let base = save(None, 1, 1, 1_000, "base from priority 1");
        // An edit on a priority-2 node after it saw the priority-1 version.
        let edit = save(Some(&base), 2, 2, 2_000, "edit on priority 2");
        insert(&mut history, &base);
        insert(&mut history, &edit);
        assert_eq!(history.settle(), None);
        assert_eq!(history.head().map(|head| head.id), Some(edit.id));
    }

    #[test]
    fn concurrent_saves_merge_by_priority_then_time_then_node_id_and_keep_the_loser() {
        let base = save(None, 1, 100, 1_000, "base");
        let cases = [
            // (a, b, winner is a?)
            (
                save(Some(&base), 1, 50, 2_000, "a"),
                save(Some(&base), 2, 100, 3_000, "b"),
                true,
            ),
            (
                save(Some(&base), 1, 100, 2_000, "a"),
                save(Some(&base), 2, 100, 3_000, "b"),
                false,
            ),
            (
                save(Some(&base), 1, 100, 2_000, "a"),
                save(Some(&base), 2, 100, 2_000, "b"),
                true,
            ),
        ];
        for (a, b, a_wins) in cases {
            for order in [[&a, &b], [&b, &a]] {
                let mut history = History::new();
                insert(&mut history, &base);
                for revision in order {
                    insert(&mut history, revision);
                }
                let Some(settled) = history.settle() else {
                    panic!("two heads, no merge");
                };
                let (winner, loser) = if a_wins { (&a, &b) } else { (&b, &a) };
                assert_eq!(settled.winner, winner.id);
                assert_eq!(settled.losers, vec![loser.id]);
                let head = history.head().cloned();
                let Some(head) = head else { panic!("no head") };
                assert_eq!(head.content, winner.content);
                assert_eq!(head.kind, RevisionKind::Merge);
                assert!(history.contains(&loser.id), "the loser stays in history");
            }
        }
    }

    #[test]
    fn a_revision_waits_for_its_parent_and_a_forged_id_is_refused() {
        let mut history = History::new();
        let base = save(None, 1, 100, 1_000, "base");
        let child = save(Some(&base), 1, 100, 2_000, "child");
        assert_eq!(
            insert(&mut history, &child),
            Inserted::Pending {
                missing: vec![base.id]
            }
        );
        assert_eq!(history.head(), None);
        assert_eq!(insert(&mut history, &base), Inserted::New);
        assert_eq!(history.head().map(|head| head.id), Some(child.id));
        assert_eq!(history.pending(), 0);
        let mut forged = save(Some(&child), 9, 0, 3_000, "forged");
        forged.message = "changed after hashing".to_owned();
        assert!(matches!(
            history.insert(forged),
            Err(HistoryError::BadId { .. })
        ));
    }

    #[test]
    fn the_same_merge_is_made_whatever_the_arrival_order() {
        let base = save(None, 1, 100, 1_000, "base");
        let a = save(Some(&base), 1, 100, 2_000, "a");
        let b = save(Some(&base), 2, 100, 2_500, "b");
        let c = save(Some(&base), 3, 100, 2_200, "c");
        let mut heads = Vec::new();
        for order in [[&a, &b, &c], [&c, &b, &a], [&b, &a, &c]] {
            let mut history = History::new();
            insert(&mut history, &base);
            for revision in order {
                insert(&mut history, revision);
            }
            history.settle();
            heads.push(history.head().map(|head| (head.id, head.content)));
        }
        assert!(heads.windows(2).all(|pair| pair[0] == pair[1]), "{heads:?}");
        assert_eq!(heads[0].map(|(_, content)| content), Some(b.content));
    }

    #[test]
    fn a_forged_merge_neither_gets_in_nor_shuts_out_the_real_one() {
        let base = save(None, 1, 100, 1_000, "base");
        let a = save(Some(&base), 1, 100, 2_000, "a");
        let b = save(Some(&base), 2, 100, 3_000, "b");
        let Some(real) = Revision::merge(&[&a, &b]) else {
            panic!("no merge");
        };
        // Same parents, so the same id, but the loser's content.
        let mut forged = real.clone();
        forged.content = a.content;
        forged.author = a.author;
        forged.time = a.time;
        let mut history = History::new();
        insert(&mut history, &base);
        // Both arrive before their parents; the forgery first.
        assert!(matches!(
            insert(&mut history, &forged),
            Inserted::Pending { .. }
        ));
        assert!(matches!(
            insert(&mut history, &real),
            Inserted::Pending { .. }
        ));
        insert(&mut history, &a);
        insert(&mut history, &b);
        assert_eq!(history.get(&real.id), Some(&real));
        // Sent with its parents known, a forgery is refused outright.
        let mut fresh = History::new();
        for revision in [&base, &a, &b] {
            insert(&mut fresh, revision);
        }
        assert_eq!(fresh.insert(forged), Err(HistoryError::BadMerge(real.id)));
        assert!(!fresh.contains(&real.id));
    }

    fn refusal(save: &Revision, author: u8) -> Revision {
        Revision::refusal(
            save,
            node(author),
            NodePriority::new(100),
            HlcTime {
                ms: save.time.ms + 1,
                counter: 0,
            },
            "node",
            "does not compile here",
        )
    }

    #[test]
    fn a_refused_save_is_never_the_head_and_what_it_built_on_is_again() {
        let base = save(None, 1, 100, 1_000, "base");
        let bad = save(Some(&base), 1, 100, 2_000, "bad");
        let refused = refusal(&bad, 2);
        // In any order, the refusal before or after the save it names.
        for order in [[&base, &bad, &refused], [&refused, &bad, &base]] {
            let mut history = History::new();
            for revision in order {
                insert(&mut history, revision);
            }
            history.settle();
            assert_eq!(history.head().map(|head| head.id), Some(base.id));
            assert!(
                history.contains(&bad.id),
                "the refused save stays in history"
            );
            assert_eq!(
                history.live_refusals().collect::<Vec<_>>(),
                vec![refused.id]
            );
        }
        // A later save on top of the refused one (made before the refusal arrived) wins,
        // and then the refusal no longer needs advertising.
        let fixed = save(Some(&bad), 1, 100, 3_000, "fixed");
        let mut history = History::new();
        for revision in [&base, &bad, &refused, &fixed] {
            insert(&mut history, revision);
        }
        assert_eq!(history.head().map(|head| head.id), Some(fixed.id));
        assert_eq!(history.live_refusals().count(), 0);
        assert_eq!(history.frontier().count(), 1);
    }

    #[test]
    fn refusing_a_merges_winner_makes_the_loser_the_head() {
        let base = save(None, 1, 100, 1_000, "base");
        let winner = save(Some(&base), 1, 50, 2_000, "winner");
        let loser = save(Some(&base), 2, 100, 3_000, "loser");
        let mut history = History::new();
        for revision in [&base, &winner, &loser] {
            insert(&mut history, revision);
        }
        history.settle();
        let merge = history.head().map(|head| head.id);
        let Some(merge) = merge else {
            panic!("no head")
        };
        assert_eq!(history.save_behind(&merge), Some(winner.id));
        insert(&mut history, &refusal(&winner, 3));
        assert_eq!(history.settle(), None);
        assert_eq!(history.head().map(|head| head.id), Some(loser.id));
        // A refusal must name a save.
        let Some(merge_revision) = history.get(&merge).cloned() else {
            panic!("merge gone")
        };
        let bogus = refusal(&merge_revision, 3);
        assert_eq!(
            history.insert(bogus.clone()),
            Err(HistoryError::BadRefusal(bogus.id))
        );
    }

    #[test]
    fn ancestry() {
        let mut history = History::new();
        let base = save(None, 1, 100, 1_000, "base");
        let child = save(Some(&base), 1, 100, 2_000, "child");
        let other = save(Some(&base), 2, 100, 2_000, "other");
        for revision in [&base, &child, &other] {
            insert(&mut history, revision);
        }
        assert!(history.is_ancestor(&base.id, &child.id));
        assert!(history.is_ancestor(&child.id, &child.id));
        assert!(!history.is_ancestor(&other.id, &child.id));
    }

    #[test]
    fn a_peer_runs_newer_with_a_descendant_an_unknown_revision_or_the_head() {
        let mut history = History::new();
        let base = save(None, 1, 100, 1_000, "base");
        let child = save(Some(&base), 1, 100, 2_000, "child");
        let unknown = save(Some(&child), 2, 100, 3_000, "not here yet");
        for revision in [&base, &child] {
            insert(&mut history, revision);
        }
        assert!(
            history.runs_newer(Some(&base.id), &child.id),
            "a descendant"
        );
        assert!(
            history.runs_newer(Some(&child.id), &unknown.id),
            "not received"
        );
        assert!(history.runs_newer(None, &base.id), "this node runs none");
        assert!(!history.runs_newer(Some(&child.id), &child.id), "the same");
        assert!(
            !history.runs_newer(Some(&child.id), &base.id),
            "the peer is behind"
        );
        // Two concurrent saves and their merge, the head: newer than either side, and
        // neither side is newer than it.
        let other = save(Some(&base), 2, 200, 2_500, "other");
        insert(&mut history, &other);
        let _ = history.settle();
        let Some(head) = history.head().map(|head| head.id) else {
            panic!("the merge is the head");
        };
        for side in [&child.id, &other.id] {
            assert!(history.runs_newer(Some(side), &head));
            assert!(!history.runs_newer(Some(&head), side));
        }
    }
}
