//! The scan port's PROXY protocol v2 header, authenticated (issue 11), sans-IO.
//!
//! A director relays a client's connection to a scanning node's scan port and writes a PROXY
//! v2 header first, so the scanning node's policy, limits and access log see the real client.
//! Anyone who can reach the scan port could write such a header, so the header carries an
//! HMAC-SHA256 in a TLV of the application range ([`AUTH_TLV`], 0xE0) over:
//! - the whole header (addresses, every TLV, this one with its MAC zeroed),
//! - the relay connection's two ends as both see them (the director's local address, the
//!   scan port's address), so a header lifted from one connection fails on any other,
//! - the director's node id, a timestamp and a random nonce (replays inside the window are
//!   refused; outside it the timestamp is),
//!
//! keyed per pair of nodes ([`PairKey`]: from the pair's mutual-TLS link exporter, or derived
//! from the HA group key). Only the header is authenticated: the bytes after it are the
//! client's, as on any TCP connection (the scan port relies on the network between members
//! for their integrity, as any PROXY protocol receiver does).

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use palisade_identity::NodeId;
use ppp::v2;
use ring::{hkdf, hmac};

/// The TLV type of the authentication (the application range is 0xE0-0xEF).
pub const AUTH_TLV: u8 = 0xE0;
/// A scan-port header is at most this long (the spec designs headers to fit 536 bytes).
pub const MAX_HEADER: usize = 512;
/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
pub const PREFIX_LEN: usize = 16;
const AUTH_VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// version, director id, timestamp (ms), nonce, MAC.
const AUTH_LEN: usize = 1 + 16 + 8 + 16 + MAC_LEN;
const DOMAIN: &[u8] = b"palisade scan header v1\0";

/// The secret one director and one scanning node share.
#[derive(Clone)]
pub struct PairKey(hmac::Key);

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairKey(..)")
    }
}

impl PairKey {
    /// From keying material both ends of the pair's link exported (RFC 5705).
    pub fn from_secret(secret: &[u8]) -> PairKey {
        PairKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// From the HA group key, for a group without a cluster: HKDF-SHA256 of the group key,
    /// bound to the pair's two node ids (in order, so both ends derive the same key and no
    /// other pair's).
    pub fn from_group_key(group_key: &[u8], a: NodeId, b: NodeId) -> PairKey {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut info = Vec::with_capacity(64);
        info.extend_from_slice(b"palisade scan pair key\0");
        info.extend_from_slice(low.as_bytes());
        info.extend_from_slice(high.as_bytes());
        let info = [info.as_slice()];
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, DOMAIN).extract(group_key);
        let mut secret = [0u8; 32];
        // HKDF-SHA256 can expand 32 bytes for any input: neither call can fail.
        if let Ok(okm) = prk.expand(&info, hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut secret);
        }
        PairKey::from_secret(&secret)
    }
}

/// The relay connection between director and scanning node, as both ends see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayEnds {
    /// The director's end (its local address; the scanning node's peer address).
    pub director: SocketAddr,
    /// The scan port's end (the director's peer address; the scanning node's local address).
    pub scanner: SocketAddr,
}

/// What a verified header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The client, as the director saw it.
    pub client: SocketAddr,
    /// What the client connected to (the VIP and redirect port).
    pub destination: SocketAddr,
    pub director: NodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a PROXY protocol v2 header")]
    NotProxyV2,
    #[error("header of {0} bytes, more than {MAX_HEADER}")]
    TooLong(usize),
    #[error("malformed PROXY v2 header: {0}")]
    Malformed(String),
    #[error("not a PROXY command over TCP with IPv4 or IPv6 addresses")]
    NotRelay,
    #[error("no authentication TLV")]
    Unauthenticated,
    #[error("director {0} is not a member this node shares a key with")]
    UnknownDirector(NodeId),
    #[error("authentication does not match (forged, altered, or lifted from another connection)")]
    BadMac,
    #[error("timestamp {skew_ms} ms away from this node's clock (allowed {window_ms} ms)")]
    Stale { skew_ms: i64, window_ms: u64 },
    #[error("replayed header (nonce seen before)")]
    Replayed,
}

/// How long a complete header is, from its first [`PREFIX_LEN`] bytes (fewer: `Ok(None)`,
/// read more), so the scan port reads exactly the header and nothing of the client's bytes.
pub fn header_length(prefix: &[u8]) -> Result<Option<usize>, Refusal> {
    let signature = v2::PROTOCOL_PREFIX;
    let known = prefix.len().min(signature.len());
    if prefix[..known] != signature[..known] {
        return Err(Refusal::NotProxyV2);
    }
    if prefix.len() < PREFIX_LEN {
        return Ok(None);
    }
    let length = PREFIX_LEN + usize::from(u16::from_be_bytes([prefix[14], prefix[15]]));
    if length > MAX_HEADER {
        return Err(Refusal::TooLong(length));
    }
    Ok(Some(length))
}

/// The header a director writes before relaying `client`'s connection to `destination`.
pub fn seal(
    client: SocketAddr,
    destination: SocketAddr,
    director: NodeId,
    key: &PairKey,
    relay: RelayEnds,
    now_ms: u64,
    nonce: [u8; 16],
) -> Vec<u8> {
    let (client, destination) = same_family(client, destination);
    let mut auth = [0u8; AUTH_LEN];
    auth[0] = AUTH_VERSION;
    auth[1..17].copy_from_slice(director.as_bytes());
    auth[17..25].copy_from_slice(&now_ms.to_be_bytes());
    auth[25..41].copy_from_slice(&nonce);
    let built = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (client, destination),
    )
    .write_tlv(AUTH_TLV, &auth)
    .and_then(v2::Builder::build);
    // Writing to a Vec with a 73-byte TLV cannot fail.
    let Ok(mut header) = built else {
        return Vec::new();
    };
    let tag = hmac::sign(&key.0, &signed_bytes(&header, relay));
    let at = header.len() - MAC_LEN;
    header[at..].copy_from_slice(tag.as_ref());
    header
}

/// What the MAC covers: `header` (its MAC field zero) and the relay's ends.
fn signed_bytes(header: &[u8], relay: RelayEnds) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + 2 + header.len() + 36);
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(&(header.len() as u16).to_be_bytes());
    bytes.extend_from_slice(header);
    for end in [relay.director, relay.scanner] {
        let ip = match end.ip().to_canonical() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        bytes.extend_from_slice(&ip);
        bytes.extend_from_slice(&end.port().to_be_bytes());
    }
    bytes
}

/// PROXY v2 needs both addresses in one family: an IPv4 one beside an IPv6 one becomes
/// IPv4-mapped.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (a, b) = (canonical(a), canonical(b));
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let mapped = |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    };
    (mapped(a), mapped(b))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Checks headers on a scan port: one per node, it remembers nonces for the window.
#[derive(Debug)]
pub struct Verifier {
    window_ms: u64,
    /// Nonces seen, and in the order they came with the time after which their header's
    /// timestamp is stale anyway (pruned from the front: O(1) per header).
    seen: HashSet<[u8; 16]>,
    order: VecDeque<(u64, [u8; 16])>,
    max_seen: usize,
}

impl Verifier {
    /// Timestamps within `window_ms` of this node's clock pass; nonces are remembered as
    /// long, at most `max_seen` of them: beyond that the oldest is forgotten (never a
    /// memory without bound, and never a refusal of genuine headers under load; a replay
    /// of a forgotten one still needs the MAC-bound addresses of a relay connection the
    /// kernel has not reused yet).
    pub fn new(window_ms: u64, max_seen: usize) -> Verifier {
        Verifier {
            window_ms,
            seen: HashSet::new(),
            order: VecDeque::new(),
            max_seen: max_seen.max(1),
        }
    }

    /// Checks a complete header (exactly [`header_length`] bytes) that arrived on the relay
    /// connection `relay`; `keys` gives the keys this node shares with a director (the
    /// current one, and the one before while links re-key).
    pub fn verify(
        &mut self,
        header: &[u8],
        relay: RelayEnds,
        now_ms: u64,
        keys: impl Fn(NodeId) -> Vec<PairKey>,
    ) -> Result<Verified, Refusal> {
        if header.len() > MAX_HEADER {
            return Err(Refusal::TooLong(header.len()));
        }
        let parsed = v2::Header::try_from(header).map_err(|error| match error {
            v2::ParseError::Prefix => Refusal::NotProxyV2,
            other => Refusal::Malformed(other.to_string()),
        })?;
        if parsed.header.len() != header.len() {
            return Err(Refusal::Malformed("bytes after the header".to_owned()));
        }
        let addresses = match parsed.addresses {
            v2::Addresses::IPv4(v4) => (
                SocketAddr::new(IpAddr::V4(v4.source_address), v4.source_port),
                SocketAddr::new(IpAddr::V4(v4.destination_address), v4.destination_port),
            ),
            v2::Addresses::IPv6(v6) => (
                SocketAddr::new(IpAddr::V6(v6.source_address), v6.source_port),
                SocketAddr::new(IpAddr::V6(v6.destination_address), v6.destination_port),
            ),
            v2::Addresses::Unspecified | v2::Addresses::Unix(_) => return Err(Refusal::NotRelay),
        };
        if parsed.command != v2::Command::Proxy || parsed.protocol != v2::Protocol::Stream {
            return Err(Refusal::NotRelay);
        }
        // Exactly one authentication TLV, and it is the last thing in the header.
        let mut auth = None;
        for tlv in parsed.tlvs() {
            let tlv = tlv.map_err(|error| Refusal::Malformed(error.to_string()))?;
            if tlv.kind == AUTH_TLV {
                if auth.is_some() {
                    return Err(Refusal::Malformed("two authentication TLVs".to_owned()));
                }
                auth = Some(tlv.value.into_owned());
            }
        }
        let Some(auth) = auth else {
            return Err(Refusal::Unauthenticated);
        };
        if auth.len() != AUTH_LEN || auth[0] != AUTH_VERSION || !header.ends_with(&auth) {
            return Err(Refusal::Malformed("authentication TLV".to_owned()));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&auth[1..17]);
        let director = NodeId::from_bytes(id);
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&auth[17..25]);
        let stamp = u64::from_be_bytes(stamp);
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&auth[25..41]);
        let keys = keys(director);
        if keys.is_empty() {
            return Err(Refusal::UnknownDirector(director));
        }
        let mut zeroed = header.to_vec();
        let at = zeroed.len() - MAC_LEN;
        zeroed[at..].fill(0);
        let tag = &header[at..];
        let signed = signed_bytes(&zeroed, relay);
        // `hmac::verify` compares in constant time.
        let authentic = keys
            .iter()
            .any(|key| hmac::verify(&key.0, &signed, tag).is_ok());
        if !authentic {
            return Err(Refusal::BadMac);
        }
        if stamp.abs_diff(now_ms) > self.window_ms {
            let skew_ms = i64::try_from(stamp.abs_diff(now_ms)).unwrap_or(i64::MAX);
            return Err(Refusal::Stale {
                skew_ms: if stamp < now_ms { -skew_ms } else { skew_ms },
                window_ms: self.window_ms,
            });
        }
        // Forget what is stale anyway (its header would be refused by its timestamp).
        while let Some((expires, old)) = self.order.front().copied() {
            if expires >= now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if self.seen.contains(&nonce) {
            return Err(Refusal::Replayed);
        }
        if self.order.len() >= self.max_seen
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(nonce);
        self.order
            .push_back((stamp.saturating_add(self.window_ms), nonce));
        Ok(Verified {
            client: addresses.0,
            destination: addresses.1,
            director,
        })
    }
}

#[cfg(test)]
mod tests;
