//! Host patterns and domain sets.
//!
//! A pattern is one of:
//! - `exact.org`: that name only;
//! - `.example.com`: the domain itself and every name under it (Squid's `dstdomain`);
//! - `*.cdn.*`: a glob, `*` matching any run of characters, dots included;
//! - `192.0.2.7`, `2001:db8::1` or `[2001:db8::1]`: that IP-literal host only.
//!
//! Names and suffixes live in one hash map, so a lookup costs one probe per label of the host
//! however large the set; globs cannot be hashed and sit in a short vec scanned in order.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// A host as the request names it, classified once per request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Host<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

impl<'a> Host<'a> {
    /// `host` is lowercase, without a trailing dot, an IPv6 literal without brackets.
    pub(crate) fn classify(host: &'a str) -> Self {
        // Only try to parse what can be an address: a name's last label is never all digits,
        // so this skips the parse for nearly every name.
        let maybe_ip = host.contains(':') || host.as_bytes().last().is_some_and(u8::is_ascii_digit);
        if maybe_ip {
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if let Ok(ip) = bare.parse::<IpAddr>() {
                return Host::Ip(ip.to_canonical());
            }
        }
        Host::Name(host)
    }
}

/// One validated pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Exact(Box<str>),
    Suffix(Box<str>),
    Glob(Box<str>),
    Ip(IpAddr),
}

/// Longest name DNS allows (RFC 1035 2.3.4), without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// Longest label DNS allows (RFC 1035 2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Validates and normalises (lowercases) one pattern; `Err` is the reason, for an error message.
pub(crate) fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    if text.is_empty() {
        return Err("empty pattern".to_string());
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|ip| HostPattern::Ip(IpAddr::V6(ip).to_canonical()))
            .map_err(|_| "brackets must hold an IPv6 address".to_string());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(HostPattern::Ip(ip.to_canonical()));
    }
    let lower = text.to_ascii_lowercase();
    if let Some(domain) = lower.strip_prefix('.') {
        if domain.contains('*') {
            return Err("a \".suffix\" pattern cannot also hold \"*\"".to_string());
        }
        check_name(domain, false)?;
        return Ok(HostPattern::Suffix(domain.into()));
    }
    let is_glob = lower.contains('*');
    check_name(&lower, is_glob)?;
    Ok(if is_glob {
        HostPattern::Glob(lower.into())
    } else {
        HostPattern::Exact(lower.into())
    })
}

/// Checks a lowercase name: labels of `a-z 0-9 - _` (and `*` in a glob), none empty.
///
/// `_` is allowed because real names carry it (`_dmarc`, service records, some CDNs).
pub(crate) fn check_name(name: &str, allow_star: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("no name after \".\"".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (\"..\", or a leading or trailing dot)".to_string());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label \"{label}\" is longer than {MAX_LABEL_LEN} characters"
            ));
        }
        let allowed = |c: char| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || c == '_'
                || (allow_star && c == '*')
        };
        let bad = label.chars().find(|&c| !allowed(c));
        match bad {
            None => {}
            Some(' ') => return Err("contains a space".to_string()),
            Some(c) if !c.is_ascii() => {
                return Err(format!(
                    "non-ASCII character '{c}': write the name in its xn-- (punycode) form"
                ));
            }
            Some(c) => return Err(format!("invalid character '{c}'")),
        }
    }
    Ok(())
}

/// Bits of [`DomainSet::names`] values.
const EXACT: u8 = 1;
const SUFFIX: u8 = 2;

/// A set of host patterns, matched in well under a microsecond however many it holds.
#[derive(Debug, Default)]
pub(crate) struct DomainSet {
    /// Name -> `EXACT` and/or `SUFFIX`.
    names: HashMap<Box<str>, u8>,
    /// Whether any value has `SUFFIX`; without one the label walk is skipped.
    has_suffix: bool,
    globs: Vec<Box<str>>,
    ips: HashSet<IpAddr>,
}

impl DomainSet {
    pub(crate) fn with_capacity(n: usize) -> Self {
        DomainSet {
            names: HashMap::with_capacity(n),
            ..DomainSet::default()
        }
    }

    pub(crate) fn insert(&mut self, pattern: HostPattern) {
        match pattern {
            HostPattern::Exact(name) => *self.names.entry(name).or_default() |= EXACT,
            HostPattern::Suffix(name) => {
                self.has_suffix = true;
                *self.names.entry(name).or_default() |= SUFFIX;
            }
            HostPattern::Glob(glob) => {
                if !self.globs.contains(&glob) {
                    self.globs.push(glob);
                }
            }
            HostPattern::Ip(ip) => {
                self.ips.insert(ip);
            }
        }
    }

    /// Distinct patterns held.
    pub(crate) fn len(&self) -> usize {
        self.names
            .values()
            .map(|bits| bits.count_ones() as usize)
            .sum::<usize>()
            + self.globs.len()
            + self.ips.len()
    }

    pub(crate) fn matches(&self, host: Host<'_>) -> bool {
        match host {
            // IP literals match only exactly: "10.0.0.1" is not "under" ".0.0.1".
            Host::Ip(ip) => self.ips.contains(&ip),
            Host::Name(name) => self.matches_name(name),
        }
    }

    fn matches_name(&self, name: &str) -> bool {
        if self.names.contains_key(name) {
            return true;
        }
        if self.has_suffix {
            // Walk "a.b.c.com" -> "b.c.com" -> "c.com" -> "com".
            let mut rest = name;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if self.names.get(rest).is_some_and(|bits| bits & SUFFIX != 0) {
                    return true;
                }
            }
        }
        self.globs
            .iter()
            .any(|glob| glob_match(glob.as_bytes(), name.as_bytes()))
    }
}

/// Shell-style match where `*` is any run of bytes (possibly empty, dots included) and every
/// other byte matches itself. Linear backtracking: worst case patterns x text, both short.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Position of the last `*` seen and the text position it is currently stretched to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_pattern(text: &str, expected: Result<HostPattern, &str>) {
        assert_eq!(parse_host_pattern(text), expected.map_err(str::to_string));
    }

    #[test]
    fn patterns() {
        use HostPattern::*;
        check_pattern("Example.COM", Ok(Exact("example.com".into())));
        check_pattern(".example.com", Ok(Suffix("example.com".into())));
        check_pattern("*.cdn.*", Ok(Glob("*.cdn.*".into())));
        check_pattern("_dmarc.x-y.org", Ok(Exact("_dmarc.x-y.org".into())));
        check_pattern("10.0.0.1", Ok(Ip("10.0.0.1".parse().unwrap())));
        check_pattern("::1", Ok(Ip("::1".parse().unwrap())));
        check_pattern("[2001:DB8::1]", Ok(Ip("2001:db8::1".parse().unwrap())));
        check_pattern("::ffff:10.0.0.1", Ok(Ip("10.0.0.1".parse().unwrap())));
        check_pattern("", Err("empty pattern"));
        check_pattern(".", Err("no name after \".\""));
        check_pattern(
            "a..b",
            Err("empty label (\"..\", or a leading or trailing dot)"),
        );
        check_pattern(
            "a.b.",
            Err("empty label (\"..\", or a leading or trailing dot)"),
        );
        check_pattern(
            "..a",
            Err("empty label (\"..\", or a leading or trailing dot)"),
        );
        check_pattern("a b.com", Err("contains a space"));
        check_pattern("a/b.com", Err("invalid character '/'"));
        check_pattern(
            ".*.cdn.com",
            Err("a \".suffix\" pattern cannot also hold \"*\""),
        );
        check_pattern(
            "bücher.de",
            Err("non-ASCII character 'ü': write the name in its xn-- (punycode) form"),
        );
        check_pattern("[10.0.0.1]", Err("brackets must hold an IPv6 address"));
        let long_label = "a".repeat(64);
        check_pattern(
            &format!("{long_label}.com"),
            Err(&format!(
                "label \"{long_label}\" is longer than 63 characters"
            )),
        );
        check_pattern(&"a.".repeat(127), Err("longer than 253 characters"));
    }

    #[track_caller]
    fn check_set(patterns: &[&str], host: &str, expected: bool) {
        let mut set = DomainSet::default();
        for p in patterns {
            set.insert(parse_host_pattern(p).unwrap());
        }
        assert_eq!(
            set.matches(Host::classify(host)),
            expected,
            "{patterns:?} vs {host}"
        );
    }

    #[test]
    fn set_matching() {
        check_set(&["exact.org"], "exact.org", true);
        check_set(&["exact.org"], "www.exact.org", false);
        check_set(&[".example.com"], "example.com", true);
        check_set(&[".example.com"], "a.b.example.com", true);
        check_set(&[".example.com"], "badexample.com", false);
        check_set(&[".example.com"], "example.com.evil.net", false);
        check_set(&[".com"], "anything.com", true);
        check_set(&["*.cdn.*"], "img.cdn.net", true);
        check_set(&["*.cdn.*"], "a.b.cdn.co.uk", true);
        check_set(&["*.cdn.*"], "cdn.net", false);
        check_set(&["ads*.net"], "ads.tracker.net", true);
        check_set(&["example.com", ".example.com"], "example.com", true);
        check_set(&["10.0.0.1"], "10.0.0.1", true);
        check_set(&["10.0.0.1"], "10.0.0.2", false);
        check_set(&[".0.0.1"], "10.0.0.1", false);
        check_set(&["*"], "10.0.0.1", false);
        check_set(&["*"], "anything.example", true);
        check_set(&["2001:db8::1"], "2001:db8:0::1", true);
        check_set(&["2001:db8::1"], "[2001:db8::1]", true);
        check_set(&["10.0.0.1"], "::ffff:10.0.0.1", true);
        // A name whose last label is numeric is not an address: it is matched as a name.
        check_set(&[".example.123"], "www.example.123", true);
    }

    #[track_caller]
    fn check_glob(pattern: &str, text: &str, expected: bool) {
        assert_eq!(
            glob_match(pattern.as_bytes(), text.as_bytes()),
            expected,
            "{pattern} vs {text}"
        );
    }

    #[test]
    fn globs() {
        check_glob("*", "", true);
        check_glob("*", "abc", true);
        check_glob("a*c", "abbbc", true);
        check_glob("a*c", "abbb", false);
        check_glob("*a*b*", "xxaxxbxx", true);
        check_glob("*a*b*", "xxbxxaxx", false);
        check_glob("proxy-eu-*", "proxy-eu-1", true);
        check_glob("proxy-eu-*", "proxy-us-1", false);
        check_glob("abc", "abc", true);
        check_glob("abc", "abcd", false);
        check_glob("**.x", "a.x", true);
    }
}
