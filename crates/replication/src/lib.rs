//! Central management's replication core (issue 10), sans-IO like the VRRP core: no
//! sockets, no clock, no randomness. Time is a wall-clock reading in milliseconds passed in
//! by the caller; the store and the peer links live elsewhere.
//!
//! - [`hlc`]: the hybrid logical clock that stamps revisions (Kulkarni et al. 2014), with a
//!   bound on how far ahead of local time a peer's stamp may be.
//! - [`revision`]: a saved revision names its parents, author, the author's node priority and
//!   its HLC time; its id is a hash of all that.
//! - [`history`]: the set of revisions and its head, a pure function of the set: a
//!   descendant always wins; concurrent heads are merged by the seeds' rule (lower node
//!   priority value, then newest time, then node id) into a merge revision every node makes
//!   identically, so nodes that received the same revisions in any order agree.
//! - [`sim`]: nodes exchanging revisions over a lossy, reordering, partitionable network in
//!   virtual time, for property tests of convergence.

pub mod coordinator;
pub mod history;
pub mod hlc;
pub mod records;
pub mod replica;
pub mod revision;
pub mod sim;
pub mod wire;

pub use history::{History, HistoryError, Inserted};
pub use hlc::{ClockSkew, Hlc, HlcTime};
pub use replica::{Base, CannotInstall, Replica, ReplicaEvent, SaveError};
pub use revision::{ContentId, Revision, RevisionId, RevisionKind};
pub use wire::{Hello, SyncMessage, WireError};
