//! The checks a node makes of a peer before replicating with it, and the log lines that
//! report a failed request, in the seeds' words and shape (operators grep for them):
//!
//! ```text
//! [2026-11-29 13:57:14.671 +00:00] [Coordinator] [NodeRequestFailed] Message '<co_distribute_revisions>' on node 0b6f7c1e-... (proxy-2) failed with error '(301 - 'cannot connect') - "co_distribute_revisions: failure 'errno: 111 - 'Connection refused'' while sending request - last action: connect"'
//! ```
//!
//! A failed check stops replication with that peer only: HA status, handover and director
//! messages keep flowing (each plane has its own wire version).

use std::fmt;

use palisade_identity::NodeId;

/// The seeds' error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCode {
    /// `(301 - 'cannot connect')`
    CannotConnect,
    /// `(404 - 'version mismatch')`
    VersionMismatch,
    /// `(405 - 'time difference too high')`
    TimeDifferenceTooHigh,
    /// `(306 - 'peer not authenticated')`: ours, in the seeds' shape (no certificate of the
    /// cluster's CA, an expired or a removed one).
    NotAuthenticated,
}

impl FailureCode {
    pub fn number(self) -> u16 {
        match self {
            FailureCode::CannotConnect => 301,
            FailureCode::VersionMismatch => 404,
            FailureCode::TimeDifferenceTooHigh => 405,
            FailureCode::NotAuthenticated => 306,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            FailureCode::CannotConnect => "cannot connect",
            FailureCode::VersionMismatch => "version mismatch",
            FailureCode::TimeDifferenceTooHigh => "time difference too high",
            FailureCode::NotAuthenticated => "peer not authenticated",
        }
    }
}

/// One failed request to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFailed {
    /// What was being sent, e.g. `co_distribute_revisions`.
    pub message: &'static str,
    pub node: NodeId,
    pub node_name: String,
    pub code: FailureCode,
    pub detail: String,
}

impl fmt::Display for RequestFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[Coordinator] [NodeRequestFailed] Message '<{}>' on node {} ({}) failed with error '({} - '{}') - \"{}\"'",
            self.message,
            self.node,
            self.node_name,
            self.code.number(),
            self.code.text(),
            self.detail
        )
    }
}

impl RequestFailed {
    /// The whole log line, stamped `[YYYY-MM-DD hh:mm:ss.mmm +00:00]` at `unix_ms`.
    pub fn log_line(&self, unix_ms: u64) -> String {
        format!("[{}] {self}", seeds_timestamp(unix_ms))
    }

    /// A connection that failed: `errno` and its text, and the last step tried.
    pub fn cannot_connect(
        message: &'static str,
        node: NodeId,
        node_name: &str,
        errno: i32,
        error_text: &str,
        last_action: &str,
    ) -> RequestFailed {
        RequestFailed {
            message,
            node,
            node_name: node_name.to_owned(),
            code: FailureCode::CannotConnect,
            detail: format!(
                "{message}: failure 'errno: {errno} - '{error_text}'' while sending request - last action: {last_action}"
            ),
        }
    }
}

impl RequestFailed {
    /// A connection refused in its handshake (TLS or the link's own).
    pub fn not_authenticated(
        message: &'static str,
        node: NodeId,
        node_name: &str,
        error: &str,
    ) -> RequestFailed {
        RequestFailed {
            message,
            node,
            node_name: node_name.to_owned(),
            code: FailureCode::NotAuthenticated,
            detail: format!(
                "{message}: failure '{error}' while accepting - last action: handshake"
            ),
        }
    }
}

/// The peer's clock against this node's: refused beyond `allowed_ms` either way, naming
/// both times.
pub fn check_clock(
    message: &'static str,
    node: NodeId,
    node_name: &str,
    local_ms: u64,
    remote_ms: u64,
    allowed_ms: u64,
) -> Result<(), RequestFailed> {
    if local_ms.abs_diff(remote_ms) <= allowed_ms {
        return Ok(());
    }
    Err(RequestFailed {
        message,
        node,
        node_name: node_name.to_owned(),
        code: FailureCode::TimeDifferenceTooHigh,
        detail: format!(
            "time difference too high: {} / {}",
            iso_timestamp(local_ms),
            iso_timestamp(remote_ms)
        ),
    })
}

/// How much of a release version two nodes must share to replicate: the cluster setting
/// `version_match` (a rolling upgrade between compatible releases keeps the cluster together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionMatch {
    /// Same major version.
    Major,
    /// Same major and minor version (the default).
    Minor,
    /// The same release.
    Exact,
}

/// The peer's release against this node's, at `level`.
pub fn check_version(
    message: &'static str,
    node: NodeId,
    node_name: &str,
    local: &str,
    remote: &str,
    level: VersionMatch,
) -> Result<(), RequestFailed> {
    let parts = |version: &str| -> Option<(u64, u64, String)> {
        let mut split = version.splitn(3, '.');
        let major = split.next()?.parse().ok()?;
        let minor = split.next()?.parse().ok()?;
        Some((major, minor, split.next().unwrap_or("").to_owned()))
    };
    let compatible = match (parts(local), parts(remote)) {
        (Some(ours), Some(theirs)) => match level {
            VersionMatch::Major => ours.0 == theirs.0,
            VersionMatch::Minor => (ours.0, ours.1) == (theirs.0, theirs.1),
            VersionMatch::Exact => ours == theirs,
        },
        _ => local == remote,
    };
    if compatible {
        return Ok(());
    }
    Err(RequestFailed {
        message,
        node,
        node_name: node_name.to_owned(),
        code: FailureCode::VersionMismatch,
        detail: format!("version mismatch: {local} / {remote}"),
    })
}

impl VersionMatch {
    pub fn to_wire(self) -> u8 {
        match self {
            VersionMatch::Major => 0,
            VersionMatch::Minor => 1,
            VersionMatch::Exact => 2,
        }
    }

    pub fn from_wire(byte: u8) -> Option<VersionMatch> {
        match byte {
            0 => Some(VersionMatch::Major),
            1 => Some(VersionMatch::Minor),
            2 => Some(VersionMatch::Exact),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VersionMatch::Major => "major",
            VersionMatch::Minor => "minor",
            VersionMatch::Exact => "exact",
        }
    }
}

/// The message name the gate's refusals carry in the seeds' line.
pub const REPLICATE: &str = "co_replicate";

/// What the gate knows of one peer, from its last hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCheck {
    pub name: String,
    pub release: String,
    /// Its clock minus this node's, when its hello arrived (includes the link's delay).
    pub clock_difference_ms: i64,
    /// Why replication with it is stopped, if it is.
    pub refused: Option<RequestFailed>,
    /// Cluster settings it has that differ from this node's.
    pub settings_differ: Option<String>,
}

impl PeerCheck {
    pub fn admitted(&self) -> bool {
        self.refused.is_none()
    }
}

/// What one hello changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub was_admitted: bool,
    pub admitted: bool,
    /// A refusal that is new (first, or another reason than before): worth a log line.
    pub new_refusal: Option<RequestFailed>,
    /// Settings that differ, when that is new.
    pub new_settings_differ: Option<String>,
}

/// Which peers this node replicates with (sans-IO): a peer is admitted once its hello passes
/// the release and clock checks, and stopped when a later hello fails them. Only
/// replication stops: HA and director messages keep their own planes.
#[derive(Clone, Debug)]
pub struct Gate {
    release: String,
    allowed_ms: u64,
    level: VersionMatch,
    peers: std::collections::BTreeMap<NodeId, PeerCheck>,
}

impl Gate {
    pub fn new(release: &str, allowed: std::time::Duration, level: VersionMatch) -> Gate {
        Gate {
            release: release.to_owned(),
            allowed_ms: allowed.as_millis() as u64,
            level,
            peers: std::collections::BTreeMap::new(),
        }
    }

    /// This node's hello at `wall_ms`.
    pub fn hello(&self, wall_ms: u64) -> crate::wire::Hello {
        crate::wire::Hello {
            wire_version: crate::wire::VERSION,
            release: self.release.clone(),
            wall_ms,
            max_time_difference_ms: self.allowed_ms,
            version_match: self.level.to_wire(),
        }
    }

    pub fn admitted(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(PeerCheck::admitted)
    }

    pub fn peers(&self) -> &std::collections::BTreeMap<NodeId, PeerCheck> {
        &self.peers
    }

    /// Its links are down: it must say hello again.
    pub fn peer_down(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// Checks a peer's hello, received at `local_ms` on this node's clock.
    pub fn receive(
        &mut self,
        from: NodeId,
        name: &str,
        hello: &crate::wire::Hello,
        local_ms: u64,
    ) -> Checked {
        let previous = self.peers.get(&from).cloned();
        let was_admitted = previous.as_ref().is_some_and(PeerCheck::admitted);
        let refusal = check_version(
            REPLICATE,
            from,
            name,
            &self.release,
            &hello.release,
            self.level,
        )
        .and_then(|()| {
            check_clock(
                REPLICATE,
                from,
                name,
                local_ms,
                hello.wall_ms,
                self.allowed_ms,
            )
        })
        .err();
        let mut differ = Vec::new();
        if hello.max_time_difference_ms != self.allowed_ms {
            differ.push(format!(
                "max_time_difference {} ms here, {} ms there",
                self.allowed_ms, hello.max_time_difference_ms
            ));
        }
        if hello.version_match != self.level.to_wire() {
            differ.push(format!(
                "version_match {} here, {} there",
                self.level.name(),
                VersionMatch::from_wire(hello.version_match).map_or("unknown", VersionMatch::name)
            ));
        }
        let settings_differ = (!differ.is_empty()).then(|| differ.join("; "));
        let new_refusal = match (
            &refusal,
            previous.as_ref().and_then(|check| check.refused.as_ref()),
        ) {
            (Some(now), Some(before)) if now.code == before.code => None,
            (Some(now), _) => Some(now.clone()),
            (None, _) => None,
        };
        let new_settings_differ = match (
            &settings_differ,
            previous
                .as_ref()
                .and_then(|check| check.settings_differ.as_ref()),
        ) {
            (Some(now), Some(before)) if now == before => None,
            (now, _) => now.clone(),
        };
        let admitted = refusal.is_none();
        self.peers.insert(
            from,
            PeerCheck {
                name: name.to_owned(),
                release: hello.release.clone(),
                clock_difference_ms: hello.wall_ms as i64 - local_ms as i64,
                refused: refusal,
                settings_differ,
            },
        );
        Checked {
            was_admitted,
            admitted,
            new_refusal,
            new_settings_differ,
        }
    }
}

/// `unix_ms` as a UTC date and time, formatted with `separator` between date and time and
/// `offset` after the milliseconds.
fn stamp(unix_ms: u64, separator: char, offset: &str) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}{separator}{:02}:{:02}:{:02}.{:03}{offset}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// `2026-11-29 13:57:14.671 +00:00`, the seeds' log stamp (in UTC).
pub fn seeds_timestamp(unix_ms: u64) -> String {
    stamp(unix_ms, ' ', " +00:00")
}

/// `2026-11-29T13:57:14.671+00:00`, as the seeds name the two times of a 405.
pub fn iso_timestamp(unix_ms: u64) -> String {
    stamp(unix_ms, 'T', "+00:00")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "0b6f7c1e-8d2a-4f0e-9c53-2d1f1a7e4b90";
    /// 2026-11-29 13:57:14.671 UTC.
    const AT: u64 = 1_795_960_634_671;

    fn node() -> NodeId {
        match NODE.parse() {
            Ok(node) => node,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn the_cannot_connect_line_reads_like_the_seeds() {
        let failed = RequestFailed::cannot_connect(
            "co_distribute_revisions",
            node(),
            "proxy-2",
            111,
            "Connection refused",
            "connect",
        );
        assert_eq!(
            failed.log_line(AT),
            format!(
                "[2026-11-29 13:57:14.671 +00:00] [Coordinator] [NodeRequestFailed] Message '<co_distribute_revisions>' on node {NODE} (proxy-2) failed with error '(301 - 'cannot connect') - \"co_distribute_revisions: failure 'errno: 111 - 'Connection refused'' while sending request - last action: connect\"'"
            )
        );
    }

    #[test]
    fn clock_difference_over_the_limit_is_a_405_naming_both_times() {
        let allowed = 120_000;
        assert_eq!(
            check_clock(
                "co_distribute_init_subscription",
                node(),
                "p2",
                AT,
                AT + allowed,
                allowed
            ),
            Ok(())
        );
        let Err(failed) = check_clock(
            "co_distribute_init_subscription",
            node(),
            "p2",
            AT,
            AT + 8 * 3_600_000 + 2_280,
            allowed,
        ) else {
            panic!("8 hours apart passed");
        };
        assert_eq!(failed.code.number(), 405);
        assert_eq!(
            failed.detail,
            "time difference too high: 2026-11-29T13:57:14.671+00:00 / 2026-11-29T21:57:16.951+00:00"
        );
        assert!(
            failed
                .to_string()
                .contains("'(405 - 'time difference too high')")
        );
    }

    #[test]
    fn version_levels() {
        let check =
            |local, remote, level| check_version("m", node(), "p2", local, remote, level).is_ok();
        assert!(check("1.4.2", "1.4.9", VersionMatch::Minor));
        assert!(!check("1.4.2", "1.5.0", VersionMatch::Minor));
        assert!(check("1.4.2", "1.5.0", VersionMatch::Major));
        assert!(!check("1.4.2", "2.0.0", VersionMatch::Major));
        assert!(!check("1.4.2", "1.4.3", VersionMatch::Exact));
        assert!(check("1.4.2", "1.4.2", VersionMatch::Exact));
        let Err(failed) = check_version("m", node(), "p2", "1.4.2", "2.0.0", VersionMatch::Minor)
        else {
            panic!("passed");
        };
        assert!(failed.to_string().ends_with(
            "failed with error '(404 - 'version mismatch') - \"version mismatch: 1.4.2 / 2.0.0\"'"
        ));
    }

    /// The gate admits a peer whose hello passes, stops it when a later hello fails (405,
    /// then 404), reports each new refusal once, and admits it again when it passes.
    #[test]
    fn the_gate_admits_stops_and_readmits() {
        let peer = node();
        let mut gate = Gate::new(
            "1.4.2",
            std::time::Duration::from_secs(120),
            VersionMatch::Minor,
        );
        let now = 1_800_000_000_000u64;
        let hello = |release: &str, wall_ms: u64| crate::wire::Hello {
            wire_version: crate::wire::VERSION,
            release: release.to_owned(),
            wall_ms,
            max_time_difference_ms: 120_000,
            version_match: 1,
        };
        assert!(!gate.admitted(peer), "not before its hello");
        let first = gate.receive(peer, "proxy-2", &hello("1.4.0", now + 500), now);
        assert!(first.admitted && !first.was_admitted && first.new_refusal.is_none());
        assert_eq!(gate.peers()[&peer].clock_difference_ms, 500);

        let skewed = gate.receive(peer, "proxy-2", &hello("1.4.0", now + 200_000), now);
        assert!(skewed.was_admitted && !skewed.admitted);
        let refusal = skewed.new_refusal.unwrap_or_else(|| panic!("a refusal"));
        assert_eq!(refusal.code, FailureCode::TimeDifferenceTooHigh);
        assert!(
            refusal
                .to_string()
                .contains("(405 - 'time difference too high')")
        );
        let again = gate.receive(peer, "proxy-2", &hello("1.4.0", now + 200_000), now);
        assert_eq!(again.new_refusal, None, "the same refusal is logged once");

        let newer = gate.receive(peer, "proxy-2", &hello("1.5.0", now), now);
        assert_eq!(
            newer.new_refusal.map(|r| r.code),
            Some(FailureCode::VersionMismatch)
        );
        let back = gate.receive(peer, "proxy-2", &hello("1.4.9", now), now);
        assert!(back.admitted && !back.was_admitted);
        assert!(gate.admitted(peer));

        let mut differing = hello("1.4.9", now);
        differing.max_time_difference_ms = 60_000;
        let checked = gate.receive(peer, "proxy-2", &differing, now);
        assert!(
            checked.admitted,
            "differing settings are reported, not refused"
        );
        assert!(
            checked
                .new_settings_differ
                .is_some_and(|text| text.contains("max_time_difference"))
        );
        gate.peer_down(peer);
        assert!(
            !gate.admitted(peer),
            "a peer whose links went down says hello again"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(seeds_timestamp(0), "1970-01-01 00:00:00.000 +00:00");
        assert_eq!(
            iso_timestamp(951_782_400_000),
            "2000-02-29T00:00:00.000+00:00"
        );
        assert_eq!(
            seeds_timestamp(4_107_542_399_999),
            "2100-02-28 23:59:59.999 +00:00"
        );
    }
}
