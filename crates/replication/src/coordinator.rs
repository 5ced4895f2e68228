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
}

impl FailureCode {
    pub fn number(self) -> u16 {
        match self {
            FailureCode::CannotConnect => 301,
            FailureCode::VersionMismatch => 404,
            FailureCode::TimeDifferenceTooHigh => 405,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            FailureCode::CannotConnect => "cannot connect",
            FailureCode::VersionMismatch => "version mismatch",
            FailureCode::TimeDifferenceTooHigh => "time difference too high",
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
