//! Destination address vetting, the way Stripe's Smokescreen does it: a name is resolved
//! once, every candidate address is classified, and only a vetted address is ever dialled
//! (never the name again), so DNS rebinding cannot slip a private address in between.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why an address is not reachable through the proxy unless the policy exempts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeniedClass {
    Loopback,
    Unspecified,
    ThisNetwork,
    Private,
    LinkLocal,
    SharedAddressSpace,
    UniqueLocal,
    Nat64,
    Multicast,
    Broadcast,
    Reserved,
    Documentation,
    OwnAddress,
}

impl DeniedClass {
    /// Short reason used in logs, the access log and error pages.
    pub fn as_str(self) -> &'static str {
        match self {
            DeniedClass::Loopback => "loopback address",
            DeniedClass::Unspecified => "unspecified address",
            DeniedClass::ThisNetwork => "0.0.0.0/8 address",
            DeniedClass::Private => "private address",
            DeniedClass::LinkLocal => "link-local address",
            DeniedClass::SharedAddressSpace => "CGNAT shared address (100.64.0.0/10)",
            DeniedClass::UniqueLocal => "unique local IPv6 address (fc00::/7)",
            DeniedClass::Nat64 => "NAT64 address (64:ff9b::/96)",
            DeniedClass::Multicast => "multicast address",
            DeniedClass::Broadcast => "broadcast address",
            DeniedClass::Reserved => "reserved address",
            DeniedClass::Documentation => "documentation address",
            DeniedClass::OwnAddress => "the proxy's own address",
        }
    }
}

/// Classifies an address. `None` means a public unicast address that may be dialled.
///
/// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible forms are judged as the IPv4 address
/// they carry, and NAT64 addresses are refused outright because the gateway would turn them
/// into an arbitrary IPv4 destination.
pub fn classify(ip: IpAddr) -> Option<DeniedClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            classify_v6(v6)
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<DeniedClass> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => DeniedClass::Unspecified,
        (0, _, _) => DeniedClass::ThisNetwork,
        (127, _, _) => DeniedClass::Loopback,
        (10, _, _) => DeniedClass::Private,
        (172, 16..=31, _) => DeniedClass::Private,
        (192, 168, _) => DeniedClass::Private,
        (169, 254, _) => DeniedClass::LinkLocal,
        (100, 64..=127, _) => DeniedClass::SharedAddressSpace,
        (192, 0, 0) => DeniedClass::Reserved, // IETF protocol assignments
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => DeniedClass::Documentation,
        (198, 18..=19, _) => DeniedClass::Reserved, // benchmarking
        (224..=239, _, _) => DeniedClass::Multicast,
        _ if ip.is_broadcast() => DeniedClass::Broadcast,
        (240..=255, _, _) => DeniedClass::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<DeniedClass> {
    let segments = ip.segments();
    Some(match segments {
        _ if ip.is_unspecified() => DeniedClass::Unspecified,
        _ if ip.is_loopback() => DeniedClass::Loopback,
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => DeniedClass::Nat64,
        [0x0064, 0xff9b, 0x0001, ..] => DeniedClass::Nat64, // local-use NAT64, RFC 8215
        [first, ..] if first & 0xfe00 == 0xfc00 => DeniedClass::UniqueLocal,
        [first, ..] if first & 0xffc0 == 0xfe80 => DeniedClass::LinkLocal,
        [first, ..] if first & 0xffc0 == 0xfec0 => DeniedClass::Reserved, // site-local
        [first, ..] if first & 0xff00 == 0xff00 => DeniedClass::Multicast,
        [0x2001, 0x0db8, ..] => DeniedClass::Documentation,
        // Teredo tunnels to an IPv4 address of the relay's choosing.
        [0x2001, 0x0000, ..] => DeniedClass::Reserved,
        // 6to4 and SIIT (::ffff:0:a.b.c.d) carry an IPv4 address: judge that.
        [0x2002, high, low, ..] => return classify_v4(embedded_v4(high, low)),
        [0, 0, 0, 0, 0xffff, 0, high, low] => return classify_v4(embedded_v4(high, low)),
        // IPv4-compatible ::a.b.c.d (deprecated) and the discard prefix 100::/64.
        [0, 0, 0, 0, 0, 0, _, _] => DeniedClass::Reserved,
        [0x0100, 0, 0, 0, ..] => DeniedClass::Reserved,
        _ => return None,
    })
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// The endpoints a proxied request must never reach, whatever `allow_destinations` says:
/// this node's own services (redirect, test, admin and heartbeat ports; later the cluster and
/// scan ports) on any address that reaches this machine, and other nodes' internal endpoints
/// (cluster members and VIPs, added by later issues). One set, so that protecting a new
/// internal port means adding it here and nowhere else.
#[derive(Clone, Debug, Default)]
pub struct InternalEndpoints {
    own_ports: Vec<u16>,
    members: Vec<SocketAddr>,
}

impl InternalEndpoints {
    pub fn new(mut own_ports: Vec<u16>) -> Self {
        own_ports.sort_unstable();
        own_ports.dedup();
        InternalEndpoints {
            own_ports,
            members: Vec::new(),
        }
    }

    /// Adds other nodes' internal endpoints.
    pub fn with_members(mut self, members: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.members.extend(
            members
                .into_iter()
                .map(|addr| SocketAddr::new(canonical(addr.ip()), addr.port())),
        );
        self
    }

    /// Whether a connection to `addr` would reach one of them.
    pub fn contains(&self, own: &OwnAddresses, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        (self.own_ports.contains(&addr.port()) && own.reaches_us(ip))
            || self.members.contains(&SocketAddr::new(ip, addr.port()))
    }
}

/// The addresses of this machine, judged as [`DeniedClass::OwnAddress`].
#[derive(Clone, Debug, Default)]
pub struct OwnAddresses {
    addresses: Vec<IpAddr>,
}

impl OwnAddresses {
    pub fn new(addresses: Vec<IpAddr>) -> Self {
        OwnAddresses { addresses }
    }

    /// Every address configured on this machine's interfaces, as the kernel reports them.
    pub fn from_interfaces() -> Self {
        let mut addresses = Vec::new();
        if let Ok(interfaces) = nix::ifaddrs::getifaddrs() {
            for interface in interfaces {
                let Some(address) = interface.address else {
                    continue;
                };
                if let Some(v4) = address.as_sockaddr_in() {
                    addresses.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = address.as_sockaddr_in6() {
                    addresses.push(IpAddr::V6(v6.ip()));
                }
            }
        }
        addresses.sort();
        addresses.dedup();
        OwnAddresses { addresses }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.addresses.iter().any(|own| canonical(*own) == ip)
    }

    /// Whether a connection to `ip` would reach this machine: its addresses, and any
    /// loopback or unspecified address (a proxy listening on 0.0.0.0 answers on 127.0.0.2).
    pub fn reaches_us(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_loopback() || ip.is_unspecified() || self.contains(ip)
    }
}

/// IPv4-mapped IPv6 addresses become IPv4; everything else is unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(address: &str, expected: Option<DeniedClass>) {
        let ip: IpAddr = address.parse().unwrap_or_else(|_| panic!("{address}"));
        assert_eq!(classify(ip), expected, "{address}");
    }

    #[test]
    fn classifies() {
        use DeniedClass::*;
        check("127.0.0.1", Some(Loopback));
        check("127.255.1.2", Some(Loopback));
        check("0.0.0.0", Some(Unspecified));
        check("0.1.2.3", Some(ThisNetwork));
        check("10.1.2.3", Some(Private));
        check("172.16.0.1", Some(Private));
        check("172.31.255.255", Some(Private));
        check("172.32.0.1", None);
        check("192.168.1.1", Some(Private));
        check("169.254.169.254", Some(LinkLocal));
        check("100.64.0.1", Some(SharedAddressSpace));
        check("100.127.255.255", Some(SharedAddressSpace));
        check("100.128.0.1", None);
        check("224.0.0.18", Some(Multicast));
        check("255.255.255.255", Some(Broadcast));
        check("240.0.0.1", Some(Reserved));
        check("93.184.216.34", None);
        check("8.8.8.8", None);
        check("::1", Some(Loopback));
        check("::", Some(Unspecified));
        check("fc00::1", Some(UniqueLocal));
        check("fd12:3456::1", Some(UniqueLocal));
        check("fe80::1", Some(LinkLocal));
        check("ff02::12", Some(Multicast));
        check("64:ff9b::a9fe:a9fe", Some(Nat64));
        check("64:ff9b::808:808", Some(Nat64));
        check("::ffff:127.0.0.1", Some(Loopback));
        check("::ffff:169.254.169.254", Some(LinkLocal));
        check("::ffff:8.8.8.8", None);
        check("::127.0.0.1", Some(Reserved));
        check("2606:4700::1111", None);
        check("2001:db8::1", Some(Documentation));
        check("2001:0:4136:e378::1", Some(Reserved)); // Teredo
        check("2002:7f00:1::1", Some(Loopback)); // 6to4 of 127.0.0.1
        check("2002:a9fe:a9fe::1", Some(LinkLocal)); // 6to4 of 169.254.169.254
        check("2002:0808:0808::1", None); // 6to4 of 8.8.8.8
        check("::ffff:0:a00:1", Some(Private)); // SIIT of 10.0.0.1
    }

    #[test]
    fn own_addresses_match_mapped_forms() {
        let own = OwnAddresses::new(vec![
            "192.0.2.7"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ]);
        assert!(
            own.contains(
                "::ffff:192.0.2.7"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        assert!(!own.contains(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8))));
    }

    proptest! {
        /// An IPv4-mapped address is always judged exactly as the IPv4 address it carries.
        #[test]
        fn mapped_v4_judged_as_v4(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            prop_assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), classify(IpAddr::V4(v4)));
        }

        /// Every RFC 1918 address is refused.
        #[test]
        fn rfc1918_refused(bits in any::<u32>()) {
            let ten = Ipv4Addr::from((10u32 << 24) | (bits & 0x00ff_ffff));
            let one72 = Ipv4Addr::from((172u32 << 24) | (16 << 16) | (bits & 0x000f_ffff));
            let one92 = Ipv4Addr::from((192u32 << 24) | (168 << 16) | (bits & 0xffff));
            for ip in [ten, one72, one92] {
                prop_assert_eq!(classify(IpAddr::V4(ip)), Some(DeniedClass::Private));
            }
        }
    }

    #[test]
    fn internal_endpoints_are_own_ports_on_any_own_address_and_members() {
        let own = OwnAddresses::new(vec!["10.0.0.5".parse().expect("address literal")]);
        let internal = InternalEndpoints::new(vec![4711, 9192])
            .with_members(["10.0.0.6:12346".parse().expect("socket address literal")]);
        let check = |addr: &str| internal.contains(&own, addr.parse().expect("socket address"));
        assert!(check("127.0.0.1:4711"));
        assert!(check("127.9.9.9:9192"));
        assert!(check("[::1]:4711"));
        assert!(check("[::ffff:10.0.0.5]:9192"));
        assert!(check("10.0.0.5:4711"));
        assert!(check("0.0.0.0:4711"));
        assert!(check("10.0.0.6:12346"));
        assert!(
            !check("10.0.0.6:4711"),
            "another machine's admin port is not ours"
        );
        assert!(
            !check("127.0.0.1:8080"),
            "other local ports are up to the policy"
        );
        assert!(!check("10.0.0.5:12346"));
    }
}
