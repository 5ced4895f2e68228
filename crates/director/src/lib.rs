//! The director's choice of scanning node (issue 11), sans-IO like the VRRP and replication
//! cores: no sockets, no clock (times are milliseconds passed in), no randomness.
//!
//! - Which node a client belongs to is *weighted rendezvous hashing* (HRW) of the client's
//!   key (its IPv4 address, or its IPv6 /64) over the eligible members, seeded and weighted
//!   from replicated configuration only: every node computes the same answer, so a client
//!   keeps its node across a director failover, and when a node leaves only its clients move.
//! - Load-awareness is *bounded loads* (Mirrokni, Thorup, Zadimoghaddam): a node holding more
//!   than (1 + ε) times its weighted share of the director's live connections gets no new
//!   ones; the connection goes to the client's next node in rendezvous order. Overflow is
//!   decided per connection: the client's next connection goes home again once home is below
//!   its bound (nothing is remembered, so nothing goes stale).
//! - A node is out of the choice (never its clients' home) while it is in maintenance
//!   (weight 0), reports failure or a stale policy, has missed three load reports, refused a
//!   relay connect, or timed out three times in a row (see [`Out`]). A node that returns
//!   takes its clients back over a slow start: its weight steps up in tenths, so each of its
//!   former clients moves back once, and not all at the same moment.
//! - A per-node connection cap; when every eligible node is at its cap the client is
//!   refused, and when no node is eligible the director serves the client itself
//!   (fail-open).

//! - When a director's host dies, the member that takes over makes each client of the dead
//!   director fail at once (issue 12) with a *tickle ACK* ([`tickle`]), as CTDB does.

mod choice;
pub mod takeover;
pub mod tickle;
pub mod wire;

pub use wire::{
    ConnectionList, DirectorMessage, GroupSettings, Handover, HandoverPhase, ListKind, LoadReport,
};

pub use choice::{
    Candidate, Choice, ClientKey, Director, Load, Member, Out, Reason, Settings, client_key,
};
