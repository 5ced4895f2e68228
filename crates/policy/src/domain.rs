//! Host patterns and domain sets.
//!
//! A pattern is one of:
//! - `exact.org`: that name only;
//! - `.example.com`: the domain itself and every name under it (Squid's `dstdomain`);
//! - `*.cdn.*`: a glob, `*` matching any run of characters, dots included;
//! - `192.0.2.7`, `2001:db8::1` or `[2001:db8::1]`: that IP-literal host only.
//!
//! Names and suffixes live in one hash table, so a lookup costs one probe per label of the host
//! however large the set; globs are indexed by a literal piece in a [`GlobSet`], and IP
//! literals sit in a hash set of their own.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::net::IpAddr;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::glob::GlobSet;

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

/// One validated pattern, borrowing the lowercased text from the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostPattern<'a> {
    Exact(&'a str),
    Suffix(&'a str),
    Glob(&'a str),
    Ip(IpAddr),
}

/// Longest name DNS allows (RFC 1035 2.3.4), without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// Longest label DNS allows (RFC 1035 2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Validates and normalises (lowercases) one pattern; `Err` is the reason, for an error message.
///
/// The lowercased text goes into `buf`, reused across calls, because a list file can hold a
/// million patterns and a temporary allocation for each would add up.
pub(crate) fn parse_host_pattern<'b>(
    text: &str,
    buf: &'b mut String,
) -> Result<HostPattern<'b>, String> {
    if text.is_empty() {
        return Err("empty pattern".to_string());
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|ip| HostPattern::Ip(IpAddr::V6(ip).to_canonical()))
            .map_err(|_| "brackets must hold an IPv6 address".to_string());
    }
    // Same cheap test as `Host::classify`: only these can be addresses.
    let maybe_ip = text.contains(':') || text.as_bytes().last().is_some_and(u8::is_ascii_digit);
    if maybe_ip && let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(HostPattern::Ip(ip.to_canonical()));
    }
    buf.clear();
    buf.push_str(text);
    buf.make_ascii_lowercase();
    if let Some(domain) = buf.strip_prefix('.') {
        if domain.contains('*') {
            return Err("a \".suffix\" pattern cannot also hold \"*\"".to_string());
        }
        check_name(domain, false)?;
        return Ok(HostPattern::Suffix(domain));
    }
    let is_glob = buf.contains('*');
    check_name(buf, is_glob)?;
    Ok(if is_glob {
        HostPattern::Glob(buf)
    } else {
        HostPattern::Exact(buf)
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
    let allowed = |b: u8| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b == b'-'
            || b == b'_'
            || (allow_star && b == b'*')
    };
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (\"..\", or a leading or trailing dot)".to_string());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label \"{label}\" is longer than {MAX_LABEL_LEN} characters"
            ));
        }
        if label.bytes().all(allowed) {
            continue;
        }
        // Slow path, errors only: find the offending character for the message.
        let bad = label.chars().find(|&c| !c.is_ascii() || !allowed(c as u8));
        return Err(match bad {
            Some(' ') => "contains a space".to_string(),
            Some(c) if !c.is_ascii() => {
                format!("non-ASCII character '{c}': write the name in its xn-- (punycode) form")
            }
            Some(c) => format!("invalid character '{c}'"),
            None => "invalid character".to_string(),
        });
    }
    Ok(())
}

/// Bits of [`NameEntry::kinds`].
const EXACT: u8 = 1;
const SUFFIX: u8 = 2;

/// A set of host patterns, matched in well under a microsecond however many it holds.
#[derive(Default)]
pub(crate) struct DomainSet {
    names: NameTable,
    /// Whether any name is a suffix; without one the label walk is skipped.
    has_suffix: bool,
    globs: GlobSet,
    ips: HashSet<IpAddr>,
    n_patterns: usize,
}

impl std::fmt::Debug for DomainSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainSet")
            .field("patterns", &self.n_patterns)
            .finish_non_exhaustive()
    }
}

impl DomainSet {
    /// `n` is the expected number of names, to size the table once.
    pub(crate) fn with_capacity(n: usize, name_bytes: usize) -> Self {
        DomainSet {
            names: NameTable::with_capacity(n, name_bytes),
            ..DomainSet::default()
        }
    }

    pub(crate) fn insert(&mut self, pattern: HostPattern<'_>) {
        let added = match pattern {
            HostPattern::Exact(name) => self.names.insert(name, EXACT),
            HostPattern::Suffix(name) => {
                self.has_suffix = true;
                self.names.insert(name, SUFFIX)
            }
            HostPattern::Glob(glob) => self.globs.insert(glob),
            HostPattern::Ip(ip) => self.ips.insert(ip),
        };
        self.n_patterns += usize::from(added);
    }

    /// Distinct patterns held.
    pub(crate) fn len(&self) -> usize {
        self.n_patterns
    }

    pub(crate) fn matches(&self, host: Host<'_>) -> bool {
        match host {
            // IP literals match only exactly: "10.0.0.1" is not "under" ".0.0.1".
            Host::Ip(ip) => self.ips.contains(&ip),
            Host::Name(name) => self.matches_name(name),
        }
    }

    fn matches_name(&self, name: &str) -> bool {
        if self.names.get(name).is_some() {
            return true;
        }
        if self.has_suffix {
            // Walk "a.b.c.com" -> "b.c.com" -> "c.com" -> "com".
            let mut rest = name;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if self
                    .names
                    .get(rest)
                    .is_some_and(|kinds| kinds & SUFFIX != 0)
                {
                    return true;
                }
            }
        }
        self.globs.matches(name)
    }
}

/// A hash set of names with a bit set per name, every name stored in one string.
#[derive(Default)]
struct NameTable {
    arena: String,
    table: HashTable<NameEntry>,
    hasher: DefaultHashBuilder,
}

#[derive(Clone, Copy)]
struct NameEntry {
    start: usize,
    /// Names are at most `MAX_NAME_LEN` (253) bytes, checked before insertion.
    len: u8,
    kinds: u8,
}

impl NameTable {
    fn with_capacity(n: usize, name_bytes: usize) -> Self {
        NameTable {
            arena: String::with_capacity(name_bytes),
            table: HashTable::with_capacity(n),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn name(&self, entry: &NameEntry) -> &str {
        &self.arena[entry.start..entry.start + usize::from(entry.len)]
    }

    /// Adds `kinds` to `name`'s bits; whether that added anything.
    fn insert(&mut self, name: &str, kinds: u8) -> bool {
        let Ok(len) = u8::try_from(name.len()) else {
            // Unreachable after `check_name`; refusing beats truncating.
            return false;
        };
        let hash = self.hasher.hash_one(name);
        let NameTable {
            arena,
            table,
            hasher,
        } = self;
        let entry = table.entry(
            hash,
            |e| &arena[e.start..e.start + usize::from(e.len)] == name,
            |e| hasher.hash_one(&arena[e.start..e.start + usize::from(e.len)]),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                let existing = occupied.get_mut();
                let added = existing.kinds & kinds != kinds;
                existing.kinds |= kinds;
                added
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                let start = arena.len();
                arena.push_str(name);
                vacant.insert(NameEntry { start, len, kinds });
                true
            }
        }
    }

    fn get(&self, name: &str) -> Option<u8> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |e| self.name(e) == name)
            .map(|e| e.kinds)
    }
}

/// Shell-style match where `*` is any run of bytes (possibly empty, dots included) and every
/// other byte matches itself. Linear backtracking: worst case patterns x text, both short.
/// For one pattern (`node_hostname`); a [`GlobSet`] answers for many, and must agree.
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
    fn check_pattern(text: &str, expected: Result<HostPattern<'_>, &str>) {
        let mut buf = String::new();
        assert_eq!(
            parse_host_pattern(text, &mut buf),
            expected.map_err(str::to_string)
        );
    }

    #[test]
    fn patterns() {
        use HostPattern::*;
        check_pattern("Example.COM", Ok(Exact("example.com")));
        check_pattern(".example.com", Ok(Suffix("example.com")));
        check_pattern("*.cdn.*", Ok(Glob("*.cdn.*")));
        check_pattern("_dmarc.x-y.org", Ok(Exact("_dmarc.x-y.org")));
        check_pattern("www.example.123", Ok(Exact("www.example.123")));
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
        let mut buf = String::new();
        for p in patterns {
            set.insert(parse_host_pattern(p, &mut buf).unwrap());
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

    #[test]
    fn set_counts_distinct_patterns() {
        let mut set = DomainSet::default();
        let mut buf = String::new();
        for p in [
            "a.example",
            "A.example",
            ".a.example",
            "*.x",
            "*.x",
            "10.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            set.insert(parse_host_pattern(p, &mut buf).unwrap());
        }
        // "a.example" exact and suffix count as two patterns; duplicates count once.
        assert_eq!(set.len(), 4);
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
