//! Revisions: what one save (or one merge) made, and who, when, on top of what.

use std::cmp::Ordering;
use std::fmt;

use palisade_identity::{NodeId, NodePriority};
use ring::digest;

use crate::hlc::HlcTime;

/// A revision's id: SHA-256 of its canonical bytes (a save) or of its parents (a merge).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevisionId(pub [u8; 32]);

/// The id of a revision's content (the policy bundle's canonical bytes), stored apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

fn hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl std::str::FromStr for RevisionId {
    type Err = &'static str;

    /// 64 hex digits, as `Display` writes them.
    fn from_str(text: &str) -> Result<RevisionId, Self::Err> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return Err("a revision id is 64 hex digits");
        }
        let mut id = [0u8; 32];
        for (index, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16)
                .map_err(|_| "a revision id is 64 hex digits")?;
        }
        Ok(RevisionId(id))
    }
}

impl fmt::Debug for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve digits are plenty to tell revisions apart in a test failure or a log.
        hex(&self.0[..6], f)
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0[..6], f)
    }
}

impl ContentId {
    /// The content id of `bytes`.
    pub fn of(bytes: &[u8]) -> ContentId {
        let mut id = [0u8; 32];
        id.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
        ContentId(id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevisionKind {
    /// An operator's (or a node's) save.
    Save,
    /// Every node's settlement of concurrent heads: the winner's content under all of them.
    Merge,
    /// A member could not install its parent save (its content does not compile there): the
    /// parent never becomes the head again, and stays in history. Its author is the member,
    /// its message the member's error.
    Refusal,
}

/// One revision of a replicated document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub id: RevisionId,
    pub kind: RevisionKind,
    /// The revision(s) it was based on: none for the first save, one for a save, every
    /// concurrent head (sorted) for a merge.
    pub parents: Vec<RevisionId>,
    /// The node where it was saved (a merge: the winner's).
    pub author: NodeId,
    /// That node's priority when it saved (lower value wins a conflict).
    pub author_priority: NodePriority,
    pub time: HlcTime,
    pub content: ContentId,
    /// The account or node that saved it, and why: the audit trail (a merge: the winner's).
    pub saved_by: String,
    pub message: String,
}

impl Revision {
    /// A save on top of `parent` (none: the first).
    pub fn save(
        parent: Option<RevisionId>,
        author: NodeId,
        author_priority: NodePriority,
        time: HlcTime,
        content: ContentId,
        saved_by: &str,
        message: &str,
    ) -> Revision {
        let mut revision = Revision {
            id: RevisionId([0; 32]),
            kind: RevisionKind::Save,
            parents: parent.into_iter().collect(),
            author,
            author_priority,
            time,
            content,
            saved_by: saved_by.to_owned(),
            message: message.to_owned(),
        };
        revision.id = revision.computed_id();
        revision
    }

    /// `author`'s refusal of `save`, which it could not install, for `reason`.
    pub fn refusal(
        save: &Revision,
        author: NodeId,
        author_priority: NodePriority,
        time: HlcTime,
        author_name: &str,
        reason: &str,
    ) -> Revision {
        let mut revision = Revision {
            id: RevisionId([0; 32]),
            kind: RevisionKind::Refusal,
            parents: vec![save.id],
            author,
            author_priority,
            time,
            content: save.content,
            saved_by: author_name.to_owned(),
            message: reason.to_owned(),
        };
        revision.id = revision.computed_id();
        revision
    }

    /// The merge of concurrent `heads` (at least two): the winner's content and fields, the
    /// heads as parents, an id that is a hash of the parents only, so every node that merges
    /// the same heads makes the same revision. No local clock goes into it.
    pub(crate) fn merge(heads: &[&Revision]) -> Option<Revision> {
        let winner = heads
            .iter()
            .copied()
            .reduce(|best, next| if next.wins_over(best) { next } else { best })?;
        let mut parents: Vec<RevisionId> = heads.iter().map(|head| head.id).collect();
        parents.sort();
        parents.dedup();
        let mut revision = Revision {
            id: RevisionId([0; 32]),
            kind: RevisionKind::Merge,
            parents,
            author: winner.author,
            author_priority: winner.author_priority,
            time: winner.time,
            content: winner.content,
            saved_by: winner.saved_by.clone(),
            message: winner.message.clone(),
        };
        revision.id = revision.computed_id();
        Some(revision)
    }

    /// Whether a received merge carries what merging its parents gives (its id covers only
    /// the parents, so the fields must be checked against them). `true` while a parent is
    /// not known yet: checked again once it is.
    pub(crate) fn merge_fields_match<'a>(
        revision: &Revision,
        get: impl Fn(&RevisionId) -> Option<&'a Revision>,
    ) -> bool {
        let parents: Option<Vec<&Revision>> = revision.parents.iter().map(get).collect();
        let Some(parents) = parents else {
            return true;
        };
        Revision::merge(&parents).is_some_and(|expected| expected == *revision)
    }

    /// What its id must be.
    pub fn computed_id(&self) -> RevisionId {
        let mut context = digest::Context::new(&digest::SHA256);
        match self.kind {
            RevisionKind::Merge => {
                context.update(b"palisade merge v1\0");
                for parent in &self.parents {
                    context.update(&parent.0);
                }
            }
            RevisionKind::Save | RevisionKind::Refusal => {
                context.update(if self.kind == RevisionKind::Save {
                    b"palisade save v1\0"
                } else {
                    b"palisade refusal\0"
                });
                context.update(&[self.parents.len() as u8]);
                for parent in &self.parents {
                    context.update(&parent.0);
                }
                context.update(self.author.as_bytes());
                context.update(&self.author_priority.value().to_be_bytes());
                context.update(&self.time.ms.to_be_bytes());
                context.update(&self.time.counter.to_be_bytes());
                context.update(&self.content.0);
                for text in [&self.saved_by, &self.message] {
                    context.update(&(text.len() as u64).to_be_bytes());
                    context.update(text.as_bytes());
                }
            }
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(context.finish().as_ref());
        RevisionId(id)
    }

    /// The seeds' rule between concurrent revisions: the lower node-priority value wins,
    /// then the newest time, then the lower node id (and, between two merges that agree on
    /// all of that, the lower id), so every node picks the same one.
    pub fn wins_over(&self, other: &Revision) -> bool {
        self.rank(other) == Ordering::Less
    }

    fn rank(&self, other: &Revision) -> Ordering {
        let priority = if self.author_priority.wins_over(other.author_priority) {
            Ordering::Less
        } else if other.author_priority.wins_over(self.author_priority) {
            Ordering::Greater
        } else {
            Ordering::Equal
        };
        priority
            .then(other.time.cmp(&self.time))
            .then(self.author.cmp(&other.author))
            .then(self.id.cmp(&other.id))
    }
}
