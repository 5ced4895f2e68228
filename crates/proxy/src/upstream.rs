//! Upstream connections: dialling vetted addresses with fallback, and a bounded idle pool.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Which origin a pooled connection talks to. Connections are only reused for the same
/// host name and port, never just the same address, so one virtual host's connection never
/// carries another's requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The host as the client named it: a name, or an address (no formatting per request).
    pub host: crate::target::Host,
    pub port: u16,
}

/// An open connection to an origin.
pub struct UpstreamConn {
    pub stream: TcpStream,
    /// Bytes read from the origin but not yet consumed.
    pub buf: BytesMut,
    pub peer: SocketAddr,
    pub key: PoolKey,
    /// Taken from the idle pool (so it may have been closed by the origin meanwhile).
    pub reused: bool,
    /// The last response's end was inferred (HEAD, 204, 304), not framed: an origin that
    /// disagreed may still send body bytes, so check for stray bytes before reuse.
    pub verify_on_reuse: bool,
}

/// Why dialling failed, mapped to 502 or 504 by the caller.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection to {addr} refused")]
    Refused { addr: SocketAddr },
    #[error("connection to {addr} timed out")]
    TimedOut { addr: SocketAddr },
    #[error("connection to {addr} failed: {source}")]
    Other {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no address to connect to")]
    NoAddress,
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::TimedOut { .. })
    }
}

/// Tries each address in order within one overall deadline; returns the first connection.
pub async fn dial(
    addresses: &[IpAddr],
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let deadline = Instant::now() + timeout;
    let mut last_error = ConnectError::NoAddress;
    for (index, ip) in addresses.iter().enumerate() {
        let addr = SocketAddr::new(*ip, port);
        // Leave later addresses a share of the time, so one black-holed address cannot
        // eat the whole budget when others would answer.
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let left = (addresses.len() - index) as u32;
        let attempt_budget = if left > 1 {
            remaining / left.min(2)
        } else {
            remaining
        };
        match tokio::time::timeout(attempt_budget, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                last_error = ConnectError::Refused { addr };
            }
            Ok(Err(source)) => last_error = ConnectError::Other { addr, source },
            Err(_) => last_error = ConnectError::TimedOut { addr },
        }
    }
    Err(last_error)
}

/// Pool limits (node-local config).
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    pub max_idle_per_host: usize,
    pub max_idle_total: usize,
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_idle_per_host: 256,
            max_idle_total: 4096,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

struct Idle {
    stream: TcpStream,
    peer: SocketAddr,
    since: Instant,
    verify: bool,
}

/// Idle keep-alive connections to origins, bounded per origin and in total.
pub struct Pool {
    settings: PoolSettings,
    idle: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    by_key: HashMap<PoolKey, Vec<Idle>>,
    total: usize,
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Pool {
        Pool {
            settings,
            idle: Mutex::new(PoolState::default()),
        }
    }

    /// The most recently used idle connection for `key`, if any.
    ///
    /// With `verify_alive`, the kernel is asked (one `recv(MSG_PEEK)`) whether the origin
    /// closed it meanwhile. Callers that can safely retry on a fresh connection (idempotent,
    /// bodiless requests) skip the check: it costs a syscall on every reuse, a fifth of the
    /// syscalls of a small proxied request.
    pub fn checkout(&self, key: &PoolKey, verify_alive: bool) -> Option<UpstreamConn> {
        let now = Instant::now();
        loop {
            let idle = {
                let mut state = self.idle.lock().ok()?;
                let list = state.by_key.get_mut(key)?;
                let idle = list.pop();
                if list.is_empty() {
                    state.by_key.remove(key);
                }
                let idle = idle?;
                state.total -= 1;
                idle
            };
            if now.duration_since(idle.since) >= self.settings.idle_timeout
                || ((verify_alive || idle.verify) && !is_alive(&idle.stream))
            {
                continue;
            }
            return Some(UpstreamConn {
                stream: idle.stream,
                buf: BytesMut::new(),
                peer: idle.peer,
                key: key.clone(),
                reused: true,
                verify_on_reuse: false,
            });
        }
    }

    /// Returns a connection whose last exchange completed cleanly.
    pub fn checkin(&self, conn: UpstreamConn) {
        if !conn.buf.is_empty() || self.settings.max_idle_total == 0 {
            return; // Unexpected bytes after a complete response: not safe to reuse.
        }
        let Ok(mut state) = self.idle.lock() else {
            return;
        };
        if state.total >= self.settings.max_idle_total {
            return;
        }
        let list = state.by_key.entry(conn.key).or_default();
        if list.len() >= self.settings.max_idle_per_host {
            return;
        }
        list.push(Idle {
            stream: conn.stream,
            peer: conn.peer,
            since: Instant::now(),
            verify: conn.verify_on_reuse,
        });
        state.total += 1;
    }

    /// Closes idle connections past the idle timeout; called periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let Ok(mut state) = self.idle.lock() else {
            return;
        };
        let mut removed = 0;
        state.by_key.retain(|_, list| {
            let before = list.len();
            list.retain(|idle| now.duration_since(idle.since) < self.settings.idle_timeout);
            removed += before - list.len();
            !list.is_empty()
        });
        state.total -= removed;
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|state| state.total).unwrap_or(0)
    }
}

/// A pooled connection is usable only if the origin has neither closed it nor sent bytes
/// nobody asked for. `MSG_PEEK | MSG_DONTWAIT` asks the kernel directly.
fn is_alive(stream: &TcpStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let fd = stream.as_fd().as_raw_fd();
    match recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Err(nix::errno::Errno::EAGAIN) => true,
        Ok(_) | Err(_) => false,
    }
}
