//! Byte tunnels for CONNECT and protocol upgrades: both directions copied concurrently, a
//! half-close passed on, and the tunnel closed once neither side has sent anything for the
//! idle timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

/// Per-direction copy buffer. Allocated only while a tunnel is open.
const TUNNEL_BUFFER: usize = 32 * 1024;

/// Bytes moved by a finished tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelBytes {
    pub from_client: u64,
    pub to_client: u64,
}

/// Copies until both directions are closed or the tunnel was idle for `idle`.
///
/// `client_pending` are bytes the client sent after its request head (optimistic data);
/// `upstream_pending` are bytes the origin sent after its response head.
pub async fn run(
    client: &mut TcpStream,
    client_pending: BytesMut,
    upstream: &mut TcpStream,
    upstream_pending: BytesMut,
    idle: Duration,
) -> TunnelBytes {
    let last_activity = Activity::new();
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let (from_client, to_client) = tokio::join!(
        copy_direction(
            &mut client_read,
            &mut upstream_write,
            client_pending,
            idle,
            &last_activity
        ),
        copy_direction(
            &mut upstream_read,
            &mut client_write,
            upstream_pending,
            idle,
            &last_activity
        ),
    );
    TunnelBytes {
        from_client,
        to_client,
    }
}

async fn copy_direction(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    pending: BytesMut,
    idle: Duration,
    last_activity: &Activity,
) -> u64 {
    let mut copied = 0u64;
    if !pending.is_empty() {
        if to.write_all(&pending).await.is_err() {
            return copied;
        }
        copied += pending.len() as u64;
    }
    drop(pending);
    let mut buf = vec![0u8; TUNNEL_BUFFER];
    loop {
        let read = match tokio::time::timeout(idle, from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => read,
            Err(_) => {
                // Idle only if the other direction was quiet too.
                if last_activity.idle_for() >= idle {
                    break;
                }
                continue;
            }
        };
        last_activity.touch();
        if to.write_all(&buf[..read]).await.is_err() {
            break;
        }
        copied += read as u64;
    }
    // Pass the half-close on; the other direction keeps running until it ends too.
    let _ = to.shutdown().await;
    copied
}

/// When either direction last moved bytes. Atomic only because the tunnel future must be
/// `Send`; both directions run on the same task.
struct Activity {
    start: Instant,
    last_millis: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_millis.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}
