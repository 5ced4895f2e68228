//! The VRRP driver: one task per HA group that feeds the sans-IO [`Router`] with packets,
//! timers, health and commands, and applies the actions it returns (quinn's
//! `ConnectionDriver` shape). Every decision is the router's; this file only does I/O and
//! keeps the log lines operators grep for (keepalived's: `VRRP_Instance(NAME) Transition to
//! MASTER STATE`, `Entering BACKUP STATE`, `Received higher prio advert`, `Sending gratuitous
//! ARPs on IFACE for VIP`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use palisade_peer_link::HaMessage;
use palisade_peer_link::mesh::{Confirmation, Down, MeshEvent, MeshHandle};
use palisade_vrrp::{
    Action, Command, DecodeContext, Instant, PeerEvent, Reason, Router, RouterConfig, RxError,
    State, Stats, Transition, VrrpPriority,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::announce::{ArpSender, NaSender};
use crate::netlink::Addresses;
use crate::socket::VrrpSocket;

/// Everything one HA group needs (node-local config).
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// Instance name in logs and notify hooks (keepalived's `vrrp_instance` name).
    pub name: String,
    pub interface: String,
    pub router: RouterConfig,
    /// Prefix length the VIPs are added with.
    pub vip_prefix_len: u8,
    /// Send adverts to these peers instead of the multicast group (clouds without
    /// multicast); adverts from any other source are ignored.
    pub unicast_peers: Vec<IpAddr>,
    pub notify: NotifyHooks,
    /// Start out of service: a drain that survived a restart.
    pub drained: bool,
}

/// Commands run (through `sh -c`) on entering a state, keepalived style: the arguments are
/// `INSTANCE <name> <STATE> <priority>`.
#[derive(Clone, Debug, Default)]
pub struct NotifyHooks {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
    /// How long a hook may run before its process group is killed.
    pub timeout: Duration,
}

/// A group's state for `palisade status` and the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub name: String,
    pub vrid: u8,
    pub interface: String,
    /// This node's own address in the group (its adverts' source).
    pub primary: IpAddr,
    pub state: State,
    pub priority: u8,
    pub master: Option<IpAddr>,
    pub master_priority: Option<u8>,
    /// Master_Adver_Interval in centiseconds.
    pub advert_interval_cs: u16,
    pub vips: Vec<IpAddr>,
    /// Taken out of service by `palisade drain` (the state is then FAULT).
    pub drained: bool,
    /// Whether heartbeat links are configured, so that `successor` means something.
    pub heartbeat: bool,
    /// The live, healthy peer that would take over if this node left (heartbeat only).
    pub successor: Option<IpAddr>,
    /// The router's counters (adverts, transitions, discarded packets by reason).
    pub stats: Stats,
}

pub enum GroupCommand {
    /// Leave the group (priority 0 if Master, VIPs released); answers when done.
    Shutdown(oneshot::Sender<()>),
    /// Become Master now (explicit handover from a leaving master).
    TakeOver,
    /// `palisade drain`: `true` leaves service like a fault, handing the VIPs over to the next
    /// node in line if Master; `false` returns. Answers once done.
    Drain(bool, oneshot::Sender<Left>),
}

/// Why a group task did not answer a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    #[error("the group's task has stopped (is the node shutting down?)")]
    Gone,
    #[error("the group did not answer within 2 s; the command may still take effect")]
    Late,
}

/// What a group did on [`GroupCommand::Drain`] or [`GroupCommand::Shutdown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    /// It was Master and told this node to take over (after sending priority 0).
    HandedOver(IpAddr),
    /// It was Master and sent priority 0; with no heartbeat successor the Backups take over
    /// after Skew_Time.
    Released,
    /// It held no VIP; nothing to hand over.
    NotMaster,
}

/// Talks to a running group task.
#[derive(Clone)]
pub struct GroupHandle {
    pub commands: mpsc::Sender<GroupCommand>,
    pub status: watch::Receiver<GroupStatus>,
}

impl GroupHandle {
    /// Graceful leave: returns once the priority-0 advert is out and the VIPs are released.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self
            .commands
            .send(GroupCommand::Shutdown(done))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        }
    }

    /// `palisade drain` (`true`) or its undoing (`false`).
    pub async fn drain(&self, drained: bool) -> Result<Left, NoAnswer> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(GroupCommand::Drain(drained, done))
            .await
            .map_err(|_| NoAnswer::Gone)?;
        match tokio::time::timeout(Duration::from_secs(2), wait).await {
            Ok(Ok(left)) => Ok(left),
            Ok(Err(_)) => Err(NoAnswer::Gone),
            Err(_) => Err(NoAnswer::Late),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("VRRP_Instance({name}): interface {interface}: {source}")]
    Interface {
        name: String,
        interface: String,
        source: nix::errno::Errno,
    },
    #[error("VRRP_Instance({name}): {source}")]
    Netlink {
        name: String,
        source: crate::netlink::NetlinkError,
    },
    #[error("VRRP_Instance({name}): cannot open the VRRP socket on {interface}: {source}")]
    Socket {
        name: String,
        interface: String,
        source: std::io::Error,
    },
    #[error("VRRP_Instance({name}): cannot open the announcement socket on {interface}: {source}")]
    Announce {
        name: String,
        interface: String,
        source: std::io::Error,
    },
    #[error("VRRP_Instance({name}): invalid configuration: {source}")]
    Config {
        name: String,
        source: palisade_vrrp::ConfigErrors,
    },
}

enum Announcer {
    V4(ArpSender),
    V6(NaSender),
}

/// Opens the sockets and starts the group's task under `tasks` (it ends on
/// [`GroupHandle::shutdown`] or when every handle is dropped). `faulty` is the node's tracked health
/// (`true` = the proxy is not serving): a faulty node never holds or takes the VIP.
pub async fn spawn(
    spec: GroupSpec,
    faulty: watch::Receiver<bool>,
    mesh: Option<MeshHandle>,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<GroupHandle, DriverError> {
    let name = spec.name.clone();
    let ifindex = nix::net::if_::if_nametoindex(spec.interface.as_str()).map_err(|source| {
        DriverError::Interface {
            name: name.clone(),
            interface: spec.interface.clone(),
            source,
        }
    })?;
    let addresses = Addresses::open(tasks).map_err(|source| DriverError::Netlink {
        name: name.clone(),
        source,
    })?;
    let primary = spec.router.primary_address;
    let socket = VrrpSocket::open(
        &spec.interface,
        ifindex,
        primary,
        spec.unicast_peers.is_empty(),
    )
    .map_err(|source| DriverError::Socket {
        name: name.clone(),
        interface: spec.interface.clone(),
        source,
    })?;
    let announcer = match primary {
        IpAddr::V4(_) => ArpSender::open(&spec.interface, ifindex).map(Announcer::V4),
        IpAddr::V6(_) => NaSender::open(&spec.interface, ifindex).map(Announcer::V6),
    }
    .map_err(|source| DriverError::Announce {
        name: name.clone(),
        interface: spec.interface.clone(),
        source,
    })?;
    let epoch = std::time::Instant::now();
    let router = Router::new(spec.router.clone(), Instant::ZERO)
        .map_err(|source| DriverError::Config { name, source })?;
    let (commands_tx, commands) = mpsc::channel(8);
    let (confirmed_tx, confirmed_rx) = mpsc::unbounded_channel();
    let (status_tx, status) = watch::channel(status_of(&spec, &router, mesh.is_some()));
    let (name_for_hooks, notify_timeout) = (spec.name.clone(), spec.notify.timeout);
    let fingerprint = group_fingerprint(&spec.router.vips);
    let driver = Driver {
        spec,
        ifindex,
        addresses,
        socket,
        announcer,
        router,
        epoch,
        status: status_tx,
        rx_warnings: palisade_log_throttle::LogThrottle::new(Duration::from_secs(10)),
        mesh,
        advertised_status: None,
        handed_over_to: None,
        confirmed_tx,
        confirmed_rx,
        hooks: crate::notify::HookRunner::start(name_for_hooks, notify_timeout, tasks),
        tasks: tasks.clone(),
        unhealthy: false,
        link_down: false,
        fingerprint,
        primaries: HashMap::new(),
    };
    tasks.spawn(driver.run(faulty, commands));
    Ok(GroupHandle {
        commands: commands_tx,
        status,
    })
}

/// How often the driver looks at its interface's link state.
const LINK_CHECK: Duration = Duration::from_millis(200);

struct Driver {
    spec: GroupSpec,
    ifindex: u32,
    addresses: Addresses,
    socket: VrrpSocket,
    announcer: Announcer,
    router: Router,
    epoch: std::time::Instant,
    status: watch::Sender<GroupStatus>,
    /// Forged or broken packets: counted per reason in the router's stats, logged at most
    /// once per interval.
    rx_warnings: palisade_log_throttle::LogThrottle,
    /// Peer links to the other nodes, for take-over faster than the advert timer.
    mesh: Option<MeshHandle>,
    /// What our last status on the peer links said.
    advertised_status: Option<(u8, bool)>,
    /// The peer the last `SendHandover` went to.
    handed_over_to: Option<IpAddr>,
    /// Answers of the death confirmations the router asked for.
    confirmed_tx: mpsc::UnboundedSender<(IpAddr, Confirmation)>,
    confirmed_rx: mpsc::UnboundedReceiver<(IpAddr, Confirmation)>,
    /// Runs the notify hooks one at a time, in transition order.
    hooks: crate::notify::HookRunner,
    /// The node's task tracker, for the death confirmations.
    tasks: tokio_util::task::TaskTracker,
    /// The node's tracked health says it fails.
    unhealthy: bool,
    /// The interface is down or has lost its carrier: a Master there would advertise into
    /// nothing and come back claiming the VIP, so it goes to FAULT (as keepalived does).
    link_down: bool,
    /// This group's fingerprint (see [`group_fingerprint`]).
    fingerprint: u32,
    /// Each peer link's address -> the peer's primary address in this group (its status
    /// names it).
    primaries: HashMap<IpAddr, IpAddr>,
}

/// A fingerprint of a group's virtual addresses (FNV-1a over them, sorted): statuses of a
/// group with the same VRID elsewhere in a cluster carry another and are ignored.
pub fn group_fingerprint(vips: &[IpAddr]) -> u32 {
    let mut sorted = vips.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut hash: u32 = 0x811c_9dc5;
    for vip in sorted {
        let bytes: Vec<u8> = match vip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        for byte in bytes {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_epoch(self.epoch.elapsed())
    }

    async fn run(
        mut self,
        mut faulty: watch::Receiver<bool>,
        mut commands: mpsc::Receiver<GroupCommand>,
    ) {
        self.unhealthy = *faulty.borrow_and_update();
        self.link_down = !self.addresses.link_up(self.ifindex).await.unwrap_or(true);
        if self.link_down {
            self.log_link();
        }
        if self.unhealthy || self.link_down {
            let now = self.now();
            let _ = self.router.handle_command(now, Command::Fault(true));
        }
        if self.spec.drained {
            tracing::warn!(instance = %self.spec.name, "starting drained (undo with `palisade resume`)");
            let now = self.now();
            let _ = self.router.handle_command(now, Command::Drain(true));
        }
        let now = self.now();
        // Startup removes any VIP of this group a crash left on the interface.
        self.router.handle_startup(now);
        self.drive_actions().await;
        let mut health_open = true;
        let mut mesh_events = self.mesh.as_ref().map(MeshHandle::subscribe);
        let mut repeat_status = tokio::time::interval(palisade_vrrp::STATUS_REPEAT);
        repeat_status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut link_check = tokio::time::interval(LINK_CHECK);
        link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .router
                .poll_timeout()
                .map(|at| tokio::time::Instant::from_std(self.epoch + at.since_epoch()));
            tokio::select! {
                received = self.socket.recv() => match received {
                    Ok(packet) => self.handle_packet(packet),
                    Err(error) => {
                        tracing::error!(instance = %self.spec.name, %error, "VRRP receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = sleep_until(deadline) => {
                    let now = self.now();
                    self.router.handle_timeout(now);
                }
                changed = faulty.changed(), if health_open => {
                    if changed.is_err() {
                        health_open = false;
                    } else {
                        self.unhealthy = *faulty.borrow_and_update();
                        let now = self.now();
                        let fault = self.unhealthy || self.link_down;
                        let _ = self.router.handle_command(now, Command::Fault(fault));
                    }
                }
                _ = link_check.tick() => {
                    // A failed query says nothing: the last known state stands.
                    if let Ok(up) = self.addresses.link_up(self.ifindex).await
                        && up == self.link_down
                    {
                        self.link_down = !up;
                        self.log_link();
                        let now = self.now();
                        let fault = self.unhealthy || self.link_down;
                        let _ = self.router.handle_command(now, Command::Fault(fault));
                    }
                }
                event = next_mesh_event(&mut mesh_events) => match event {
                    Some(event) => self.handle_mesh_event(event),
                    None => {
                        // Events were missed (a peer's loss, a goodbye): what the router
                        // knows of its peers may be stale. Forget it; the mesh replays every
                        // live peer's status to the new subscription.
                        tracing::warn!(instance = %self.spec.name, "peer-link events missed: relearning the peers");
                        self.router.forget_peers();
                        mesh_events = self.mesh.as_ref().map(MeshHandle::subscribe);
                    }
                },
                Some((peer, answer)) = self.confirmed_rx.recv() => self.confirmed(peer, answer),
                _ = repeat_status.tick(), if self.mesh.is_some() => {
                    // Sent again below: proof of life for a peer's split-brain check.
                    self.advertised_status = None;
                }
                command = commands.recv() => match command {
                    Some(GroupCommand::Shutdown(done)) => {
                        self.leave(Command::Shutdown).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(GroupCommand::Drain(true, done)) => {
                        let left = self.leave(Command::Drain(true)).await;
                        let _ = done.send(left);
                    }
                    Some(GroupCommand::Drain(false, done)) => {
                        let now = self.now();
                        let _ = self.router.handle_command(now, Command::Drain(false));
                        let _ = done.send(Left::NotMaster);
                    }
                    Some(GroupCommand::TakeOver) => {
                        let now = self.now();
                        if let Err(error) = self.router.handle_command(now, Command::TakeOver) {
                            tracing::info!(instance = %self.spec.name, %error, "take-over not done");
                        }
                    }
                    None => return,
                },
            }
            self.drive_actions().await;
        }
    }

    /// Leaves service (`Shutdown` or `Drain(true)`): the router sends priority 0 and, when
    /// the peer links know the next node in line, a handover, then releases the VIPs
    /// `HANDOVER_OVERLAP` later; this returns once they are released.
    async fn leave(&mut self, command: Command) -> Left {
        let was_master = self.router.state() == State::Master;
        self.handed_over_to = None;
        let now = self.now();
        let _ = self.router.handle_command(now, command);
        self.drive_actions().await;
        while self.router.is_releasing() {
            let deadline = self.router.poll_timeout();
            sleep_until(
                deadline.map(|at| tokio::time::Instant::from_std(self.epoch + at.since_epoch())),
            )
            .await;
            let now = self.now();
            self.router.handle_timeout(now);
            self.drive_actions().await;
        }
        match (was_master, self.handed_over_to) {
            (true, Some(successor)) => Left::HandedOver(successor),
            (true, None) => Left::Released,
            (false, _) => Left::NotMaster,
        }
    }

    fn handle_mesh_event(&mut self, event: MeshEvent) {
        let vrid = self.router.vrid().get();
        let name = &self.spec.name;
        let event = match event {
            MeshEvent::Ha {
                from,
                message:
                    HaMessage::Status {
                        vrid: group_vrid,
                        vrrp_priority,
                        master,
                        primary,
                        group,
                    },
            } if group_vrid == vrid && group == self.fingerprint => {
                // VRRP knows the peer by its primary address; the link may run on another.
                // One link per primary: the one its newest status came over.
                self.primaries.retain(|_, known| *known != primary);
                self.primaries.insert(from, primary);
                self.router.learn_member(primary);
                PeerEvent::Status {
                    peer: primary,
                    priority: VrrpPriority(vrrp_priority),
                    master,
                }
            }
            MeshEvent::Ha {
                from,
                message: HaMessage::Handover { vrid: group },
            } if group == vrid => {
                let from = self.primaries.get(&from).copied().unwrap_or(from);
                tracing::info!(instance = %name, %from, "handover received: taking over");
                PeerEvent::Handover { from }
            }
            MeshEvent::PeerDown { peer, why } => {
                // The mapping stays: a lost link's death confirmation dials that address,
                // and the peer's next status on any link updates it.
                let primary = self.primaries.get(&peer.addr).copied().unwrap_or(peer.addr);
                match why {
                    Down::Left => PeerEvent::Left { peer: primary },
                    Down::Lost => PeerEvent::LinkLost { peer: primary },
                    // A new incarnation: the process this node knew is gone.
                    Down::Restarted => PeerEvent::Died { peer: primary },
                }
            }
            MeshEvent::Ha { .. }
            | MeshEvent::PeerUp(_)
            | MeshEvent::Replication { .. }
            | MeshEvent::Director { .. }
            | MeshEvent::Unreachable { .. }
            | MeshEvent::Refused { .. } => return,
        };
        let now = self.now();
        if let Err(error) = self.router.handle_peer(now, event) {
            tracing::info!(instance = %name, %error, "take-over not done");
        }
    }

    /// The answer to a death confirmation: only proof takes over at once.
    fn confirmed(&mut self, peer: IpAddr, answer: Confirmation) {
        let name = &self.spec.name;
        let why = match answer {
            Confirmation::Refused => "its peer-link port refused a connection",
            Confirmation::NewIncarnation => "it answered as a new process",
            Confirmation::Alive => {
                tracing::info!(instance = %name, master = %peer, "VRRP_Instance({name}) master is alive (its link was lost, not its process): no take-over");
                return;
            }
            Confirmation::Unknown => {
                tracing::info!(instance = %name, master = %peer, "VRRP_Instance({name}) master's death not confirmed: waiting for the advert timer");
                return;
            }
        };
        tracing::info!(instance = %name, master = %peer, why, "VRRP_Instance({name}) master died: taking over");
        let now = self.now();
        if let Err(error) = self.router.handle_peer(now, PeerEvent::Died { peer }) {
            tracing::info!(instance = %name, %error, "take-over not done");
        }
    }

    fn handle_packet(&mut self, packet: crate::socket::Received) {
        if !self.spec.unicast_peers.is_empty() && !self.spec.unicast_peers.contains(&packet.source)
        {
            return;
        }
        let ctx = DecodeContext::new(packet.source, packet.destination, packet.ttl);
        let now = self.now();
        let (clashes, strangers) = (
            self.router.stats().address_list_errors,
            self.router.stats().non_member_adverts,
        );
        match self.router.handle_packet(now, &ctx, &packet.payload) {
            Ok(()) if self.router.stats().non_member_adverts > strangers => {
                if let Some(suppressed) = self.rx_warnings.admit() {
                    tracing::warn!(instance = %self.spec.name, source = %packet.source, suppressed, "VRRP_Instance({}) received an advert for VRID {} from {}, which is not a member of this group: another device using this VRID on the segment? (palisade_vrrp_non_member_adverts_total)", self.spec.name, self.router.vrid().get(), packet.source);
                }
            }
            Ok(()) if self.router.stats().address_list_errors > clashes => {
                if let Some(suppressed) = self.rx_warnings.admit() {
                    tracing::warn!(instance = %self.spec.name, source = %packet.source, suppressed, "VRRP_Instance({}) received an advert for VRID {} from {} with other virtual addresses than ours: another device using this VRID on the segment? (palisade_vrrp_address_list_errors_total)", self.spec.name, self.router.vrid().get(), packet.source);
                }
            }
            Ok(()) => {}
            // Adverts of other groups on the same segment are normal.
            Err(RxError::OtherVrid { .. }) | Err(RxError::OwnAdvert) => {}
            Err(error) => {
                if let Some(suppressed) = self.rx_warnings.admit() {
                    tracing::warn!(instance = %self.spec.name, source = %packet.source, %error, suppressed, "VRRP packet discarded");
                }
            }
        }
    }

    /// Applies the router's actions in order, then publishes the status.
    async fn drive_actions(&mut self) {
        while let Some(action) = self.router.poll_action() {
            self.apply(action).await;
        }
        if let Some(mesh) = &self.mesh {
            let priority = match self.router.state() {
                State::Initialize | State::Fault => 0,
                State::Backup | State::Master => self.router.priority().get(),
            };
            let master = self.router.state() == State::Master;
            if self.advertised_status != Some((priority, master)) {
                self.advertised_status = Some((priority, master));
                mesh.broadcast(HaMessage::Status {
                    vrid: self.router.vrid().get(),
                    vrrp_priority: priority,
                    master,
                    primary: self.spec.router.primary_address,
                    group: self.fingerprint,
                });
            }
        }
        let status = status_of(&self.spec, &self.router, self.mesh.is_some());
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    async fn apply(&mut self, action: Action) {
        let name = &self.spec.name;
        match action {
            Action::SendAdvert(advert) => {
                let primary = self.spec.router.primary_address;
                let destinations = if self.spec.unicast_peers.is_empty() {
                    vec![palisade_vrrp::packet::multicast_group(primary)]
                } else {
                    self.spec.unicast_peers.clone()
                };
                for destination in destinations {
                    match advert.encode(primary, destination) {
                        Ok(bytes) => {
                            if let Err(error) = self.socket.send(&bytes, destination).await {
                                tracing::error!(instance = %name, %destination, %error, "VRRP advert not sent");
                            }
                        }
                        Err(error) => {
                            tracing::error!(instance = %name, %error, "VRRP advert not encoded")
                        }
                    }
                }
            }
            Action::AddVip(vip) => {
                tracing::info!("VRRP_Instance({name}) setting protocol VIPs.");
                if let Err(error) = self
                    .addresses
                    .add(
                        self.ifindex,
                        &self.spec.interface,
                        vip,
                        self.spec.vip_prefix_len,
                    )
                    .await
                {
                    tracing::error!(instance = %name, %error, "cannot add VIP");
                }
            }
            Action::RemoveVip(vip) => {
                tracing::info!("VRRP_Instance({name}) removing protocol VIPs.");
                if let Err(error) = self
                    .addresses
                    .remove(self.ifindex, &self.spec.interface, vip)
                    .await
                {
                    tracing::error!(instance = %name, %error, "cannot remove VIP");
                }
            }
            Action::SendGratuitous { vip, repeat } => {
                let interface = &self.spec.interface;
                if vip.is_ipv4() {
                    tracing::info!(
                        "VRRP_Instance({name}) Sending gratuitous ARPs on {interface} for {vip}"
                    );
                } else {
                    tracing::info!(
                        "VRRP_Instance({name}) Sending unsolicited Neighbour Adverts on {interface} for {vip}"
                    );
                }
                for _ in 0..repeat {
                    let sent = match (&self.announcer, vip) {
                        (Announcer::V4(arp), IpAddr::V4(v4)) => arp.send(v4),
                        (Announcer::V6(na), IpAddr::V6(v6)) => na.send(v6),
                        _ => Ok(()),
                    };
                    if let Err(error) = sent {
                        tracing::error!(instance = %name, %vip, %error, "announcement not sent");
                        break;
                    }
                }
            }
            Action::Notify(transition) => self.notify(transition),
            Action::ConfirmDeath { peer } => {
                let Some(mesh) = self.mesh.clone() else {
                    return;
                };
                tracing::info!(instance = %name, master = %peer, "VRRP_Instance({name}) master's peer link lost: confirming with one dial");
                let answers = self.confirmed_tx.clone();
                let link = self.link_of(peer);
                self.tasks.spawn(async move {
                    let answer = mesh.confirm_death(link).await;
                    let _ = answers.send((peer, answer));
                });
            }
            Action::SendHandover { to } => {
                if let Some(mesh) = &self.mesh {
                    tracing::info!(instance = %name, successor = %to, "handing over to the next node in line");
                    mesh.send_to(
                        self.link_of(to),
                        HaMessage::Handover {
                            vrid: self.router.vrid().get(),
                        },
                    );
                    self.handed_over_to = Some(to);
                }
            }
        }
    }

    /// The link address of the peer VRRP knows by `primary` (itself, if no status named it:
    /// a group whose links run on the VRRP addresses).
    fn link_of(&self, primary: IpAddr) -> IpAddr {
        (self.primaries.iter())
            .find(|(_, known)| **known == primary)
            .map_or(primary, |(link, _)| *link)
    }

    /// keepalived's words for a link change.
    fn log_link(&self) {
        let (name, interface) = (&self.spec.name, &self.spec.interface);
        if self.link_down {
            tracing::warn!(instance = %name, %interface, "VRRP_Instance({name}) Kernel is reporting: interface {interface} DOWN");
        } else {
            tracing::info!(instance = %name, %interface, "VRRP_Instance({name}) Kernel is reporting: interface {interface} UP");
        }
    }

    fn notify(&self, transition: Transition) {
        let name = &self.spec.name;
        let reason = transition.reason.as_str();
        match (transition.from, transition.to) {
            (from, State::Master) if from != State::Master => {
                if transition.reason == Reason::Preempted {
                    // keepalived's words for a Backup that outranks the live Master.
                    tracing::info!(
                        reason,
                        "VRRP_Instance({name}) forcing a new MASTER election"
                    );
                }
                tracing::info!(reason, "VRRP_Instance({name}) Transition to MASTER STATE");
                tracing::info!(reason, "VRRP_Instance({name}) Entering MASTER STATE");
            }
            (_, State::Master) => {
                tracing::info!(reason, "VRRP_Instance({name}) Re-announcing MASTER STATE");
            }
            (_, State::Backup) => {
                if transition.reason == Reason::HigherPriorityAdvert {
                    tracing::info!(reason, "VRRP_Instance({name}) Received higher prio advert");
                }
                if transition.reason == Reason::SplitBrainPeerLink {
                    let winner = self
                        .router
                        .master_address()
                        .map_or_else(|| "another node".to_owned(), |winner| winner.to_string());
                    tracing::warn!(
                        reason,
                        "VRRP_Instance({name}) split brain: {winner} is MASTER too (the peer links say so; its adverts do not reach this node) and wins the election: stepping down, staying BACKUP while it is alive (palisade_vrrp_split_brain_stepdowns_total)"
                    );
                }
                tracing::info!(reason, "VRRP_Instance({name}) Entering BACKUP STATE");
            }
            (_, State::Fault) => {
                tracing::warn!(reason, "VRRP_Instance({name}) Entering FAULT STATE");
            }
            (_, State::Initialize) => {
                tracing::info!(reason, "VRRP_Instance({name}) Stopped (INIT STATE)");
            }
        }
        if transition.from != transition.to {
            // mfend's line in the seeds, which operators grep for.
            let lower = |state: State| state.to_string().to_lowercase();
            tracing::info!(
                reason,
                "VRRP_Instance({name}) state={} previous={}",
                lower(transition.to),
                lower(transition.from)
            );
        }
        let hook = match transition.to {
            State::Master => self.spec.notify.master.as_ref(),
            State::Backup => self.spec.notify.backup.as_ref(),
            State::Fault => self.spec.notify.fault.as_ref(),
            State::Initialize => None,
        };
        if let Some(command) = hook {
            self.hooks.run(
                command,
                &transition.to.to_string(),
                self.router.priority().get(),
            );
        }
    }
}

fn status_of(spec: &GroupSpec, router: &Router, heartbeat: bool) -> GroupStatus {
    GroupStatus {
        name: spec.name.clone(),
        vrid: router.vrid().get(),
        interface: spec.interface.clone(),
        primary: spec.router.primary_address,
        state: router.state(),
        priority: router.priority().get(),
        master: match router.state() {
            State::Master => Some(spec.router.primary_address),
            _ => router.master_address(),
        },
        master_priority: router.master_priority().map(|priority| priority.get()),
        advert_interval_cs: router.master_adver_interval().get(),
        vips: spec.router.vips.clone(),
        drained: router.is_drained(),
        heartbeat,
        successor: router.successor(),
        stats: router.stats().clone(),
    }
}

/// The next peer-link event; `None` when a burst outran this subscriber and some were lost.
async fn next_mesh_event(events: &mut Option<broadcast::Receiver<MeshEvent>>) -> Option<MeshEvent> {
    loop {
        match events {
            Some(receiver) => match receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => return None,
                Err(broadcast::error::RecvError::Closed) => *events = None,
            },
            None => std::future::pending::<()>().await,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
