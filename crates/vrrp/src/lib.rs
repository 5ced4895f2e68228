//! palisade's VRRP core: the election that decides which node of an HA group holds the
//! virtual IP (the director), as RFC 5798 (VRRPv3, IPv4 and IPv6) specifies it, with an
//! RFC 3768 (VRRPv2) compatibility mode for old peers.
//!
//! **Architecture Invariant:** this crate is sans-IO, like quinn-proto. It opens no socket,
//! spawns no task, reads no clock and draws no random number: time comes in as a `now:`
//! [`Instant`] argument (time since an epoch the driver picks; virtual in tests), packets come
//! in as bytes, and everything the outside world must do comes out as an [`Action`]. Its only
//! dependency is `thiserror`; the compiler, not review, keeps tokio and sockets out. The Linux
//! driver (`crates/vrrp-linux`: raw IP protocol 112 socket, netlink, gratuitous ARP /
//! unsolicited NA) is a thin loop around it, and [`sim::Lan`] runs many routers on a virtual
//! network in one thread, so every timing rule is tested to the microsecond.
//!
//! # Modules
//!
//! - [`packet`]: the advertisement codec, [`Advert::decode`] / [`Advert::encode`], strict:
//!   TTL 255, version, type, length, checksum (with the IP pseudo-header for v3).
//! - [`Router`]: one virtual router, states Initialize / Backup / Master (RFC 5798 section
//!   6.4) plus keepalived's FAULT for tracked health.
//! - [`sim`]: a LAN of routers in virtual time, for tests.
//!
//! # Driving a router
//!
//! ```text
//! let mut router = Router::new(cfg, now)?;      // Initialize
//! router.handle_startup(now);                   // Backup (or Master for the owner)
//! loop {
//!     while let Some(action) = router.poll_action() { apply(action) }  // in order
//!     select! {
//!         packet = socket.recv()            => router.handle_packet(now, &ctx, &bytes),
//!         _ = sleep_until(router.poll_timeout()) => router.handle_timeout(now),
//!         cmd = commands.recv()             => router.handle_command(now, cmd),
//!     }
//! }
//! ```
//!
//! **Polling order:** after every `handle_*` call, drain [`Router::poll_action`] and apply the
//! actions in the order returned (they are ordered as the RFC orders them: the advert before
//! the gratuitous ARPs, the VIP before its announcement, `Notify` last); then re-arm the one
//! timer from [`Router::poll_timeout`]. Applying is idempotent (adding a VIP that is present
//! succeeds), so a heal or a restart simply re-applies. The [`Router`] docs list the exact
//! sequence of each transition.
//!
//! # Words
//!
//! Types follow RFC 5798 (Master, Backup, Master_Down_Interval); `Display` follows keepalived
//! (`MASTER`, `BACKUP`, `FAULT`, `Entering MASTER STATE`), which is what operators grep for.
//! [`VrrpPriority`]: higher wins; never mix it with the cluster's node priority, where lower
//! wins.

pub mod packet;
mod peers;
mod router;
pub mod sim;
mod time;
mod types;

pub use packet::{Advert, DecodeContext, DecodeError, EncodeError};
pub use router::{
    Action, Command, CommandError, ConfigError, ConfigErrors, HANDOVER_OVERLAP, PeerEvent, Reason,
    Router, RouterConfig, RxError, STATUS_REPEAT, State, Stats, Transition, election_winner,
};
pub use time::Instant;
pub use types::{Centiseconds, Version, Vrid, VrrpPriority};
