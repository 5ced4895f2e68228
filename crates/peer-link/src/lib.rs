//! Every node-to-node connection of a palisade cluster (issue 9): one authenticated link per
//! pair of nodes, keyed by [`NodeId`](palisade_identity::NodeId) and a per-link id, carrying
//! typed messages per plane, each plane with its own wire version.
//!
//! - [`auth`]: the [`Authenticator`](auth::Authenticator) trait (the HA group key now, the
//!   cluster's mutual TLS later).
//! - [`handshake`], [`frame`], [`message`]: the wire, sans-IO (fuzzed: `fuzz/`).
//! - [`link`]: one link over TCP (keepalive, `TCP_USER_TIMEOUT`, a ping every second).
//! - [`mesh`]: the node's set of links, turned into events for the planes.
//!
//! A lost link is a hint, never proof that the peer died: the mesh offers
//! [`MeshHandle::confirm_death`](mesh::MeshHandle::confirm_death), one dial that proves a
//! death (refused, or a new incarnation) or proves nothing.

pub mod auth;
pub mod frame;
pub mod handshake;
pub mod link;
pub mod mesh;
pub mod message;
pub mod metrics;

pub use auth::{Authenticator, GroupKey};
pub use handshake::{LocalIdentity, PeerIdentity};
pub use link::{JoinHandler, LinkAuth, TlsConfigs, TlsLinks};
pub use message::{HaMessage, Message};
