//! The typed messages a link carries, one enum per plane. Every plane has its own wire
//! version: a frame of a plane, version or kind this build does not speak is authenticated,
//! then skipped and counted, so nodes of different releases keep their links (replication and the
//! director's load reports arrive in later releases as planes of their own).

use std::net::IpAddr;

use crate::frame::FrameError;

/// Plane numbers on the wire.
pub mod plane {
    /// The link itself: handshake, pings, goodbye.
    pub const LINK: u8 = 0;
    /// High availability: VRRP status and planned handover.
    pub const HA: u8 = 1;
    /// Central management: replication messages (their own encoding and version inside).
    pub const REPLICATION: u8 = 2;
    /// The director: members' load reports (their own encoding and version inside).
    pub const DIRECTOR: u8 = 3;
}

/// Wire version of each plane this build speaks.
pub const LINK_VERSION: u8 = 1;
/// 2: a status says whether its sender is Master, its primary address and the group's
/// fingerprint (issue 11). A peer of version 1 skips
/// version-2 frames and this build skips its: the fast paths wait for both to upgrade,
/// the RFC timers work meanwhile.
pub const HA_VERSION: u8 = 2;
pub const REPLICATION_VERSION: u8 = 1;
pub const DIRECTOR_VERSION: u8 = 1;

/// Message kinds of the link plane (1-3 are the handshake's).
pub(crate) mod link_kind {
    pub const HELLO: u8 = 1;
    pub const CHALLENGE: u8 = 2;
    pub const AUTH: u8 = 3;
    pub const PING: u8 = 10;
    pub const BYE: u8 = 11;
}

mod replication_kind {
    pub const SYNC: u8 = 1;
}

mod director_kind {
    pub const MESSAGE: u8 = 1;
}

mod ha_kind {
    pub const STATUS: u8 = 1;
    pub const HANDOVER: u8 = 2;
}

/// What a link carries after its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Sent every second by both ends (as often as the node's fastest adverts, down to every
    /// 100 ms): a link that carries nothing for three of the peer's pings (at least 500 ms)
    /// is dropped (a hint that the peer may be gone, never proof).
    Ping,
    /// An orderly goodbye: the connection closing after this is not a crash.
    Bye,
    Ha(HaMessage),
    /// One replication message (`palisade_replication::SyncMessage` bytes).
    Replication(Vec<u8>),
    /// One director message (`palisade_director::DirectorMessage` bytes).
    Director(Vec<u8>),
}

/// The HA plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaMessage {
    /// This node's current VRRP priority in a group (0: faulty, drained or leaving), so every
    /// node knows who is next in line when the master dies; and whether it is the group's
    /// master, so two masters whose adverts do not reach each other (the VRRP network split,
    /// the links not) find out.
    ///
    /// It also names the sender's primary address in the group (the source of its adverts,
    /// by which VRRP knows it; a link's address need not be it: an IPv6 group's adverts leave
    /// from a link-local address, a cluster's links from any) and a fingerprint of the group's
    /// virtual addresses, so that groups sharing a VRID on different segments of one cluster
    /// stay apart.
    Status {
        vrid: u8,
        vrrp_priority: u8,
        master: bool,
        primary: IpAddr,
        group: u32,
    },
    /// "Take over this group now": sent by a leaving master to the next node in line.
    Handover { vrid: u8 },
}

/// A message as (plane, version, kind, payload).
pub(crate) struct Encoded<'a> {
    pub plane: u8,
    pub version: u8,
    pub kind: u8,
    pub payload: std::borrow::Cow<'a, [u8]>,
}

impl Message {
    pub(crate) fn encode(&self) -> Encoded<'_> {
        use std::borrow::Cow;
        let (plane, version, kind, payload) = match self {
            Message::Ping => (
                plane::LINK,
                LINK_VERSION,
                link_kind::PING,
                Cow::Borrowed(&[][..]),
            ),
            Message::Bye => (
                plane::LINK,
                LINK_VERSION,
                link_kind::BYE,
                Cow::Borrowed(&[][..]),
            ),
            Message::Ha(HaMessage::Status {
                vrid,
                vrrp_priority,
                master,
                primary,
                group,
            }) => {
                let mut payload = vec![*vrid, *vrrp_priority, u8::from(*master)];
                match primary {
                    IpAddr::V4(v4) => {
                        payload.push(4);
                        payload.extend_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        payload.push(6);
                        payload.extend_from_slice(&v6.octets());
                    }
                }
                payload.extend_from_slice(&group.to_be_bytes());
                (plane::HA, HA_VERSION, ha_kind::STATUS, Cow::Owned(payload))
            }
            Message::Ha(HaMessage::Handover { vrid }) => (
                plane::HA,
                HA_VERSION,
                ha_kind::HANDOVER,
                Cow::Owned(vec![*vrid]),
            ),
            Message::Replication(bytes) => (
                plane::REPLICATION,
                REPLICATION_VERSION,
                replication_kind::SYNC,
                Cow::Borrowed(&bytes[..]),
            ),
            Message::Director(bytes) => (
                plane::DIRECTOR,
                DIRECTOR_VERSION,
                director_kind::MESSAGE,
                Cow::Borrowed(&bytes[..]),
            ),
        };
        Encoded {
            plane,
            version,
            kind,
            payload,
        }
    }

    /// `Ok(None)`: a plane, plane version or message kind this build does not speak.
    pub(crate) fn decode(
        plane: u8,
        version: u8,
        kind: u8,
        payload: &[u8],
    ) -> Result<Option<Message>, FrameError> {
        let message = match (plane, version) {
            (plane::LINK, LINK_VERSION) => match (kind, payload) {
                (link_kind::PING, []) => Message::Ping,
                (link_kind::BYE, []) => Message::Bye,
                (link_kind::PING | link_kind::BYE, _) => {
                    return Err(FrameError::Malformed("link message of the wrong length"));
                }
                // A kind added by a later release of this version: skipped, not fatal.
                _ => return Ok(None),
            },
            (plane::HA, HA_VERSION) => match (kind, payload) {
                (ha_kind::STATUS, [vrid, vrrp_priority, flags @ (0 | 1), rest @ ..]) => {
                    let (primary, group) = match rest {
                        [4, a, b, c, d, group @ ..] => (IpAddr::from([*a, *b, *c, *d]), group),
                        [6, rest @ ..] if rest.len() == 20 => {
                            let mut octets = [0u8; 16];
                            octets.copy_from_slice(&rest[..16]);
                            (IpAddr::from(octets), &rest[16..])
                        }
                        _ => {
                            return Err(FrameError::Malformed("HA status of the wrong form"));
                        }
                    };
                    let group: [u8; 4] = group
                        .try_into()
                        .map_err(|_| FrameError::Malformed("HA status of the wrong length"))?;
                    Message::Ha(HaMessage::Status {
                        vrid: *vrid,
                        vrrp_priority: *vrrp_priority,
                        master: *flags == 1,
                        primary,
                        group: u32::from_be_bytes(group),
                    })
                }
                (ha_kind::HANDOVER, [vrid]) => Message::Ha(HaMessage::Handover { vrid: *vrid }),
                (ha_kind::STATUS | ha_kind::HANDOVER, _) => {
                    return Err(FrameError::Malformed("HA message of the wrong length"));
                }
                _ => return Ok(None),
            },
            (plane::REPLICATION, REPLICATION_VERSION) => match kind {
                replication_kind::SYNC => Message::Replication(payload.to_vec()),
                _ => return Ok(None),
            },
            (plane::DIRECTOR, DIRECTOR_VERSION) => match kind {
                director_kind::MESSAGE => Message::Director(payload.to_vec()),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_status(payload: &[u8]) -> Result<Option<Message>, FrameError> {
        Message::decode(plane::HA, HA_VERSION, ha_kind::STATUS, payload)
    }

    #[test]
    fn a_status_carries_master_primary_and_group_and_decodes_only_in_its_one_form() {
        let v6: IpAddr = "fe80::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        for (master, primary) in [(false, IpAddr::from([10, 213, 0, 11])), (true, v6)] {
            let status = Message::Ha(HaMessage::Status {
                vrid: 51,
                vrrp_priority: 150,
                master,
                primary,
                group: 0xdead_beef,
            });
            let encoded = status.encode();
            let expected_len = if primary.is_ipv4() {
                3 + 1 + 4 + 4
            } else {
                3 + 1 + 16 + 4
            };
            assert_eq!(encoded.payload.len(), expected_len);
            assert_eq!(decode_status(&encoded.payload), Ok(Some(status)));
        }
        // One encoding per message (the fuzz target checks frames seal back to their bytes).
        let good = [51, 100, 1, 4, 10, 0, 0, 1, 0, 0, 0, 7];
        assert!(decode_status(&good).is_ok());
        let mut bad_flag = good;
        bad_flag[2] = 2;
        let mut bad_family = good;
        bad_family[3] = 5;
        for bad in [
            &good[..11],
            &bad_flag[..],
            &bad_family[..],
            &[51, 100, 1],
            &[51],
        ] {
            assert!(decode_status(bad).is_err(), "{bad:?}");
        }
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(decode_status(&trailing).is_err());
    }
}
