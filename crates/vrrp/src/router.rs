//! One virtual router: the state machine of RFC 5798 section 6 (and RFC 3768 section 6 in
//! VRRPv2 mode), plus keepalived's FAULT state and palisade's hooks for health and fast
//! handover.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::packet::{Advert, DecodeContext, DecodeError};
use crate::peers::PeerTable;
use crate::time::Instant;
use crate::types::{Centiseconds, Version, Vrid, VrrpPriority};

/// The node-local settings of one virtual router (one HA group on one interface).
///
/// Built by the binary from the config file; [`RouterConfig::new`] fills in the RFC and
/// keepalived defaults, then fields may be changed before [`Router::new`] validates them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    pub vrid: Vrid,
    /// 1..=254, or 255 for the address owner, which becomes Master at startup. Higher wins.
    pub priority: VrrpPriority,
    /// This node's address on the interface: the IP source of its adverts (IPv6: the
    /// link-local address), compared numerically to break equal priorities.
    pub primary_address: IpAddr,
    /// The virtual addresses, all of the primary address's family.
    pub vips: Vec<IpAddr>,
    /// Advertisement_Interval: v3 1..=4095 centiseconds; v2 whole seconds (multiples of 100).
    /// Default 100 (1 s).
    pub advert_interval: Centiseconds,
    /// Preempt_Mode: a Backup takes over from a live lower-priority Master. Default true. The
    /// address owner always preempts (RFC 5798 section 6.1).
    pub preempt: bool,
    /// keepalived's `preempt_delay`: a Backup preempts only after this long in Backup state
    /// (counted again from every higher-priority advert). Default 0.
    pub preempt_delay: Duration,
    /// Accept_Mode (RFC 5798 section 6.1): a non-owner Master accepts packets addressed to the
    /// VIPs. Enforcing it is the driver's business; see [`Router::accepts_vip_traffic`].
    pub accept_mode: bool,
    pub version: Version,
    /// How many gratuitous ARPs / unsolicited NAs per VIP and burst (keepalived's
    /// `vrrp_garp_master_repeat`, default 5).
    pub garp_repeat: u8,
    /// A second burst this long after becoming Master (keepalived's
    /// `vrrp_garp_master_delay`, default 5 s); zero disables it.
    pub garp_master_delay: Duration,
    /// The other members' primary addresses, when the node knows them (its unicast peers,
    /// or its peer links' addresses); empty: unknown. An advert for this VRID from anyone
    /// else is counted ([`Stats::non_member_adverts`]): another device using the VRID on the
    /// segment, as the seeds warn. It is processed all the same (RFC 5798).
    pub members: Vec<IpAddr>,
}

impl RouterConfig {
    /// A config with the defaults: VRRPv3, 1 s adverts, preempt on without delay, accept mode
    /// off, 5 gratuitous ARPs now and 5 more after 5 s (as keepalived).
    pub fn new(
        vrid: Vrid,
        priority: VrrpPriority,
        primary_address: IpAddr,
        vips: Vec<IpAddr>,
    ) -> RouterConfig {
        RouterConfig {
            vrid,
            priority,
            primary_address,
            vips,
            advert_interval: Centiseconds::ONE_SECOND,
            preempt: true,
            preempt_delay: Duration::ZERO,
            accept_mode: false,
            version: Version::V3,
            garp_repeat: 5,
            garp_master_delay: Duration::from_secs(5),
            members: Vec::new(),
        }
    }

    /// Every problem with this config, not just the first.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        if self.priority == VrrpPriority::STOP {
            errors.push(ConfigError::PriorityZero);
        }
        let interval = self.advert_interval;
        match self.version {
            _ if interval.0 == 0 => errors.push(ConfigError::AdvertIntervalZero),
            Version::V3 if interval > Centiseconds::MAX_V3 => {
                errors.push(ConfigError::AdvertIntervalTooLong(interval));
            }
            Version::V2 if !interval.0.is_multiple_of(100) || interval.0 > 25_500 => {
                errors.push(ConfigError::V2IntervalNotWholeSeconds(interval));
            }
            _ => {}
        }
        let primary = self.primary_address;
        if primary.is_unspecified() || primary.is_multicast() {
            errors.push(ConfigError::BadPrimaryAddress(primary));
        }
        if self.version == Version::V2 && primary.is_ipv6() {
            errors.push(ConfigError::V2OverIpv6(primary));
        }
        if self.vips.is_empty() {
            errors.push(ConfigError::NoVips);
        }
        if self.vips.len() > 255 {
            errors.push(ConfigError::TooManyVips {
                count: self.vips.len(),
            });
        }
        for (idx, &vip) in self.vips.iter().enumerate() {
            if vip.is_ipv4() != primary.is_ipv4() {
                errors.push(ConfigError::VipFamily { vip, primary });
            }
            if vip.is_unspecified() || vip.is_multicast() {
                errors.push(ConfigError::BadVip(vip));
            }
            if self.vips[..idx].contains(&vip) {
                errors.push(ConfigError::DuplicateVip(vip));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// One problem in a [`RouterConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("priority 0: must be 1..=254 (255 means address owner)")]
    PriorityZero,
    #[error("advert interval 0: must be at least 1 centisecond")]
    AdvertIntervalZero,
    #[error("advert interval {} cs: VRRPv3 allows at most 4095 cs (40.95 s)", .0.0)]
    AdvertIntervalTooLong(Centiseconds),
    #[error("advert interval {} cs: VRRPv2 counts whole seconds, 1..=255 s", .0.0)]
    V2IntervalNotWholeSeconds(Centiseconds),
    #[error("primary address {0}: must be a unicast address of this node")]
    BadPrimaryAddress(IpAddr),
    #[error("primary address {0} is IPv6: VRRPv2 is IPv4 only, use version 3")]
    V2OverIpv6(IpAddr),
    #[error("no virtual addresses: an HA group needs at least one VIP")]
    NoVips,
    #[error("{count} virtual addresses: an advert carries at most 255")]
    TooManyVips { count: usize },
    #[error(
        "virtual address {vip} is not of the family of the primary address {primary}: use one HA group per family"
    )]
    VipFamily { vip: IpAddr, primary: IpAddr },
    #[error("virtual address {0}: must be a unicast address")]
    BadVip(IpAddr),
    #[error("virtual address {0} is listed twice")]
    DuplicateVip(IpAddr),
}

/// Every problem found by [`RouterConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, error) in self.0.iter().enumerate() {
            if idx > 0 {
                f.write_str("; ")?;
            }
            error.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The state of a virtual router. The names follow RFC 5798; [`Display`](fmt::Display) prints
/// keepalived's words, which operators grep for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// RFC 5798 Initialize (keepalived INIT): before startup and after shutdown.
    Initialize,
    /// RFC 5798 Backup (RFC 9568: Backup; keepalived BACKUP).
    Backup,
    /// RFC 5798 Master (RFC 9568: Active; keepalived MASTER): holds the VIPs. In palisade
    /// words, this node is the director.
    Master,
    /// Not in the RFC; keepalived FAULT: tracked health is bad. Never holds the VIPs and sends
    /// no adverts, so the group elects among the healthy nodes.
    Fault,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        })
    }
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Startup into Backup (keepalived: `Entering BACKUP STATE (init)`).
    Startup,
    /// Startup of the address owner, priority 255 (RFC 5798 section 6.4.1).
    StartupOwner,
    /// The Master_Down_Timer expired: no advert from any Master for Master_Down_Interval.
    MasterDown,
    /// The Master_Down_Timer, set to Skew_Time by a Master's priority-0 advert, expired.
    PriorityZeroReceived,
    /// This Master heard a Master with higher priority (or equal, higher address).
    HigherPriorityAdvert,
    /// The Shutdown command.
    Shutdown,
    /// Tracked health went bad.
    Fault,
    /// Tracked health came back.
    Recovered,
    /// The operator took the node out of service (`palisade drain`).
    Drained,
    /// The operator put a drained node back in service.
    Resumed,
    /// A peer asked this Backup to take over at once (explicit handover).
    TakeoverRequested,
    /// The peer links proved the Master's process dead (its link port refused a dial, or it
    /// came back as a new incarnation) and this Backup is next in line.
    MasterDied,
    /// This Backup discarded a lower-priority Master's adverts until its timer expired.
    Preempted,
    /// This Master heard a lower-priority Master and re-announced its VIPs.
    SplitBrainHeal,
    /// The peer links say another node is Master too (its adverts do not arrive: the VRRP
    /// network is split, the links are not) and it would win the election: this one steps
    /// down and stays Backup while that node is known alive and Master.
    SplitBrainPeerLink,
}

impl Reason {
    /// The word in logs and notify hooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::StartupOwner => "startup-owner",
            Reason::MasterDown => "master-down",
            Reason::PriorityZeroReceived => "priority-0-received",
            Reason::HigherPriorityAdvert => "higher-priority-advert",
            Reason::Shutdown => "shutdown",
            Reason::Fault => "fault",
            Reason::Recovered => "recovered",
            Reason::Drained => "drained",
            Reason::Resumed => "resumed",
            Reason::TakeoverRequested => "takeover-requested",
            Reason::MasterDied => "master-died",
            Reason::Preempted => "preempted",
            Reason::SplitBrainHeal => "split-brain-heal",
            Reason::SplitBrainPeerLink => "split-brain-peer-link",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, or (`from == to == Master`, reason [`Reason::SplitBrainHeal`]) a
/// re-announcement of one, for logs and notify hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

impl fmt::Display for Transition {
    /// keepalived's wording, e.g. `Entering MASTER STATE (master-down)`. The driver prefixes
    /// the instance (`VRRP_Instance(VI_1)`) and may log `Transition to MASTER STATE` first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "Re-announcing {} STATE ({})", self.to, self.reason)
        } else {
            write!(f, "Entering {} STATE ({})", self.to, self.reason)
        }
    }
}

/// An input that is neither a packet nor a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// RFC 5798 Shutdown: a Master sends priority 0 and releases its VIPs; every state goes to
    /// Initialize. [`Router::handle_startup`] starts again.
    Shutdown,
    /// Changes the effective priority (1..=255), for example from a health check that lowers
    /// it instead of faulting. A Master advertises the new value at once.
    SetPriority(VrrpPriority),
    /// Tracked health: `true` means unhealthy. The router goes to FAULT (a Master first sends
    /// priority 0 and releases its VIPs) and stays there until `Fault(false)`, which returns
    /// it to Backup (the address owner to Master).
    Fault(bool),
    /// The operator's drain: `true` takes the node out of service like a fault (a Master sends
    /// priority 0 and releases its VIPs; a Backup never takes over) until `Drain(false)`.
    /// Independent of health: the node returns to Backup only when both are clear.
    Drain(bool),
    /// A peer told this node to take over now (explicit handover on a graceful stop, or the
    /// heartbeat saw the Master's process die): a healthy Backup becomes Master at once.
    ///
    /// The leaving Master must have handled [`Command::Shutdown`] before its handover message
    /// goes out. Otherwise it may hear the new Master's advert while still Master, outrank
    /// it, and take the VIP back (RFC 5798 section 6.4.3 plus the split-brain heal); the
    /// handover then degrades to the Skew_Time wait of its priority-0 advert. If the node
    /// that takes over is not the best one alive, the RFC rules undo it within one advert.
    TakeOver,
}

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("priority 0 cannot be set: it is only sent by a Master that stops")]
    PriorityZero,
    #[error("take-over refused in {state} state: only a healthy, undrained BACKUP takes over")]
    TakeOverRefused { state: State },
    #[error("handover from {from} ignored: this node's master is {master}")]
    HandoverNotFromMaster { from: IpAddr, master: IpAddr },
}

/// Something the driver must do, in the order [`Router::poll_action`] returns them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send this advert to the VRRP group (or to each unicast peer) from the primary address,
    /// TTL 255: `advert.encode(primary, group)`.
    SendAdvert(Advert),
    /// Configure the VIP on the interface. Idempotent: it may already be there.
    AddVip(IpAddr),
    /// Remove the VIP from the interface. Idempotent: it may already be gone.
    RemoveVip(IpAddr),
    /// Announce the VIP: gratuitous ARP (IPv4) or unsolicited Neighbor Advertisement with the
    /// Override flag (IPv6), `repeat` times back to back.
    SendGratuitous { vip: IpAddr, repeat: u8 },
    /// Log it and run the notify hook.
    Notify(Transition),
    /// The last peer link to the Master was lost and this Backup is next in line: dial the
    /// Master once and report [`PeerEvent::Died`] if that proves its process gone (a lost
    /// link is a hint, never proof: security review F3). Anything else: report nothing, the
    /// RFC timers decide.
    ConfirmDeath { peer: IpAddr },
    /// Tell this peer to take over now (planned handover; sent after the priority-0 advert,
    /// before the VIPs are released).
    SendHandover { to: IpAddr },
}

/// What the peer links report about another node of the group. The fast paths around the
/// advert timers (crash take-over, planned handover) are decided here, so they run in
/// virtual time in `sim::Lan` like every other rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerEvent {
    /// The peer's VRRP priority in this group (0: stopped, faulty or drained), and whether
    /// it is the group's Master.
    Status {
        peer: IpAddr,
        priority: VrrpPriority,
        master: bool,
    },
    /// The peer said goodbye.
    Left { peer: IpAddr },
    /// The last link to the peer ended without a goodbye: a hint that it died.
    LinkLost { peer: IpAddr },
    /// Proof that the peer's process died (see [`Action::ConfirmDeath`]).
    Died { peer: IpAddr },
    /// The peer, leaving, asked this node to take over now.
    Handover { from: IpAddr },
}

/// How often a driver repeats its [`PeerEvent::Status`] on the peer links besides sending it
/// on every change: a status that arrives after a peer became Master proves the sender
/// alive (split-brain detection), where a link that has not yet timed out proves nothing.
pub const STATUS_REPEAT: Duration = Duration::from_secs(1);

/// How long a Master that hands over keeps its VIPs after telling its successor, so that
/// connections arriving meanwhile are answered here rather than into a void.
pub const HANDOVER_OVERLAP: Duration = Duration::from_millis(20);

/// Why a received packet or advert was discarded before the state machine saw it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// RFC 5798 section 7.1: the VRID is not configured here. Usually another HA group on the
    /// same network; the driver should have picked another router with `peek_vrid`.
    #[error("advert for VRID {received}, this router is VRID {local}")]
    OtherVrid { local: Vrid, received: Vrid },
    /// keepalived: `wrong version. Received 3 and expect 2`.
    #[error("wrong version: received {received}, expect {local}")]
    VersionMismatch { local: Version, received: Version },
    #[error("advert from {src}: this router runs over the other IP family")]
    AddressFamily { src: IpAddr },
    /// RFC 3768 section 7.1 (v2 only): the interval must equal ours. keepalived:
    /// `advertisement interval mismatch mine=2 sec rcv'd=1 sec`.
    #[error("advertisement interval mismatch: mine {local}, received {received}")]
    IntervalMismatch {
        local: Centiseconds,
        received: Centiseconds,
    },
    /// Our own advert looped back (multicast loop left on); ignoring it keeps a Master from
    /// answering itself.
    #[error("own advert looped back")]
    OwnAdvert,
}

/// Counters, as holo-vrrp and the VRRP MIB (RFC 6527) keep them. Every discarded packet
/// bumps exactly one error counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// When the counters started (the router's creation).
    pub discontinuity_time: Instant,
    /// Adverts that reached the state machine.
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub priority_zero_received: u64,
    pub priority_zero_sent: u64,
    /// Times this router became Master.
    pub master_transitions: u64,
    /// Times this Master re-announced after hearing a lower-priority Master.
    pub split_brain_heals: u64,
    pub ttl_errors: u64,
    pub checksum_errors: u64,
    /// Unknown version, v2 over IPv6, or the other version than configured.
    pub version_errors: u64,
    pub type_errors: u64,
    /// Truncated, or the address count does not match the length.
    pub pkt_length_errors: u64,
    /// VRID 0, or another VRID than ours.
    pub vrid_errors: u64,
    /// Interval 0, or (v2) not equal to ours.
    pub interval_errors: u64,
    pub auth_type_errors: u64,
    pub address_family_errors: u64,
    /// Adverts for our VRID carrying another set of virtual addresses: another device using
    /// this VRID on the segment (processed all the same, as RFC 5798 6.4.3 says; logged).
    pub address_list_errors: u64,
    /// Adverts for our VRID from a router that is not a member (see
    /// [`RouterConfig::members`]); processed all the same, logged.
    pub non_member_adverts: u64,
    pub own_adverts: u64,
    /// Times the peer links lost this Backup's Master and a death confirmation was asked.
    pub death_confirmations: u64,
    /// Times this Master stepped down because the peer links named a better Master whose
    /// adverts did not arrive (a split VRRP network).
    pub split_brain_stepdowns: u64,
}

/// One VRRP virtual router, sans-IO: events and the time go in, [`Action`]s come out.
///
/// Methods, quinn style:
/// - inputs: [`handle_startup`](Router::handle_startup),
///   [`handle_packet`](Router::handle_packet) (bytes from the socket) or
///   [`handle_advert`](Router::handle_advert) (already decoded),
///   [`handle_timeout`](Router::handle_timeout), [`handle_command`](Router::handle_command);
/// - outputs: [`poll_action`](Router::poll_action), [`poll_timeout`](Router::poll_timeout);
/// - getters: [`state`](Router::state), [`master_address`](Router::master_address),
///   [`priority`](Router::priority), [`master_adver_interval`](Router::master_adver_interval),
///   [`stats`](Router::stats), and a few more.
///
/// **Polling order.** After every `handle_*` call, call `poll_action` until it returns `None`
/// and apply each action in the order returned, then arm one timer for `poll_timeout` and call
/// `handle_timeout` when it passes (or earlier: firing early is harmless, late is not). `now`
/// must never go backwards. The order within one event is fixed:
/// - becoming Master: `SendAdvert`, `AddVip` for each VIP, `SendGratuitous` for each VIP,
///   `Notify` (RFC 5798 section 6.4.1/6.4.2: send the advert, then announce);
/// - split-brain heal: `SendAdvert`, `AddVip` and `SendGratuitous` for each VIP, `Notify`;
/// - stepping down to a better Master: `SendAdvert` (one last advert, see
///   [`handle_advert`](Router::handle_advert)), `RemoveVip` for each VIP, `Notify`;
/// - leaving Master for shutdown or fault: `SendAdvert` with priority 0, `RemoveVip` for each
///   VIP, `Notify`;
/// - startup into Backup or Fault: `RemoveVip` for each VIP (clean up after a crash, as
///   keepalived's `removing VIPs.`), `Notify`.
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    state: State,
    /// The effective priority: the configured one until [`Command::SetPriority`].
    priority: VrrpPriority,
    faulty: bool,
    /// Taken out of service by the operator ([`Command::Drain`]).
    drained: bool,
    /// RFC 5798 Master_Adver_Interval: learned from the Master in v3, our own in v2.
    master_adver_int: Centiseconds,
    master_address: Option<IpAddr>,
    /// The priority in the current Master's latest advert (when not Master ourselves).
    master_priority: Option<VrrpPriority>,
    /// RFC 5798 Master_Down_Timer (Backup only).
    master_down_at: Option<Instant>,
    /// What the Master_Down_Timer expiring will mean.
    down_reason: Reason,
    /// RFC 5798 Adver_Timer (Master only).
    adver_at: Option<Instant>,
    /// keepalived's second gratuitous ARP burst (Master only).
    garp_refresh_at: Option<Instant>,
    /// A Backup accepts lower-priority adverts (does not preempt) until then.
    preempt_after: Instant,
    last_heal: Option<Instant>,
    /// When this router last became Master over any lower-priority Master without waiting
    /// for it to go quiet: by preemption, or as the address owner at startup or recovery.
    preempted_at: Option<Instant>,
    actions: VecDeque<Action>,
    stats: Stats,
    /// The other nodes' priorities, as their peer links report them.
    peers: PeerTable,
    /// A Master that handed over releases its VIPs then.
    release_at: Option<Instant>,
    /// A Master that the peer links told of a better Master checks then whether that one's
    /// adverts arrived (see [`PeerEvent::Status`] handling).
    split_check_at: Option<Instant>,
    /// When this router last became Master: a peer's status newer than this proves that
    /// peer alive while this one is Master.
    master_since: Option<Instant>,
    /// The better Master this one stepped down for over the peer links: this Backup does not
    /// take over while the links say it is alive and Master.
    split_winner: Option<IpAddr>,
}

impl Router {
    /// A router in Initialize state; nothing happens until [`Router::handle_startup`].
    pub fn new(cfg: RouterConfig, now: Instant) -> Result<Router, ConfigErrors> {
        cfg.validate()?;
        Ok(Router {
            state: State::Initialize,
            priority: cfg.priority,
            faulty: false,
            drained: false,
            master_adver_int: cfg.advert_interval,
            master_address: None,
            master_priority: None,
            master_down_at: None,
            down_reason: Reason::MasterDown,
            adver_at: None,
            garp_refresh_at: None,
            preempt_after: now,
            last_heal: None,
            preempted_at: None,
            actions: VecDeque::new(),
            stats: Stats {
                discontinuity_time: now,
                ..Stats::default()
            },
            peers: PeerTable::new(),
            release_at: None,
            split_check_at: None,
            master_since: None,
            split_winner: None,
            cfg,
        })
    }

    // === getters ===

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    pub fn vrid(&self) -> Vrid {
        self.cfg.vrid
    }

    /// The effective priority.
    pub fn priority(&self) -> VrrpPriority {
        self.priority
    }

    /// The current Master: this node when Master, otherwise the source of the latest advert
    /// from a live Master (Backup and Fault), if any.
    pub fn master_address(&self) -> Option<IpAddr> {
        self.master_address
    }

    /// The current Master's priority: ours when Master, otherwise the one in the latest advert
    /// of [`Router::master_address`].
    pub fn master_priority(&self) -> Option<VrrpPriority> {
        match self.state {
            State::Master => Some(self.priority),
            _ => self.master_address.and(self.master_priority),
        }
    }

    /// RFC 5798 Master_Adver_Interval.
    pub fn master_adver_interval(&self) -> Centiseconds {
        self.master_adver_int
    }

    /// RFC 5798 Skew_Time for the current Master_Adver_Interval and effective priority.
    ///
    /// v3: `((256 - Priority) * Master_Adver_Interval) / 256`; v2 (RFC 3768):
    /// `(256 - Priority) / 256` seconds. Computed in microseconds, truncated, as keepalived
    /// does (`609375 us` for priority 100 at 1 s).
    pub fn skew_time(&self) -> Duration {
        let interval_micros = match self.cfg.version {
            Version::V3 => self.master_adver_int.as_micros(),
            Version::V2 => 1_000_000,
        };
        let weight = 256 - u64::from(self.priority.0);
        Duration::from_micros(weight * interval_micros / 256)
    }

    /// RFC 5798 Master_Down_Interval: `3 * Master_Adver_Interval + Skew_Time`.
    pub fn master_down_interval(&self) -> Duration {
        3 * self.master_adver_int.to_duration() + self.skew_time()
    }

    pub fn is_faulty(&self) -> bool {
        self.faulty
    }

    pub fn is_drained(&self) -> bool {
        self.drained
    }

    /// Whether this router may hold the VIPs: healthy and not drained.
    pub fn is_eligible(&self) -> bool {
        !self.faulty && !self.drained
    }

    /// Whether the driver should accept packets addressed to the VIPs (RFC 5798 section
    /// 6.4.3): only a Master, and only if it owns the addresses or Accept_Mode is on.
    pub fn accepts_vip_traffic(&self) -> bool {
        self.state == State::Master
            && (self.cfg.accept_mode || self.priority == VrrpPriority::OWNER)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    // === inputs ===

    /// RFC 5798 section 6.4.1, the Startup event. Ignored unless in Initialize state.
    ///
    /// The address owner (priority 255) becomes Master at once; every other router, after
    /// removing any VIP a crashed predecessor left behind, waits in Backup for
    /// Master_Down_Interval. A faulty router goes to Fault instead.
    pub fn handle_startup(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        if !self.is_eligible() {
            self.remove_vips();
            let reason = if self.faulty {
                Reason::Fault
            } else {
                Reason::Drained
            };
            self.enter(State::Fault, reason);
        } else if self.priority == VrrpPriority::OWNER {
            self.become_master(now, Reason::StartupOwner);
        } else {
            self.remove_vips();
            self.enter_backup(now, Reason::Startup);
        }
    }

    /// A packet as received from the socket: `bytes` is the VRRP message after the IP
    /// header, `ctx` what the IP header said. Decodes it (TTL, checksum, ...), counts any
    /// fault in [`Stats`], then goes on as [`Router::handle_advert`].
    pub fn handle_packet(
        &mut self,
        now: Instant,
        ctx: &DecodeContext,
        bytes: &[u8],
    ) -> Result<(), RxError> {
        match Advert::decode(bytes, ctx) {
            Ok(advert) => self.handle_advert(now, ctx.src, advert),
            Err(err) => {
                self.count_decode_error(&err);
                Err(RxError::Decode(err))
            }
        }
    }

    /// An advert from `src`, already decoded (and so TTL- and checksum-checked) by
    /// [`Advert::decode`]. Adverts for another VRID, of the other version or IP family, with
    /// (v2) another interval, or our own looped back are counted and discarded with an
    /// `Err`; the state machine never sees them. Otherwise RFC 5798 section 6.4.2 (Backup)
    /// and 6.4.3 (Master) apply, with these additions:
    ///
    /// - **Preempt delay** (Backup): until `preempt_delay` has passed since entering Backup
    ///   or since the last higher-priority advert, lower-priority adverts are accepted like
    ///   higher ones, so the down timer keeps being reset.
    /// - **Split-brain heal** (Master): a lower-priority advert (or equal priority from a
    ///   lower address) means another Master exists. Besides discarding it (RFC), this Master
    ///   sends its own advert at once so the other steps down, and re-announces: `AddVip`,
    ///   `SendGratuitous` and `Notify` ([`Reason::SplitBrainHeal`]) at most once per
    ///   3 x Advertisement_Interval, so neighbour caches and notify-hook state follow it. Not
    ///   within that time after this router preempted (or, as the owner, started over) a live
    ///   Master, whose last advert is then expected and whose announcements are older.
    /// - **Last advert** (Master stepping down): before releasing its VIPs, the loser sends
    ///   one advert at its own priority. Without it, a winner whose advert arrived first
    ///   after a partition would never learn that clients may still point at the loser.
    ///
    /// Returns `Ok` for every advert the state machine processed, including those the RFC
    /// tells it to discard (a lower priority seen by a preempting Backup).
    pub fn handle_advert(
        &mut self,
        now: Instant,
        src: IpAddr,
        advert: Advert,
    ) -> Result<(), RxError> {
        if advert.vrid != self.cfg.vrid {
            self.stats.vrid_errors += 1;
            return Err(RxError::OtherVrid {
                local: self.cfg.vrid,
                received: advert.vrid,
            });
        }
        if advert.version != self.cfg.version {
            self.stats.version_errors += 1;
            return Err(RxError::VersionMismatch {
                local: self.cfg.version,
                received: advert.version,
            });
        }
        if src.is_ipv4() != self.cfg.primary_address.is_ipv4() {
            self.stats.address_family_errors += 1;
            return Err(RxError::AddressFamily { src });
        }
        if src == self.cfg.primary_address {
            self.stats.own_adverts += 1;
            return Err(RxError::OwnAdvert);
        }
        if advert.max_adver_int.0 == 0 {
            self.stats.interval_errors += 1;
            return Err(RxError::Decode(DecodeError::InvalidInterval));
        }
        if self.cfg.version == Version::V2 && advert.max_adver_int != self.cfg.advert_interval {
            self.stats.interval_errors += 1;
            return Err(RxError::IntervalMismatch {
                local: self.cfg.advert_interval,
                received: advert.max_adver_int,
            });
        }
        self.stats.adverts_received += 1;
        let mut theirs: Vec<IpAddr> = advert.addresses.clone();
        let mut ours: Vec<IpAddr> = self.cfg.vips.clone();
        theirs.sort_unstable();
        theirs.dedup();
        ours.sort_unstable();
        ours.dedup();
        if theirs != ours {
            self.stats.address_list_errors += 1;
        }
        if !self.cfg.members.is_empty() && !self.cfg.members.contains(&src) {
            self.stats.non_member_adverts += 1;
        }
        if advert.priority == VrrpPriority::STOP {
            self.stats.priority_zero_received += 1;
        }
        match self.state {
            State::Initialize => {}
            State::Backup => self.backup_receives(now, src, &advert),
            State::Master => self.master_receives(now, src, &advert),
            State::Fault => self.track_master(src, &advert),
        }
        Ok(())
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.release_at.is_some_and(|at| at <= now) {
            self.release_at = None;
            self.remove_vips();
        }
        if self.split_check_at.is_some_and(|at| at <= now) {
            self.split_check_at = None;
            if self.state == State::Master
                && let Some(winner) = self.live_master_above()
            {
                self.split_brain_step_down(now, winner);
                return;
            }
        }
        match self.state {
            State::Backup => {
                if self.master_down_at.is_some_and(|at| at <= now) {
                    // Held only while the winner's statuses keep coming: a winner whose host
                    // died is taken over within two status periods, not at its link's timeout.
                    let fresh = now - 2 * STATUS_REPEAT;
                    let winner = self.split_winner.and_then(|winner| {
                        self.master_above(
                            (self.peers.masters_heard_since(fresh))
                                .filter(|(peer, _)| *peer == winner),
                        )
                    });
                    if let Some(winner) = winner {
                        // No adverts, but the peer links say the Master this one stepped down
                        // for is alive, Master and still the better one: taking over would
                        // make two again.
                        self.master_down_at = Some(now + self.master_down_interval());
                        self.master_address = Some(winner);
                    } else {
                        // RFC 5798 section 6.4.2 (320)-(365).
                        self.become_master(now, self.down_reason);
                    }
                }
            }
            State::Master => {
                if self.adver_at.is_some_and(|at| at <= now) {
                    // RFC 5798 section 6.4.3 (625)-(635).
                    self.send_advert(self.priority);
                    self.adver_at = Some(now + self.cfg.advert_interval.to_duration());
                }
                if self.garp_refresh_at.is_some_and(|at| at <= now) {
                    self.garp_refresh_at = None;
                    self.announce_vips();
                }
            }
            State::Initialize | State::Fault => {}
        }
    }

    /// See [`Command`].
    pub fn handle_command(&mut self, now: Instant, command: Command) -> Result<(), CommandError> {
        match command {
            Command::Shutdown => {
                match self.state {
                    // RFC 5798 section 6.4.3 (600)-(615), plus the handover.
                    State::Master => self.hand_over(now, Reason::Shutdown, State::Initialize),
                    // RFC 5798 section 6.4.2 (300)-(310).
                    State::Backup | State::Fault => {
                        self.cancel_timers();
                        self.master_address = None;
                        self.enter(State::Initialize, Reason::Shutdown);
                    }
                    State::Initialize => {}
                }
                Ok(())
            }
            Command::SetPriority(priority) => {
                if priority == VrrpPriority::STOP {
                    return Err(CommandError::PriorityZero);
                }
                self.priority = priority;
                if self.state == State::Master {
                    // Let the Backups compare against the new value now rather than in up to
                    // one interval.
                    self.send_advert(priority);
                    self.adver_at = Some(now + self.cfg.advert_interval.to_duration());
                }
                Ok(())
            }
            Command::Fault(faulty) => {
                self.faulty = faulty;
                self.reconsider_eligibility(now, Reason::Fault, Reason::Recovered);
                Ok(())
            }
            Command::Drain(drained) => {
                self.drained = drained;
                if drained && self.state == State::Master {
                    self.hand_over(now, Reason::Drained, State::Fault);
                } else {
                    self.reconsider_eligibility(now, Reason::Drained, Reason::Resumed);
                }
                Ok(())
            }
            Command::TakeOver => self.take_over(now, Reason::TakeoverRequested),
        }
    }

    /// A member's primary address learnt at run time (a peer's status names it): its adverts
    /// are a member's, although the configured list named it by another address (its peer
    /// link's). Changes nothing while the members are unknown.
    pub fn learn_member(&mut self, primary: IpAddr) {
        if !self.cfg.members.is_empty() && !self.cfg.members.contains(&primary) {
            self.cfg.members.push(primary);
        }
    }

    /// See [`PeerEvent`]. An error only for a handover this node cannot take.
    pub fn handle_peer(&mut self, now: Instant, event: PeerEvent) -> Result<(), CommandError> {
        match event {
            PeerEvent::Status {
                peer,
                priority,
                master,
            } => {
                // Master beside this one, by a status heard since this one became Master (a
                // handover's old Master said so before: no split brain, no heal).
                let was_master = self.master_since.is_some_and(|since| {
                    (self.peers.masters_heard_since(since)).any(|(known, _)| known == peer)
                });
                self.peers.set(peer, priority, master, now);
                if self.split_winner == Some(peer) && !master {
                    self.split_winner = None;
                }
                if was_master && !master && self.state == State::Master {
                    // The other Master the links knew stepped down (its adverts may never
                    // have reached this one): clients may still follow its ARPs.
                    self.heal(now);
                }
                self.arm_split_check(now);
            }
            PeerEvent::Left { peer } => self.forget_peer(peer),
            PeerEvent::LinkLost { peer } => {
                self.forget_peer(peer);
                if self.next_after_master(peer) {
                    self.stats.death_confirmations += 1;
                    self.actions.push_back(Action::ConfirmDeath { peer });
                }
            }
            PeerEvent::Died { peer } => {
                self.forget_peer(peer);
                if self.next_after_master(peer) {
                    return self.take_over(now, Reason::MasterDied);
                }
            }
            PeerEvent::Handover { from } => {
                // Only the master (or, after its priority-0 advert, the one that just left)
                // hands over; a late or stray handover from another node changes nothing.
                if let Some(master) = self.master_address
                    && master != from
                {
                    return Err(CommandError::HandoverNotFromMaster { from, master });
                }
                return self.take_over(now, Reason::TakeoverRequested);
            }
        }
        Ok(())
    }

    fn forget_peer(&mut self, peer: IpAddr) {
        self.peers.remove(peer);
        if self.split_winner == Some(peer) {
            self.split_winner = None;
        }
    }

    /// A Master that the links say has a better Master beside it gives that one's adverts
    /// two intervals to arrive (a plain preemption is settled by them, RFC 5798), then
    /// looks again (`handle_timeout`).
    fn arm_split_check(&mut self, now: Instant) {
        if self.state == State::Master
            && self.split_check_at.is_none()
            && self.master_above(self.peers.masters()).is_some()
        {
            self.split_check_at = Some(now + 2 * self.cfg.advert_interval.to_duration());
        }
    }

    /// Among `masters`, one that would win the election against this node (higher
    /// priority, or equal and a higher address).
    fn master_above(
        &self,
        masters: impl Iterator<Item = (IpAddr, VrrpPriority)>,
    ) -> Option<IpAddr> {
        let own = (self.cfg.primary_address, self.priority);
        election_winner(masters.chain([own])).filter(|&winner| winner != own.0)
    }

    /// A better Master whose status reached this one since it became Master: proof that
    /// it is alive and Master now, while its adverts do not arrive. A status from before
    /// proves nothing: a Master whose host died (links not yet timed out) sent its last
    /// status before this one took over.
    fn live_master_above(&self) -> Option<IpAddr> {
        let since = self.master_since?;
        self.master_above(self.peers.masters_heard_since(since))
    }

    /// Master -> Backup: the peer links name `winner` as Master too, and it wins. Its adverts
    /// do not arrive (or it would have been heard), so this node waits for them in vain:
    /// it stays Backup while `winner` is linked and Master (see `handle_timeout`).
    fn split_brain_step_down(&mut self, now: Instant, winner: IpAddr) {
        self.stats.split_brain_stepdowns += 1;
        self.split_winner = Some(winner);
        self.cancel_timers();
        self.remove_vips();
        self.master_down_at = Some(now + self.master_down_interval());
        self.down_reason = Reason::MasterDown;
        self.master_address = Some(winner);
        self.master_priority = self.peers.priority(winner);
        self.enter(State::Backup, Reason::SplitBrainPeerLink);
    }

    /// Whether `peer` is this Backup's Master and this node is next in line without it.
    fn next_after_master(&self, peer: IpAddr) -> bool {
        let own = self
            .is_eligible()
            .then_some((self.cfg.primary_address, self.priority));
        self.state == State::Backup
            && self.master_address == Some(peer)
            && self.peers.next_in_line(own, Some(peer)) == Some(self.cfg.primary_address)
    }

    fn take_over(&mut self, now: Instant, reason: Reason) -> Result<(), CommandError> {
        if self.state == State::Backup && self.is_eligible() {
            self.become_master(now, reason);
            Ok(())
        } else {
            Err(CommandError::TakeOverRefused { state: self.state })
        }
    }

    /// The live peer that would take over if this Master left now (none when not Master).
    pub fn successor(&self) -> Option<IpAddr> {
        match self.state {
            State::Master => self.peers.next_in_line(None, None),
            _ => None,
        }
    }

    /// Forgets every peer's status: after the peer-link events were missed (a lagging
    /// subscriber), before they are replayed.
    pub fn forget_peers(&mut self) {
        self.peers = PeerTable::new();
    }

    /// A Master that handed over and has not yet released its VIPs.
    pub fn is_releasing(&self) -> bool {
        self.release_at.is_some()
    }

    // === outputs ===

    /// The next thing to do; see the polling order in the [`Router`] docs.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Router::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.master_down_at,
            self.adver_at,
            self.garp_refresh_at,
            self.release_at,
            self.split_check_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

// === impl Router: the state machine ===

impl Router {
    /// RFC 5798 section 6.4.2, "If an ADVERTISEMENT is received" in Backup.
    fn backup_receives(&mut self, now: Instant, src: IpAddr, advert: &Advert) {
        if self.split_winner == Some(src) {
            // Its adverts arrive again: the split is over, the RFC rules are enough.
            self.split_winner = None;
        }
        if advert.priority == VrrpPriority::STOP {
            // (380)-(385): the Master resigned; wait only Skew_Time.
            self.master_down_at = Some(now + self.skew_time());
            self.down_reason = Reason::PriorityZeroReceived;
            if self.master_address == Some(src) {
                self.master_address = None;
            }
            return;
        }
        self.master_address = Some(src);
        self.master_priority = Some(advert.priority);
        let preempts = self.cfg.preempt || self.priority == VrrpPriority::OWNER;
        let in_preempt_delay = now < self.preempt_after;
        if !preempts || advert.priority >= self.priority || in_preempt_delay {
            // (395)-(410).
            if self.cfg.version == Version::V3 {
                self.master_adver_int = advert.max_adver_int;
            }
            self.master_down_at = Some(now + self.master_down_interval());
            self.down_reason = Reason::MasterDown;
            if advert.priority > self.priority {
                // keepalived counts preempt_delay again from every higher-priority advert.
                self.preempt_after = now + self.cfg.preempt_delay;
            }
        } else if self.down_reason == Reason::MasterDown {
            // (415)-(420): discard, and let the timer run out to preempt.
            self.down_reason = Reason::Preempted;
        }
    }

    /// RFC 5798 section 6.4.3, "If an ADVERTISEMENT is received" in Master.
    fn master_receives(&mut self, now: Instant, src: IpAddr, advert: &Advert) {
        if advert.priority == VrrpPriority::STOP {
            // (650)-(660).
            self.send_advert(self.priority);
            self.adver_at = Some(now + self.cfg.advert_interval.to_duration());
            return;
        }
        let sender_wins = advert.priority > self.priority
            || (advert.priority == self.priority && address_greater(src, self.cfg.primary_address));
        if sender_wins {
            // (670)-(710).
            self.step_down(now, src, advert);
        } else {
            // (715)-(720) discard; and the split-brain heal.
            self.send_advert(self.priority);
            self.adver_at = Some(now + self.cfg.advert_interval.to_duration());
            self.heal(now);
        }
    }

    /// The split-brain heal: another Master existed beside this one, and clients may have
    /// followed its gratuitous ARPs: re-announce the VIPs (and tell the hooks), at most once
    /// per 3 x Advertisement_Interval. No heal right after preempting (or the owner's
    /// startup): the preempted Master's last advert is expected, and our gratuitous ARPs, sent
    /// after its, are the newest. After a master-down takeover another router may have taken
    /// over at the same instant, and its ARPs may have arrived after ours: heal.
    fn heal(&mut self, now: Instant) {
        let holdoff = 3 * self.cfg.advert_interval.to_duration();
        let recent = |at: Option<Instant>| at.is_some_and(|at| now < at + holdoff);
        if !recent(self.last_heal) && !recent(self.preempted_at) {
            self.last_heal = Some(now);
            self.stats.split_brain_heals += 1;
            self.add_vips();
            self.announce_vips();
            self.notify(State::Master, State::Master, Reason::SplitBrainHeal);
        }
    }

    /// In Fault only the current Master is tracked, for status displays.
    fn track_master(&mut self, src: IpAddr, advert: &Advert) {
        if advert.priority == VrrpPriority::STOP {
            if self.master_address == Some(src) {
                self.master_address = None;
            }
        } else {
            self.master_address = Some(src);
            self.master_priority = Some(advert.priority);
        }
    }

    fn become_master(&mut self, now: Instant, reason: Reason) {
        let from = self.state;
        // Back to Master within the handover overlap: the VIPs stay.
        self.release_at = None;
        self.state = State::Master;
        self.master_since = Some(now);
        self.master_down_at = None;
        self.master_address = Some(self.cfg.primary_address);
        self.stats.master_transitions += 1;
        let preempting = matches!(
            reason,
            Reason::Preempted | Reason::StartupOwner | Reason::Recovered
        );
        self.preempted_at = preempting.then_some(now);
        self.send_advert(self.priority);
        self.adver_at = Some(now + self.cfg.advert_interval.to_duration());
        self.add_vips();
        self.announce_vips();
        self.garp_refresh_at =
            (!self.cfg.garp_master_delay.is_zero()).then(|| now + self.cfg.garp_master_delay);
        self.notify(from, State::Master, reason);
        // The links may already name a better Master (a split VRRP network).
        self.arm_split_check(now);
    }

    /// Master -> Backup because `src` wins (RFC 5798 section 6.4.3 (685)-(710)).
    fn step_down(&mut self, now: Instant, src: IpAddr, advert: &Advert) {
        // Not in the RFC: the last advert (see `handle_advert`).
        self.send_advert(self.priority);
        self.cancel_timers();
        self.remove_vips();
        if self.cfg.version == Version::V3 {
            self.master_adver_int = advert.max_adver_int;
        }
        self.master_down_at = Some(now + self.master_down_interval());
        self.down_reason = Reason::MasterDown;
        self.preempt_after = now + self.cfg.preempt_delay;
        self.master_address = Some(src);
        self.master_priority = Some(advert.priority);
        self.enter(State::Backup, Reason::HigherPriorityAdvert);
    }

    /// After a change of health or drain: an ineligible router leaves for Fault (a Master
    /// with priority 0 first), an eligible one in Fault returns to Backup (the address owner
    /// to Master).
    fn reconsider_eligibility(&mut self, now: Instant, leave: Reason, back: Reason) {
        if !self.is_eligible() {
            match self.state {
                State::Master => self.resign(leave, State::Fault),
                State::Backup => {
                    self.cancel_timers();
                    self.enter(State::Fault, leave);
                }
                State::Initialize | State::Fault => {}
            }
        } else if self.state == State::Fault {
            if self.priority == VrrpPriority::OWNER {
                self.become_master(now, back);
            } else {
                self.enter_backup(now, back);
            }
        }
    }

    /// Master -> Initialize or Fault: priority 0 so the Backups wait only Skew_Time.
    fn resign(&mut self, reason: Reason, to: State) {
        self.cancel_timers();
        self.send_advert(VrrpPriority::STOP);
        self.remove_vips();
        self.master_address = None;
        self.enter(to, reason);
    }

    /// A Master leaving service (Shutdown, drain): priority 0 first, then a handover to the
    /// next node in line if the peer links know one, and the VIPs released
    /// [`HANDOVER_OVERLAP`] later; without a successor, [`Router::resign`]'s Skew_Time path.
    fn hand_over(&mut self, now: Instant, reason: Reason, to: State) {
        let Some(successor) = self.peers.next_in_line(None, None) else {
            return self.resign(reason, to);
        };
        self.cancel_timers();
        self.send_advert(VrrpPriority::STOP);
        // After priority 0, so the successor cannot hear this node as a better Master and
        // give the VIPs back (see Command::TakeOver).
        self.actions
            .push_back(Action::SendHandover { to: successor });
        self.release_at = Some(now + HANDOVER_OVERLAP);
        self.master_address = None;
        self.enter(to, reason);
    }

    /// Startup or recovery into Backup (RFC 5798 section 6.4.1 (150)-(165)).
    fn enter_backup(&mut self, now: Instant, reason: Reason) {
        self.master_adver_int = self.cfg.advert_interval;
        self.master_address = None;
        self.master_down_at = Some(now + self.master_down_interval());
        self.down_reason = Reason::MasterDown;
        self.preempt_after = now + self.cfg.preempt_delay;
        self.enter(State::Backup, reason);
    }

    fn enter(&mut self, to: State, reason: Reason) {
        let from = self.state;
        self.state = to;
        self.notify(from, to, reason);
    }

    fn cancel_timers(&mut self) {
        self.split_check_at = None;
        self.master_down_at = None;
        self.adver_at = None;
        self.garp_refresh_at = None;
    }

    fn send_advert(&mut self, priority: VrrpPriority) {
        self.stats.adverts_sent += 1;
        if priority == VrrpPriority::STOP {
            self.stats.priority_zero_sent += 1;
        }
        self.actions.push_back(Action::SendAdvert(Advert {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            max_adver_int: self.cfg.advert_interval,
            addresses: self.cfg.vips.clone(),
        }));
    }

    fn add_vips(&mut self) {
        let actions = self.cfg.vips.iter().map(|&vip| Action::AddVip(vip));
        self.actions.extend(actions);
    }

    fn remove_vips(&mut self) {
        let actions = self.cfg.vips.iter().map(|&vip| Action::RemoveVip(vip));
        self.actions.extend(actions);
    }

    fn announce_vips(&mut self) {
        let repeat = self.cfg.garp_repeat;
        let actions = (self.cfg.vips.iter()).map(|&vip| Action::SendGratuitous { vip, repeat });
        self.actions.extend(actions);
    }

    fn notify(&mut self, from: State, to: State, reason: Reason) {
        self.actions
            .push_back(Action::Notify(Transition { from, to, reason }));
    }

    fn count_decode_error(&mut self, err: &DecodeError) {
        let counter = match err {
            DecodeError::WrongTtl { .. } => &mut self.stats.ttl_errors,
            DecodeError::MixedAddressFamilies { .. } => &mut self.stats.address_family_errors,
            DecodeError::Truncated { .. } | DecodeError::AddressCountMismatch { .. } => {
                &mut self.stats.pkt_length_errors
            }
            DecodeError::UnsupportedVersion { .. } | DecodeError::Version2OverIpv6 => {
                &mut self.stats.version_errors
            }
            DecodeError::WrongType { .. } => &mut self.stats.type_errors,
            DecodeError::BadChecksum { .. } => &mut self.stats.checksum_errors,
            DecodeError::InvalidVrid => &mut self.stats.vrid_errors,
            DecodeError::InvalidInterval => &mut self.stats.interval_errors,
            DecodeError::UnsupportedAuthType { .. } => &mut self.stats.auth_type_errors,
        };
        *counter += 1;
    }
}

/// RFC 5798 section 6.4.3 (680): "the primary IPvX Address of the sender is greater than the
/// local primary IPvX Address", as unsigned integers in network byte order.
fn address_greater(sender: IpAddr, local: IpAddr) -> bool {
    match (sender, local) {
        (IpAddr::V4(sender), IpAddr::V4(local)) => sender.to_bits() > local.to_bits(),
        (IpAddr::V6(sender), IpAddr::V6(local)) => sender.to_bits() > local.to_bits(),
        // Adverts of the other family never reach the state machine.
        _ => false,
    }
}

/// The router the election would make Master among `candidates` (address, priority), all
/// alive and healthy with preemption on: the highest priority, then the highest address.
///
/// For the driver's fast paths (section 5 of the HA issue): when the heartbeat says the
/// Master's process died, the winner among the remaining nodes takes over at once with
/// [`Command::TakeOver`] instead of waiting for Master_Down_Interval.
pub fn election_winner(
    candidates: impl IntoIterator<Item = (IpAddr, VrrpPriority)>,
) -> Option<IpAddr> {
    candidates
        .into_iter()
        .filter(|&(_, priority)| priority != VrrpPriority::STOP)
        .reduce(|best, next| {
            let next_wins =
                next.1 > best.1 || (next.1 == best.1 && address_greater(next.0, best.0));
            if next_wins { next } else { best }
        })
        .map(|(address, _)| address)
}

#[cfg(test)]
mod tests;
