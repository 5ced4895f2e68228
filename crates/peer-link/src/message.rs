//! The typed messages a link carries, one enum per plane. Every plane has its own wire
//! version: a frame of a plane, version or kind this build does not speak is authenticated,
//! then skipped and counted, so nodes of different releases keep their links (replication and the
//! director's load reports arrive in later releases as planes of their own).

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
/// 2: a status says whether its sender is Master (issue 11). A peer of version 1 skips
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
    /// Sent every second by both ends: a link that carries nothing for three seconds is
    /// dropped (a hint that the peer may be gone, never proof).
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
    Status {
        vrid: u8,
        vrrp_priority: u8,
        master: bool,
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
            }) => (
                plane::HA,
                HA_VERSION,
                ha_kind::STATUS,
                Cow::Owned(vec![*vrid, *vrrp_priority, u8::from(*master)]),
            ),
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
                (ha_kind::STATUS, [vrid, vrrp_priority, flags @ (0 | 1)]) => {
                    Message::Ha(HaMessage::Status {
                        vrid: *vrid,
                        vrrp_priority: *vrrp_priority,
                        master: *flags == 1,
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
    fn a_status_carries_the_master_flag_and_decodes_only_in_its_one_form() {
        for master in [false, true] {
            let status = Message::Ha(HaMessage::Status {
                vrid: 51,
                vrrp_priority: 150,
                master,
            });
            let encoded = status.encode();
            assert_eq!(encoded.payload.as_ref(), [51, 150, u8::from(master)]);
            assert_eq!(decode_status(&encoded.payload), Ok(Some(status)));
        }
        // One encoding per message (the fuzz target checks frames seal back to their bytes).
        for bad in [&[51, 100][..], &[51, 100, 2], &[51, 100, 1, 0], &[51]] {
            assert!(decode_status(bad).is_err(), "{bad:?}");
        }
    }
}
