//! The director plane's messages on the peer links (their own encoding and version inside
//! the link's `DIRECTOR` plane), sans-IO and strict: every length bounded, nothing trailing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use palisade_identity::NodeId;

use crate::choice::Load;

/// The director plane's wire version (2: load reports carry the group's settings).
pub const VERSION: u8 = 3;
/// A failure reason's length at most.
pub const MAX_FAILURE: usize = 256;
/// Virtual addresses, and redirect ports, in a report at most.
pub const MAX_LISTED: usize = 64;

/// Connections in one [`ConnectionList`] at most (added and removed together): a list of
/// IPv6 pairs then fits one peer-link frame. Longer lists go as several messages.
pub const MAX_CONNECTIONS: usize = 1_500;

mod kind {
    pub const LOAD: u8 = 1;
    pub const CONNECTIONS: u8 = 2;
    pub const HANDOVER: u8 = 3;
}

/// One client connection through a director: the client's address and port, and the VIP
/// and redirect port it connected to.
pub type Connection = (SocketAddr, SocketAddr);

/// What a list of connections is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// A scanning node's connections relayed by `director`, which it holds confirmed dead:
    /// the clients a new director tickles.
    Orphans,
    /// The director's own share (served in-process), all of it: replaces what was known.
    ShareFull,
    /// The director's own share, what changed since its last list.
    ShareDelta,
}

/// A director's drain (issue 12 §2): it hands its VIPs over but keeps serving the
/// connections it has until they end, so whoever directs next sends their packets back to it
/// (a second chance) instead of resetting them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    pub vrid: u8,
    /// The director that drains.
    pub director: NodeId,
    pub phase: HandoverPhase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoverPhase {
    /// From the director: send packets of connections you do not know to `forward_to` (its
    /// address on the group's network) for at most `for_ms`, and close what it relays to
    /// you after each response.
    Begin { forward_to: IpAddr, for_ms: u32 },
    /// From a member: its forwarding is in place (the director hands over after this).
    Ready,
    /// From the director: its connections have ended (or were cut); stop forwarding.
    Done,
}

/// Connections a director carried (issue 12): so that the member taking over from a dead
/// director can make each client fail at once (a tickle ACK) instead of hanging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionList {
    pub vrid: u8,
    /// The director that carried them.
    pub director: NodeId,
    pub kind: ListKind,
    pub added: Vec<Connection>,
    pub removed: Vec<Connection>,
}

/// What a node tells the other members of an HA group every second.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// The group (VRRP virtual router id).
    pub vrid: u8,
    /// Its weight and cap, from its configuration.
    pub weight: u32,
    pub max_connections: u32,
    /// Where a director relays to it (`None`: no scan port; it serves no relayed clients).
    pub scan: Option<SocketAddr>,
    pub load: Load,
    /// The group's settings as this member has them (they must agree on every member).
    pub settings: GroupSettings,
    /// It holds the group's VIP (it directs): how a scanning node names its director.
    pub directing: bool,
}

/// Settings every member of an HA group must have alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSettings {
    pub vips: Vec<IpAddr>,
    pub advert_interval_cs: u16,
    /// VRRP version (2 or 3).
    pub version: u8,
    pub redirect_ports: Vec<u16>,
}

impl GroupSettings {
    /// At most [`MAX_LISTED`] of each list, as a report carries them.
    fn truncated(&self) -> GroupSettings {
        let mut settings = self.clone();
        settings.vips.truncate(MAX_LISTED);
        settings.redirect_ports.truncate(MAX_LISTED);
        settings
    }

    /// What differs between this member's settings (`ours`) and another's, in words (empty:
    /// they agree). Lists compare as sets.
    pub fn differences(&self, theirs: &GroupSettings) -> Vec<String> {
        // Reports carry at most MAX_LISTED of each: compare what both sides can see.
        let (this, theirs) = (self.truncated(), theirs.truncated());
        let mut differ = Vec::new();
        if as_set(&this.vips) != as_set(&theirs.vips) {
            differ.push(format!(
                "VIPs {:?} here, {:?} there",
                this.vips, theirs.vips
            ));
        }
        if this.advert_interval_cs != theirs.advert_interval_cs {
            differ.push(format!(
                "advert interval {} ms here, {} ms there",
                u32::from(this.advert_interval_cs) * 10,
                u32::from(theirs.advert_interval_cs) * 10
            ));
        }
        if this.version != theirs.version {
            differ.push(format!(
                "VRRP version {} here, {} there",
                this.version, theirs.version
            ));
        }
        let (ours_ports, their_ports) =
            (as_set(&this.redirect_ports), as_set(&theirs.redirect_ports));
        if ours_ports != their_ports {
            differ.push(format!(
                "redirect ports {ours_ports:?} here, {their_ports:?} there"
            ));
        }
        differ
    }
}

/// A list sorted and without repeats, to compare as a set.
fn as_set<T: Ord + Clone>(list: &[T]) -> Vec<T> {
    let mut list = list.to_vec();
    list.sort_unstable();
    list.dedup();
    list
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("director message truncated")]
    Truncated,
    #[error("director message: {0}")]
    Malformed(&'static str),
    #[error("director message of version {0}, this node speaks {VERSION}")]
    Version(u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectorMessage {
    Load(LoadReport),
    Connections(ConnectionList),
    Handover(Handover),
}

impl ConnectionList {
    /// `added` and `removed` as messages of at most [`MAX_CONNECTIONS`] each: a full share's
    /// first message is `ShareFull` (also when empty) and the rest `ShareDelta`; orphans and
    /// changes keep their kind.
    pub fn messages(
        vrid: u8,
        director: NodeId,
        kind: ListKind,
        added: &[Connection],
        removed: &[Connection],
    ) -> Vec<ConnectionList> {
        let list = |kind, added: &[Connection], removed: &[Connection]| ConnectionList {
            vrid,
            director,
            kind,
            added: added.to_vec(),
            removed: removed.to_vec(),
        };
        let later = match kind {
            ListKind::ShareFull => ListKind::ShareDelta,
            other => other,
        };
        let mut messages: Vec<ConnectionList> = (added.chunks(MAX_CONNECTIONS))
            .map(|chunk| list(later, chunk, &[]))
            .chain(
                removed
                    .chunks(MAX_CONNECTIONS)
                    .map(|chunk| list(later, &[], chunk)),
            )
            .collect();
        if kind == ListKind::ShareFull {
            match messages.first_mut() {
                Some(first) if !first.added.is_empty() => first.kind = ListKind::ShareFull,
                _ => messages.insert(0, list(ListKind::ShareFull, &[], &[])),
            }
        }
        messages
    }
}

impl DirectorMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            DirectorMessage::Load(report) => {
                out.push(kind::LOAD);
                out.push(report.vrid);
                out.extend_from_slice(&report.weight.to_be_bytes());
                out.extend_from_slice(&report.max_connections.to_be_bytes());
                match report.scan {
                    None => out.push(0),
                    Some(SocketAddr::V4(v4)) => {
                        out.push(4);
                        out.extend_from_slice(&v4.ip().octets());
                        out.extend_from_slice(&v4.port().to_be_bytes());
                    }
                    Some(SocketAddr::V6(v6)) => {
                        out.push(6);
                        out.extend_from_slice(&v6.ip().octets());
                        out.extend_from_slice(&v6.port().to_be_bytes());
                    }
                }
                let load = &report.load;
                out.extend_from_slice(&load.active_connections.to_be_bytes());
                out.extend_from_slice(&load.cpu_permille.to_be_bytes());
                out.extend_from_slice(&load.memory_bytes.to_be_bytes());
                out.push(u8::from(load.behind));
                let failure = load
                    .failure
                    .as_deref()
                    .map(|why| truncate(why, MAX_FAILURE));
                match failure {
                    None => out.push(0),
                    Some(why) => {
                        out.push(1);
                        out.extend_from_slice(&(why.len() as u16).to_be_bytes());
                        out.extend_from_slice(why.as_bytes());
                    }
                }
                let settings = &report.settings;
                let vips = &settings.vips[..settings.vips.len().min(MAX_LISTED)];
                out.push(vips.len() as u8);
                for vip in vips {
                    put_ip(&mut out, *vip);
                }
                out.extend_from_slice(&settings.advert_interval_cs.to_be_bytes());
                out.push(settings.version);
                let ports =
                    &settings.redirect_ports[..settings.redirect_ports.len().min(MAX_LISTED)];
                out.push(ports.len() as u8);
                for port in ports {
                    out.extend_from_slice(&port.to_be_bytes());
                }
                match &load.policy_revision {
                    None => out.push(0),
                    Some(revision) => {
                        out.push(1);
                        out.extend_from_slice(revision);
                    }
                }
                out.push(u8::from(report.directing));
            }
            DirectorMessage::Connections(list) => {
                out.push(kind::CONNECTIONS);
                out.push(list.vrid);
                out.extend_from_slice(list.director.as_bytes());
                out.push(match list.kind {
                    ListKind::Orphans => 1,
                    ListKind::ShareFull => 2,
                    ListKind::ShareDelta => 3,
                });
                // At most MAX_CONNECTIONS in all, the added ones first.
                let added = &list.added[..list.added.len().min(MAX_CONNECTIONS)];
                let room = MAX_CONNECTIONS - added.len();
                let removed = &list.removed[..list.removed.len().min(room)];
                for connections in [added, removed] {
                    out.extend_from_slice(&(connections.len() as u16).to_be_bytes());
                    for (client, vip) in connections {
                        put_addr(&mut out, *client);
                        put_addr(&mut out, *vip);
                    }
                }
            }
            DirectorMessage::Handover(handover) => {
                out.push(kind::HANDOVER);
                out.push(handover.vrid);
                out.extend_from_slice(handover.director.as_bytes());
                match handover.phase {
                    HandoverPhase::Begin { forward_to, for_ms } => {
                        out.push(1);
                        put_ip(&mut out, forward_to);
                        out.extend_from_slice(&for_ms.to_be_bytes());
                    }
                    HandoverPhase::Ready => out.push(2),
                    HandoverPhase::Done => out.push(3),
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<DirectorMessage, WireError> {
        let mut reader = Reader { bytes };
        let version = reader.u8()?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let message = match reader.u8()? {
            kind::LOAD => {
                let vrid = reader.u8()?;
                let weight = reader.u32()?;
                let max_connections = reader.u32()?;
                let scan = match reader.u8()? {
                    0 => None,
                    4 => {
                        let ip = Ipv4Addr::from(reader.array::<4>()?);
                        Some(SocketAddr::new(IpAddr::V4(ip), reader.u16()?))
                    }
                    6 => {
                        let ip = Ipv6Addr::from(reader.array::<16>()?);
                        Some(SocketAddr::new(IpAddr::V6(ip), reader.u16()?))
                    }
                    _ => return Err(WireError::Malformed("scan address family")),
                };
                let active_connections = reader.u32()?;
                let cpu_permille = reader.u16()?;
                let memory_bytes = u64::from_be_bytes(reader.array::<8>()?);
                let behind = match reader.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Malformed("behind flag")),
                };
                let failure = match reader.u8()? {
                    0 => None,
                    1 => {
                        let length = usize::from(reader.u16()?);
                        if length > MAX_FAILURE {
                            return Err(WireError::Malformed("failure reason too long"));
                        }
                        let text = reader.take(length)?;
                        Some(
                            std::str::from_utf8(text)
                                .map_err(|_| WireError::Malformed("failure reason not UTF-8"))?
                                .to_owned(),
                        )
                    }
                    _ => return Err(WireError::Malformed("failure flag")),
                };
                let count = usize::from(reader.u8()?);
                if count > MAX_LISTED {
                    return Err(WireError::Malformed("too many VIPs"));
                }
                let mut vips = Vec::with_capacity(count);
                for _ in 0..count {
                    vips.push(reader.ip()?);
                }
                let advert_interval_cs = reader.u16()?;
                let version = reader.u8()?;
                let count = usize::from(reader.u8()?);
                if count > MAX_LISTED {
                    return Err(WireError::Malformed("too many redirect ports"));
                }
                let redirect_ports = (0..count)
                    .map(|_| reader.u16())
                    .collect::<Result<Vec<u16>, WireError>>()?;
                let policy_revision = match reader.u8()? {
                    0 => None,
                    1 => Some(reader.array::<32>()?),
                    _ => return Err(WireError::Malformed("policy revision flag")),
                };
                let directing = match reader.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Malformed("directing flag")),
                };
                let settings = GroupSettings {
                    vips,
                    advert_interval_cs,
                    version,
                    redirect_ports,
                };
                DirectorMessage::Load(LoadReport {
                    vrid,
                    weight,
                    max_connections,
                    scan,
                    load: Load {
                        active_connections,
                        cpu_permille,
                        memory_bytes,
                        failure,
                        behind,
                        policy_revision,
                    },
                    settings,
                    directing,
                })
            }
            kind::CONNECTIONS => {
                let vrid = reader.u8()?;
                let director = NodeId::from_bytes(reader.array::<16>()?);
                let kind = match reader.u8()? {
                    1 => ListKind::Orphans,
                    2 => ListKind::ShareFull,
                    3 => ListKind::ShareDelta,
                    _ => return Err(WireError::Malformed("connection list kind")),
                };
                let mut lists = [Vec::new(), Vec::new()];
                let mut total = 0;
                for list in &mut lists {
                    let count = usize::from(reader.u16()?);
                    total += count;
                    if total > MAX_CONNECTIONS {
                        return Err(WireError::Malformed("too many connections"));
                    }
                    for _ in 0..count {
                        list.push((reader.addr()?, reader.addr()?));
                    }
                }
                let [added, removed] = lists;
                DirectorMessage::Connections(ConnectionList {
                    vrid,
                    director,
                    kind,
                    added,
                    removed,
                })
            }
            kind::HANDOVER => {
                let vrid = reader.u8()?;
                let director = NodeId::from_bytes(reader.array::<16>()?);
                let phase = match reader.u8()? {
                    1 => {
                        let forward_to = reader.ip()?;
                        HandoverPhase::Begin {
                            forward_to,
                            for_ms: reader.u32()?,
                        }
                    }
                    2 => HandoverPhase::Ready,
                    3 => HandoverPhase::Done,
                    _ => return Err(WireError::Malformed("handover phase")),
                };
                DirectorMessage::Handover(Handover {
                    vrid,
                    director,
                    phase,
                })
            }
            _ => return Err(WireError::Malformed("message kind")),
        };
        if !reader.bytes.is_empty() {
            return Err(WireError::Malformed("trailing bytes"));
        }
        Ok(message)
    }
}

/// An address: family (4 or 6), then its octets.
fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

/// An address and port: the address as [`put_ip`], then the port.
fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.ip().octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// At most `limit` bytes, cut at a character boundary.
fn truncate(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], WireError> {
        if self.bytes.len() < count {
            return Err(WireError::Truncated);
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn ip(&mut self) -> Result<IpAddr, WireError> {
        Ok(match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(WireError::Malformed("address family")),
        })
    }

    fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = self.ip()?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn report(failure: Option<&str>, scan: Option<SocketAddr>) -> DirectorMessage {
        DirectorMessage::Load(LoadReport {
            vrid: 51,
            weight: 100,
            max_connections: 5_000,
            scan,
            load: Load {
                active_connections: 42,
                cpu_permille: 350,
                memory_bytes: 14_000_000,
                failure: failure.map(str::to_owned),
                behind: failure.is_some(),
                policy_revision: failure.is_some().then_some([7; 32]),
            },
            settings: GroupSettings {
                vips: vec![
                    "10.0.0.100"
                        .parse()
                        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    "2001:db8::100"
                        .parse()
                        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                ],
                advert_interval_cs: 100,
                version: 3,
                redirect_ports: vec![9090, 3128],
            },
            directing: scan.is_some(),
        })
    }

    #[test]
    fn reports_round_trip() {
        for message in [
            report(None, None),
            report(
                Some("port 9090 not listening"),
                "10.0.0.2:9190".parse().ok(),
            ),
            report(Some("ünïcode"), "[2001:db8::2]:9190".parse().ok()),
        ] {
            assert_eq!(DirectorMessage::decode(&message.encode()), Ok(message));
        }
    }

    fn connections(kind: ListKind, added: usize, removed: usize) -> DirectorMessage {
        let pair = |n: usize| -> Connection {
            let client = if n.is_multiple_of(2) {
                SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 40_000 + n as u16))
            } else {
                SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, n as u16], 50_000))
            };
            (client, SocketAddr::from(([10, 0, 0, 100], 3128)))
        };
        DirectorMessage::Connections(ConnectionList {
            vrid: 51,
            director: NodeId::from_bytes([3; 16]),
            kind,
            added: (0..added).map(pair).collect(),
            removed: (added..added + removed).map(pair).collect(),
        })
    }

    #[test]
    fn connection_lists_round_trip_and_are_bounded() {
        for message in [
            connections(ListKind::Orphans, 3, 0),
            connections(ListKind::ShareFull, 0, 0),
            connections(ListKind::ShareDelta, 2, 5),
            connections(
                ListKind::ShareDelta,
                MAX_CONNECTIONS / 2,
                MAX_CONNECTIONS / 2,
            ),
        ] {
            let bytes = message.encode();
            assert!(
                bytes.len() <= 65_000,
                "one peer-link frame: {}",
                bytes.len()
            );
            assert_eq!(DirectorMessage::decode(&bytes), Ok(message));
        }
        // A list too long for one message keeps the first MAX_CONNECTIONS.
        let long = connections(ListKind::Orphans, MAX_CONNECTIONS + 10, 4);
        let Ok(DirectorMessage::Connections(decoded)) = DirectorMessage::decode(&long.encode())
        else {
            panic!("decodes");
        };
        assert_eq!(
            (decoded.added.len(), decoded.removed.len()),
            (MAX_CONNECTIONS, 0)
        );
        let bytes = connections(ListKind::ShareDelta, 2, 2).encode();
        for cut in 0..bytes.len() {
            assert!(DirectorMessage::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn handovers_round_trip_and_refuse_a_torn_or_unknown_phase() {
        let director = NodeId::from_bytes([7; 16]);
        for (forward_to, phase) in [
            (None, HandoverPhase::Ready),
            (None, HandoverPhase::Done),
            (
                Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
                HandoverPhase::Ready,
            ),
            (
                Some("fe80::2".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))),
                HandoverPhase::Ready,
            ),
        ] {
            let phase = match forward_to {
                Some(forward_to) => HandoverPhase::Begin {
                    forward_to,
                    for_ms: 30_000,
                },
                None => phase,
            };
            let message = DirectorMessage::Handover(Handover {
                vrid: 51,
                director,
                phase,
            });
            let bytes = message.encode();
            assert_eq!(DirectorMessage::decode(&bytes), Ok(message));
            for cut in 0..bytes.len() {
                assert!(DirectorMessage::decode(&bytes[..cut]).is_err());
            }
        }
        let mut bytes = DirectorMessage::Handover(Handover {
            vrid: 51,
            director,
            phase: HandoverPhase::Done,
        })
        .encode();
        if let Some(last) = bytes.last_mut() {
            *last = 9;
        }
        assert_eq!(
            DirectorMessage::decode(&bytes),
            Err(WireError::Malformed("handover phase"))
        );
    }

    #[test]
    fn long_lists_split_into_messages_and_a_full_share_always_starts_with_one() {
        let pairs = |count: usize| -> Vec<Connection> {
            (0..count)
                .map(|n| {
                    (
                        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 40_000)),
                        SocketAddr::from(([10, 0, 0, 100], 3128)),
                    )
                })
                .collect()
        };
        let director = NodeId::from_bytes([3; 16]);
        let kinds = |messages: &[ConnectionList]| -> Vec<(ListKind, usize, usize)> {
            (messages.iter())
                .map(|message| (message.kind, message.added.len(), message.removed.len()))
                .collect()
        };
        let full = ConnectionList::messages(51, director, ListKind::ShareFull, &pairs(4_000), &[]);
        assert_eq!(
            kinds(&full),
            vec![
                (ListKind::ShareFull, MAX_CONNECTIONS, 0),
                (ListKind::ShareDelta, MAX_CONNECTIONS, 0),
                (ListKind::ShareDelta, 1_000, 0),
            ]
        );
        let empty = ConnectionList::messages(51, director, ListKind::ShareFull, &[], &[]);
        assert_eq!(kinds(&empty), vec![(ListKind::ShareFull, 0, 0)]);
        let changes =
            ConnectionList::messages(51, director, ListKind::ShareDelta, &pairs(2), &pairs(1_600));
        assert_eq!(
            kinds(&changes),
            vec![
                (ListKind::ShareDelta, 2, 0),
                (ListKind::ShareDelta, 0, MAX_CONNECTIONS),
                (ListKind::ShareDelta, 0, 100),
            ]
        );
        assert!(ConnectionList::messages(51, director, ListKind::Orphans, &[], &[]).is_empty());
    }

    #[test]
    fn truncated_trailing_and_other_versions_are_errors() {
        let bytes = report(Some("x"), "10.0.0.2:9190".parse().ok()).encode();
        for cut in 0..bytes.len() {
            assert!(DirectorMessage::decode(&bytes[..cut]).is_err());
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(DirectorMessage::decode(&trailing).is_err());
        let mut other = bytes;
        other[0] = 1;
        assert_eq!(DirectorMessage::decode(&other), Err(WireError::Version(1)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_what_decodes_encodes_the_same(
            bytes in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            if let Ok(message) = DirectorMessage::decode(&bytes) {
                prop_assert_eq!(message.encode(), bytes);
            }
        }
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    #[test]
    fn differences_name_what_differs_and_lists_compare_as_sets() {
        let ours = GroupSettings {
            vips: vec![
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 101)),
            ],
            advert_interval_cs: 100,
            version: 3,
            redirect_ports: vec![9090, 3128],
        };
        let mut theirs = ours.clone();
        theirs.vips.reverse();
        theirs.redirect_ports.reverse();
        assert!(ours.differences(&theirs).is_empty());
        theirs.advert_interval_cs = 10;
        theirs.redirect_ports = vec![9090];
        assert_eq!(
            ours.differences(&theirs),
            vec![
                "advert interval 1000 ms here, 100 ms there".to_owned(),
                "redirect ports [3128, 9090] here, [9090] there".to_owned(),
            ]
        );
    }
}
