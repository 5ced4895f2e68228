//! Per-node records: each node's read-only copy of every member's node-local configuration
//! (addresses, listeners, HA groups; never secrets), so a backup on any node holds the whole
//! cluster, a save can be compiled for every member, and members learn each other's cluster
//! addresses. Only a node writes its own record, so there are no conflicts to settle: for
//! each node the newest time wins (sans-IO; the bytes are opaque here).

use std::collections::BTreeMap;

use palisade_identity::NodeId;

use crate::hlc::HlcTime;

/// A record's size at most.
pub const MAX_RECORD: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: NodeId,
    pub time: HlcTime,
    pub bytes: Vec<u8>,
}

/// Every record this node holds, its own included.
#[derive(Clone, Debug, Default)]
pub struct Records {
    records: BTreeMap<NodeId, NodeRecord>,
}

impl Records {
    pub fn new(held: impl IntoIterator<Item = NodeRecord>) -> Records {
        let mut records = Records::default();
        for record in held {
            records.receive(record);
        }
        records
    }

    pub fn get(&self, node: &NodeId) -> Option<&NodeRecord> {
        self.records.get(node)
    }

    pub fn all(&self) -> impl Iterator<Item = &NodeRecord> {
        self.records.values()
    }

    /// This node's record, if `bytes` differ from what it holds: stamped after the previous
    /// one (a clock set back does not make it older).
    pub fn set_own(&mut self, me: NodeId, wall_ms: u64, bytes: Vec<u8>) -> Option<NodeRecord> {
        let previous = self.records.get(&me);
        if previous.is_some_and(|previous| previous.bytes == bytes) {
            return None;
        }
        let time = match previous {
            Some(previous) if previous.time.ms >= wall_ms => HlcTime {
                ms: previous.time.ms,
                counter: previous.time.counter.saturating_add(1),
            },
            _ => HlcTime {
                ms: wall_ms,
                counter: 0,
            },
        };
        let record = NodeRecord {
            node: me,
            time,
            bytes,
        };
        self.records.insert(me, record.clone());
        Some(record)
    }

    /// Keeps `record` if it is newer than the one held for its node; returns whether it was.
    pub fn receive(&mut self, record: NodeRecord) -> bool {
        if record.bytes.len() > MAX_RECORD {
            return false;
        }
        match self.records.get(&record.node) {
            Some(held) if held.time >= record.time => false,
            _ => {
                self.records.insert(record.node, record);
                true
            }
        }
    }

    /// What this node holds: each node and its record's time.
    pub fn digest(&self) -> Vec<(NodeId, HlcTime)> {
        self.records
            .values()
            .map(|record| (record.node, record.time))
            .collect()
    }

    /// The records a peer whose digest is `theirs` lacks or holds older.
    pub fn newer_than(&self, theirs: &[(NodeId, HlcTime)]) -> Vec<NodeRecord> {
        let theirs: BTreeMap<NodeId, HlcTime> = theirs.iter().copied().collect();
        self.records
            .values()
            .filter(|record| {
                theirs
                    .get(&record.node)
                    .is_none_or(|time| *time < record.time)
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(last: u8) -> NodeId {
        NodeId::from_bytes([last; 16])
    }

    #[test]
    fn the_newest_record_of_each_node_wins_and_own_records_only_move_forward() {
        let mut records = Records::default();
        let first = records.set_own(node(1), 1_000, b"a".to_vec());
        assert!(first.is_some());
        assert_eq!(
            records.set_own(node(1), 2_000, b"a".to_vec()),
            None,
            "unchanged"
        );
        // The clock went back: the new record is still later than the old.
        let second = records
            .set_own(node(1), 500, b"b".to_vec())
            .unwrap_or_else(|| panic!("changed"));
        assert!(second.time > first.map(|record| record.time).unwrap_or_default());
        let old = NodeRecord {
            node: node(1),
            time: HlcTime {
                ms: 900,
                counter: 0,
            },
            bytes: b"stale".to_vec(),
        };
        assert!(!records.receive(old), "older than held");
        let other = NodeRecord {
            node: node(2),
            time: HlcTime { ms: 5, counter: 0 },
            bytes: b"x".to_vec(),
        };
        assert!(records.receive(other.clone()));
        assert_eq!(
            records.newer_than(&[(node(2), other.time)]).len(),
            1,
            "node 1's"
        );
        assert_eq!(records.newer_than(&records.digest()), Vec::new());
    }

    proptest! {
        /// Nodes that exchange digests and answers in any order end with the same records.
        #[test]
        fn digests_converge_whatever_the_order(
            edits in proptest::collection::vec((0u8..4, 0u64..50, 0u8..3), 1..30),
            order in proptest::collection::vec((0usize..4, 0usize..4), 0..60),
        ) {
            let mut nodes: Vec<Records> = (0..4).map(|_| Records::default()).collect();
            for (who, ms, value) in edits {
                let who = usize::from(who);
                let _ = nodes[who].set_own(node(who as u8), ms, vec![value]);
            }
            let exchange = |nodes: &mut Vec<Records>, from: usize, to: usize| {
                let digest = nodes[from].digest();
                for record in nodes[to].newer_than(&digest) {
                    nodes[from].receive(record);
                }
            };
            for (from, to) in order {
                exchange(&mut nodes, from, to);
            }
            // Then one full round: everyone converges.
            for from in 0..4 {
                for to in 0..4 {
                    exchange(&mut nodes, from, to);
                }
            }
            for from in 0..4 {
                for to in 0..4 {
                    exchange(&mut nodes, from, to);
                }
            }
            let first: Vec<NodeRecord> = nodes[0].all().cloned().collect();
            for other in &nodes[1..] {
                prop_assert_eq!(&other.all().cloned().collect::<Vec<_>>(), &first);
            }
        }
    }
}
