//! The link handshake, sans-IO: feed it the bytes that arrived, send what it queues, until it
//! is established. Three frames of the link plane:
//!
//! ```text
//! client -> server  HELLO      nonce | node id | incarnation | name
//! server -> client  CHALLENGE  nonce | node id | incarnation | name | proof(server)
//! client -> server  AUTH       proof(client)
//! ```
//!
//! Each proof covers the whole transcript (both nonces, both identities) and its role, so
//! neither can be replayed on another link or reflected to its maker; the frame keys that
//! follow are derived from the same transcript, one per direction. The server proves itself
//! first, so a dialler learns at once whether the node it reached is the one it knew (same
//! incarnation) or a new process, which is how a backup confirms that a master died.

use std::sync::Arc;

use palisade_identity::{Incarnation, NodeId, NodeName};

use crate::auth::{Authenticator, Role, TAG_LEN};
use crate::frame::{HEADER_LEN, Header, Opener, Sealer, write_frame};
use crate::message::{LINK_VERSION, link_kind, plane};

pub const NONCE_LEN: usize = 16;
/// Handshake frames are small; anything longer is refused before it is read.
pub const MAX_HANDSHAKE_PAYLOAD: usize = 512;

/// Who this node is on its links.
#[derive(Clone, Debug)]
pub struct LocalIdentity {
    pub node_id: NodeId,
    pub incarnation: Incarnation,
    pub name: NodeName,
}

/// Who the peer proved to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: NodeId,
    pub incarnation: Incarnation,
    pub name: NodeName,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer failed to prove {0}")]
    Unauthenticated(&'static str),
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    #[error("peer speaks link version {0}, this node {LINK_VERSION}")]
    Version(u8),
    #[error("peer claims this node's own id {0} (two nodes sharing one data directory?)")]
    SameNodeId(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    AwaitHello,
    AwaitChallenge,
    AwaitAuth,
    Done,
}

/// One side of a handshake in progress.
pub struct Handshake {
    role: Role,
    auth: Arc<dyn Authenticator>,
    local: LocalIdentity,
    nonce: [u8; NONCE_LEN],
    step: Step,
    transcript: Vec<u8>,
    outgoing: Vec<u8>,
    peer: Option<PeerIdentity>,
}

/// A finished handshake: who the peer is and the keys for the frames that follow.
pub struct Established {
    pub peer: PeerIdentity,
    pub sealer: Sealer,
    pub opener: Opener,
}

impl Handshake {
    /// The dialling side; its HELLO is queued at once. `nonce` must be fresh random bytes
    /// (the caller's: this module has no randomness).
    pub fn client(
        auth: Arc<dyn Authenticator>,
        local: LocalIdentity,
        nonce: [u8; NONCE_LEN],
    ) -> Handshake {
        let mut handshake = Handshake::new(Role::Client, auth, local, nonce, Step::AwaitChallenge);
        let hello = handshake.identity_body();
        write_frame(
            &mut handshake.outgoing,
            (plane::LINK, LINK_VERSION, link_kind::HELLO),
            &hello,
        );
        handshake.transcript = hello;
        handshake
    }

    /// The accepting side.
    pub fn server(
        auth: Arc<dyn Authenticator>,
        local: LocalIdentity,
        nonce: [u8; NONCE_LEN],
    ) -> Handshake {
        Handshake::new(Role::Server, auth, local, nonce, Step::AwaitHello)
    }

    fn new(
        role: Role,
        auth: Arc<dyn Authenticator>,
        local: LocalIdentity,
        nonce: [u8; NONCE_LEN],
        step: Step,
    ) -> Handshake {
        Handshake {
            role,
            auth,
            local,
            nonce,
            step,
            transcript: Vec::new(),
            outgoing: Vec::new(),
            peer: None,
        }
    }

    /// Bytes to write to the peer now (empty when there are none).
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    pub fn is_established(&self) -> bool {
        self.step == Step::Done
    }

    /// The peer's identity as soon as its first frame arrived (before it proved anything, on
    /// the server side: for logs only).
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    /// Feeds received bytes; returns how many were used. Bytes after the handshake's last
    /// frame are left for the [`Opener`].
    pub fn receive(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        let mut used = 0;
        while self.step != Step::Done {
            let Some(header) = Header::parse(&input[used..]) else {
                break;
            };
            if header.plane != plane::LINK {
                return Err(HandshakeError::Malformed("expected a handshake frame"));
            }
            if header.version != LINK_VERSION {
                return Err(HandshakeError::Version(header.version));
            }
            if header.length > MAX_HANDSHAKE_PAYLOAD {
                return Err(HandshakeError::Malformed("handshake frame too long"));
            }
            let end = used + HEADER_LEN + header.length;
            let Some(payload) = input.get(used + HEADER_LEN..end) else {
                break;
            };
            self.step_on(header.kind, payload)?;
            used = end;
        }
        Ok(used)
    }

    fn step_on(&mut self, kind: u8, payload: &[u8]) -> Result<(), HandshakeError> {
        match (self.step, kind) {
            (Step::AwaitHello, link_kind::HELLO) => {
                let (_, peer) = self.parse_identity(payload)?;
                self.transcript = payload.to_vec();
                let challenge = self.identity_body();
                self.transcript.extend_from_slice(&challenge);
                let proof = self.auth.prove(Role::Server, &self.transcript);
                let mut body = challenge;
                body.extend_from_slice(&proof);
                write_frame(
                    &mut self.outgoing,
                    (plane::LINK, LINK_VERSION, link_kind::CHALLENGE),
                    &body,
                );
                self.peer = Some(peer);
                self.step = Step::AwaitAuth;
            }
            (Step::AwaitChallenge, link_kind::CHALLENGE) => {
                let split = payload
                    .len()
                    .checked_sub(TAG_LEN)
                    .ok_or(HandshakeError::Malformed("short challenge"))?;
                let (body, proof) = payload.split_at(split);
                let (_, peer) = self.parse_identity(body)?;
                self.transcript.extend_from_slice(body);
                if !self.auth.verify(Role::Server, &self.transcript, proof) {
                    return Err(HandshakeError::Unauthenticated(self.auth.credential()));
                }
                let proof = self.auth.prove(Role::Client, &self.transcript);
                write_frame(
                    &mut self.outgoing,
                    (plane::LINK, LINK_VERSION, link_kind::AUTH),
                    &proof,
                );
                self.peer = Some(peer);
                self.step = Step::Done;
            }
            (Step::AwaitAuth, link_kind::AUTH) => {
                if !self.auth.verify(Role::Client, &self.transcript, payload) {
                    return Err(HandshakeError::Unauthenticated(self.auth.credential()));
                }
                self.step = Step::Done;
            }
            (Step::AwaitHello, _) => return Err(HandshakeError::Malformed("expected hello")),
            (Step::AwaitChallenge, _) => {
                return Err(HandshakeError::Malformed("expected challenge"));
            }
            (Step::AwaitAuth, _) => return Err(HandshakeError::Malformed("expected auth")),
            (Step::Done, _) => {}
        }
        Ok(())
    }

    /// `nonce | node id | incarnation | name length | name`.
    fn identity_body(&self) -> Vec<u8> {
        let name = self.local.name.as_str().as_bytes();
        let mut body = Vec::with_capacity(3 * 16 + 1 + name.len());
        body.extend_from_slice(&self.nonce);
        body.extend_from_slice(self.local.node_id.as_bytes());
        body.extend_from_slice(self.local.incarnation.as_bytes());
        // NodeName is at most 253 bytes.
        body.push(name.len().min(255) as u8);
        body.extend_from_slice(&name[..name.len().min(255)]);
        body
    }

    fn parse_identity(
        &self,
        body: &[u8],
    ) -> Result<([u8; NONCE_LEN], PeerIdentity), HandshakeError> {
        let short = HandshakeError::Malformed("short identity");
        let (nonce, rest) = body.split_first_chunk::<NONCE_LEN>().ok_or(short.clone())?;
        let (node_id, rest) = rest.split_first_chunk::<16>().ok_or(short.clone())?;
        let (incarnation, rest) = rest.split_first_chunk::<16>().ok_or(short.clone())?;
        let (&name_len, name) = rest.split_first().ok_or(short)?;
        if name.len() != usize::from(name_len) {
            return Err(HandshakeError::Malformed("name length"));
        }
        let name = std::str::from_utf8(name)
            .ok()
            .and_then(|name| NodeName::new(name).ok())
            .ok_or(HandshakeError::Malformed("not a node name"))?;
        let node_id = NodeId::from_bytes(*node_id);
        if node_id == self.local.node_id {
            return Err(HandshakeError::SameNodeId(node_id));
        }
        Ok((
            *nonce,
            PeerIdentity {
                node_id,
                incarnation: Incarnation::from_bytes(*incarnation),
                name,
            },
        ))
    }

    /// The established link's keys, or `None` if the handshake is not done.
    pub fn finish(self) -> Option<Established> {
        if self.step != Step::Done {
            return None;
        }
        let peer = self.peer?;
        let keys = self.auth.frame_keys(&self.transcript);
        let (send, receive) = match self.role {
            Role::Client => (keys.client_to_server, keys.server_to_client),
            Role::Server => (keys.server_to_client, keys.client_to_server),
        };
        Some(Established {
            peer,
            sealer: Sealer::new(send),
            opener: Opener::new(receive),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::GroupKey;
    use crate::frame::{FrameError, Opened};
    use crate::message::{HaMessage, Message};

    pub(crate) fn identity(name: &str) -> LocalIdentity {
        let Ok(name) = NodeName::new(name) else {
            panic!("name");
        };
        LocalIdentity {
            node_id: NodeId::random(),
            incarnation: Incarnation::random(),
            name,
        }
    }

    fn run(client: &mut Handshake, server: &mut Handshake) -> Result<(), (Role, HandshakeError)> {
        for _ in 0..3 {
            let to_server = client.take_outgoing();
            server
                .receive(&to_server)
                .map_err(|error| (Role::Server, error))?;
            let to_client = server.take_outgoing();
            client
                .receive(&to_client)
                .map_err(|error| (Role::Client, error))?;
        }
        Ok(())
    }

    fn handshake_pair(client_key: &[u8], server_key: &[u8]) -> (Handshake, Handshake) {
        (
            Handshake::client(Arc::new(GroupKey::new(client_key)), identity("a"), [1; 16]),
            Handshake::server(Arc::new(GroupKey::new(server_key)), identity("b"), [2; 16]),
        )
    }

    #[test]
    fn the_same_key_establishes_keys_that_only_work_one_way() {
        let (mut client, mut server) = handshake_pair(b"k", b"k");
        assert_eq!(run(&mut client, &mut server), Ok(()));
        assert!(client.is_established() && server.is_established());
        let client_sees = client.peer().map(|peer| peer.name.to_string());
        assert_eq!(client_sees.as_deref(), Some("b"));
        let (Some(mut client), Some(mut server)) = (client.finish(), server.finish()) else {
            panic!("not established");
        };
        let status = Message::Ha(HaMessage::Status {
            vrid: 51,
            vrrp_priority: 100,
            master: false,
            primary: std::net::IpAddr::from([10, 213, 0, 11]),
            group: 7,
        });
        let mut frame = Vec::new();
        client.sealer.seal(&status, &mut frame);
        // Reflected to its sender, the frame does not verify (security review F4) ...
        assert_eq!(client.opener.open(&frame), Err(FrameError::Unauthenticated));
        // ... while the peer it was meant for opens it.
        assert_eq!(
            server.opener.open(&frame),
            Ok(Some((Opened::Message(status), frame.len())))
        );
    }

    #[test]
    fn a_wrong_key_fails_on_the_side_that_checks_first() {
        let (mut client, mut server) = handshake_pair(b"right", b"wrong");
        assert_eq!(
            run(&mut client, &mut server),
            Err((
                Role::Client,
                HandshakeError::Unauthenticated("the HA group key")
            ))
        );
        assert!(client.finish().is_none());
    }

    #[test]
    fn a_server_proof_reflected_as_the_client_proof_is_refused() {
        let (mut client, mut server) = handshake_pair(b"k", b"k");
        let hello = client.take_outgoing();
        assert_eq!(server.receive(&hello), Ok(hello.len()));
        let challenge = server.take_outgoing();
        // An attacker answers the challenge with the server's own proof.
        let proof = &challenge[challenge.len() - TAG_LEN..];
        let mut auth = Vec::new();
        write_frame(
            &mut auth,
            (plane::LINK, LINK_VERSION, link_kind::AUTH),
            proof,
        );
        assert_eq!(
            server.receive(&auth),
            Err(HandshakeError::Unauthenticated("the HA group key"))
        );
    }

    #[test]
    fn a_peer_with_our_own_node_id_is_refused() {
        let local = identity("a");
        let auth: Arc<dyn Authenticator> = Arc::new(GroupKey::new(b"k"));
        let mut client = Handshake::client(auth.clone(), local.clone(), [1; 16]);
        let mut server = Handshake::server(auth, local.clone(), [2; 16]);
        assert_eq!(
            run(&mut client, &mut server),
            Err((Role::Server, HandshakeError::SameNodeId(local.node_id)))
        );
    }

    #[test]
    fn data_right_after_auth_is_left_for_the_opener() {
        let (mut client, mut server) = handshake_pair(b"k", b"k");
        let hello = client.take_outgoing();
        let _ = server.receive(&hello);
        let challenge = server.take_outgoing();
        let _ = client.receive(&challenge);
        let mut wire = client.take_outgoing();
        let auth_len = wire.len();
        let Some(mut client) = client.finish() else {
            panic!("client not established");
        };
        client.sealer.seal(&Message::Ping, &mut wire);
        assert_eq!(server.receive(&wire), Ok(auth_len));
        let Some(mut server) = server.finish() else {
            panic!("server not established");
        };
        assert!(matches!(
            server.opener.open(&wire[auth_len..]),
            Ok(Some((Opened::Message(Message::Ping), _)))
        ));
    }

    #[test]
    fn malformed_first_frames_are_errors() {
        let cases: [(&[u8], HandshakeError); 5] = [
            (
                &[0, 1, 1, 0xff, 0xff],
                HandshakeError::Malformed("handshake frame too long"),
            ),
            (
                &[1, 1, 1, 0, 0],
                HandshakeError::Malformed("expected a handshake frame"),
            ),
            (&[0, 9, 1, 0, 0], HandshakeError::Version(9)),
            (
                &[0, 1, 10, 0, 0],
                HandshakeError::Malformed("expected hello"),
            ),
            (
                &[0, 1, 1, 0, 3, 1, 2, 3],
                HandshakeError::Malformed("short identity"),
            ),
        ];
        for (bytes, expected) in cases {
            let mut server =
                Handshake::server(Arc::new(GroupKey::new(b"k")), identity("b"), [2; 16]);
            assert_eq!(server.receive(bytes), Err(expected));
        }
    }

    proptest::proptest! {
        /// Whatever a stranger sends, the server never panics and never establishes.
        #[test]
        fn arbitrary_bytes_never_establish(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut server = Handshake::server(Arc::new(GroupKey::new(b"k")), identity("b"), [2; 16]);
            let _ = server.receive(&bytes);
            proptest::prop_assert!(!server.is_established());
        }
    }
}
