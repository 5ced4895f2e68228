//! Frames, sans-IO: `plane (1) | version (1) | kind (1) | length (2, big endian) | payload |
//! tag (16)`. After the handshake every frame is MACed with its direction's key over the
//! sequence number, the header and the payload, so a frame cannot be forged, replayed,
//! reordered or reflected back to its sender.

use ring::hmac;

use crate::auth::{TAG_LEN, constant_time_eq};
use crate::message::Message;

pub const HEADER_LEN: usize = 5;
/// Largest payload after the handshake (the length field's limit; replication messages are
/// cut to fit).
pub const MAX_PAYLOAD: usize = 65_000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("frame failed authentication (forged, replayed or reflected)")]
    Unauthenticated,
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub plane: u8,
    pub version: u8,
    pub kind: u8,
    pub length: usize,
}

impl Header {
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let [plane, version, kind, high, low, ..] = *bytes else {
            return None;
        };
        Some(Header {
            plane,
            version,
            kind,
            length: usize::from(u16::from_be_bytes([high, low])),
        })
    }
}

pub(crate) fn write_frame(out: &mut Vec<u8>, (plane, version, kind): (u8, u8, u8), payload: &[u8]) {
    out.extend_from_slice(&[plane, version, kind]);
    // Callers keep payloads under MAX_PAYLOAD, far below u16::MAX.
    out.extend_from_slice(&(payload.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

fn tag(key: &hmac::Key, seq: u64, header_and_payload: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(&seq.to_be_bytes());
    context.update(header_and_payload);
    context.sign()
}

/// Seals the frames one direction sends.
pub struct Sealer {
    key: hmac::Key,
    seq: u64,
}

impl Sealer {
    /// A sealer for one direction (its key normally comes from the handshake).
    pub fn new(key: hmac::Key) -> Sealer {
        Sealer { key, seq: 0 }
    }

    /// Appends `message` as one sealed frame to `out`.
    pub fn seal(&mut self, message: &Message, out: &mut Vec<u8>) {
        let encoded = message.encode();
        let start = out.len();
        write_frame(
            out,
            (encoded.plane, encoded.version, encoded.kind),
            &encoded.payload,
        );
        let tag = tag(&self.key, self.seq, &out[start..]);
        out.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        self.seq += 1;
    }
}

/// What [`Opener::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    Message(Message),
    /// An authentic frame of a plane or plane version this build does not speak.
    Skipped {
        plane: u8,
        version: u8,
    },
}

/// Checks and decodes the frames the other direction sends.
pub struct Opener {
    key: hmac::Key,
    seq: u64,
}

impl Opener {
    /// An opener for one direction (its key normally comes from the handshake).
    pub fn new(key: hmac::Key) -> Opener {
        Opener { key, seq: 0 }
    }

    /// Opens the frame at the start of `input`: `Ok(None)` until a whole frame is there,
    /// then the frame and how many bytes it took. Any error ends the link.
    pub fn open(&mut self, input: &[u8]) -> Result<Option<(Opened, usize)>, FrameError> {
        let Some(header) = Header::parse(input) else {
            return Ok(None);
        };
        if header.length > MAX_PAYLOAD {
            return Err(FrameError::TooLong(header.length));
        }
        let body_end = HEADER_LEN + header.length;
        let Some(frame) = input.get(..body_end + TAG_LEN) else {
            return Ok(None);
        };
        let (body, received_tag) = frame.split_at(body_end);
        let expected = tag(&self.key, self.seq, body);
        if !constant_time_eq(&expected.as_ref()[..TAG_LEN], received_tag) {
            return Err(FrameError::Unauthenticated);
        }
        self.seq += 1;
        let payload = &body[HEADER_LEN..];
        let opened = match Message::decode(header.plane, header.version, header.kind, payload)? {
            Some(message) => Opened::Message(message),
            None => Opened::Skipped {
                plane: header.plane,
                version: header.version,
            },
        };
        Ok(Some((opened, frame.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HaMessage;

    fn pair() -> (Sealer, Opener) {
        let key = || hmac::Key::new(hmac::HMAC_SHA256, b"direction key");
        (Sealer::new(key()), Opener::new(key()))
    }

    #[test]
    fn sealed_frames_open_in_order_and_byte_by_byte() {
        let (mut sealer, mut opener) = pair();
        let messages = [
            Message::Ping,
            Message::Ha(HaMessage::Status {
                vrid: 51,
                vrrp_priority: 150,
                master: true,
                primary: std::net::IpAddr::from([10, 213, 0, 11]),
                group: 7,
            }),
            Message::Ha(HaMessage::Handover { vrid: 51 }),
            Message::Replication(vec![7; 60_000]),
            Message::Director(vec![1, 51, 0]),
            Message::Bye,
        ];
        let mut wire = Vec::new();
        for message in &messages {
            sealer.seal(message, &mut wire);
        }
        let mut got = Vec::new();
        let mut start = 0;
        // Bytes arrive one at a time: nothing opens early, everything opens once.
        for end in 1..=wire.len() {
            if let Ok(Some((opened, used))) = opener.open(&wire[start..end]) {
                got.push(opened);
                start += used;
            }
        }
        assert_eq!(start, wire.len());
        let expected: Vec<Opened> = messages.into_iter().map(Opened::Message).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_replayed_reordered_or_altered_frame_is_refused() {
        let (mut sealer, mut opener) = pair();
        let mut first = Vec::new();
        sealer.seal(&Message::Ha(HaMessage::Handover { vrid: 51 }), &mut first);
        assert!(matches!(opener.open(&first), Ok(Some(_))));
        assert_eq!(opener.open(&first), Err(FrameError::Unauthenticated));

        let (mut sealer, mut opener) = pair();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sealer.seal(&Message::Ping, &mut a);
        sealer.seal(&Message::Bye, &mut b);
        assert_eq!(opener.open(&b), Err(FrameError::Unauthenticated));

        let (mut sealer, mut opener) = pair();
        let mut frame = Vec::new();
        sealer.seal(
            &Message::Ha(HaMessage::Status {
                vrid: 51,
                vrrp_priority: 100,
                master: false,
                primary: std::net::IpAddr::from([10, 213, 0, 11]),
                group: 7,
            }),
            &mut frame,
        );
        frame[HEADER_LEN + 1] = 255;
        assert_eq!(opener.open(&frame), Err(FrameError::Unauthenticated));
    }

    #[test]
    fn an_unknown_plane_is_skipped_but_still_authenticated() {
        let key = || hmac::Key::new(hmac::HMAC_SHA256, b"direction key");
        let mut opener = Opener::new(key());
        let mut frame = Vec::new();
        write_frame(&mut frame, (7, 1, 1), b"from a newer release");
        let tag = tag(&key(), 0, &frame);
        frame.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        assert_eq!(
            opener.open(&frame),
            Ok(Some((
                Opened::Skipped {
                    plane: 7,
                    version: 1
                },
                frame.len()
            )))
        );
        let mut forged = Vec::new();
        write_frame(&mut forged, (7, 1, 1), b"x");
        forged.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(opener.open(&forged), Err(FrameError::Unauthenticated));
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_payload_arrives() {
        let (_, mut opener) = pair();
        assert_eq!(
            opener.open(&[1, 1, 1, 0xff, 0xff]),
            Err(FrameError::TooLong(0xffff))
        );
    }
}
