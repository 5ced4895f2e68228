//! Address and port sets: CIDR lists and port ranges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A set of networks. Addresses are judged in canonical form, so an IPv4-mapped IPv6 address
/// (`::ffff:10.1.2.3`, what a dual-stack socket reports for an IPv4 peer) is judged as the
/// IPv4 address it carries.
#[derive(Clone, Debug, Default)]
pub(crate) struct CidrSet {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl CidrSet {
    pub(crate) fn insert(&mut self, net: IpNet) {
        match canonical_net(net) {
            IpNet::V4(net) => self.v4.push(net),
            IpNet::V6(net) => self.v6.push(net),
        }
    }

    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        match addr.to_canonical() {
            IpAddr::V4(addr) => self.v4.iter().any(|net| net.contains(&addr)),
            IpAddr::V6(addr) => self.v6.iter().any(|net| net.contains(&addr)),
        }
    }
}

/// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a single-host network).
///
/// Host bits are allowed and ignored (`10.1.2.3/8` is `10.0.0.0/8`): that is how operators
/// often write a network "around" a known host, and the meaning is unambiguous.
pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if text.contains('/') {
        return text
            .parse::<IpNet>()
            .map(|net| net.trunc())
            .map_err(|_| cidr_reason(text));
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "not an address or network such as 10.0.0.0/8 or 2001:db8::/32".to_string())
}

fn cidr_reason(text: &str) -> String {
    let Some((addr, prefix)) = text.split_once('/') else {
        return "not a network".to_string();
    };
    let max_prefix = match addr.parse::<IpAddr>() {
        Err(_) => return format!("\"{addr}\" is not an IP address"),
        Ok(IpAddr::V4(_)) => 32,
        Ok(IpAddr::V6(_)) => 128,
    };
    match prefix.parse::<u8>() {
        Ok(len) if len <= max_prefix => "not a network".to_string(),
        _ => format!("prefix length \"{prefix}\" must be 0-{max_prefix}"),
    }
}

/// A network written in IPv4-mapped IPv6 form (`::ffff:10.0.0.0/104`) becomes the IPv4
/// network, because addresses are canonicalised before they are judged.
fn canonical_net(net: IpNet) -> IpNet {
    const MAPPED_PREFIX: u8 = 96;
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= MAPPED_PREFIX
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - MAPPED_PREFIX)
    {
        return IpNet::V4(v4net);
    }
    net
}

/// A set of ports as sorted, merged inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub(crate) fn from_ranges(mut ranges: Vec<(u16, u16)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        PortSet { ranges: merged }
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }
}

/// A port as written in the document: a TOML integer or a string (`"8000-8100"` or `"443"`).
#[derive(Clone, Debug)]
pub(crate) enum PortSpec {
    Number(i64),
    Text(String),
}

impl<'de> serde::Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number or a \"lo-hi\" range string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortSpec, E> {
                Ok(PortSpec::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Reasons a port is refused, shared by integers and strings.
const PORT_RANGE: &str = "ports are 1-65535";
const PORT_REVERSED: &str = "range start is greater than its end";
const PORT_SYNTAX: &str = "expected a number or a \"lo-hi\" range such as \"8000-8100\"";

/// Returns the inclusive range, or (what to show, why it is wrong).
pub(crate) fn parse_port_spec(spec: &PortSpec) -> Result<(u16, u16), (String, &'static str)> {
    match spec {
        PortSpec::Number(n) => port_number(*n)
            .map(|p| (p, p))
            .ok_or_else(|| (n.to_string(), PORT_RANGE)),
        PortSpec::Text(text) => {
            let shown = format!("\"{text}\"");
            let parse_one = |s: &str| -> Result<u16, &'static str> {
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(PORT_SYNTAX);
                }
                s.parse::<i64>()
                    .ok()
                    .and_then(port_number)
                    .ok_or(PORT_RANGE)
            };
            let range = match text.split_once('-') {
                Some((lo, hi)) => parse_one(lo).and_then(|lo| Ok((lo, parse_one(hi)?))),
                None => parse_one(text).map(|p| (p, p)),
            };
            match range {
                Ok((lo, hi)) if lo > hi => Err((shown, PORT_REVERSED)),
                Ok(range) => Ok(range),
                Err(reason) => Err((shown, reason)),
            }
        }
    }
}

fn port_number(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// The default client allowlist: loopback only, so a fresh node is never an open proxy.
pub(crate) fn default_clients() -> CidrSet {
    let mut set = CidrSet::default();
    set.insert(IpNet::V4(Ipv4Net::new_assert(
        Ipv4Addr::new(127, 0, 0, 0),
        8,
    )));
    set.insert(IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)));
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_cidr(text: &str, expected: Result<&str, &str>) {
        let actual = parse_cidr(text).map(|net| net.to_string());
        assert_eq!(actual.as_deref().map_err(String::as_str), expected);
    }

    #[test]
    fn cidrs() {
        check_cidr("10.0.0.0/8", Ok("10.0.0.0/8"));
        check_cidr("10.1.2.3/8", Ok("10.0.0.0/8"));
        check_cidr("10.1.2.3", Ok("10.1.2.3/32"));
        check_cidr("::1", Ok("::1/128"));
        check_cidr("2001:db8::/32", Ok("2001:db8::/32"));
        check_cidr("10.0.0.0/33", Err("prefix length \"33\" must be 0-32"));
        check_cidr("::/129", Err("prefix length \"129\" must be 0-128"));
        check_cidr("10.0.0/8", Err("\"10.0.0\" is not an IP address"));
        check_cidr("10.0.0.0/x", Err("prefix length \"x\" must be 0-32"));
        check_cidr(
            "example.com",
            Err("not an address or network such as 10.0.0.0/8 or 2001:db8::/32"),
        );
    }

    #[track_caller]
    fn check_port(spec: PortSpec, expected: Result<(u16, u16), (&str, &str)>) {
        let actual = parse_port_spec(&spec);
        assert_eq!(
            actual.as_ref().copied().map_err(|(s, r)| (s.as_str(), *r)),
            expected
        );
    }

    #[test]
    fn ports() {
        use PortSpec::{Number, Text};
        check_port(Number(443), Ok((443, 443)));
        check_port(Number(65535), Ok((65535, 65535)));
        check_port(Number(0), Err(("0", PORT_RANGE)));
        check_port(Number(65536), Err(("65536", PORT_RANGE)));
        check_port(Number(-1), Err(("-1", PORT_RANGE)));
        check_port(Text("8000-8100".into()), Ok((8000, 8100)));
        check_port(Text("8000 - 8100".into()), Ok((8000, 8100)));
        check_port(Text("443".into()), Ok((443, 443)));
        check_port(
            Text("8100-8000".into()),
            Err(("\"8100-8000\"", PORT_REVERSED)),
        );
        check_port(Text("0-10".into()), Err(("\"0-10\"", PORT_RANGE)));
        check_port(Text("1-70000".into()), Err(("\"1-70000\"", PORT_RANGE)));
        check_port(Text("http".into()), Err(("\"http\"", PORT_SYNTAX)));
        check_port(Text("1-2-3".into()), Err(("\"1-2-3\"", PORT_SYNTAX)));
        check_port(Text("-5".into()), Err(("\"-5\"", PORT_SYNTAX)));
    }

    #[test]
    fn port_set_merges() {
        let set = PortSet::from_ranges(vec![(10, 20), (1, 5), (6, 9), (30, 30), (15, 25)]);
        assert_eq!(set.ranges, vec![(1, 25), (30, 30)]);
        assert!(set.contains(1) && set.contains(25) && set.contains(30));
        assert!(!set.contains(26) && !set.contains(31));
    }

    #[test]
    fn mapped_networks_become_ipv4() {
        let mut set = CidrSet::default();
        set.insert(parse_cidr("::ffff:10.0.0.0/104").unwrap());
        assert!(set.contains("10.1.2.3".parse().unwrap()));
        assert!(set.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!set.contains("11.1.2.3".parse().unwrap()));
    }
}
