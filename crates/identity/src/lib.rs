//! Who a node is, in one place for every plane (issue 9): a [`NodeId`] made once and kept
//! in the node's store, its [`NodeName`], and its cluster [`NodePriority`]. The cluster's
//! node priority (lower value wins, as in the seeds' Central Management) is a different type
//! from VRRP's priority (higher wins, `palisade_vrrp::VrrpPriority`): never a bare integer
//! at a crate boundary, so the two cannot be mixed up.
//!
//! Depends on nothing of ours: the cluster, director, health and admin planes can all use it
//! without pulling in policy or the proxy.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's identity: a random UUID made once per data directory, kept in its store. Not
/// an address (NAT'd members, address changes) and not its name (two nodes may share one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(uuid::Uuid);

impl NodeId {
    /// A new random id (version 4).
    pub fn random() -> NodeId {
        NodeId(uuid::Uuid::new_v4())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> NodeId {
        NodeId(uuid::Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hyphenated lower case, the form operators see in status, logs and certificates.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a node id (a UUID such as 0b6f7c1e-8d2a-4f0e-9c53-2d1f1a7e4b90): {0:?}")]
pub struct NodeIdError(String);

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(text: &str) -> Result<NodeId, NodeIdError> {
        uuid::Uuid::parse_str(text.trim())
            .map(NodeId)
            .map_err(|_| NodeIdError(text.to_owned()))
    }
}

/// One run of a node's process: random at every start, never stored. A peer that sees a
/// node come back with another incarnation knows the process it knew has died (issue 9: a
/// lost link is a hint, a new incarnation is proof).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Incarnation([u8; 16]);

impl Incarnation {
    pub fn random() -> Incarnation {
        Incarnation(*uuid::Uuid::new_v4().as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Incarnation {
        Incarnation(bytes)
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are enough to tell runs apart in a log line.
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The node's name as operators know it (its host name by default): shown in status, logs,
/// `Via` and error pages. Not unique and not an identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeNameError {
    #[error("a node name cannot be empty")]
    Empty,
    #[error("a node name is at most 253 characters")]
    TooLong,
    #[error("a node name holds letters, digits, '-', '_' and '.' only: {0:?}")]
    BadCharacter(String),
}

impl NodeName {
    pub fn new(name: &str) -> Result<NodeName, NodeNameError> {
        if name.is_empty() {
            return Err(NodeNameError::Empty);
        }
        if name.len() > 253 {
            return Err(NodeNameError::TooLong);
        }
        // What a host name may hold, plus '_': the name goes into headers and log lines
        // unquoted, so nothing that could break either.
        if !name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        {
            return Err(NodeNameError::BadCharacter(name.to_owned()));
        }
        Ok(NodeName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for NodeName {
    /// "palisade": the name of a node whose host name is not a valid node name.
    fn default() -> NodeName {
        NodeName("palisade".to_owned())
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for NodeName {
    type Error = NodeNameError;

    fn try_from(name: String) -> Result<NodeName, NodeNameError> {
        NodeName::new(&name)
    }
}

impl From<NodeName> for String {
    fn from(name: NodeName) -> String {
        name.0
    }
}

/// The cluster node priority of the seeds' Central Management: **lower value wins** (it
/// settles concurrent policy saves, and later the director's preference). Equal on every node
/// by default. Compare with [`NodePriority::wins_over`], never with `<` on raw numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodePriority(u16);

impl NodePriority {
    /// What every node has unless configured otherwise.
    pub const DEFAULT: NodePriority = NodePriority(100);

    pub const fn new(value: u16) -> NodePriority {
        NodePriority(value)
    }

    pub const fn value(self) -> u16 {
        self.0
    }

    /// Whether this priority beats `other` (strictly: a lower value).
    pub fn wins_over(self, other: NodePriority) -> bool {
        self.0 < other.0
    }
}

impl Default for NodePriority {
    fn default() -> NodePriority {
        NodePriority::DEFAULT
    }
}

impl fmt::Display for NodePriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_random_and_round_trip_as_text_bytes_and_json() {
        let (one, two) = (NodeId::random(), NodeId::random());
        assert_ne!(one, two);
        let text = one.to_string();
        assert_eq!(text.len(), 36, "{text}");
        assert_eq!(text.parse::<NodeId>(), Ok(one));
        assert_eq!(NodeId::from_bytes(*one.as_bytes()), one);
        let json = serde_json::to_string(&one).unwrap_or_default();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&json).ok(), Some(one));
        assert!("node-a".parse::<NodeId>().is_err());
    }

    #[test]
    fn names_hold_host_name_characters_only() {
        assert_eq!(
            NodeName::new("proxy-1.dc_a").map(|n| n.to_string()),
            Ok("proxy-1.dc_a".into())
        );
        assert_eq!(NodeName::new(""), Err(NodeNameError::Empty));
        assert!(matches!(
            NodeName::new("a b"),
            Err(NodeNameError::BadCharacter(_))
        ));
        assert!(matches!(
            NodeName::new("a\r\nX: y"),
            Err(NodeNameError::BadCharacter(_))
        ));
        assert_eq!(NodeName::new(&"a".repeat(254)), Err(NodeNameError::TooLong));
        assert!(serde_json::from_str::<NodeName>("\"bad name\"").is_err());
    }

    #[test]
    fn lower_node_priority_wins() {
        let (one, two) = (NodePriority::new(1), NodePriority::new(2));
        assert!(one.wins_over(two));
        assert!(!two.wins_over(one));
        assert!(
            !NodePriority::DEFAULT.wins_over(NodePriority::default()),
            "equal: nobody wins"
        );
    }
}
