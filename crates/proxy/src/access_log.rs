//! The access log: one line per request, JSON lines or Squid's native format.
//!
//! Requests hand a record to a bounded channel and move on; a dedicated thread formats and
//! writes. If the writer falls behind (slow disk), records are dropped and counted rather than
//! letting memory grow or requests wait on a disk.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

/// Output format of the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Squid,
}

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

/// What was decided about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded (or tunnelled) to the origin.
    Allow,
    /// A policy rule blocked it.
    Block,
    /// Refused before policy: client not allowed, destination address denied, port denied.
    Deny,
    /// Malformed request, upstream failure, limits.
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Block => "block",
            Decision::Deny => "deny",
            Decision::Error => "error",
        }
    }
}

/// One access log line.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    pub time: SystemTime,
    pub client: SocketAddr,
    /// Standard methods are static: no allocation per request.
    pub method: Cow<'static, str>,
    /// Absolute URL as received, or the authority for CONNECT.
    pub url: String,
    /// The canonical path and query the policy's path rules saw, when it differs from the
    /// path as received (`//admin` is matched as `/admin`).
    pub rule_path: Option<String>,
    pub status: u16,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub duration: Duration,
    pub rule: Arc<str>,
    pub decision: Decision,
    /// Why a request was denied or failed (empty when allowed).
    pub reason: String,
    pub upstream: Option<SocketAddr>,
    pub node: Arc<str>,
    pub request_id: crate::RequestId,
}

enum Message {
    Record(Box<AccessRecord>),
    Reopen,
}

/// How long the writer sleeps between batches of records.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Handle to the access log writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    sender: Option<SyncSender<Message>>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer thread. Fails if the log file cannot be opened.
    pub fn start(
        target: LogTarget,
        format: LogFormat,
        dropped: Counter,
    ) -> std::io::Result<AccessLog> {
        if target == LogTarget::Off {
            return Ok(AccessLog {
                sender: None,
                dropped,
            });
        }
        let mut sink = open(&target)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Message>(16 * 1024);
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || {
                // Bytes, not a String: everything written is ASCII or already-valid UTF-8,
                // and checking it again cost ~10% of a line.
                let mut line = Vec::with_capacity(512);
                loop {
                    // Sleep between batches rather than block on the channel: a receiver
                    // parked on it costs every request a futex wake-up (measured: 4 syscalls
                    // per logged request); a sleeping one costs the senders nothing. A record
                    // waits at most one interval.
                    std::thread::sleep(BATCH_INTERVAL);
                    let mut written = false;
                    loop {
                        let message = match receiver.try_recv() {
                            Ok(message) => message,
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                let _ = sink.flush();
                                return;
                            }
                        };
                        match message {
                            Message::Record(record) => {
                                line.clear();
                                match format {
                                    LogFormat::Json => format_json(&record, &mut line),
                                    LogFormat::Squid => format_squid(&record, &mut line),
                                }
                                line.push(b'\n');
                                if let Err(error) = sink.write_all(&line) {
                                    tracing::error!(%error, "access log write failed");
                                }
                                written = true;
                            }
                            Message::Reopen => {
                                let _ = sink.flush();
                                match open(&target) {
                                    Ok(reopened) => sink = reopened,
                                    Err(error) => {
                                        tracing::error!(%error, "access log reopen failed")
                                    }
                                }
                            }
                        }
                    }
                    if written {
                        let _ = sink.flush();
                    }
                }
            })?;
        Ok(AccessLog {
            sender: Some(sender),
            dropped,
        })
    }

    /// A log that writes nothing (tests, `access_log = "off"`).
    pub fn off() -> AccessLog {
        AccessLog {
            sender: None,
            dropped: Counter::default(),
        }
    }

    pub fn log(&self, record: AccessRecord) {
        let Some(sender) = &self.sender else {
            return;
        };
        match sender.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Reopens the file (after rotation: SIGHUP).
    pub fn reopen(&self) {
        if let Some(sender) = &self.sender {
            let _ = sender.try_send(Message::Reopen);
        }
    }
}

fn open(target: &LogTarget) -> std::io::Result<Box<dyn std::io::Write + Send>> {
    Ok(match target {
        LogTarget::Off | LogTarget::Stdout => Box::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        )),
        LogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|error| {
                    std::io::Error::new(
                        error.kind(),
                        format!("cannot open access log {}: {error}", path.display()),
                    )
                })?;
            Box::new(std::io::BufWriter::with_capacity(64 * 1024, file))
        }
    })
}

/// One JSON object per line. Written field by field: building a `serde_json::Value` first
/// cost an allocation per key and value, for every request.
pub fn format_json(record: &AccessRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339_into(out, record.time);
    out.extend_from_slice(b"\",\"client\":\"");
    push_addr(out, record.client);
    out.extend_from_slice(b"\",\"method\":");
    json_string(out, &record.method);
    out.extend_from_slice(b",\"url\":");
    json_string(out, &record.url);
    out.extend_from_slice(b",\"status\":");
    push_padded(out, u64::from(record.status), 1);
    out.extend_from_slice(b",\"bytes_from_client\":");
    push_padded(out, record.bytes_from_client, 1);
    out.extend_from_slice(b",\"bytes_to_client\":");
    push_padded(out, record.bytes_to_client, 1);
    // Milliseconds with microsecond resolution, written as integers: float formatting
    // costs more than the rest of the line.
    let micros = record.duration.as_micros().min(u128::from(u64::MAX)) as u64;
    out.extend_from_slice(b",\"duration_ms\":");
    push_padded(out, micros / 1000, 1);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
    out.extend_from_slice(b",\"rule\":");
    json_string(out, &record.rule);
    out.extend_from_slice(b",\"decision\":\"");
    out.extend_from_slice(record.decision.as_str().as_bytes());
    out.extend_from_slice(b"\",\"reason\":");
    json_string(out, &record.reason);
    match record.upstream {
        Some(upstream) => {
            out.extend_from_slice(b",\"upstream\":\"");
            push_addr(out, upstream);
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"upstream\":null"),
    }
    out.extend_from_slice(b",\"node\":");
    json_string(out, &record.node);
    out.extend_from_slice(b",\"request_id\":\"");
    record.request_id.push_hex(out);
    out.push(b'"');
    if let Some(rule_path) = &record.rule_path {
        out.extend_from_slice(b",\"rule_path\":");
        json_string(out, rule_path);
    }
    out.push(b'}');
}

/// A JSON string literal (RFC 8259 7): quotes, backslashes and control characters escaped.
fn json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    if !text
        .bytes()
        .any(|byte| byte == b'"' || byte == b'\\' || byte < 0x20)
    {
        // The common case: nothing to escape, one copy.
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    let mut clean = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&text.as_bytes()[clean..at]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        clean = at + 1;
    }
    out.extend_from_slice(&text.as_bytes()[clean..]);
    out.push(b'"');
}

/// Squid's native format (`logformat squid`), then palisade's fields appended:
/// `time elapsed client code/status bytes method url user hierarchy/peer type` +
/// `bytes_from_client rule decision node request_id`.
pub fn format_squid(record: &AccessRecord, out: &mut Vec<u8>) {
    let since_epoch = record.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let code = match (record.decision, record.method.as_ref()) {
        (Decision::Allow, "CONNECT") => "TCP_TUNNEL",
        (Decision::Allow, _) => "TCP_MISS",
        (Decision::Block | Decision::Deny, _) => "TCP_DENIED",
        (Decision::Error, _) => "NONE_NONE",
    };
    let hierarchy = match record.upstream {
        Some(addr) => format!("HIER_DIRECT/{}", addr.ip()),
        None => "HIER_NONE/-".to_owned(),
    };
    let _ = write!(
        out,
        "{}.{:03} {:>6} {} {}/{:03} {} {} {} - {} - {} {} {} {} {}",
        since_epoch.as_secs(),
        since_epoch.subsec_millis(),
        record.duration.as_millis(),
        record.client.ip(),
        code,
        record.status,
        record.bytes_to_client,
        record.method,
        record.url,
        hierarchy,
        record.bytes_from_client,
        record.rule,
        record.decision.as_str(),
        record.node,
        record.request_id,
    );
}

/// `2026-11-21T07:26:00.123Z` without pulling in a date crate.
pub fn rfc3339(time: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    rfc3339_into(&mut out, time);
    String::from_utf8(out).unwrap_or_default()
}

/// [`rfc3339`] appended to `out`, without the formatting machinery (once per log line).
fn rfc3339_into(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let rem = secs % 86_400;
    // Fixed width: every digit has its place, so the line is built on the stack and copied
    // once.
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for position in (at..at + width).rev() {
            text[position] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, u64::from(month));
    put(8, 2, u64::from(day));
    put(11, 2, rem / 3600);
    put(14, 2, (rem / 60) % 60);
    put(17, 2, rem % 60);
    put(20, 3, u64::from(since_epoch.subsec_millis()));
    out.extend_from_slice(&text);
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, value: u64, width: usize) {
    out.extend_from_slice(crate::decimal::padded(value, width, &mut [0; 20]));
}

/// A socket address as `ip:port` (`[ip]:port` for IPv6).
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            let mut buf = [0u8; 21];
            let mut len = crate::target::write_ipv4(*v4.ip(), &mut buf);
            buf[len] = b':';
            len += 1;
            let mut digits = [0; 20];
            let port = crate::decimal::decimal(u64::from(v4.port()), &mut digits);
            buf[len..len + port.len()].copy_from_slice(port);
            len += port.len();
            out.extend_from_slice(&buf[..len]);
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            time: UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            client: SocketAddr::from(([127, 0, 0, 1], 5555)),
            method: "GET".into(),
            url: "http://a.test/x".to_owned(),
            rule_path: None,
            status: 200,
            bytes_from_client: 80,
            bytes_to_client: 1234,
            duration: Duration::from_micros(4500),
            rule: Arc::from("default"),
            decision: Decision::Allow,
            reason: String::new(),
            upstream: Some(SocketAddr::from(([127, 0, 0, 2], 80))),
            node: Arc::from("node-a"),
            request_id: crate::RequestId(0xabc),
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_000_000_123)),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn squid_format() {
        let mut line = Vec::new();
        format_squid(&record(), &mut line);
        assert_eq!(
            String::from_utf8_lossy(&line),
            "1795000000.123      4 127.0.0.1 TCP_MISS/200 1234 GET http://a.test/x - HIER_DIRECT/127.0.0.2 - 80 default allow node-a 0000000000000abc"
        );
    }

    #[test]
    fn json_format() {
        let mut line = Vec::new();
        format_json(&record(), &mut line);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(value["status"], 200);
        assert_eq!(value["request_id"], "0000000000000abc");
        assert_eq!(value["decision"], "allow");
        assert_eq!(value["duration_ms"], 4.5);
        assert_eq!(value["upstream"], "127.0.0.2:80");
        assert!(value.get("rule_path").is_none(), "{value}");
        let mut line = Vec::new();
        format_json(
            &AccessRecord {
                url: "http://a.test//x".to_owned(),
                rule_path: Some("/x".to_owned()),
                ..record()
            },
            &mut line,
        );
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(value["url"], "http://a.test//x");
        assert_eq!(value["rule_path"], "/x");
    }

    #[test]
    fn numbers_and_addresses_as_the_formatter_writes_them() {
        for (value, width) in [(0u64, 1usize), (7, 2), (42, 4), (12_345, 2), (u64::MAX, 3)] {
            let mut out = Vec::new();
            push_padded(&mut out, value, width);
            assert_eq!(out, format!("{value:0width$}").into_bytes());
        }
        for addr in ["10.0.0.255:65535", "0.0.0.0:1", "[2001:db8::1]:443"] {
            let addr: SocketAddr = addr.parse().expect("socket address literal");
            let mut out = Vec::new();
            push_addr(&mut out, addr);
            assert_eq!(out, addr.to_string().into_bytes());
        }
    }

    #[test]
    fn json_strings_round_trip_whatever_they_hold() {
        for text in [
            "",
            "plain",
            "quote \" and \\ backslash",
            "ctl \u{1}\u{1f}\n\r\t",
            "caf\u{e9} \u{1F600}",
        ] {
            let mut line = Vec::new();
            format_json(
                &AccessRecord {
                    reason: text.to_owned(),
                    ..record()
                },
                &mut line,
            );
            let value: serde_json::Value = serde_json::from_slice(&line)
                .unwrap_or_else(|error| panic!("{}: {error}", String::from_utf8_lossy(&line)));
            assert_eq!(value["reason"], text, "{value}");
            assert_eq!(value["upstream"], "127.0.0.2:80");
        }
    }
}
