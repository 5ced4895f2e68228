//! Protocol values that must not be swapped for one another.

use std::fmt;
use std::time::Duration;

/// Virtual Router Identifier, 1..=255 (RFC 5798 section 5.2.3). keepalived calls it
/// `virtual_router_id`, the seeds call it LBID. Several HA groups share one network by
/// using different VRIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vrid(u8);

impl Vrid {
    /// `None` for 0, which RFC 5798 section 5.2.3 leaves out of the range.
    pub const fn new(vrid: u8) -> Option<Vrid> {
        if vrid == 0 { None } else { Some(Vrid(vrid)) }
    }

    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Vrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A VRRP priority (RFC 5798 section 5.2.4): **higher wins**. Not to be confused with the
/// cluster's node priority, where lower wins.
///
/// 255 is reserved for the router that owns the virtual addresses, 1..=254 for backups
/// (default 100), and 0 appears only on the wire, in the advert of a Master that stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VrrpPriority(pub u8);

impl VrrpPriority {
    /// Sent by a Master that leaves: backups take over after Skew_Time.
    pub const STOP: VrrpPriority = VrrpPriority(0);
    /// RFC 5798 section 5.2.4 default for backup routers.
    pub const DEFAULT: VrrpPriority = VrrpPriority(100);
    /// The address owner: becomes Master at startup without waiting.
    pub const OWNER: VrrpPriority = VrrpPriority(255);

    pub const fn get(self) -> u8 {
        self.0
    }
}

impl Default for VrrpPriority {
    fn default() -> Self {
        VrrpPriority::DEFAULT
    }
}

impl fmt::Display for VrrpPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A time in hundredths of a second, the unit of VRRPv3's Max Adver Int (RFC 5798 section
/// 5.2.7, 12 bits on the wire: 1..=4095). VRRPv2 counts whole seconds; the codec converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Centiseconds(pub u16);

impl Centiseconds {
    /// The largest value the 12-bit v3 field carries: 40.95 s.
    pub const MAX_V3: Centiseconds = Centiseconds(0x0fff);
    /// One second, the RFC and keepalived default.
    pub const ONE_SECOND: Centiseconds = Centiseconds(100);

    pub const fn get(self) -> u16 {
        self.0
    }

    pub const fn as_micros(self) -> u64 {
        self.0 as u64 * 10_000
    }

    pub const fn to_duration(self) -> Duration {
        Duration::from_micros(self.as_micros())
    }
}

impl Default for Centiseconds {
    fn default() -> Self {
        Centiseconds::ONE_SECOND
    }
}

impl fmt::Display for Centiseconds {
    /// keepalived's wording: `100ms`, `1000ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", u32::from(self.0) * 10)
    }
}

/// The protocol version spoken by a router and carried in byte 0 of every advert.
///
/// keepalived does not let the two interoperate (`wrong version. Received 3 and expect 2`),
/// and neither do we: a router discards adverts of the other version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// RFC 3768: IPv4 only, interval in whole seconds, checksum over the VRRP message only.
    V2,
    /// RFC 5798: IPv4 and IPv6, interval in centiseconds, checksum with the IP pseudo-header.
    #[default]
    V3,
}

impl Version {
    /// The value of the version nibble.
    pub const fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.number().fmt(f)
    }
}
