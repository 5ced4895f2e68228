//! How a link proves who is at the other end: one trait, so the HA group key (HMAC) now and
//! the cluster's mutual TLS later are interchangeable behind the same handshake.

use ring::hmac;

/// Bytes of every MAC kept on the wire (HMAC-SHA256 truncated: 128 bits, RFC 2104 §5).
pub const TAG_LEN: usize = 16;

/// Which end of the handshake a proof comes from. Bound into every proof, so a proof cannot
/// be reflected back to the node that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The node that dialled.
    Client,
    /// The node that accepted.
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Server => b"server",
        }
    }

    pub fn other(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// One MAC key per direction for the frames after the handshake: a frame a node sent never
/// verifies as one it received (security review F4).
pub struct FrameKeys {
    pub client_to_server: hmac::Key,
    pub server_to_client: hmac::Key,
}

/// Proves and checks possession of the credential that admits a node to the link.
pub trait Authenticator: Send + Sync + 'static {
    /// For logs: what the peer failed to prove ("the HA group key").
    fn credential(&self) -> &'static str;
    /// The proof `role` sends over the handshake transcript.
    fn prove(&self, role: Role, transcript: &[u8]) -> [u8; TAG_LEN];
    /// Checks the peer's proof (made as `role`) in constant time.
    fn verify(&self, role: Role, transcript: &[u8], tag: &[u8]) -> bool {
        let expected = self.prove(role, transcript);
        tag.len() == TAG_LEN && constant_time_eq(&expected, tag)
    }
    /// The per-direction frame keys, derived from the transcript (both nonces in it make
    /// them unique to this link).
    fn frame_keys(&self, transcript: &[u8]) -> FrameKeys;
}

/// Compares without an early exit, so a tag cannot be guessed byte by byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The HA group's shared secret (`[heartbeat] key`).
#[derive(Clone)]
pub struct GroupKey {
    key: hmac::Key,
}

const DOMAIN: &[u8] = b"palisade peer-link v1";

impl GroupKey {
    pub fn new(secret: &[u8]) -> GroupKey {
        GroupKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn sign(&self, label: &[u8], transcript: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(DOMAIN);
        // Labels have fixed, distinct lengths ahead of the transcript: no two inputs collide.
        context.update(&[label.len() as u8]);
        context.update(label);
        context.update(transcript);
        context.sign()
    }

    fn derive(&self, label: &[u8], transcript: &[u8]) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.sign(label, transcript).as_ref())
    }
}

impl Authenticator for GroupKey {
    fn credential(&self) -> &'static str {
        "the HA group key"
    }

    fn prove(&self, role: Role, transcript: &[u8]) -> [u8; TAG_LEN] {
        let tag = self.sign(role.label(), transcript);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        out
    }

    fn frame_keys(&self, transcript: &[u8]) -> FrameKeys {
        FrameKeys {
            client_to_server: self.derive(b"frames client to server", transcript),
            server_to_client: self.derive(b"frames server to client", transcript),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_role_and_the_key() {
        let key = GroupKey::new(b"k");
        let proof = key.prove(Role::Client, b"transcript");
        assert!(key.verify(Role::Client, b"transcript", &proof));
        assert!(!key.verify(Role::Server, b"transcript", &proof));
        assert!(!key.verify(Role::Client, b"transcript!", &proof));
        assert!(!GroupKey::new(b"other").verify(Role::Client, b"transcript", &proof));
        assert!(!key.verify(Role::Client, b"transcript", &proof[..8]));
    }
}
