//! Forwarding an admitted absolute-form request: the request goes out re-framed, the
//! response comes back re-framed, interim responses are relayed, upgrades become tunnels, and
//! both connections are kept alive only when every byte of both messages was accounted for.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{
    Client, Denial, Exchange, READ_CHUNK, WriteError, client_wants_keep_alive, connect_upstream,
    refuse, respond_error, write_all_timed, write_client,
};
use crate::access_log::Decision;
use crate::drain::Ending;
use crate::http1::chunked::{LAST_CHUNK, encode_chunk_header};
use crate::http1::head::{find_head_end, parse_response};
use crate::http1::{ChunkError, ChunkedDecoder, Decoded, Framing, Head, HeadError, Version};
use crate::target::AbsoluteTarget;
use crate::tunnel::{self, BodySpliceError};
use crate::upstream::{PoolKey, UpstreamConn};
use crate::{ForwardedFor, Proxy};

/// Read size while streaming large bodies.
const BODY_CHUNK: usize = 64 * 1024;
/// Response bodies up to this size that are already buffered go out in the same write as
/// the head.
const COALESCE_LIMIT: usize = 16 * 1024;
/// Fixed-length bodies at least this large go origin -> client with `splice(2)`: below it,
/// a pipe's set-up costs more than the copies it saves.
const SPLICE_MIN_BODY: u64 = 256 * 1024;

/// What admission decided for a request that is to be forwarded.
pub(super) struct Plan {
    pub target: AbsoluteTarget,
    /// Vetted addresses of the origin; only these are dialled.
    pub addresses: Vec<IpAddr>,
    pub max_forwards: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("upstream closed the connection before responding")]
    UpstreamClosedEarly,
    #[error("upstream I/O error: {0}")]
    UpstreamIo(std::io::Error),
    #[error("upstream did not respond within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("malformed response from upstream: {0}")]
    BadResponse(HeadError),
    #[error("upstream answered 101 to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("client connection failed: {0}")]
    ClientIo(std::io::Error),
    #[error("client closed before sending the whole body")]
    ClientClosedEarly,
    #[error("client body timed out")]
    ClientTimeout,
    #[error("client sent the request body slower than {min_rate} B/s over {window:?}")]
    ClientTooSlow { min_rate: u64, window: Duration },
    #[error("malformed chunked request body: {0}")]
    BadRequestBody(ChunkError),
    #[error("malformed chunked response body: {0}")]
    BadResponseBody(ChunkError),
    #[error("upstream closed before the whole body was sent")]
    UpstreamBodyTruncated,
    #[error("upstream sent more than {MAX_INTERIM_RESPONSES} interim responses")]
    TooManyInterimResponses,
}

impl ExchangeError {
    /// Status for the client if no response has been started yet.
    fn status(&self) -> u16 {
        match self {
            ExchangeError::UpstreamTimeout(_) => 504,
            ExchangeError::ClientTooSlow { .. } => 408,
            ExchangeError::BadRequestBody(_) => 400,
            ExchangeError::ClientIo(_)
            | ExchangeError::ClientClosedEarly
            | ExchangeError::ClientTimeout => 400,
            _ => 502,
        }
    }

    /// The request failed in a way that retrying on a fresh connection can fix: a pooled
    /// connection the origin had closed just as we reused it.
    fn is_stale_connection(&self) -> bool {
        matches!(
            self,
            ExchangeError::UpstreamClosedEarly | ExchangeError::UpstreamIo(_)
        )
    }
}

pub(super) async fn forward(
    proxy: &Arc<Proxy>,
    client: &mut Client,
    // Borrowed: an async fn keeps its by-value arguments twice in its state, and every byte
    // of a request's future is copied when the future is boxed.
    head: &Head,
    plan: Plan,
    mut exchange: Exchange,
    ending: &Ending,
) -> bool {
    let Plan {
        target,
        addresses,
        max_forwards,
    } = plan;
    let addresses = &addresses[..];
    let key = PoolKey {
        host: target.authority.host.clone(),
        port: target.authority.port,
    };
    // Only WebSocket is tunnelled: after a 101 the client speaks to the origin unchecked, so
    // an h2c upgrade (h2c smuggling) or any other protocol is not offered; the request goes
    // on as a plain one without its Upgrade header.
    let wants_upgrade = head.method() == "GET"
        && head.connection.upgrade
        && head
            .header("upgrade")
            .is_some_and(|value| value.eq_ignore_ascii_case(b"websocket"));
    let request_head = build_upstream_request(
        proxy,
        head,
        &target,
        max_forwards,
        wants_upgrade,
        exchange.client.ip(),
    );
    // RFC 9110 9.2.2: only idempotent requests may be retried automatically, and only
    // bodiless ones can be, since the body is streamed, not kept.
    let retryable = matches!(
        head.method(),
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    ) && head.framing == Framing::Empty;
    let mut allow_reuse = true;
    let (mut upstream, response, body_state) = loop {
        let pooled = if allow_reuse {
            proxy
                .pool
                .checkout(&key, !retryable)
                .filter(|conn| addresses.contains(&conn.peer.ip()))
        } else {
            None
        };
        let mut upstream = match pooled {
            Some(conn) => {
                exchange.upstream = Some(conn.peer);
                conn
            }
            None => match connect_upstream(proxy, &mut exchange, addresses, &key).await {
                Ok(conn) => conn,
                Err(error) => {
                    let denial = Denial::connect_failed(&error);
                    return refuse(proxy, client, exchange, head, denial).await;
                }
            },
        };
        match send_request(
            proxy,
            client,
            &mut upstream,
            head,
            &request_head,
            &mut exchange,
        )
        .await
        {
            Ok((response, body_state)) => break (upstream, response, body_state),
            Err(error) if upstream.reused && retryable && error.is_stale_connection() => {
                // A pooled connection the origin closed as we reused it: once more, fresh.
                allow_reuse = false;
                continue;
            }
            Err(error) => {
                exchange.decision = Decision::Error;
                let close = true;
                if !matches!(
                    error,
                    ExchangeError::ClientIo(_) | ExchangeError::ClientClosedEarly
                ) {
                    // The connection closes next, delivered or not.
                    let _ = respond_error(
                        proxy,
                        client,
                        &mut exchange,
                        error.status(),
                        &error.to_string(),
                        close,
                    )
                    .await;
                } else {
                    exchange.status = 499;
                }
                exchange.reason = error.to_string();
                proxy.finish(exchange);
                return false;
            }
        }
    };
    exchange.decision = Decision::Allow;
    exchange.status = response.status();

    if response.status() == 101 {
        if !wants_upgrade {
            let error = ExchangeError::UnexpectedUpgrade;
            let _ =
                respond_error(proxy, client, &mut exchange, 502, &error.to_string(), true).await;
            exchange.decision = Decision::Error;
            exchange.reason = error.to_string();
            proxy.finish(exchange);
            return false;
        }
        // Boxed: the rare WebSocket relay would otherwise set the size of every request's
        // future (copied whole when it is boxed per request).
        return Box::pin(relay_upgrade(proxy, client, upstream, &response, exchange)).await;
    }

    // The request body is complete, or abandoned because the origin answered early; in
    // that case neither connection can be reused.
    let request_complete = body_state == BodyState::Complete;
    let client_keep_alive =
        request_complete && client_wants_keep_alive(head) && !ending.is_closing();
    let (client_framing, client_keep_alive) =
        client_framing(&response, head.version, client_keep_alive);
    let mut out = BytesMut::with_capacity(512);
    write_response_head(
        proxy,
        &response,
        head.version,
        client_framing,
        client_keep_alive,
        &mut out,
    );
    let result = copy_response_body(
        proxy,
        &mut upstream,
        &mut client.stream,
        response.framing,
        client_framing,
        out,
    )
    .await;
    match result {
        Ok(sent) => {
            exchange.to_client += sent;
            let upstream_reusable = request_complete
                && response.framing != Framing::UntilClose
                && upstream_keep_alive(&response);
            if upstream_reusable {
                let mut upstream = upstream;
                upstream.verify_on_reuse = response.framing == Framing::Empty;
                proxy.pool.checkin(upstream);
            }
            proxy.finish(exchange);
            client_keep_alive && client_framing != ClientFraming::UntilClose
        }
        Err((sent, error)) => {
            exchange.to_client += sent;
            exchange.reason = error.to_string();
            proxy.finish(exchange);
            false
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    Complete,
    Abandoned,
}

/// Writes the request (head and body) and reads the response head, relaying interim 1xx
/// responses. The body is sent concurrently with waiting for the response, so
/// `Expect: 100-continue` and early responses work.
async fn send_request(
    proxy: &Proxy,
    client: &mut Client,
    upstream: &mut UpstreamConn,
    head: &Head,
    request_head: &[u8],
    exchange: &mut Exchange,
) -> Result<(Head, BodyState), ExchangeError> {
    let read_timeout = proxy.config.read_timeout;
    write_all_timed(
        &mut upstream.stream,
        request_head,
        proxy.config.write_timeout,
    )
    .await
    .map_err(upstream_write_error)?;
    if head.framing == Framing::Empty {
        let (mut upstream_read, _) = upstream.stream.split();
        let response = read_response_head(
            proxy,
            &mut upstream_read,
            &mut upstream.buf,
            &mut client.stream,
            head,
            ResponseWait::Deadline(Instant::now() + read_timeout, read_timeout),
            &mut exchange.to_client,
        )
        .await?;
        return Ok((response, BodyState::Complete));
    }
    let (mut client_read, mut client_write) = client.stream.split();
    let (mut upstream_read, mut upstream_write) = upstream.stream.split();
    let mut from_client = 0u64;
    let mut to_client = 0u64;
    let outcome = {
        let body = copy_request_body(
            proxy,
            &mut client.buf,
            &mut client_read,
            &mut upstream_write,
            head.framing,
            &mut from_client,
        );
        // The origin may answer only once it has the whole body, however long the upload
        // takes: the wait for its response starts counting when the body is complete (the
        // upload itself is bounded by per-read and per-write timeouts).
        let response = read_response_head(
            proxy,
            &mut upstream_read,
            &mut upstream.buf,
            &mut client_write,
            head,
            ResponseWait::Unbounded,
            &mut to_client,
        );
        tokio::pin!(body);
        tokio::pin!(response);
        let mut body_done = false;
        let response_deadline = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(response_deadline);
        loop {
            tokio::select! {
                result = &mut body, if !body_done => {
                    result?;
                    body_done = true;
                    response_deadline.as_mut().reset(Instant::now() + read_timeout);
                }
                result = &mut response => {
                    let response = result?;
                    let state = if body_done { BodyState::Complete } else { BodyState::Abandoned };
                    break Ok::<_, ExchangeError>((response, state));
                }
                () = &mut response_deadline, if body_done => {
                    break Err(ExchangeError::UpstreamTimeout(read_timeout));
                }
            }
        }
    };
    exchange.from_client += from_client;
    exchange.to_client += to_client;
    outcome
}

fn upstream_write_error(error: WriteError) -> ExchangeError {
    match error {
        WriteError::Io(error) => ExchangeError::UpstreamIo(error),
        WriteError::Timeout(timeout) => ExchangeError::UpstreamTimeout(timeout),
    }
}

fn client_write_error(error: WriteError) -> ExchangeError {
    match error {
        WriteError::Io(error) => ExchangeError::ClientIo(error),
        WriteError::Timeout(_) => ExchangeError::ClientTimeout,
    }
}

/// Streams the request body to the origin, re-framed: Content-Length bodies byte-exact,
/// chunked bodies decoded strictly and re-encoded by us.
async fn copy_request_body<R, W>(
    proxy: &Proxy,
    buf: &mut BytesMut,
    from: &mut R,
    to: &mut W,
    framing: Framing,
    counted: &mut u64,
) -> Result<(), ExchangeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let write_timeout = proxy.config.write_timeout;
    let mut pace = BodyPace::new(&proxy.config);
    match framing {
        Framing::Empty | Framing::UntilClose => Ok(()),
        Framing::Length(mut remaining) => {
            while remaining > 0 {
                if buf.is_empty() {
                    pace.fill(from, buf).await?;
                }
                let take = remaining.min(buf.len() as u64) as usize;
                write_all_timed(to, &buf[..take], write_timeout)
                    .await
                    .map_err(upstream_write_error)?;
                buf.advance(take);
                remaining -= take as u64;
                *counted += take as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut out = BytesMut::new();
            loop {
                let before = buf.len();
                let step = decoder.decode(buf).map_err(ExchangeError::BadRequestBody)?;
                *counted += (before - buf.len()) as u64;
                match step {
                    Decoded::Data(data) => {
                        out.clear();
                        encode_chunk_header(data.len(), &mut out);
                        out.extend_from_slice(&data);
                        out.extend_from_slice(b"\r\n");
                        write_all_timed(to, &out, write_timeout)
                            .await
                            .map_err(upstream_write_error)?;
                    }
                    Decoded::NeedMore => {
                        pace.fill(from, buf).await?;
                    }
                    Decoded::Done => {
                        write_all_timed(to, LAST_CHUNK, write_timeout)
                            .await
                            .map_err(upstream_write_error)?;
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The request body's minimum rate (security review F11). A per-read timeout alone lets a
/// client send one byte just before each timeout and hold its connection and an upstream
/// connection for ever; a total deadline would cut large legitimate uploads. So, as Apache's
/// `mod_reqtimeout` does: over every `body_rate_window` of time spent waiting for the client
/// (time the upstream takes to accept bytes is not the client's fault and is not counted),
/// at least `min_body_rate` bytes per second must arrive.
struct BodyPace {
    read_timeout: Duration,
    min_rate: u64,
    window: Duration,
    waited: Duration,
    received: u64,
}

impl BodyPace {
    fn new(config: &crate::Config) -> BodyPace {
        BodyPace {
            read_timeout: config.read_timeout,
            min_rate: config.min_body_rate,
            window: config.body_rate_window,
            waited: Duration::ZERO,
            received: 0,
        }
    }

    /// Reads at least one byte of body into `buf`.
    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        from: &mut R,
        buf: &mut BytesMut,
    ) -> Result<usize, ExchangeError> {
        buf.reserve(BODY_CHUNK);
        let read_deadline = Instant::now() + self.read_timeout;
        loop {
            let started = Instant::now();
            // Wake at the end of the window to judge the rate even if nothing arrives.
            let window_end = (self.min_rate > 0).then(|| started + (self.window - self.waited));
            let deadline = window_end.map_or(read_deadline, |end| end.min(read_deadline));
            let read = tokio::time::timeout_at(deadline, from.read_buf(buf)).await;
            let read = match read {
                Ok(Ok(0)) => return Err(ExchangeError::ClientClosedEarly),
                Ok(Ok(read)) => read,
                Ok(Err(error)) => return Err(ExchangeError::ClientIo(error)),
                Err(_) if Instant::now() >= read_deadline => {
                    return Err(ExchangeError::ClientTimeout);
                }
                Err(_) => 0,
            };
            self.record(started.elapsed(), read)?;
            if read > 0 {
                return Ok(read);
            }
        }
    }

    fn record(&mut self, waited: Duration, received: usize) -> Result<(), ExchangeError> {
        if self.min_rate == 0 {
            return Ok(());
        }
        self.waited += waited;
        self.received += received as u64;
        if self.waited >= self.window {
            let required = self.min_rate as u128 * self.waited.as_millis() / 1000;
            if u128::from(self.received) < required {
                return Err(ExchangeError::ClientTooSlow {
                    min_rate: self.min_rate,
                    window: self.window,
                });
            }
            self.waited = Duration::ZERO;
            self.received = 0;
        }
        Ok(())
    }
}

enum FillError {
    Closed,
    Io(std::io::Error),
    Timeout,
}

fn upstream_read_error(error: FillError, read_timeout: Duration) -> ExchangeError {
    match error {
        FillError::Closed => ExchangeError::UpstreamClosedEarly,
        FillError::Io(error) => ExchangeError::UpstreamIo(error),
        FillError::Timeout => ExchangeError::UpstreamTimeout(read_timeout),
    }
}

/// Reads at least one byte into `buf`.
async fn fill<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut BytesMut,
    chunk: usize,
    read_timeout: Duration,
) -> Result<usize, FillError> {
    buf.reserve(chunk);
    match tokio::time::timeout(read_timeout, from.read_buf(buf)).await {
        Ok(Ok(0)) => Err(FillError::Closed),
        Ok(Ok(read)) => Ok(read),
        Ok(Err(error)) => Err(FillError::Io(error)),
        Err(_) => Err(FillError::Timeout),
    }
}

/// How long to wait for a response head.
#[derive(Clone, Copy)]
enum ResponseWait {
    /// The whole head (interim responses included) by this instant; the duration is for
    /// the error message.
    Deadline(Instant, Duration),
    /// The caller bounds the wait.
    Unbounded,
}

/// More interim responses than this for one request is an origin playing games.
const MAX_INTERIM_RESPONSES: usize = 8;

/// Reads the final response head, relaying interim responses (100, 102, 103) to HTTP/1.1
/// clients with their fields (103 Early Hints carries `Link`).
async fn read_response_head<R, W>(
    proxy: &Proxy,
    from: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    request: &Head,
    wait: ResponseWait,
    to_client: &mut u64,
) -> Result<Head, ExchangeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limits = proxy.config.head_limits;
    for _ in 0..=MAX_INTERIM_RESPONSES {
        let mut scanned = 0;
        let raw = loop {
            match find_head_end(buf, &mut scanned, limits.max_head_bytes) {
                Ok(Some(end)) => break buf.split_to(end).freeze(),
                Ok(None) => {}
                Err(error) => return Err(ExchangeError::BadResponse(error)),
            }
            let was_empty = buf.is_empty();
            buf.reserve(READ_CHUNK);
            let read = match wait {
                ResponseWait::Deadline(deadline, timeout) => {
                    match tokio::time::timeout_at(deadline, from.read_buf(buf)).await {
                        Ok(read) => read,
                        Err(_) => return Err(ExchangeError::UpstreamTimeout(timeout)),
                    }
                }
                ResponseWait::Unbounded => from.read_buf(buf).await,
            };
            match read {
                Ok(0) if was_empty => {
                    // A reused connection closed before any byte of the response: stale.
                    return Err(ExchangeError::UpstreamClosedEarly);
                }
                Ok(0) => return Err(ExchangeError::BadResponse(HeadError::InvalidStatusLine)),
                Ok(_) => {}
                Err(error) => return Err(ExchangeError::UpstreamIo(error)),
            }
        };
        let response =
            parse_response(raw, limits, request.method()).map_err(ExchangeError::BadResponse)?;
        let status = response.status();
        if status == 101 || !(100..200).contains(&status) {
            return Ok(response);
        }
        // Interim responses: relay to HTTP/1.1 clients only (RFC 9110 15.2).
        if request.version == Version::Http11 {
            let mut out = BytesMut::with_capacity(256);
            out.extend_from_slice(b"HTTP/1.1 ");
            put_decimal(&mut out, u64::from(status));
            out.extend_from_slice(b" ");
            out.extend_from_slice(response.reason());
            out.extend_from_slice(b"\r\n");
            for (name, value) in response.headers() {
                if !is_hop_by_hop(name, &response) {
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value);
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"\r\n");
            write_client(proxy, client, &out)
                .await
                .map_err(client_write_error)?;
            *to_client += out.len() as u64;
        }
    }
    Err(ExchangeError::TooManyInterimResponses)
}

/// How the response body is framed towards the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn client_framing(
    response: &Head,
    client_version: Version,
    keep_alive: bool,
) -> (ClientFraming, bool) {
    match response.framing {
        Framing::Empty => (ClientFraming::Empty, keep_alive),
        Framing::Length(length) => (ClientFraming::Length(length), keep_alive),
        Framing::Chunked | Framing::UntilClose => match client_version {
            // Re-chunking keeps an HTTP/1.1 client's connection alive even when the origin
            // delimits by closing.
            Version::Http11 => (ClientFraming::Chunked, keep_alive),
            Version::Http10 => (ClientFraming::UntilClose, false),
        },
    }
}

fn upstream_keep_alive(response: &Head) -> bool {
    let both_framings = response.header("transfer-encoding").is_some()
        && response.header("content-length").is_some();
    !both_framings
        && match response.version {
            Version::Http11 => !response.connection.close,
            Version::Http10 => response.connection.keep_alive && !response.connection.close,
        }
}

/// Appends `value` in decimal.
fn put_decimal(out: &mut BytesMut, value: u64) {
    out.extend_from_slice(crate::decimal::decimal(value, &mut [0; 20]));
}

/// Hop-by-hop fields (RFC 9110 7.6.1) plus the framing fields we always set ourselves:
/// connection, proxy-connection, keep-alive, te, trailer, transfer-encoding, upgrade,
/// proxy-authorization, proxy-authenticate, content-length. Sorted by length first: this runs
/// for every field of every message, and most names share a length with none of them.
fn is_hop_by_hop_name(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        7 => &[b"trailer", b"upgrade"],
        10 => &[b"connection", b"keep-alive"],
        14 => &[b"content-length"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        18 => &[b"proxy-authenticate"],
        19 => &[b"proxy-authorization"],
        _ => return false,
    };
    candidates
        .iter()
        .any(|candidate| name.eq_ignore_ascii_case(candidate))
}

/// Whether a header must not be forwarded: hop-by-hop, or named by `Connection`.
fn is_hop_by_hop(name: &[u8], head: &Head) -> bool {
    if is_hop_by_hop_name(name) {
        return true;
    }
    head.connection.names_fields
        && head.header_all("connection").any(|value| {
            value
                .split(|byte| *byte == b',')
                .any(|token| crate::http1::head::trim_ows(token).eq_ignore_ascii_case(name))
        })
}

fn build_upstream_request(
    proxy: &Proxy,
    head: &Head,
    target: &AbsoluteTarget,
    max_forwards: Option<u64>,
    upgrade: bool,
    client: IpAddr,
) -> BytesMut {
    let forwarded_for = proxy.config.forwarded_for;
    let mut out = BytesMut::with_capacity(head.len() + 128);
    out.extend_from_slice(head.method().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    target.authority.write_host_header(&mut out);
    out.extend_from_slice(b"\r\n");
    for (name, value) in head.headers() {
        if is_hop_by_hop(name, head)
            // Backends in the CGI tradition read `Content_Length` as Content-Length:
            // names with underscores are dropped, as nginx does by default.
            || name.contains(&b'_')
            || name.eq_ignore_ascii_case(b"http2-settings")
            || name.eq_ignore_ascii_case(b"host")
            || (max_forwards.is_some() && name.eq_ignore_ascii_case(b"max-forwards"))
            // An HTTP/1.0 client's Expect must be ignored (RFC 9110 10.1.1).
            || (head.version == Version::Http10 && name.eq_ignore_ascii_case(b"expect"))
            || (forwarded_for != ForwardedFor::Transparent
                && name.eq_ignore_ascii_case(b"x-forwarded-for"))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(max_forwards) = max_forwards {
        out.extend_from_slice(b"Max-Forwards: ");
        put_decimal(&mut out, max_forwards - 1);
        out.extend_from_slice(b"\r\n");
    }
    write_forwarded_for(&mut out, forwarded_for, head, client);
    out.extend_from_slice(b"Via: ");
    out.extend_from_slice(proxy.via_for(head.version).as_bytes());
    out.extend_from_slice(b"\r\n");
    match head.framing {
        Framing::Length(length) => {
            out.extend_from_slice(b"Content-Length: ");
            put_decimal(&mut out, length);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if let (true, Some(value)) = (upgrade, head.header("upgrade")) {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One `X-Forwarded-For` line (the client's lines merged into one list, so that origins
/// reading only the first line see it all), as `forwarded_for` says.
fn write_forwarded_for(out: &mut BytesMut, mode: ForwardedFor, head: &Head, client: IpAddr) {
    let hop = match mode {
        ForwardedFor::Transparent | ForwardedFor::Delete => return,
        ForwardedFor::On | ForwardedFor::Truncate => client.to_canonical().to_string(),
        ForwardedFor::Off => "unknown".to_owned(),
    };
    out.extend_from_slice(b"X-Forwarded-For: ");
    let mut first = true;
    if mode != ForwardedFor::Truncate {
        for value in head.header_all("x-forwarded-for") {
            let value = crate::http1::head::trim_ows(value);
            if value.is_empty() {
                continue;
            }
            if !first {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(value);
            first = false;
        }
    }
    if !first {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(hop.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_response_head(
    proxy: &Proxy,
    response: &Head,
    client_version: Version,
    framing: ClientFraming,
    keep_alive: bool,
    out: &mut BytesMut,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(response.status()));
    out.extend_from_slice(b" ");
    out.extend_from_slice(response.reason());
    out.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        let keep_length =
            framing == ClientFraming::Empty && name.eq_ignore_ascii_case(b"content-length");
        if is_hop_by_hop(name, response) && !keep_length {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Via: ");
    out.extend_from_slice(proxy.via_for(response.version).as_bytes());
    out.extend_from_slice(b"\r\n");
    match framing {
        ClientFraming::Length(length) => {
            out.extend_from_slice(b"Content-Length: ");
            put_decimal(out, length);
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::Empty | ClientFraming::UntilClose => {}
    }
    if !keep_alive || framing == ClientFraming::UntilClose {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Streams the response body; `out` holds the response head, which goes out with the first
/// piece of body. Returns bytes written to the client.
async fn copy_response_body(
    proxy: &Proxy,
    upstream: &mut UpstreamConn,
    client: &mut TcpStream,
    framing: Framing,
    client_framing: ClientFraming,
    mut out: BytesMut,
) -> Result<u64, (u64, ExchangeError)> {
    let read_timeout = proxy.config.read_timeout;
    let mut sent = 0u64;
    let buf = &mut upstream.buf;
    let stream = &mut upstream.stream;
    macro_rules! send {
        ($bytes:expr) => {{
            let bytes: &[u8] = $bytes;
            if let Err(error) = write_client(proxy, client, bytes).await {
                return Err((sent, client_write_error(error)));
            }
            sent += bytes.len() as u64;
        }};
    }
    let chunked_out = client_framing == ClientFraming::Chunked;
    match framing {
        Framing::Empty => {
            send!(&out);
        }
        Framing::Length(mut remaining) => {
            // Coalesce the head with a small body already received.
            let take = remaining.min(buf.len() as u64) as usize;
            if take <= COALESCE_LIMIT {
                out.extend_from_slice(&buf[..take]);
                buf.advance(take);
                remaining -= take as u64;
            }
            send!(&out);
            if remaining >= SPLICE_MIN_BODY {
                // What came with the head goes first, the rest through the kernel.
                let take = remaining.min(buf.len() as u64) as usize;
                if take > 0 {
                    send!(&buf[..take]);
                    buf.advance(take);
                    remaining -= take as u64;
                }
                let write_timeout = proxy.config.write_timeout;
                match tunnel::splice_body(stream, client, remaining, read_timeout, write_timeout)
                    .await
                {
                    Ok(moved) => {
                        sent += moved;
                        remaining = 0;
                    }
                    // No pipe to be had: copy, as below.
                    Err((_, BodySpliceError::NoPipe(_))) => {}
                    Err((moved, error)) => {
                        let error = match error {
                            BodySpliceError::NoPipe(error) | BodySpliceError::UpstreamIo(error) => {
                                ExchangeError::UpstreamIo(error)
                            }
                            BodySpliceError::UpstreamClosed => ExchangeError::UpstreamBodyTruncated,
                            BodySpliceError::UpstreamTimeout => {
                                ExchangeError::UpstreamTimeout(read_timeout)
                            }
                            BodySpliceError::ClientIo(error) => ExchangeError::ClientIo(error),
                            BodySpliceError::ClientTimeout => ExchangeError::ClientTimeout,
                        };
                        return Err((sent + moved, error));
                    }
                }
            }
            while remaining > 0 {
                if buf.is_empty()
                    && let Err(error) = fill(stream, buf, BODY_CHUNK, read_timeout).await
                {
                    let error = match error {
                        FillError::Closed => ExchangeError::UpstreamBodyTruncated,
                        other => upstream_read_error(other, read_timeout),
                    };
                    return Err((sent, error));
                }
                let take = remaining.min(buf.len() as u64) as usize;
                send!(&buf[..take]);
                buf.advance(take);
                remaining -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => {
                        if chunked_out {
                            encode_chunk_header(data.len(), &mut out);
                        }
                        out.extend_from_slice(&data);
                        if chunked_out {
                            out.extend_from_slice(b"\r\n");
                        }
                        if out.len() >= COALESCE_LIMIT {
                            send!(&out);
                            out.clear();
                        }
                    }
                    Ok(Decoded::NeedMore) => {
                        if !out.is_empty() {
                            send!(&out);
                            out.clear();
                        }
                        if let Err(error) = fill(stream, buf, BODY_CHUNK, read_timeout).await {
                            let error = match error {
                                FillError::Closed => ExchangeError::UpstreamBodyTruncated,
                                other => upstream_read_error(other, read_timeout),
                            };
                            return Err((sent, error));
                        }
                    }
                    Ok(Decoded::Done) => {
                        if chunked_out {
                            out.extend_from_slice(LAST_CHUNK);
                        }
                        send!(&out);
                        break;
                    }
                    Err(error) => return Err((sent, ExchangeError::BadResponseBody(error))),
                }
            }
        }
        Framing::UntilClose => {
            loop {
                if !buf.is_empty() {
                    if chunked_out {
                        encode_chunk_header(buf.len(), &mut out);
                    }
                    out.extend_from_slice(buf);
                    buf.clear();
                    if chunked_out {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                if !out.is_empty() {
                    send!(&out);
                    out.clear();
                }
                match fill(stream, buf, BODY_CHUNK, read_timeout).await {
                    Ok(_) => {}
                    Err(FillError::Closed) => break,
                    Err(other) => return Err((sent, upstream_read_error(other, read_timeout))),
                }
            }
            if chunked_out {
                send!(LAST_CHUNK);
            }
        }
    }
    Ok(sent)
}

/// 101 Switching Protocols: relay the response head, then tunnel bytes both ways.
async fn relay_upgrade(
    proxy: &Proxy,
    client: &mut Client,
    mut upstream: UpstreamConn,
    response: &Head,
    mut exchange: Exchange,
) -> bool {
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(response.reason());
    out.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        if is_hop_by_hop(name, response) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(upgrade) = response.header("upgrade") {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(upgrade);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Via: ");
    out.extend_from_slice(proxy.via_for(response.version).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if write_client(proxy, &mut client.stream, &out).await.is_err() {
        proxy.finish(exchange);
        return false;
    }
    exchange.to_client += out.len() as u64;
    let client_pending = std::mem::take(&mut client.buf);
    let upstream_pending = std::mem::take(&mut upstream.buf);
    let bytes = tunnel::run(
        &mut client.stream,
        client_pending,
        &mut upstream.stream,
        upstream_pending,
        proxy.config.tunnel_idle_timeout,
    )
    .await;
    exchange.from_client += bytes.from_client;
    exchange.to_client += bytes.to_client;
    proxy.finish(exchange);
    false
}

#[cfg(test)]
mod tests {
    use super::is_hop_by_hop_name;

    #[test]
    fn hop_by_hop_names_whatever_their_case() {
        let listed = [
            "connection",
            "proxy-connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "content-length",
        ];
        for name in listed {
            assert!(is_hop_by_hop_name(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop_name(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
        }
        for name in [
            "host",
            "content-type",
            "tE ",
            "trailers",
            "via",
            "x-forwarded-for",
            "",
        ] {
            assert!(!is_hop_by_hop_name(name.as_bytes()), "{name}");
        }
    }
}
