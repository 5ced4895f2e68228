//! Request targets a forward proxy accepts: absolute-form `http://` URIs and CONNECT's
//! authority-form (RFC 9112 section 3.2), parsed strictly.
//!
//! Strictness here is an SSRF defence: every host the policy and the address vetting see must
//! mean exactly one thing. So numeric shorthands (`127.1`, `0x7f.0.0.1`, `2130706433`),
//! percent-encoding, user info, zone identifiers and bracketed names are refused rather than
//! interpreted the way some other parser might.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A destination host: a lower-case DNS name (no trailing dot) or an address literal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// The host as the policy sees it: a name, or an address without brackets. An address
    /// is written into `buf` (no allocation: this runs for every request).
    pub fn policy_form<'a>(&'a self, buf: &'a mut [u8; 48]) -> &'a str {
        match self {
            Host::Name(name) => name,
            Host::Ip(IpAddr::V4(v4)) => {
                let len = write_ipv4(*v4, buf);
                std::str::from_utf8(&buf[..len]).unwrap_or_default()
            }
            Host::Ip(IpAddr::V6(v6)) => {
                use std::io::Write as _;
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                // At most 45 bytes (IPv4-mapped form): it fits.
                let _ = write!(cursor, "{v6}");
                let len = cursor.position() as usize;
                std::str::from_utf8(&buf[..len]).unwrap_or_default()
            }
        }
    }
}

/// Dotted-quad text of `ip` into `out`, returning its length: the `Display` of the standard
/// library goes through the formatting machinery, eight calls per address.
pub(crate) fn write_ipv4(ip: Ipv4Addr, out: &mut [u8]) -> usize {
    let mut len = 0;
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

impl fmt::Display for Host {
    /// URI form: IPv6 literals in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
        }
    }
}

/// A destination: host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Authority {
    /// The value for a `Host` header appended to `out` (without going through `format!`): the
    /// port is left out when it is the scheme default.
    pub fn write_host_header(&self, out: &mut bytes::BytesMut) {
        match &self.host {
            Host::Name(name) => out.extend_from_slice(name.as_bytes()),
            Host::Ip(IpAddr::V4(v4)) => {
                let mut buf = [0u8; 15];
                let len = write_ipv4(*v4, &mut buf);
                out.extend_from_slice(&buf[..len]);
            }
            Host::Ip(IpAddr::V6(_)) => out.extend_from_slice(self.host.to_string().as_bytes()),
        }
        if self.port != 80 {
            out.extend_from_slice(b":");
            let mut digits = [0; 20];
            let port = crate::decimal::decimal(u64::from(self.port), &mut digits);
            out.extend_from_slice(port);
        }
    }
}

/// A parsed absolute-form target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsoluteTarget {
    pub authority: Authority,
    /// Path and query, never empty (an empty path becomes "/").
    pub path_and_query: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("only absolute-form http:// targets are accepted by a forward proxy")]
    NotAbsoluteHttp,
    #[error("https:// targets must use CONNECT")]
    HttpsScheme,
    #[error("user information in the target is not allowed")]
    UserInfo,
    #[error("fragment in the request target")]
    Fragment,
    #[error("invalid host")]
    InvalidHost,
    #[error("invalid port")]
    InvalidPort,
    #[error("CONNECT target must be host:port")]
    InvalidConnectTarget,
}

/// Parses `http://authority[/path][?query]`.
/// `scheme://rest` split at its first ':' (a scheme holds no ':'), or `None`. A byte search:
/// `split_once("://")` sets up a substring searcher, on every request.
pub(crate) fn split_scheme(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once(':')?;
    Some((scheme, rest.strip_prefix("//")?))
}

pub fn parse_absolute(target: &str) -> Result<AbsoluteTarget, TargetError> {
    let Some((scheme, rest)) = split_scheme(target) else {
        return Err(TargetError::NotAbsoluteHttp);
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(TargetError::HttpsScheme);
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(TargetError::NotAbsoluteHttp);
    }
    if rest.contains('#') {
        return Err(TargetError::Fragment);
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = parse_authority(authority, Some(80))?;
    let path_and_query = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        normalize_path(path)
    };
    Ok(AbsoluteTarget {
        authority,
        path_and_query,
    })
}

/// RFC 3986 6.2.2 normalisation of the path (the query is left alone): percent-encoded
/// unreserved characters are decoded, other escapes get upper-case hex, and dot segments
/// are removed (5.2.4). The result means the same resource to any conforming origin, and it
/// is what both the policy and the origin see, so `/%61dmin` or `/x/../admin` cannot slip
/// past a rule on `/admin`.
pub fn normalize_path(path_and_query: &str) -> String {
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    if !path.is_empty()
        && !path.contains('%')
        && memchr::memmem::find(path.as_bytes(), b"/.").is_none()
    {
        // Nothing to decode and no dot segment (the common case): one copy.
        return path_and_query.to_owned();
    }
    let mut decoded = String::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escape = (byte == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit));
        match escape {
            Some(hex) => {
                let value = hex.iter().fold(0u8, |acc, digit| {
                    acc * 16 + (*digit as char).to_digit(16).unwrap_or(0) as u8
                });
                if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                    decoded.push(value as char);
                } else {
                    decoded.push('%');
                    decoded.push(hex[0].to_ascii_uppercase() as char);
                    decoded.push(hex[1].to_ascii_uppercase() as char);
                }
                index += 3;
            }
            None => {
                decoded.push(byte as char);
                index += 1;
            }
        }
    }
    let mut output = remove_dot_segments(&decoded);
    if output.is_empty() {
        output.push('/');
    }
    output.push_str(query);
    output
}

/// The form of a (normalised) path and query that path rules match: what the common origins
/// would make of it, so that no spelling of `/admin` slips past a rule on `/admin` (security
/// review F6). On top of [`normalize_path`]: `%2F`, `%5C` and `\` read as `/` (nginx, IIS,
/// Node routers), `;parameters` removed from each segment (Tomcat, Spring: `/x/..;/admin`),
/// repeated slashes merged (nginx `merge_slashes`), then dot segments removed again. The
/// query is kept as sent. Only the rules see this; the origin gets the normalised target.
pub fn canonical_path(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    let bytes = path.as_bytes();
    let has_encoded_slash = |at: usize| {
        bytes
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.eq_ignore_ascii_case(b"2f") || hex.eq_ignore_ascii_case(b"5c"))
    };
    let needs_work = bytes.iter().enumerate().any(|(at, byte)| match byte {
        b'\\' | b';' => true,
        b'/' => bytes.get(at + 1) == Some(&b'/'),
        b'%' => has_encoded_slash(at),
        _ => false,
    });
    if !needs_work {
        // The common case: nothing to do, nothing allocated.
        return std::borrow::Cow::Borrowed(path_and_query);
    }
    let mut slashed = String::with_capacity(path.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => {
                slashed.push('/');
                at += 1;
            }
            b'%' if has_encoded_slash(at) => {
                slashed.push('/');
                at += 3;
            }
            _ => {
                // Copy up to the next byte that may need rewriting, keeping UTF-8 intact.
                let next = bytes[at + 1..]
                    .iter()
                    .position(|byte| matches!(byte, b'\\' | b'%'))
                    .map_or(bytes.len(), |offset| at + 1 + offset);
                slashed.push_str(&path[at..next]);
                at = next;
            }
        }
    }
    let trailing_slash = slashed.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in slashed.split('/') {
        let segment = segment.split(';').next().unwrap_or_default();
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut canonical = String::with_capacity(slashed.len() + query.len());
    for segment in &segments {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() || (trailing_slash && !segments.is_empty()) {
        canonical.push('/');
    }
    canonical.push_str(query);
    std::borrow::Cow::Owned(canonical)
}

/// Whether the path (not the query) holds an escaped slash or backslash (`%2F`, `%5C`).
pub fn has_escaped_slash(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or_default();
    path.as_bytes().windows(3).any(|window| {
        window[0] == b'%'
            && (window[1..].eq_ignore_ascii_case(b"2f") || window[1..].eq_ignore_ascii_case(b"5c"))
    })
}

/// RFC 3986 5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (position, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if position == last {
                    output.push("");
                }
            }
            ".." => {
                if output.len() > 1 {
                    output.pop();
                }
                if position == last {
                    output.push("");
                }
            }
            other => output.push(other),
        }
    }
    let joined = output.join("/");
    if path.starts_with('/') && !joined.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Parses CONNECT's `host:port` (the port is mandatory).
pub fn parse_connect(target: &str) -> Result<Authority, TargetError> {
    if target.contains(['/', '?', '#']) {
        return Err(TargetError::InvalidConnectTarget);
    }
    parse_authority(target, None)
}

/// `host [":" port]`; `default_port` of `None` makes the port mandatory.
pub fn parse_authority(
    authority: &str,
    default_port: Option<u16>,
) -> Result<Authority, TargetError> {
    if authority.contains('@') {
        return Err(TargetError::UserInfo);
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return Err(TargetError::InvalidHost);
        };
        // A bracketed name ("[example.com]") is not an IPv6 literal; neither is a zone id.
        let ip: Ipv6Addr = literal.parse().map_err(|_| TargetError::InvalidHost)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(TargetError::InvalidHost)?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        (parse_host(host)?, port)
    };
    let port = match (port, default_port) {
        (Some(port), _) => parse_port(port)?,
        (None, Some(default)) => default,
        (None, None) => return Err(TargetError::InvalidConnectTarget),
    };
    Ok(Authority { host, port })
}

fn parse_port(port: &str) -> Result<u16, TargetError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(TargetError::InvalidPort);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(TargetError::InvalidPort),
        Ok(port) => Ok(port),
    }
}

/// A DNS name or a canonical dotted-quad IPv4 address.
fn parse_host(host: &str) -> Result<Host, TargetError> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(TargetError::InvalidHost);
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        let valid_label = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid_label {
            return Err(TargetError::InvalidHost);
        }
    }
    // A last label that looks numeric makes the host an IPv4 address or nothing: URL parsers
    // disagree on "127.1" and "0x7f.1", so only the canonical form is accepted.
    let last = labels.last().copied().unwrap_or_default();
    let numeric_looking = last.bytes().all(|byte| byte.is_ascii_digit())
        || (last.len() > 2 && last[..2].eq_ignore_ascii_case("0x"));
    if numeric_looking {
        let ip: Ipv4Addr = host.parse().map_err(|_| TargetError::InvalidHost)?;
        // std accepts only canonical dotted decimal without leading zeros.
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    Ok(Host::Name(host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Authority {
        fn host_header(&self) -> String {
            let mut out = bytes::BytesMut::new();
            self.write_host_header(&mut out);
            String::from_utf8(out.to_vec()).unwrap_or_default()
        }
    }

    #[track_caller]
    fn check_absolute(target: &str, expected: Result<(&str, u16, &str), TargetError>) {
        let got = parse_absolute(target).map(|parsed| {
            (
                parsed.authority.host.to_string(),
                parsed.authority.port,
                parsed.path_and_query,
            )
        });
        let expected = expected.map(|(host, port, path)| (host.to_owned(), port, path.to_owned()));
        assert_eq!(got, expected, "{target}");
    }

    #[test]
    fn absolute_form() {
        use TargetError::*;
        check_absolute("http://Example.COM/a?b", Ok(("example.com", 80, "/a?b")));
        check_absolute("HTTP://example.com.", Ok(("example.com", 80, "/")));
        check_absolute("http://example.com?x", Ok(("example.com", 80, "/?x")));
        check_absolute("http://127.0.0.1:8080/", Ok(("127.0.0.1", 8080, "/")));
        check_absolute("http://[::1]:8080/", Ok(("[::1]", 8080, "/")));
        check_absolute(
            "http://[::ffff:10.0.0.1]/",
            Ok(("[::ffff:10.0.0.1]", 80, "/")),
        );
        check_absolute("https://example.com/", Err(HttpsScheme));
        check_absolute("ftp://example.com/", Err(NotAbsoluteHttp));
        check_absolute("/relative", Err(NotAbsoluteHttp));
        check_absolute("http://user:pw@example.com/", Err(UserInfo));
        check_absolute("http://example.com/#frag", Err(Fragment));
        check_absolute("http://[example.com]/", Err(InvalidHost));
        check_absolute("http://[fe80::1%25eth0]/", Err(InvalidHost));
        check_absolute("http://127.1/", Err(InvalidHost));
        check_absolute("http://0x7f.0.0.1/", Err(InvalidHost));
        check_absolute("http://2130706433/", Err(InvalidHost));
        check_absolute("http://0177.0.0.1/", Err(InvalidHost));
        check_absolute("http://exa%6dple.com/", Err(InvalidHost));
        check_absolute("http://ex ample.com/", Err(InvalidHost));
        check_absolute("http://-bad.com/", Err(InvalidHost));
        check_absolute("http://a..b/", Err(InvalidHost));
        check_absolute("http://example.com:0/", Err(InvalidPort));
        check_absolute("http://example.com:65536/", Err(InvalidPort));
        check_absolute("http://example.com:/", Err(InvalidPort));
        check_absolute("http://example.com:+80/", Err(InvalidPort));
        check_absolute("http:///", Err(InvalidHost));
    }

    #[test]
    fn paths_are_normalised() {
        for (raw, expected) in [
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/a/b/../../admin?x=/../y", "/admin?x=/../y"),
            ("/a/./b/", "/a/b/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/%2fadmin", "/%2Fadmin"),
            ("/%zz", "/%zz"),
            ("/%", "/%"),
            ("//admin", "//admin"),
            ("/a%7Eb", "/a~b"),
        ] {
            assert_eq!(normalize_path(raw), expected, "{raw}");
        }
    }

    #[test]
    fn rules_see_the_canonical_path() {
        for (raw, expected) in [
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/x/..;/admin", "/admin"),
            ("/;/admin", "/admin"),
            ("/%2Fadmin", "/admin"),
            ("/%2fadmin", "/admin"),
            ("/\\admin", "/admin"),
            ("/%5Cadmin", "/admin"),
            ("/admin;jsessionid=1/x", "/admin/x"),
            ("/a//b///c/", "/a/b/c/"),
            ("/a/%2F../admin", "/admin"),
            ("/x/%2e%2e;/admin", "/admin"),
            ("/a%2F..%2F..%2Fadmin?q=//x;y", "/admin?q=//x;y"),
            ("/", "/"),
            ("//", "/"),
            ("/;", "/"),
            ("/%41dmin", "/Admin"),
        ] {
            // Rules see the canonical form of what the origin gets: the normalised target.
            let normalised = normalize_path(raw);
            assert_eq!(canonical_path(&normalised), expected, "{raw}");
        }
        assert!(matches!(
            canonical_path("/plain/path?x=1"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escaped_slashes_are_spotted_in_the_path_only() {
        assert!(has_escaped_slash("/a%2Fb"));
        assert!(has_escaped_slash("/a%5cb"));
        assert!(!has_escaped_slash("/a/b?x=%2F"));
        assert!(!has_escaped_slash("/a%252Fb"));
    }

    proptest::proptest! {
        /// Canonicalising twice changes nothing, and no canonical path has a shape a rule
        /// could be dodged with.
        #[test]
        fn canonical_paths_are_fixed_points(path in "/[a-zA-Z/.;%25CcFf\\\\]{0,24}") {
            let normalised = normalize_path(&path);
            let once = canonical_path(&normalised).into_owned();
            proptest::prop_assert_eq!(canonical_path(&once).into_owned(), once.clone());
            proptest::prop_assert!(!once.contains("//") && !once.contains('\\') && !once.contains(';'));
            proptest::prop_assert!(!once.split('/').any(|segment| segment == ".." || segment == "."));
        }
    }

    proptest::proptest! {
        #[test]
        fn host_forms_match_the_standard_text(octets in proptest::array::uniform4(0u8..), port in 1u16..) {
            let ip = Ipv4Addr::from(octets);
            let mut buf = [0u8; 48];
            let host = Host::Ip(IpAddr::V4(ip));
            proptest::prop_assert_eq!(host.policy_form(&mut buf), ip.to_string());
            let authority = Authority { host, port };
            let expected = if port == 80 { ip.to_string() } else { format!("{ip}:{port}") };
            proptest::prop_assert_eq!(authority.host_header(), expected);
        }
    }

    #[test]
    fn host_forms_of_names_and_ipv6() {
        let mut buf = [0u8; 48];
        let v6 = Host::Ip("::ffff:255.255.255.255".parse().expect("address literal"));
        assert_eq!(v6.policy_form(&mut buf), "::ffff:255.255.255.255");
        let name = Authority {
            host: Host::Name("a.test".to_owned()),
            port: 8080,
        };
        assert_eq!(name.host_header(), "a.test:8080");
        let v6 = Authority {
            host: Host::Ip("2001:db8::1".parse().expect("address literal")),
            port: 80,
        };
        assert_eq!(v6.host_header(), "[2001:db8::1]");
    }

    #[test]
    fn connect_form() {
        assert_eq!(
            parse_connect("example.com:443").map(|a| a.to_string()),
            Ok("example.com:443".to_owned())
        );
        assert_eq!(
            parse_connect("[2001:db8::1]:443").map(|a| a.to_string()),
            Ok("[2001:db8::1]:443".to_owned())
        );
        assert_eq!(
            parse_connect("example.com"),
            Err(TargetError::InvalidConnectTarget)
        );
        assert_eq!(
            parse_connect("http://example.com:443"),
            Err(TargetError::InvalidConnectTarget)
        );
        assert_eq!(
            parse_connect("example.com:x"),
            Err(TargetError::InvalidPort)
        );
    }
}
