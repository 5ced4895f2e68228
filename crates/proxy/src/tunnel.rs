//! Byte tunnels for CONNECT and protocol upgrades: both directions moved concurrently, a
//! half-close passed on, and the tunnel closed once neither side has sent anything for the
//! idle timeout. Also the body of a large fixed-length response ([`splice_body`]).
//!
//! Bytes move socket -> pipe -> socket with `splice(2)`, inside the kernel: no copy through
//! user space and no user buffer per tunnel. If a pipe cannot be made (descriptor limit),
//! the tunnel falls back to copying through a small buffer.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Per-direction copy buffer of the fallback path.
const COPY_BUFFER: usize = 32 * 1024;
/// The kernel's default pipe size, where every pipe starts.
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;
/// A pipe starts at the kernel's default size (64 KiB) and grows to `BULK_PIPE_SIZE` once
/// `GROW_AFTER` bytes went through it: a bulk transfer then moves 1 MiB per splice (a third
/// of the splices and wake-ups per GiB of a 256 KiB pipe, measured in BENCHMARKS.md), while
/// the many idle or chatty tunnels keep the small pipe's slot array (16 slots, not 256).
/// 1 MiB is also `fs.pipe-max-size`'s default, the most an unprivileged process may ask for.
const BULK_PIPE_SIZE: usize = 1024 * 1024;
const GROW_AFTER: u64 = 256 * 1024;
/// A grown pipe idle (empty, its source quiet) this long shrinks back to the kernel's
/// default: its 256-slot array is 16 KiB of unreclaimable kernel memory (`kmalloc-16k`), the
/// default's 1 KiB; a later burst grows it again.
const SHRINK_AFTER: Duration = Duration::from_secs(2);
/// Bytes asked of one splice into the pipe: the splice stops at what the pipe holds.
const SPLICE_CHUNK: usize = BULK_PIPE_SIZE;

/// Bytes moved by a finished tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelBytes {
    pub from_client: u64,
    pub to_client: u64,
}

/// How a relay ([`relay`]) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed (or the tunnel idled out): an orderly end.
    Closed,
    /// One side failed (a reset, a timeout of its socket): the other must be reset too.
    Reset,
    /// Cut from outside (`abort` fired).
    Aborted,
}

/// Moves bytes until both directions are closed or the tunnel was idle for `idle`.
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
    tunnel(
        client,
        client_pending,
        upstream,
        upstream_pending,
        idle,
        None,
    )
    .await
}

/// A director's relay: like [`run`], but a failure of either side (a reset, its socket's
/// user timeout) ends both directions at once and says so, and `abort` cuts it from
/// outside: the caller resets both sockets then, so a client never takes a cut relay for
/// an orderly end (a FIN can look like the end of a body read until close).
pub async fn relay(
    client: &TcpStream,
    relay: &TcpStream,
    idle: Duration,
    abort: &CancellationToken,
) -> (TunnelBytes, RelayEnd) {
    // Cancelled by the first direction that fails, or with `abort`.
    let stop = abort.child_token();
    let bytes = tunnel(
        client,
        BytesMut::new(),
        relay,
        BytesMut::new(),
        idle,
        Some(&stop),
    )
    .await;
    let end = if abort.is_cancelled() {
        RelayEnd::Aborted
    } else if stop.is_cancelled() {
        RelayEnd::Reset
    } else {
        RelayEnd::Closed
    };
    (bytes, end)
}

/// Both directions, spliced (copied if no pipe can be made). With `stop`, a direction that
/// fails cancels it, and both directions end once it is cancelled, without passing a FIN on.
async fn tunnel(
    client: &TcpStream,
    client_pending: BytesMut,
    upstream: &TcpStream,
    upstream_pending: BytesMut,
    idle: Duration,
    stop: Option<&CancellationToken>,
) -> TunnelBytes {
    let activity = Activity::new();
    let (from_client, to_client) = match (Pipe::new(), Pipe::new()) {
        (Ok(up_pipe), Ok(down_pipe)) => {
            tokio::join!(
                splice_direction(
                    client,
                    upstream,
                    client_pending,
                    up_pipe,
                    idle,
                    &activity,
                    stop
                ),
                splice_direction(
                    upstream,
                    client,
                    upstream_pending,
                    down_pipe,
                    idle,
                    &activity,
                    stop
                ),
            )
        }
        // No pipe (descriptor limit): through a small buffer.
        _ => tokio::join!(
            copy_direction(client, upstream, client_pending, idle, &activity, stop),
            copy_direction(upstream, client, upstream_pending, idle, &activity, stop),
        ),
    };
    TunnelBytes {
        from_client,
        to_client,
    }
}

/// A direction failed: stop the other (a tunnel without `stop` runs on).
fn fail(stop: Option<&CancellationToken>) {
    if let Some(stop) = stop {
        stop.cancel();
    }
}

/// Waits for `ready`, or `None` once `stop` (if any) is cancelled.
async fn unless_stopped<F: std::future::Future<Output = io::Result<()>>>(
    ready: F,
    stop: Option<&CancellationToken>,
) -> Option<io::Result<()>> {
    match stop {
        None => Some(ready.await),
        Some(stop) => tokio::select! {
            ready = ready => Some(ready),
            () = stop.cancelled() => None,
        },
    }
}

/// Passes the half-close on, unless the tunnel was stopped (its caller resets both sides).
fn pass_half_close(to: &TcpStream, stop: Option<&CancellationToken>) {
    if stop.is_none_or(|stop| !stop.is_cancelled()) {
        let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
    }
}

/// A non-blocking pipe used as the in-kernel buffer of one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in so far, until the pipe has grown (then no longer counted).
    filled: u64,
    grown: bool,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe {
            read,
            write,
            filled: 0,
            grown: false,
        })
    }

    /// One non-blocking splice of at most `want` bytes from `from` into the pipe (`Ok(0)`:
    /// `from` is at its end; `WouldBlock`: nothing to read yet, and `from`'s readiness is
    /// cleared so the next `readable()` waits).
    fn fill_from(&mut self, from: &TcpStream, want: usize) -> io::Result<usize> {
        let spliced = from.try_io(Interest::READABLE, || {
            splice(
                from.as_fd(),
                None,
                self.write.as_fd(),
                None,
                want,
                SPLICE_FLAGS,
            )
            .map_err(io::Error::from)
        })?;
        if !self.grown {
            self.filled += spliced as u64;
            if self.filled >= GROW_AFTER {
                // Marked grown even if the kernel refuses: no fcntl per splice after that.
                self.grown = true;
                // Best effort: the small pipe still works, and an unprivileged process may
                // be over its pipe-buffer allowance (`fs.pipe-user-pages-soft`).
                let _ = nix::fcntl::fcntl(
                    &self.write,
                    nix::fcntl::FcntlArg::F_SETPIPE_SZ(BULK_PIPE_SIZE as i32),
                );
            }
        }
        Ok(spliced)
    }

    /// Back to the default size, counting afresh towards growing again. Only while empty.
    fn shrink(&mut self) {
        // A failed shrink (never expected of an empty pipe) is tried again at the next wait.
        if self.grown
            && nix::fcntl::fcntl(
                &self.write,
                nix::fcntl::FcntlArg::F_SETPIPE_SZ(DEFAULT_PIPE_SIZE as i32),
            )
            .is_ok()
        {
            self.grown = false;
            self.filled = 0;
        }
    }

    /// One non-blocking splice of at most `left` bytes from the pipe into `to`.
    fn drain_to(&self, to: &TcpStream, left: usize) -> io::Result<usize> {
        to.try_io(Interest::WRITABLE, || {
            splice(
                self.read.as_fd(),
                None,
                to.as_fd(),
                None,
                left,
                SPLICE_FLAGS,
            )
            .map_err(io::Error::from)
        })
    }
}

const SPLICE_FLAGS: SpliceFFlags =
    SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

/// Why [`splice_body`] stopped before the end.
#[derive(Debug)]
pub(crate) enum BodySpliceError {
    /// No pipe could be made; nothing was moved (copy instead).
    NoPipe(io::Error),
    UpstreamClosed,
    UpstreamIo(io::Error),
    /// Nothing readable from the origin within the read timeout.
    UpstreamTimeout,
    ClientIo(io::Error),
    /// The client took nothing within the write timeout.
    ClientTimeout,
}

/// Moves exactly `len` bytes from `from` (the origin) to `to` (the client) through a pipe,
/// inside the kernel: a large download costs no copy through user space (measured against a
/// direct connection in BENCHMARKS.md). Each wait for the origin is bounded by
/// `read_timeout`, each wait for the client by `write_timeout`. On error, the bytes the
/// client was given so far come with it.
pub(crate) async fn splice_body(
    from: &TcpStream,
    to: &TcpStream,
    len: u64,
    read_timeout: Duration,
    write_timeout: Duration,
) -> Result<u64, (u64, BodySpliceError)> {
    let mut pipe = Pipe::new().map_err(|error| (0, BodySpliceError::NoPipe(error)))?;
    let mut moved = 0u64;
    let mut remaining = len;
    while remaining > 0 {
        let in_pipe = loop {
            match tokio::time::timeout(read_timeout, from.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err((moved, BodySpliceError::UpstreamIo(error))),
                Err(_) => return Err((moved, BodySpliceError::UpstreamTimeout)),
            }
            // Never more than the body: what follows belongs to the next response.
            let want = remaining.min(SPLICE_CHUNK as u64) as usize;
            match pipe.fill_from(from, want) {
                Ok(0) => return Err((moved, BodySpliceError::UpstreamClosed)),
                Ok(spliced) => break spliced,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err((moved, BodySpliceError::UpstreamIo(error))),
            }
        };
        remaining -= in_pipe as u64;
        let mut left = in_pipe;
        while left > 0 {
            match tokio::time::timeout(write_timeout, to.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err((moved, BodySpliceError::ClientIo(error))),
                Err(_) => return Err((moved, BodySpliceError::ClientTimeout)),
            }
            match pipe.drain_to(to, left) {
                Ok(written) => {
                    left -= written;
                    moved += written as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err((moved, BodySpliceError::ClientIo(error))),
            }
        }
    }
    Ok(moved)
}

async fn splice_direction(
    from: &TcpStream,
    to: &TcpStream,
    pending: BytesMut,
    mut pipe: Pipe,
    idle: Duration,
    activity: &Activity,
    stop: Option<&CancellationToken>,
) -> u64 {
    let mut moved = 0u64;
    if !pending.is_empty() {
        let written = tokio::time::timeout(idle, write_all_shared(to, &pending)).await;
        if !matches!(written, Ok(Ok(()))) {
            return moved;
        }
        moved += pending.len() as u64;
    }
    drop(pending);
    'tunnel: loop {
        // Socket -> pipe. The pipe is empty here, so EAGAIN means "no data yet".
        let in_pipe = loop {
            // A grown pipe that waits this long gives its large slot array back.
            let wait = if pipe.grown {
                idle.min(SHRINK_AFTER)
            } else {
                idle
            };
            match tokio::time::timeout(wait, unless_stopped(from.readable(), stop)).await {
                Ok(Some(Ok(()))) => {}
                Ok(None) => break 'tunnel,
                Ok(Some(Err(_))) => {
                    fail(stop);
                    break 'tunnel;
                }
                Err(_) if activity.idle_for() >= idle => break 'tunnel,
                Err(_) => {
                    pipe.shrink();
                    continue;
                }
            }
            match pipe.fill_from(from, SPLICE_CHUNK) {
                Ok(0) => break 'tunnel,
                Ok(spliced) => break spliced,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    fail(stop);
                    break 'tunnel;
                }
            }
        };
        activity.touch();
        // Pipe -> socket, until the pipe is empty again.
        let mut left = in_pipe;
        while left > 0 {
            // A peer that stops reading must not hold the tunnel open forever either.
            match tokio::time::timeout(idle, unless_stopped(to.writable(), stop)).await {
                Ok(Some(Ok(()))) => {}
                Ok(None) => break 'tunnel,
                Ok(Some(Err(_))) => {
                    fail(stop);
                    break 'tunnel;
                }
                Err(_) if activity.idle_for() >= idle => break 'tunnel,
                Err(_) => continue,
            }
            match pipe.drain_to(to, left) {
                Ok(written) => {
                    left -= written;
                    moved += written as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    fail(stop);
                    break 'tunnel;
                }
            }
        }
    }
    // The other direction keeps running until it ends too.
    pass_half_close(to, stop);
    moved
}

/// `write_all` through a shared reference (both directions hold both sockets).
async fn write_all_shared(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// One direction through a small buffer (no pipe could be made).
async fn copy_direction(
    from: &TcpStream,
    to: &TcpStream,
    pending: BytesMut,
    idle: Duration,
    activity: &Activity,
    stop: Option<&CancellationToken>,
) -> u64 {
    let mut copied = 0u64;
    if !pending.is_empty() {
        // Bounded like every other tunnel write: a peer that never reads is idle.
        let written = tokio::time::timeout(idle, write_all_shared(to, &pending)).await;
        if !matches!(written, Ok(Ok(()))) {
            return copied;
        }
        copied += pending.len() as u64;
    }
    drop(pending);
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let read = match tokio::time::timeout(idle, unless_stopped(from.readable(), stop)).await {
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                fail(stop);
                break;
            }
            Ok(Some(Ok(()))) => match from.try_read(&mut buf) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    fail(stop);
                    break;
                }
            },
            // Idle only if the other direction was quiet too.
            Err(_) if activity.idle_for() >= idle => break,
            Err(_) => continue,
        };
        activity.touch();
        let written = tokio::time::timeout(idle, async {
            match stop {
                None => Some(write_all_shared(to, &buf[..read]).await),
                Some(stop) => tokio::select! {
                    written = write_all_shared(to, &buf[..read]) => Some(written),
                    () = stop.cancelled() => None,
                },
            }
        })
        .await;
        match written {
            Ok(Some(Ok(()))) => copied += read as u64,
            Ok(Some(Err(_))) => {
                fail(stop);
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    pass_half_close(to, stop);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), accepted.expect("accept").0)
    }

    fn capacity(pipe: &Pipe) -> i32 {
        nix::fcntl::fcntl(&pipe.write, nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("size")
    }

    #[tokio::test]
    async fn a_pipe_grows_after_bulk_and_shrinks_back_when_empty() {
        let (mut sender, from) = pair().await;
        let (to, mut receiver) = pair().await;
        let mut pipe = Pipe::new().expect("pipe");
        assert_eq!(capacity(&pipe), DEFAULT_PIPE_SIZE as i32);
        let total = 2 * GROW_AFTER as usize;
        let writer = tokio::spawn(async move {
            sender.write_all(&vec![7u8; total]).await.expect("write");
            sender
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; total];
            receiver.read_exact(&mut got).await.expect("read");
            got
        });
        let mut moved = 0;
        while moved < total {
            from.readable().await.expect("readable");
            let spliced = match pipe.fill_from(&from, SPLICE_CHUNK) {
                Ok(spliced) => spliced,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => panic!("{error}"),
            };
            let mut left = spliced;
            while left > 0 {
                to.writable().await.expect("writable");
                match pipe.drain_to(&to, left) {
                    Ok(written) => left -= written,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => panic!("{error}"),
                }
            }
            moved += spliced;
        }
        let _sender = writer.await.expect("writer");
        assert!(reader.await.expect("reader").iter().all(|byte| *byte == 7));
        assert!(pipe.grown);
        assert_eq!(capacity(&pipe), BULK_PIPE_SIZE as i32);
        pipe.shrink();
        assert_eq!(capacity(&pipe), DEFAULT_PIPE_SIZE as i32);
        assert_eq!((pipe.grown, pipe.filled), (false, 0));
    }
}
