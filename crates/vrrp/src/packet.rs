//! VRRP advertisements on the wire: RFC 5798 section 5 (version 3, IPv4 and IPv6) and
//! RFC 3768 section 5 (version 2, IPv4, authentication type 0 only).
//!
//! The codec sees only the VRRP message, the payload after the IP header. What the IP layer
//! knows (source, destination, TTL or hop limit) comes in a [`DecodeContext`], because the
//! v3 checksum covers an IP pseudo-header and RFC 5798 section 7.1 makes the TTL part of
//! the validity of a packet.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |   v3
//! |   Auth Type   |   Adver Int   |          Checksum             |   v2
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IPvX Address(es)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                Authentication Data (8 bytes, v2 only)         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::types::{Centiseconds, Version, Vrid, VrrpPriority};

/// IP protocol number of VRRP (RFC 5798 section 5.1.1.4).
pub const IPPROTO_VRRP: u8 = 112;
/// The only TTL / hop limit a VRRP packet may arrive with (RFC 5798 section 5.1.1.3): the
/// sender set 255 and no router forwarded it, so it was sent on this link.
pub const REQUIRED_TTL: u8 = 255;
/// The IPv4 multicast group of VRRP (RFC 5798 section 5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group of VRRP (RFC 5798 section 5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// Version, type, VRID, priority, count, interval and checksum.
const HEADER_LEN: usize = 8;
/// RFC 3768 section 5.3.10: kept for RFC 2338 compatibility, zero on send, ignored on receipt.
const V2_AUTH_DATA_LEN: usize = 8;
/// RFC 5798 section 5.2.2: the only packet type.
const TYPE_ADVERTISEMENT: u8 = 1;
/// RFC 3768 section 5.3.6: "No Authentication", the only type RFC 3768 still defines.
const V2_AUTH_NONE: u8 = 0;
/// Byte offset of the checksum.
const CHECKSUM_AT: usize = 6;

/// The VRRP multicast group of `address`'s family.
pub fn multicast_group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => IpAddr::V4(MULTICAST_V4),
        IpAddr::V6(_) => IpAddr::V6(MULTICAST_V6),
    }
}

/// The VRID of a packet without decoding it, so that a driver serving several HA groups on
/// one socket can pick the router to hand the packet to. `None` if too short or VRID 0.
pub fn peek_vrid(bytes: &[u8]) -> Option<Vrid> {
    bytes.get(1).copied().and_then(Vrid::new)
}

/// One VRRP advertisement, decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Advert {
    pub version: Version,
    pub vrid: Vrid,
    /// 0 means the sending Master stops (RFC 5798 section 5.2.4).
    pub priority: VrrpPriority,
    /// The sender's advertisement interval. v3 carries centiseconds (12 bits, 1..=4095); v2
    /// carries whole seconds, converted here (1 s = 100 cs), so v2 values are multiples of
    /// 100 up to 25500.
    pub max_adver_int: Centiseconds,
    /// The virtual addresses, all of the packet's IP family.
    pub addresses: Vec<IpAddr>,
}

/// What the IP layer told the driver about a received packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeContext {
    /// The sender's primary address (IP source).
    pub src: IpAddr,
    /// The IP destination: the multicast group, or this node in unicast mode.
    pub dst: IpAddr,
    /// The received IPv4 TTL or IPv6 Hop Limit.
    pub ttl: u8,
}

impl DecodeContext {
    pub fn new(src: IpAddr, dst: IpAddr, ttl: u8) -> DecodeContext {
        DecodeContext { src, dst, ttl }
    }
}

/// Why a received packet is not a valid advertisement. One variant per fault; each bumps
/// its own counter in [`Stats`](crate::Stats).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// RFC 5798 section 7.1: the packet was forwarded by a router, or forged off-link.
    #[error("TTL or hop limit {ttl}: must be 255")]
    WrongTtl { ttl: u8 },
    #[error("source {src} and destination {dst} are of different address families")]
    MixedAddressFamilies { src: IpAddr, dst: IpAddr },
    #[error("packet of {len} bytes is shorter than the 8-byte VRRP header")]
    Truncated { len: usize },
    #[error("VRRP version {version}: only versions 2 and 3 are understood")]
    UnsupportedVersion { version: u8 },
    #[error("VRRP version 2 over IPv6: version 2 is IPv4 only")]
    Version2OverIpv6,
    /// RFC 5798 section 5.2.2: "A packet with unknown type MUST be discarded."
    #[error("packet type {packet_type}: must be 1 (ADVERTISEMENT)")]
    WrongType { packet_type: u8 },
    #[error(
        "address count {count} does not match the length: {len} bytes where {count} addresses need {expected}"
    )]
    AddressCountMismatch {
        count: u8,
        len: usize,
        expected: usize,
    },
    #[error("bad checksum {received:#06x}, expected {computed:#06x}")]
    BadChecksum { received: u16, computed: u16 },
    #[error("VRID 0: must be 1..=255")]
    InvalidVrid,
    #[error("advertisement interval 0: must be at least 1")]
    InvalidInterval,
    #[error("VRRPv2 authentication type {auth_type}: only 0 (no authentication) is supported")]
    UnsupportedAuthType { auth_type: u8 },
}

/// Why an [`Advert`] cannot be put on the wire. The router only produces adverts that encode;
/// these are for adverts built by hand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("source {src} and destination {dst} are of different address families")]
    MixedAddressFamilies { src: IpAddr, dst: IpAddr },
    #[error("VRRP version 2 over IPv6: version 2 is IPv4 only")]
    Version2OverIpv6,
    #[error("address {address} is not of the packet's address family")]
    AddressFamily { address: IpAddr },
    #[error("{count} addresses: an advertisement carries at most 255")]
    TooManyAddresses { count: usize },
    #[error(
        "advertisement interval {} cs cannot be sent in VRRPv{version} (v3: 1..=4095 cs; v2: whole seconds 1..=255)",
        interval.0
    )]
    IntervalOutOfRange {
        version: Version,
        interval: Centiseconds,
    },
}

impl Advert {
    /// Decodes the VRRP message `bytes` (the payload after the IP header), checking every rule
    /// of RFC 5798 section 7.1 that needs no configuration: TTL 255, version, type, length,
    /// checksum. Whether the VRID, version and interval suit a router is the router's business.
    ///
    /// Never panics, whatever the input.
    pub fn decode(bytes: &[u8], ctx: &DecodeContext) -> Result<Advert, DecodeError> {
        if ctx.ttl != REQUIRED_TTL {
            return Err(DecodeError::WrongTtl { ttl: ctx.ttl });
        }
        let family =
            Family::of_pair(ctx.src, ctx.dst).ok_or(DecodeError::MixedAddressFamilies {
                src: ctx.src,
                dst: ctx.dst,
            })?;
        let Some(&[version_type, vrid, priority, count, field4, field5, _, _]) =
            bytes.first_chunk::<HEADER_LEN>()
        else {
            return Err(DecodeError::Truncated { len: bytes.len() });
        };
        let version = match version_type >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            version => return Err(DecodeError::UnsupportedVersion { version }),
        };
        if version == Version::V2 && family == Family::V6 {
            return Err(DecodeError::Version2OverIpv6);
        }
        let packet_type = version_type & 0x0f;
        if packet_type != TYPE_ADVERTISEMENT {
            return Err(DecodeError::WrongType { packet_type });
        }
        let expected = message_len(version, family, usize::from(count));
        if bytes.len() != expected {
            return Err(DecodeError::AddressCountMismatch {
                count,
                len: bytes.len(),
                expected,
            });
        }
        // RFC 5798 section 5.2.8 (v3: with the pseudo-header) / RFC 3768 section 5.3.8 (v2:
        // the VRRP message alone). Summing the received checksum with the rest gives 0xffff
        // for an intact packet, whichever of the two one's complement zeros the sender used.
        let sum = pseudo_header_sum(version, ctx.src, ctx.dst, bytes.len()) + word_sum(bytes);
        if fold(sum) != 0xffff {
            let received = u16::from_be_bytes([bytes[CHECKSUM_AT], bytes[CHECKSUM_AT + 1]]);
            let computed = checksum(version, ctx.src, ctx.dst, bytes);
            return Err(DecodeError::BadChecksum { received, computed });
        }
        let vrid = Vrid::new(vrid).ok_or(DecodeError::InvalidVrid)?;
        let max_adver_int = match version {
            // RFC 5798 section 5.2.6: the 4 reserved bits are ignored on receipt.
            Version::V3 => Centiseconds(u16::from_be_bytes([field4, field5]) & 0x0fff),
            Version::V2 => {
                if field4 != V2_AUTH_NONE {
                    return Err(DecodeError::UnsupportedAuthType { auth_type: field4 });
                }
                Centiseconds(u16::from(field5) * 100)
            }
        };
        if max_adver_int.0 == 0 {
            return Err(DecodeError::InvalidInterval);
        }
        let address_bytes = &bytes[HEADER_LEN..HEADER_LEN + usize::from(count) * family.len()];
        Ok(Advert {
            version,
            vrid,
            priority: VrrpPriority(priority),
            max_adver_int,
            addresses: family.read_addresses(address_bytes),
        })
    }

    /// Encodes this advert as the payload of an IP packet from `src` to `dst`, checksum
    /// filled in (the v3 checksum depends on both addresses).
    pub fn encode(&self, src: IpAddr, dst: IpAddr) -> Result<Vec<u8>, EncodeError> {
        let family =
            Family::of_pair(src, dst).ok_or(EncodeError::MixedAddressFamilies { src, dst })?;
        if self.version == Version::V2 && family == Family::V6 {
            return Err(EncodeError::Version2OverIpv6);
        }
        let count =
            u8::try_from(self.addresses.len()).map_err(|_| EncodeError::TooManyAddresses {
                count: self.addresses.len(),
            })?;
        let out_of_range = EncodeError::IntervalOutOfRange {
            version: self.version,
            interval: self.max_adver_int,
        };
        let [field4, field5] = match self.version {
            Version::V3 if (1..=Centiseconds::MAX_V3.0).contains(&self.max_adver_int.0) => {
                self.max_adver_int.0.to_be_bytes()
            }
            Version::V2 if self.max_adver_int.0.is_multiple_of(100) => {
                match u8::try_from(self.max_adver_int.0 / 100) {
                    Ok(seconds) if seconds > 0 => [V2_AUTH_NONE, seconds],
                    _ => return Err(out_of_range),
                }
            }
            _ => return Err(out_of_range),
        };
        let mut out = Vec::with_capacity(message_len(self.version, family, self.addresses.len()));
        out.extend_from_slice(&[
            (self.version.number() << 4) | TYPE_ADVERTISEMENT,
            self.vrid.get(),
            self.priority.0,
            count,
            field4,
            field5,
            0,
            0,
        ]);
        for address in &self.addresses {
            match (family, address) {
                (Family::V4, IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
                (Family::V6, IpAddr::V6(v6)) => out.extend_from_slice(&v6.octets()),
                _ => return Err(EncodeError::AddressFamily { address: *address }),
            }
        }
        if self.version == Version::V2 {
            out.extend_from_slice(&[0; V2_AUTH_DATA_LEN]);
        }
        let sum = checksum(self.version, src, dst, &out);
        out[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }
}

// === checksum ===

/// The checksum `bytes` should carry: RFC 1071 one's complement sum with the checksum field
/// taken as zero.
pub(crate) fn checksum(version: Version, src: IpAddr, dst: IpAddr, bytes: &[u8]) -> u16 {
    let (before, rest) = bytes.split_at(CHECKSUM_AT.min(bytes.len()));
    let after = rest.get(2..).unwrap_or_default();
    // `before` has an even length, so `after` starts on a word boundary.
    let sum =
        pseudo_header_sum(version, src, dst, bytes.len()) + word_sum(before) + word_sum(after);
    !fold(sum)
}

/// The pseudo-header's share of the v3 checksum; v2 has none.
///
/// RFC 5798 section 5.2.8 defines it by reference to RFC 2460 section 8.1 (IPv6: source,
/// destination, 32-bit upper-layer length, next header 112). For IPv4 keepalived, holo and
/// the RFC 5798 errata use the RFC 768 layout (source, destination, zero, protocol 112,
/// 16-bit length); both sum to the same value, which `keepalived_captures_decode` checks
/// against real packets.
fn pseudo_header_sum(version: Version, src: IpAddr, dst: IpAddr, len: usize) -> u64 {
    if version == Version::V2 {
        return 0;
    }
    let address_sum = |address: IpAddr| match address {
        IpAddr::V4(v4) => word_sum(&v4.octets()),
        IpAddr::V6(v6) => word_sum(&v6.octets()),
    };
    // `len` is at most 8 + 255 * 16 + 8 bytes, so the 32-bit length splits into words
    // without loss.
    let len = len as u64;
    address_sum(src) + address_sum(dst) + (len >> 16) + (len & 0xffff) + u64::from(IPPROTO_VRRP)
}

/// The sum of `bytes` as big-endian 16-bit words, an odd last byte padded with zero.
fn word_sum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    let mut sum: u64 = (&mut words)
        .map(|word| u64::from(u16::from_be_bytes([word[0], word[1]])))
        .sum();
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds the carries of a one's complement sum back into 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

// === address families ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of_pair(src: IpAddr, dst: IpAddr) -> Option<Family> {
        match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => Some(Family::V4),
            (IpAddr::V6(_), IpAddr::V6(_)) => Some(Family::V6),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// `bytes` is a whole number of addresses; the length was checked against the count.
    fn read_addresses(self, bytes: &[u8]) -> Vec<IpAddr> {
        match self {
            Family::V4 => bytes
                .chunks_exact(4)
                .filter_map(|chunk| <[u8; 4]>::try_from(chunk).ok())
                .map(|octets| IpAddr::V4(Ipv4Addr::from(octets)))
                .collect(),
            Family::V6 => bytes
                .chunks_exact(16)
                .filter_map(|chunk| <[u8; 16]>::try_from(chunk).ok())
                .map(|octets| IpAddr::V6(Ipv6Addr::from(octets)))
                .collect(),
        }
    }
}

/// The length of a message with `count` addresses.
fn message_len(version: Version, family: Family, count: usize) -> usize {
    let auth = match version {
        Version::V2 => V2_AUTH_DATA_LEN,
        Version::V3 => 0,
    };
    HEADER_LEN + count * family.len() + auth
}

#[cfg(test)]
mod tests;
