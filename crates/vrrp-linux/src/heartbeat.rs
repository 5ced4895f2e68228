//! The HA group's heartbeat links: one authenticated TCP connection between every pair of
//! nodes, used for what VRRP adverts cannot say fast.
//!
//! - A peer's process crash: its kernel closes the connection (FIN or RST) at once, without a
//!   `Bye` first. The next node in line can take over in milliseconds instead of waiting
//!   3 x advert interval (issue 3, section 5).
//! - A planned handover: the leaving master sends `Handover` to the node that should take
//!   over, then leaves with priority 0, so nobody waits for Skew_Time.
//!
//! Authentication is a group key shared by the HA group (HMAC-SHA256): a challenge-response
//! handshake proves both sides know it, and every later frame carries a MAC over a per-link
//! session id and a sequence number, so a frame cannot be forged, replayed or reordered. A
//! peer that fails any of this is dropped and logged; it can never trigger a takeover.
//!
//! Frame: `type (1) | length (2, big endian) | payload | mac (16, after the handshake)`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Largest payload accepted; heartbeat messages are tiny.
const MAX_PAYLOAD: usize = 512;
/// Bytes of HMAC-SHA256 kept per frame.
const MAC_LEN: usize = 16;
const NONCE_LEN: usize = 16;
/// Handshake must complete within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a heartbeat link carries after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Keeps idle links exercised (and lets a half-dead link surface as an error).
    Ping,
    /// "Take over VRID now": sent by a leaving master to the next node in line.
    Handover { vrid: u8 },
    /// An orderly goodbye: the connection closing after this is not a crash.
    Bye,
    /// This node's current VRRP priority in a group (0: faulty or leaving), so every node
    /// knows who is next in line when the master dies.
    Status { vrid: u8, priority: u8 },
}

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("heartbeat I/O: {0}")]
    Io(#[from] io::Error),
    #[error("peer failed authentication (wrong group key?)")]
    Unauthenticated,
    #[error("malformed heartbeat frame: {0}")]
    Malformed(&'static str),
    #[error("heartbeat handshake timed out")]
    HandshakeTimeout,
    #[error("no randomness available")]
    Random,
}

/// The HA group's shared secret.
#[derive(Clone)]
pub struct GroupKey {
    key: hmac::Key,
}

impl GroupKey {
    pub fn new(secret: &[u8]) -> GroupKey {
        GroupKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut context = hmac::Context::with_key(&self.key);
        for part in parts {
            // Length-prefix every part so that no two part lists MAC the same bytes.
            context.update(&(part.len() as u32).to_be_bytes());
            context.update(part);
        }
        let tag = context.sign();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        out
    }

    fn verify(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        let expected = self.mac(parts);
        // Constant time, so the MAC cannot be guessed byte by byte.
        mac.len() == MAC_LEN && constant_time_eq(&expected, mac)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

mod frame_type {
    pub const HELLO: u8 = 1;
    pub const CHALLENGE: u8 = 2;
    pub const AUTH: u8 = 3;
    pub const PING: u8 = 10;
    pub const HANDOVER: u8 = 11;
    pub const BYE: u8 = 12;
    pub const STATUS: u8 = 13;
}

/// An authenticated link to one peer.
pub struct Link {
    stream: TcpStream,
    key: GroupKey,
    session: [u8; 2 * NONCE_LEN],
    send_seq: u64,
    recv_seq: u64,
    pub peer_id: String,
    pub peer_addr: SocketAddr,
}

/// How a link ended, as seen by the reader.
#[derive(Debug)]
pub enum LinkEnd {
    /// The peer said `Bye` before closing: an orderly stop.
    Bye,
    /// The connection was closed or reset without `Bye`: the peer's process died (its
    /// kernel closed the socket) or the peer host is unreachable.
    Lost(io::ErrorKind),
    /// Garbage or a bad MAC: the link is dropped, nothing is concluded about the peer.
    Rejected(HeartbeatError),
}

async fn write_frame<W: AsyncWrite + Unpin>(
    stream: &mut W,
    kind: u8,
    payload: &[u8],
    mac: Option<&[u8]>,
) -> io::Result<()> {
    let mut frame = Vec::with_capacity(3 + payload.len() + MAC_LEN);
    frame.push(kind);
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    if let Some(mac) = mac {
        frame.extend_from_slice(mac);
    }
    stream.write_all(&frame).await
}

async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    with_mac: bool,
) -> Result<(u8, Vec<u8>, Vec<u8>), HeartbeatError> {
    let mut header = [0u8; 3];
    stream.read_exact(&mut header).await?;
    let length = usize::from(u16::from_be_bytes([header[1], header[2]]));
    if length > MAX_PAYLOAD {
        return Err(HeartbeatError::Malformed("payload too long"));
    }
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await?;
    let mut mac = Vec::new();
    if with_mac {
        mac = vec![0u8; MAC_LEN];
        stream.read_exact(&mut mac).await?;
    }
    Ok((header[0], payload, mac))
}

fn nonce() -> Result<[u8; NONCE_LEN], HeartbeatError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| HeartbeatError::Random)?;
    Ok(nonce)
}

/// `nonce | id` payloads of the handshake.
fn split_nonce(payload: &[u8]) -> Result<(&[u8], String), HeartbeatError> {
    if payload.len() < NONCE_LEN {
        return Err(HeartbeatError::Malformed("short handshake"));
    }
    let (nonce, id) = payload.split_at(NONCE_LEN);
    let id = std::str::from_utf8(id).map_err(|_| HeartbeatError::Malformed("node id not UTF-8"))?;
    Ok((nonce, id.to_owned()))
}

impl Link {
    /// Client side: connect to `peer`, prove the group key, verify the peer's proof.
    pub async fn connect(
        peer: SocketAddr,
        key: GroupKey,
        our_id: &str,
    ) -> Result<Link, HeartbeatError> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(peer))
            .await
            .map_err(|_| HeartbeatError::HandshakeTimeout)??;
        Link::over(stream, peer, key, our_id).await
    }

    /// Client side of the handshake on a connected stream.
    pub async fn over(
        mut stream: TcpStream,
        peer: SocketAddr,
        key: GroupKey,
        our_id: &str,
    ) -> Result<Link, HeartbeatError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let _ = stream.set_nodelay(true);
            let client_nonce = nonce()?;
            let hello = [&client_nonce[..], our_id.as_bytes()].concat();
            write_frame(&mut stream, frame_type::HELLO, &hello, None).await?;
            let (kind, payload, mac) = read_frame(&mut stream, true).await?;
            if kind != frame_type::CHALLENGE {
                return Err(HeartbeatError::Malformed("expected challenge"));
            }
            let (server_nonce, server_id) = split_nonce(&payload)?;
            if !key.verify(
                &[b"server", &client_nonce, server_nonce, server_id.as_bytes()],
                &mac,
            ) {
                return Err(HeartbeatError::Unauthenticated);
            }
            let proof = key.mac(&[b"client", server_nonce, &client_nonce, our_id.as_bytes()]);
            write_frame(&mut stream, frame_type::AUTH, &[], Some(&proof)).await?;
            let session = session_id(&client_nonce, server_nonce);
            Ok(Link {
                stream,
                key,
                session,
                send_seq: 0,
                recv_seq: 0,
                peer_id: server_id,
                peer_addr: peer,
            })
        })
        .await
        .map_err(|_| HeartbeatError::HandshakeTimeout)?
    }

    /// Server side of the handshake on an accepted connection.
    pub async fn accept(
        mut stream: TcpStream,
        key: GroupKey,
        our_id: &str,
    ) -> Result<Link, HeartbeatError> {
        let peer_addr = stream.peer_addr()?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async move {
            let _ = stream.set_nodelay(true);
            let (kind, payload, _) = read_frame(&mut stream, false).await?;
            if kind != frame_type::HELLO {
                return Err(HeartbeatError::Malformed("expected hello"));
            }
            let (client_nonce, client_id) = split_nonce(&payload)?;
            let client_nonce = client_nonce.to_vec();
            let server_nonce = nonce()?;
            let proof = key.mac(&[b"server", &client_nonce, &server_nonce, our_id.as_bytes()]);
            let challenge = [&server_nonce[..], our_id.as_bytes()].concat();
            write_frame(&mut stream, frame_type::CHALLENGE, &challenge, Some(&proof)).await?;
            let (kind, _, mac) = read_frame(&mut stream, true).await?;
            if kind != frame_type::AUTH
                || !key.verify(
                    &[
                        b"client",
                        &server_nonce,
                        &client_nonce,
                        client_id.as_bytes(),
                    ],
                    &mac,
                )
            {
                return Err(HeartbeatError::Unauthenticated);
            }
            let session = session_id(&client_nonce, &server_nonce);
            Ok(Link {
                stream,
                key,
                session,
                send_seq: 0,
                recv_seq: 0,
                peer_id: client_id,
                peer_addr,
            })
        })
        .await
        .map_err(|_| HeartbeatError::HandshakeTimeout)?
    }

    /// Sends one message (MACed with the session id and the next sequence number).
    pub async fn send(&mut self, message: &Message) -> Result<(), HeartbeatError> {
        send_on(
            &mut self.stream,
            &self.key,
            &self.session,
            &mut self.send_seq,
            message,
        )
        .await
    }

    /// Receives the next message, or how the link ended.
    pub async fn recv(&mut self) -> Result<Message, LinkEnd> {
        recv_on(
            &mut self.stream,
            &self.key,
            &self.session,
            &mut self.recv_seq,
        )
        .await
    }

    /// Separate halves, so one task can wait for messages while another sends.
    pub fn split(self) -> (LinkReader, LinkWriter) {
        let (read, write) = self.stream.into_split();
        (
            LinkReader {
                read,
                key: self.key.clone(),
                session: self.session,
                seq: self.recv_seq,
            },
            LinkWriter {
                write,
                key: self.key,
                session: self.session,
                seq: self.send_seq,
            },
        )
    }
}

/// The receiving half of a [`Link`].
pub struct LinkReader {
    read: OwnedReadHalf,
    key: GroupKey,
    session: [u8; 2 * NONCE_LEN],
    seq: u64,
}

impl LinkReader {
    pub async fn recv(&mut self) -> Result<Message, LinkEnd> {
        recv_on(&mut self.read, &self.key, &self.session, &mut self.seq).await
    }
}

/// The sending half of a [`Link`].
pub struct LinkWriter {
    write: OwnedWriteHalf,
    key: GroupKey,
    session: [u8; 2 * NONCE_LEN],
    seq: u64,
}

impl LinkWriter {
    pub async fn send(&mut self, message: &Message) -> Result<(), HeartbeatError> {
        send_on(
            &mut self.write,
            &self.key,
            &self.session,
            &mut self.seq,
            message,
        )
        .await
    }
}

async fn send_on<W: AsyncWrite + Unpin>(
    stream: &mut W,
    key: &GroupKey,
    session: &[u8],
    seq: &mut u64,
    message: &Message,
) -> Result<(), HeartbeatError> {
    let (kind, payload): (u8, Vec<u8>) = match message {
        Message::Ping => (frame_type::PING, Vec::new()),
        Message::Handover { vrid } => (frame_type::HANDOVER, vec![*vrid]),
        Message::Bye => (frame_type::BYE, Vec::new()),
        Message::Status { vrid, priority } => (frame_type::STATUS, vec![*vrid, *priority]),
    };
    let mac = key.mac(&[session, &seq.to_be_bytes(), &[kind], &payload]);
    *seq += 1;
    write_frame(stream, kind, &payload, Some(&mac)).await?;
    Ok(())
}

async fn recv_on<R: AsyncRead + Unpin>(
    stream: &mut R,
    key: &GroupKey,
    session: &[u8],
    seq: &mut u64,
) -> Result<Message, LinkEnd> {
    let (kind, payload, mac) = match read_frame(stream, true).await {
        Ok(frame) => frame,
        Err(HeartbeatError::Io(error)) => return Err(LinkEnd::Lost(error.kind())),
        Err(other) => return Err(LinkEnd::Rejected(other)),
    };
    if !key.verify(&[session, &seq.to_be_bytes(), &[kind], &payload], &mac) {
        return Err(LinkEnd::Rejected(HeartbeatError::Unauthenticated));
    }
    *seq += 1;
    match (kind, payload.as_slice()) {
        (frame_type::PING, []) => Ok(Message::Ping),
        (frame_type::HANDOVER, [vrid]) => Ok(Message::Handover { vrid: *vrid }),
        (frame_type::BYE, []) => Err(LinkEnd::Bye),
        (frame_type::STATUS, [vrid, priority]) => Ok(Message::Status {
            vrid: *vrid,
            priority: *priority,
        }),
        _ => Err(LinkEnd::Rejected(HeartbeatError::Malformed(
            "unknown message",
        ))),
    }
}

fn session_id(client_nonce: &[u8], server_nonce: &[u8]) -> [u8; 2 * NONCE_LEN] {
    let mut session = [0u8; 2 * NONCE_LEN];
    session[..NONCE_LEN].copy_from_slice(&client_nonce[..NONCE_LEN]);
    session[NONCE_LEN..].copy_from_slice(&server_nonce[..NONCE_LEN]);
    session
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(
        client_key: &[u8],
        server_key: &[u8],
    ) -> (Result<Link, HeartbeatError>, Result<Link, HeartbeatError>) {
        let listener = TcpListener::bind("127.0.0.1:0").await;
        let Ok(listener) = listener else {
            panic!("bind");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("addr");
        };
        let server_key = GroupKey::new(server_key);
        let server = tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                panic!("accept");
            };
            Link::accept(stream, server_key, "node-b").await
        });
        let client = Link::connect(addr, GroupKey::new(client_key), "node-a").await;
        let server = match server.await {
            Ok(result) => result,
            Err(_) => panic!("server task"),
        };
        (client, server)
    }

    #[tokio::test]
    async fn handshake_and_messages_with_the_same_key() {
        let (client, server) = pair(b"group secret", b"group secret").await;
        let (Ok(mut client), Ok(mut server)) = (client, server) else {
            panic!("handshake failed");
        };
        assert_eq!(client.peer_id, "node-b");
        assert_eq!(server.peer_id, "node-a");
        for message in [Message::Ping, Message::Handover { vrid: 51 }] {
            assert!(client.send(&message).await.is_ok());
            assert_eq!(server.recv().await.ok(), Some(message));
        }
        assert!(client.send(&Message::Bye).await.is_ok());
        assert!(matches!(server.recv().await, Err(LinkEnd::Bye)));
    }

    #[tokio::test]
    async fn a_wrong_key_fails_on_both_sides() {
        let (client, server) = pair(b"right", b"wrong").await;
        assert!(matches!(client, Err(HeartbeatError::Unauthenticated)));
        assert!(server.is_err());
    }

    #[tokio::test]
    async fn a_process_crash_is_seen_as_lost_not_bye() {
        let (client, server) = pair(b"k", b"k").await;
        let (Ok(client), Ok(mut server)) = (client, server) else {
            panic!("handshake failed");
        };
        drop(client); // What the kernel does when the process dies.
        assert!(matches!(server.recv().await, Err(LinkEnd::Lost(_))));
    }

    #[tokio::test]
    async fn a_forged_or_replayed_frame_is_rejected() {
        let (client, server) = pair(b"k", b"k").await;
        let (Ok(mut client), Ok(mut server)) = (client, server) else {
            panic!("handshake failed");
        };
        // Replay: the same MAC at the next sequence number does not verify.
        let mac = client.key.mac(&[
            &client.session,
            &0u64.to_be_bytes(),
            &[frame_type::HANDOVER],
            &[51],
        ]);
        let _ = write_frame(&mut client.stream, frame_type::HANDOVER, &[51], Some(&mac)).await;
        assert!(matches!(
            server.recv().await,
            Ok(Message::Handover { vrid: 51 })
        ));
        let _ = write_frame(&mut client.stream, frame_type::HANDOVER, &[51], Some(&mac)).await;
        assert!(matches!(
            server.recv().await,
            Err(LinkEnd::Rejected(HeartbeatError::Unauthenticated))
        ));
    }

    /// What an unauthenticated stranger can send before the handshake: each malformed hello
    /// ends the handshake with an error (never a panic or an unbounded allocation), and a
    /// well-formed hello without the key never gets a link.
    #[tokio::test]
    async fn malformed_or_unauthenticated_hellos_get_no_link() {
        let mut too_long = vec![frame_type::HELLO, 0xff, 0xff];
        too_long.extend(std::iter::repeat_n(0u8, 64));
        let mut not_utf8 = vec![frame_type::HELLO, 0, 18];
        not_utf8.extend([7u8; 16]);
        not_utf8.extend([0xff, 0xfe]);
        let mut forged_auth = vec![frame_type::HELLO, 0, 17];
        forged_auth.extend([7u8; 16]);
        forged_auth.push(b'x');
        forged_auth.extend([frame_type::AUTH, 0, 0]);
        forged_auth.extend([0u8; MAC_LEN]);
        let cases: [(&str, Vec<u8>); 6] = [
            ("truncated hello", vec![frame_type::HELLO, 0, 40, 1, 2]),
            ("payload too long", too_long),
            ("short hello", vec![frame_type::HELLO, 0, 3, 1, 2, 3]),
            ("not a hello", vec![frame_type::PING, 0, 0]),
            ("node id not UTF-8", not_utf8),
            ("forged proof", forged_auth),
        ];
        for (case, bytes) in cases {
            let listener = TcpListener::bind("127.0.0.1:0").await;
            let Ok(listener) = listener else {
                panic!("bind");
            };
            let Ok(addr) = listener.local_addr() else {
                panic!("addr");
            };
            let truncated = case == "truncated hello";
            let client = tokio::spawn(async move {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    panic!("connect");
                };
                let _ = stream.write_all(&bytes).await;
                if truncated {
                    let _ = stream.shutdown().await;
                }
                // Otherwise stay connected until the server gives up, so that its verdict is
                // about the bytes, not about a closed socket.
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            });
            let Ok((stream, _)) = listener.accept().await else {
                panic!("accept");
            };
            let accepted = Link::accept(stream, GroupKey::new(b"k"), "node-b").await;
            let verdict = match &accepted {
                Ok(_) => "a link".to_owned(),
                Err(HeartbeatError::Malformed(why)) => format!("malformed: {why}"),
                Err(HeartbeatError::Unauthenticated) => "unauthenticated".to_owned(),
                Err(HeartbeatError::Io(error)) => format!("io: {:?}", error.kind()),
                Err(other) => format!("{other}"),
            };
            let expected = match case {
                "truncated hello" => "io: UnexpectedEof",
                "payload too long" => "malformed: payload too long",
                "short hello" => "malformed: short handshake",
                "not a hello" => "malformed: expected hello",
                "node id not UTF-8" => "malformed: node id not UTF-8",
                _ => "unauthenticated",
            };
            assert_eq!(verdict, expected, "{case}");
            drop(accepted);
            let _ = client.await;
        }
    }
}
