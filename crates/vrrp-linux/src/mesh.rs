//! The heartbeat mesh: one authenticated [`Link`] to every other node of the HA groups,
//! kept up for the life of the node, turned into [`MeshEvent`]s for the VRRP drivers.
//!
//! Peers are known by IP address, the same address VRRP sees as the advert source (the
//! node's primary address), so a driver can tell whether a lost peer was its group's master.
//! Of each pair, the node with the lower address dials and the other accepts, so there is one
//! link per pair; the dialer redials every 200 ms while the link is down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use palisade_log_throttle::LogThrottle;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::heartbeat::{GroupKey, Link, LinkEnd, LinkReader, LinkWriter, Message};

#[derive(Clone)]
pub struct MeshConfig {
    pub listen: SocketAddr,
    /// The other nodes' heartbeat addresses (their primary address and heartbeat port).
    pub peers: Vec<SocketAddr>,
    pub key: GroupKey,
    /// This node's primary address: the source of the links it dials.
    pub local: IpAddr,
    pub node_id: String,
}

/// What the mesh tells the drivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshEvent {
    PeerUp(IpAddr),
    /// The link to this peer closed or reset without a goodbye: its process died (its
    /// kernel closed the socket) or the network failed.
    PeerLost(IpAddr),
    /// The peer said goodbye: an orderly stop.
    PeerLeft(IpAddr),
    Status {
        peer: IpAddr,
        vrid: u8,
        priority: u8,
    },
    Handover {
        peer: IpAddr,
        vrid: u8,
    },
}

enum MeshCommand {
    /// Re-emit the latest status of every live peer (for a subscriber that joined late).
    Replay,
    Broadcast(Message),
    To(IpAddr, Message),
    Leave(oneshot::Sender<()>),
}

enum LinkEvent {
    Up(IpAddr, Box<LinkWriter>),
    Received(IpAddr, Message),
    Ended(IpAddr, LinkEnd),
}

/// Talks to the mesh task. Cheap to clone.
#[derive(Clone)]
pub struct MeshHandle {
    commands: mpsc::UnboundedSender<MeshCommand>,
    events: broadcast::Sender<MeshEvent>,
}

impl MeshHandle {
    /// Events from now on, starting with the latest status of every live peer.
    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        let receiver = self.events.subscribe();
        let _ = self.commands.send(MeshCommand::Replay);
        receiver
    }

    /// Sends to every connected peer (a `Status` is also re-sent to peers that connect later).
    pub fn broadcast(&self, message: Message) {
        let _ = self.commands.send(MeshCommand::Broadcast(message));
    }

    pub fn send_to(&self, peer: IpAddr, message: Message) {
        let _ = self.commands.send(MeshCommand::To(peer, message));
    }

    /// Says goodbye on every link; returns once the goodbyes are written.
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(MeshCommand::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
    }
}

/// Binds the heartbeat listener and starts the mesh.
pub async fn start(config: MeshConfig) -> std::io::Result<MeshHandle> {
    let listener = TcpListener::bind(config.listen).await?;
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(256);
    let (links_tx, links) = mpsc::unbounded_channel();
    tokio::spawn(accept_loop(listener, config.clone(), links_tx.clone()));
    for peer in &config.peers {
        if config.local < peer.ip() {
            tokio::spawn(dial_loop(*peer, config.clone(), links_tx.clone()));
        }
    }
    tokio::spawn(mesh_loop(commands, links, events.clone()));
    Ok(MeshHandle {
        commands: commands_tx,
        events,
    })
}

async fn accept_loop(
    listener: TcpListener,
    config: MeshConfig,
    links: mpsc::UnboundedSender<LinkEvent>,
) {
    // Anyone who can reach the port can cause these lines: one per interval each.
    let unknown_log = Arc::new(LogThrottle::new(Duration::from_secs(10)));
    let refused_log = Arc::new(LogThrottle::new(Duration::from_secs(10)));
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Only configured peers may hold a link.
        if !config.peers.iter().any(|peer| peer.ip() == remote.ip()) {
            if let Some(suppressed) = unknown_log.admit() {
                tracing::warn!(%remote, suppressed, "heartbeat connection from an unknown address refused");
            }
            continue;
        }
        let config = config.clone();
        let links = links.clone();
        let refused_log = refused_log.clone();
        tokio::spawn(async move {
            match Link::accept(stream, config.key.clone(), &config.node_id).await {
                Ok(link) => run_link(remote.ip(), link, &links).await,
                Err(error) => {
                    if let Some(suppressed) = refused_log.admit() {
                        tracing::warn!(%remote, %error, suppressed, "heartbeat peer refused");
                    }
                }
            }
        });
    }
}

async fn dial_loop(peer: SocketAddr, config: MeshConfig, links: mpsc::UnboundedSender<LinkEvent>) {
    loop {
        match dial(peer, &config).await {
            Ok(link) => run_link(peer.ip(), link, &links).await,
            Err(error) => tracing::debug!(%peer, %error, "heartbeat dial failed"),
        }
        if links.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn dial(
    peer: SocketAddr,
    config: &MeshConfig,
) -> Result<Link, crate::heartbeat::HeartbeatError> {
    // Dial from the primary address, so the peer sees the address VRRP knows us by.
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    socket.bind(SocketAddr::new(config.local, 0))?;
    let stream = tokio::time::timeout(crate::heartbeat::HANDSHAKE_TIMEOUT, socket.connect(peer))
        .await
        .map_err(|_| crate::heartbeat::HeartbeatError::HandshakeTimeout)??;
    Link::over(stream, peer, config.key.clone(), &config.node_id).await
}

/// Runs one link's reader until it ends; its writer goes to the mesh task.
async fn run_link(peer: IpAddr, link: Link, links: &mpsc::UnboundedSender<LinkEvent>) {
    let (mut reader, writer): (LinkReader, LinkWriter) = link.split();
    if links.send(LinkEvent::Up(peer, Box::new(writer))).is_err() {
        return;
    }
    loop {
        match reader.recv().await {
            Ok(message) => {
                if links.send(LinkEvent::Received(peer, message)).is_err() {
                    return;
                }
            }
            Err(end) => {
                let _ = links.send(LinkEvent::Ended(peer, end));
                return;
            }
        }
    }
}

async fn mesh_loop(
    mut commands: mpsc::UnboundedReceiver<MeshCommand>,
    mut links: mpsc::UnboundedReceiver<LinkEvent>,
    events: broadcast::Sender<MeshEvent>,
) {
    let mut writers: HashMap<IpAddr, LinkWriter> = HashMap::new();
    // Our latest status per VRID, for peers that connect later.
    let mut statuses: HashMap<u8, Message> = HashMap::new();
    // Peers' latest status per (peer, VRID), for late subscribers.
    let mut peer_statuses: HashMap<(IpAddr, u8), u8> = HashMap::new();
    loop {
        tokio::select! {
            event = links.recv() => {
                let Some(event) = event else { return };
                match event {
                    LinkEvent::Up(peer, mut writer) => {
                        let mut ok = true;
                        for status in statuses.values() {
                            ok &= writer.send(status).await.is_ok();
                        }
                        if ok {
                            writers.insert(peer, *writer);
                            tracing::info!(%peer, "heartbeat link up");
                            let _ = events.send(MeshEvent::PeerUp(peer));
                        }
                    }
                    LinkEvent::Received(peer, Message::Status { vrid, priority }) => {
                        peer_statuses.insert((peer, vrid), priority);
                        let _ = events.send(MeshEvent::Status { peer, vrid, priority });
                    }
                    LinkEvent::Received(peer, Message::Handover { vrid }) => {
                        let _ = events.send(MeshEvent::Handover { peer, vrid });
                    }
                    LinkEvent::Received(_, Message::Ping | Message::Bye) => {}
                    LinkEvent::Ended(peer, end) => {
                        writers.remove(&peer);
                        peer_statuses.retain(|(known, _), _| *known != peer);
                        match end {
                            LinkEnd::Bye => {
                                tracing::info!(%peer, "heartbeat peer left");
                                let _ = events.send(MeshEvent::PeerLeft(peer));
                            }
                            LinkEnd::Lost(kind) => {
                                tracing::warn!(%peer, ?kind, "heartbeat link lost");
                                let _ = events.send(MeshEvent::PeerLost(peer));
                            }
                            LinkEnd::Rejected(error) => {
                                // Garbage proves nothing about the peer: no takeover.
                                tracing::warn!(%peer, %error, "heartbeat link dropped");
                            }
                        }
                    }
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { return };
                match command {
                    MeshCommand::Replay => {
                        for ((peer, vrid), priority) in &peer_statuses {
                            let _ = events.send(MeshEvent::Status { peer: *peer, vrid: *vrid, priority: *priority });
                        }
                    }
                    MeshCommand::Broadcast(message) => {
                        if let Message::Status { vrid, .. } = message {
                            statuses.insert(vrid, message.clone());
                        }
                        let mut failed = Vec::new();
                        for (peer, writer) in writers.iter_mut() {
                            if writer.send(&message).await.is_err() {
                                failed.push(*peer);
                            }
                        }
                        for peer in failed {
                            writers.remove(&peer);
                        }
                    }
                    MeshCommand::To(peer, message) => {
                        if let Some(writer) = writers.get_mut(&peer)
                            && writer.send(&message).await.is_err()
                        {
                            writers.remove(&peer);
                        }
                    }
                    MeshCommand::Leave(done) => {
                        for writer in writers.values_mut() {
                            let _ = writer.send(&Message::Bye).await;
                        }
                        writers.clear();
                        let _ = done.send(());
                    }
                }
            }
        }
    }
}
