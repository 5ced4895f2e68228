//! One client connection: read a request head, decide, forward or tunnel, repeat while the
//! connection may be kept alive.
//!
//! The order of checks is the security argument: the whole head is parsed and its framing
//! validated before anything else happens; the client allowlist, the target, loops, the
//! policy and the destination address are all judged before a byte goes upstream; a body is
//! forwarded only re-framed by us, so the origin never parses the client's framing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use palisade_policy::{Action, BlockPageContext, CompiledPolicy, RequestFacts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Proxy;
use crate::access_log::{AccessRecord, Decision};
use crate::error_page::{Stamp, error_response, html_response};
use crate::http1::chunked::{LAST_CHUNK, encode_chunk_header};
use crate::http1::head::{find_head_end, parse_request, parse_response};
use crate::http1::{ChunkError, ChunkedDecoder, Decoded, Framing, Head, HeadError, Version};
use crate::ssrf::{DeniedClass, canonical, classify};
use crate::target::{AbsoluteTarget, Authority, parse_absolute, parse_connect};
use crate::tunnel;
use crate::upstream::{ConnectError, PoolKey, UpstreamConn, dial};

/// Read size for heads and small bodies.
const READ_CHUNK: usize = 8 * 1024;
/// Read size while streaming large bodies.
const BODY_CHUNK: usize = 64 * 1024;
/// Response bodies up to this size that are already buffered go out in the same write as
/// the head.
const COALESCE_LIMIT: usize = 16 * 1024;

/// The client side of a connection.
struct Client {
    stream: TcpStream,
    /// Bytes received but not yet consumed. Empty and unallocated while idle, so a kept-alive
    /// connection costs little memory.
    buf: BytesMut,
    addr: SocketAddr,
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve_connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    addr: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        stream,
        buf: BytesMut::new(),
        addr,
    };
    loop {
        let head = match read_request_head(&proxy, &mut client, &shutdown).await {
            HeadRead::Head(head) => head,
            HeadRead::Closed => break,
            HeadRead::Invalid(error) => {
                let mut exchange = Exchange::new(&proxy, &client, "-", "-".to_owned());
                exchange.reason = error.to_string();
                respond_error(
                    &proxy,
                    &mut client,
                    &mut exchange,
                    error.status(),
                    &error.to_string(),
                    true,
                )
                .await;
                proxy.finish(exchange);
                break;
            }
        };
        // Boxed: the request future is large, and an idle kept-alive connection should not
        // carry its space while it waits for the next request.
        let keep_alive = Box::pin(handle_request(&proxy, &mut client, head, &shutdown)).await;
        if !keep_alive {
            break;
        }
        if client.buf.is_empty() {
            // Give the memory back while the connection idles.
            client.buf = BytesMut::new();
        }
    }
    tracing::trace!(client.addr = %addr, "Connection closed");
}

enum HeadRead {
    Head(Head),
    Closed,
    Invalid(HeadError),
}

async fn read_request_head(
    proxy: &Proxy,
    client: &mut Client,
    shutdown: &CancellationToken,
) -> HeadRead {
    let limits = proxy.config.head_limits;
    let mut scanned = 0;
    // Once a head has started it must be complete within read_timeout, however slowly its
    // bytes trickle in (slowloris).
    let mut head_deadline =
        (!client.buf.is_empty()).then(|| Instant::now() + proxy.config.read_timeout);
    loop {
        match find_head_end(&client.buf, &mut scanned, limits.max_head_bytes) {
            Ok(Some(end)) => {
                let raw = client.buf.split_to(end).freeze();
                return match parse_request(raw, limits) {
                    Ok(head) => HeadRead::Head(head),
                    Err(error) => HeadRead::Invalid(error),
                };
            }
            Ok(None) => {}
            Err(error) => return HeadRead::Invalid(error),
        }
        // Between requests, wait for readability without holding a buffer, and let a drain
        // close idle connections.
        if client.buf.is_empty() {
            let idle = proxy.config.client_idle_timeout;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return HeadRead::Closed,
                ready = tokio::time::timeout(idle, client.stream.readable()) => {
                    if !matches!(ready, Ok(Ok(()))) {
                        return HeadRead::Closed;
                    }
                }
            }
        }
        client.buf.reserve(READ_CHUNK);
        let deadline =
            head_deadline.unwrap_or_else(|| Instant::now() + proxy.config.client_idle_timeout);
        let read = tokio::time::timeout_at(deadline, client.stream.read_buf(&mut client.buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return HeadRead::Closed,
            Ok(Ok(_)) => {}
        }
        head_deadline.get_or_insert_with(|| Instant::now() + proxy.config.read_timeout);
    }
}

/// Everything the access log and metrics need about one request.
struct Exchange {
    request_id: String,
    time: SystemTime,
    start: Instant,
    client: SocketAddr,
    method: String,
    url: String,
    status: u16,
    from_client: u64,
    to_client: u64,
    rule: Arc<str>,
    decision: Decision,
    reason: String,
    upstream: Option<SocketAddr>,
}

impl Exchange {
    fn new(proxy: &Proxy, client: &Client, method: &str, url: String) -> Exchange {
        Exchange {
            request_id: proxy.next_request_id(),
            time: SystemTime::now(),
            start: Instant::now(),
            client: client.addr,
            method: method.to_owned(),
            url,
            status: 0,
            from_client: 0,
            to_client: 0,
            rule: Arc::from("-"),
            decision: Decision::Error,
            reason: String::new(),
            upstream: None,
        }
    }
}

impl Proxy {
    fn finish(&self, exchange: Exchange) {
        self.metrics.record_request(
            exchange.decision.as_str(),
            exchange.status,
            exchange.from_client,
            exchange.to_client,
        );
        if exchange.decision != Decision::Allow {
            tracing::info!(
                request_id = %exchange.request_id,
                client = %exchange.client,
                method = %exchange.method,
                url = %exchange.url,
                status = exchange.status,
                decision = exchange.decision.as_str(),
                rule = %exchange.rule,
                reason = %exchange.reason,
                "request refused"
            );
        }
        self.access_log.log(AccessRecord {
            time: exchange.time,
            client: exchange.client,
            method: exchange.method,
            url: exchange.url,
            status: exchange.status,
            bytes_from_client: exchange.from_client,
            bytes_to_client: exchange.to_client,
            duration: exchange.start.elapsed(),
            rule: exchange.rule,
            decision: exchange.decision,
            reason: exchange.reason,
            upstream: exchange.upstream,
            node: self.node.clone(),
            request_id: exchange.request_id,
        });
    }

    fn stamp<'a>(&'a self, exchange: &'a Exchange) -> Stamp<'a> {
        Stamp {
            node: &self.node,
            request_id: &exchange.request_id,
        }
    }
}

async fn respond_error(
    proxy: &Proxy,
    client: &mut Client,
    exchange: &mut Exchange,
    status: u16,
    detail: &str,
    close: bool,
) {
    let response = error_response(status, detail, proxy.stamp(exchange), close);
    exchange.status = status;
    if client.stream.write_all(&response).await.is_ok() {
        exchange.to_client += response.len() as u64;
    }
}

/// Refuses a request without forwarding it. Returns whether the connection stays usable:
/// only when the request had no body (nothing left unread) and `close` was not asked for.
/// A refusal: status, how the access log classes it, and why.
struct Denial {
    status: u16,
    decision: Decision,
    reason: String,
}

fn denial(status: u16, decision: Decision, reason: impl Into<String>) -> Denial {
    Denial {
        status,
        decision,
        reason: reason.into(),
    }
}

async fn refuse(
    proxy: &Proxy,
    client: &mut Client,
    mut exchange: Exchange,
    head: &Head,
    denial: Denial,
    close: bool,
) -> bool {
    let Denial {
        status,
        decision,
        reason,
    } = denial;
    let close = close || head.framing != Framing::Empty || !client_wants_keep_alive(head);
    exchange.decision = decision;
    respond_error(proxy, client, &mut exchange, status, &reason, close).await;
    exchange.reason = reason;
    proxy.finish(exchange);
    !close
}

fn client_wants_keep_alive(head: &Head) -> bool {
    match head.version {
        Version::Http11 => !head.connection.close,
        Version::Http10 => head.connection.keep_alive && !head.connection.close,
    }
}

/// Handles one request; returns whether the client connection may carry another.
async fn handle_request(
    proxy: &Arc<Proxy>,
    client: &mut Client,
    head: Head,
    shutdown: &CancellationToken,
) -> bool {
    let mut exchange = Exchange::new(proxy, client, head.method(), head.target().to_owned());
    exchange.from_client = head.len() as u64;
    // One policy snapshot for the whole request: a reload mid-request does not affect it.
    let policy = proxy.policy.load_full();
    let client_ip = canonical(client.addr.ip());
    if !policy.client_allowed(client_ip) {
        let reason = format!("client {client_ip} is not allowed to use this proxy");
        return refuse(
            proxy,
            client,
            exchange,
            &head,
            denial(403, Decision::Deny, reason),
            true,
        )
        .await;
    }
    if head.method() == "CONNECT" {
        return handle_connect(proxy, client, head, exchange, &policy).await;
    }
    let target = match parse_absolute(head.target()) {
        Ok(target) => target,
        Err(error) => {
            return refuse(
                proxy,
                client,
                exchange,
                &head,
                denial(400, Decision::Error, error.to_string()),
                true,
            )
            .await;
        }
    };
    if is_our_via(proxy, &head) {
        let reason = "forwarding loop detected (our own Via header)".to_owned();
        return refuse(
            proxy,
            client,
            exchange,
            &head,
            denial(508, Decision::Deny, reason),
            true,
        )
        .await;
    }
    let max_forwards = match max_forwards(&head) {
        Ok(value) => value,
        Err(()) => {
            let reason = "invalid Max-Forwards".to_owned();
            return refuse(
                proxy,
                client,
                exchange,
                &head,
                denial(400, Decision::Error, reason),
                true,
            )
            .await;
        }
    };
    if max_forwards == Some(0) {
        exchange.rule = Arc::from("max-forwards");
        return answer_max_forwards(proxy, client, exchange, &head).await;
    }
    let host = target.authority.host.policy_form();
    let verdict = policy.evaluate(&RequestFacts {
        client: client_ip,
        method: head.method(),
        host: &host,
        port: target.authority.port,
        path: &target.path_and_query,
    });
    exchange.rule = verdict.rule.clone();
    if verdict.action == Action::Block {
        return block(proxy, client, exchange, &head, &policy).await;
    }
    let addresses = match vet_destination(proxy, &policy, &target.authority).await {
        Ok(addresses) => addresses,
        Err(refusal) => {
            let (status, decision) = refusal.status();
            return refuse(
                proxy,
                client,
                exchange,
                &head,
                denial(status, decision, refusal.to_string()),
                false,
            )
            .await;
        }
    };
    forward(
        proxy,
        client,
        head,
        target,
        &addresses,
        exchange,
        max_forwards,
        shutdown,
    )
    .await
}

/// Our Via entry already present means this request went round a loop back to us.
fn is_our_via(proxy: &Proxy, head: &Head) -> bool {
    head.header_all("via").any(|value| {
        value.split(|byte| *byte == b',').any(|entry| {
            // "1.1 node (palisade)": compare everything after the protocol version.
            let entry = crate::http1::head::trim_ows(entry);
            entry
                .iter()
                .position(|byte| *byte == b' ')
                .is_some_and(|space| &entry[space + 1..] == proxy.via_token.as_bytes())
        })
    })
}

/// `Max-Forwards` of an OPTIONS or TRACE request (RFC 9110 7.6.2); other methods ignore it.
fn max_forwards(head: &Head) -> Result<Option<u64>, ()> {
    if !matches!(head.method(), "OPTIONS" | "TRACE") {
        return Ok(None);
    }
    let Some(value) = head.header("max-forwards") else {
        return Ok(None);
    };
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    Ok(Some(value.iter().fold(0u64, |acc, digit| {
        acc * 10 + u64::from(digit - b'0')
    })))
}

/// RFC 9110 9.3.7/9.3.8: with Max-Forwards 0 the proxy is the final recipient.
async fn answer_max_forwards(
    proxy: &Proxy,
    client: &mut Client,
    mut exchange: Exchange,
    head: &Head,
) -> bool {
    if head.framing != Framing::Empty {
        let reason = "OPTIONS/TRACE with a body is not supported".to_owned();
        return refuse(
            proxy,
            client,
            exchange,
            head,
            denial(400, Decision::Error, reason),
            true,
        )
        .await;
    }
    let keep_alive = client_wants_keep_alive(head);
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let response = if head.method() == "TRACE" {
        // Echo the request, minus credentials (RFC 9110 9.3.8 SHOULD).
        let mut echo = format!(
            "{} {} {}\r\n",
            head.method(),
            head.target(),
            head.version.as_str()
        );
        for (name, value) in head.headers() {
            let name = String::from_utf8_lossy(name);
            if ["authorization", "proxy-authorization", "cookie"]
                .iter()
                .any(|secret| name.eq_ignore_ascii_case(secret))
            {
                continue;
            }
            echo.push_str(&format!("{name}: {}\r\n", String::from_utf8_lossy(value)));
        }
        echo.push_str("\r\n");
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: {}\r\nVia: {}\r\n{connection}\r\n{echo}",
            echo.len(),
            proxy.via_for(head.version),
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nAllow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH, CONNECT\r\nContent-Length: 0\r\nVia: {}\r\n{connection}\r\n",
            proxy.via_for(head.version),
        )
    };
    exchange.status = 200;
    exchange.decision = Decision::Allow;
    if client.stream.write_all(response.as_bytes()).await.is_err() {
        proxy.finish(exchange);
        return false;
    }
    exchange.to_client += response.len() as u64;
    proxy.finish(exchange);
    keep_alive
}

async fn block(
    proxy: &Proxy,
    client: &mut Client,
    mut exchange: Exchange,
    head: &Head,
    policy: &CompiledPolicy,
) -> bool {
    let close = head.framing != Framing::Empty || !client_wants_keep_alive(head);
    let url = if head.method() == "CONNECT" {
        format!("https://{}/", head.target())
    } else {
        head.target().to_owned()
    };
    let page = policy.render_block_page(&BlockPageContext {
        node_hostname: &proxy.node,
        rule: &exchange.rule,
        url: &url,
        client_ip: canonical(client.addr.ip()),
        request_id: &exchange.request_id,
    });
    let response = html_response(403, &page, proxy.stamp(&exchange), close, "");
    exchange.status = 403;
    exchange.decision = Decision::Block;
    exchange.reason = format!("blocked by rule {}", exchange.rule);
    if client.stream.write_all(&response).await.is_ok() {
        exchange.to_client += response.len() as u64;
    }
    proxy.finish(exchange);
    !close
}

// === destination vetting ===

#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Dns(#[from] crate::resolve::LookupFailure),
    #[error("destination {ip} is a {} and not allowed by policy", class.as_str())]
    Denied { ip: IpAddr, class: DeniedClass },
    #[error("destination {addr} is this proxy itself (forwarding loop)")]
    SelfConnection { addr: SocketAddr },
}

impl Refusal {
    fn status(&self) -> (u16, Decision) {
        match self {
            Refusal::Dns(_) => (502, Decision::Error),
            Refusal::Denied { .. } => (403, Decision::Deny),
            Refusal::SelfConnection { .. } => (508, Decision::Deny),
        }
    }
}

/// Resolves once and keeps only the addresses that may be dialled. The connection is then
/// made to one of these addresses, never to the name, so a second DNS answer cannot differ.
async fn vet_destination(
    proxy: &Proxy,
    policy: &CompiledPolicy,
    authority: &Authority,
) -> Result<Vec<IpAddr>, Refusal> {
    let candidates = proxy.resolver.resolve(&authority.host).await?;
    let mut vetted = Vec::with_capacity(candidates.len());
    let mut first_refusal = None;
    for ip in candidates {
        let judged = canonical(ip);
        if proxy.own_addresses.contains(judged) && proxy.config.own_ports.contains(&authority.port)
        {
            first_refusal.get_or_insert(Refusal::SelfConnection {
                addr: SocketAddr::new(judged, authority.port),
            });
            continue;
        }
        // The specific class (loopback, private, ...) tells the operator more than "own".
        let class = classify(judged).or_else(|| {
            proxy
                .own_addresses
                .contains(judged)
                .then_some(DeniedClass::OwnAddress)
        });
        match class {
            None => vetted.push(ip),
            Some(_) if policy.destination_exempt(judged) => vetted.push(ip),
            Some(class) => {
                first_refusal.get_or_insert(Refusal::Denied { ip: judged, class });
            }
        }
    }
    match (vetted.is_empty(), first_refusal) {
        (true, Some(refusal)) => Err(refusal),
        (true, None) => Err(Refusal::Dns(crate::resolve::LookupFailure {
            name: authority.host.to_string(),
            detail: "no addresses".to_owned(),
        })),
        (false, _) => Ok(vetted),
    }
}

async fn connect_upstream(
    proxy: &Proxy,
    exchange: &mut Exchange,
    addresses: &[IpAddr],
    key: &PoolKey,
) -> Result<UpstreamConn, ConnectError> {
    let started = Instant::now();
    let (stream, peer) = dial(addresses, key.port, proxy.config.connect_timeout).await?;
    proxy
        .metrics
        .upstream_connect_seconds
        .observe(started.elapsed().as_secs_f64());
    exchange.upstream = Some(peer);
    Ok(UpstreamConn {
        stream,
        buf: BytesMut::new(),
        peer,
        key: key.clone(),
        reused: false,
    })
}

fn connect_failure(error: &ConnectError) -> u16 {
    if error.is_timeout() { 504 } else { 502 }
}

// === CONNECT ===

async fn handle_connect(
    proxy: &Arc<Proxy>,
    client: &mut Client,
    head: Head,
    mut exchange: Exchange,
    policy: &CompiledPolicy,
) -> bool {
    // Every refusal of a CONNECT closes the connection: a client may already have sent
    // tunnel bytes after the head (optimistic upgrade), which must never be read as HTTP.
    let authority = match parse_connect(head.target()) {
        Ok(authority) => authority,
        Err(error) => {
            refuse(
                proxy,
                client,
                exchange,
                &head,
                denial(400, Decision::Error, error.to_string()),
                true,
            )
            .await;
            return false;
        }
    };
    if head.framing != Framing::Empty {
        let reason = "CONNECT with a request body".to_owned();
        refuse(
            proxy,
            client,
            exchange,
            &head,
            denial(400, Decision::Error, reason),
            true,
        )
        .await;
        return false;
    }
    if !policy.connect_port_allowed(authority.port) {
        let reason = format!(
            "CONNECT to port {} is not allowed by policy",
            authority.port
        );
        refuse(
            proxy,
            client,
            exchange,
            &head,
            denial(403, Decision::Deny, reason),
            true,
        )
        .await;
        return false;
    }
    let host = authority.host.policy_form();
    let verdict = policy.evaluate(&RequestFacts {
        client: canonical(client.addr.ip()),
        method: "CONNECT",
        host: &host,
        port: authority.port,
        path: "",
    });
    exchange.rule = verdict.rule.clone();
    if verdict.action == Action::Block {
        let mut head = head;
        head.connection.close = true;
        block(proxy, client, exchange, &head, policy).await;
        return false;
    }
    let addresses = match vet_destination(proxy, policy, &authority).await {
        Ok(addresses) => addresses,
        Err(refusal) => {
            let (status, decision) = refusal.status();
            refuse(
                proxy,
                client,
                exchange,
                &head,
                denial(status, decision, refusal.to_string()),
                true,
            )
            .await;
            return false;
        }
    };
    let key = PoolKey {
        host: authority.host.to_string(),
        port: authority.port,
    };
    let mut upstream = match connect_upstream(proxy, &mut exchange, &addresses, &key).await {
        Ok(upstream) => upstream,
        Err(error) => {
            let status = connect_failure(&error);
            refuse(
                proxy,
                client,
                exchange,
                &head,
                denial(status, Decision::Error, error.to_string()),
                true,
            )
            .await;
            return false;
        }
    };
    let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
    if client.stream.write_all(established).await.is_err() {
        exchange.status = 200;
        exchange.decision = Decision::Allow;
        proxy.finish(exchange);
        return false;
    }
    exchange.status = 200;
    exchange.decision = Decision::Allow;
    let pending = std::mem::take(&mut client.buf);
    let bytes = tunnel::run(
        &mut client.stream,
        pending,
        &mut upstream.stream,
        BytesMut::new(),
        proxy.config.tunnel_idle_timeout,
    )
    .await;
    exchange.from_client += bytes.from_client;
    exchange.to_client += established.len() as u64 + bytes.to_client;
    proxy.finish(exchange);
    false
}

// === forwarding ===

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
    #[error("malformed chunked request body: {0}")]
    BadRequestBody(ChunkError),
    #[error("malformed chunked response body: {0}")]
    BadResponseBody(ChunkError),
    #[error("upstream closed before the whole body was sent")]
    UpstreamBodyTruncated,
}

impl ExchangeError {
    /// Status for the client if no response has been started yet.
    fn status(&self) -> u16 {
        match self {
            ExchangeError::UpstreamTimeout(_) => 504,
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

#[allow(clippy::too_many_arguments)]
async fn forward(
    proxy: &Arc<Proxy>,
    client: &mut Client,
    head: Head,
    target: AbsoluteTarget,
    addresses: &[IpAddr],
    mut exchange: Exchange,
    max_forwards: Option<u64>,
    shutdown: &CancellationToken,
) -> bool {
    let key = PoolKey {
        host: target.authority.host.to_string(),
        port: target.authority.port,
    };
    let wants_upgrade = head.connection.upgrade && head.header("upgrade").is_some();
    let request_head = build_upstream_request(proxy, &head, &target, max_forwards, wants_upgrade);
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
                    let status = connect_failure(&error);
                    return refuse(
                        proxy,
                        client,
                        exchange,
                        &head,
                        denial(status, Decision::Error, error.to_string()),
                        false,
                    )
                    .await;
                }
            },
        };
        match send_request(
            proxy,
            client,
            &mut upstream,
            &head,
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
                    respond_error(
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
            respond_error(proxy, client, &mut exchange, 502, &error.to_string(), true).await;
            exchange.decision = Decision::Error;
            exchange.reason = error.to_string();
            proxy.finish(exchange);
            return false;
        }
        return relay_upgrade(proxy, client, upstream, &response, exchange).await;
    }

    // The request body is complete, or abandoned because the origin answered early; in
    // that case neither connection can be reused.
    let request_complete = body_state == BodyState::Complete;
    let client_keep_alive =
        request_complete && client_wants_keep_alive(&head) && !shutdown.is_cancelled();
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
    let limits = proxy.config.head_limits;
    if head.framing == Framing::Empty {
        upstream
            .stream
            .write_all(request_head)
            .await
            .map_err(ExchangeError::UpstreamIo)?;
        let (mut upstream_read, _) = upstream.stream.split();
        let response = read_response_head(
            &mut upstream_read,
            &mut upstream.buf,
            &mut client.stream,
            head,
            limits,
            read_timeout,
            &mut exchange.to_client,
        )
        .await?;
        return Ok((response, BodyState::Complete));
    }
    upstream
        .stream
        .write_all(request_head)
        .await
        .map_err(ExchangeError::UpstreamIo)?;
    let (mut client_read, mut client_write) = client.stream.split();
    let (mut upstream_read, mut upstream_write) = upstream.stream.split();
    let mut from_client = 0u64;
    let mut to_client = 0u64;
    let outcome = {
        let body = copy_request_body(
            &mut client.buf,
            &mut client_read,
            &mut upstream_write,
            head.framing,
            read_timeout,
            &mut from_client,
        );
        let response = read_response_head(
            &mut upstream_read,
            &mut upstream.buf,
            &mut client_write,
            head,
            limits,
            read_timeout,
            &mut to_client,
        );
        tokio::pin!(body);
        tokio::pin!(response);
        let mut body_done = false;
        loop {
            tokio::select! {
                result = &mut body, if !body_done => {
                    result?;
                    body_done = true;
                }
                result = &mut response => {
                    let response = result?;
                    let state = if body_done { BodyState::Complete } else { BodyState::Abandoned };
                    break Ok::<_, ExchangeError>((response, state));
                }
            }
        }
    };
    exchange.from_client += from_client;
    exchange.to_client += to_client;
    outcome
}

/// Streams the request body to the origin, re-framed: Content-Length bodies byte-exact,
/// chunked bodies decoded strictly and re-encoded by us.
async fn copy_request_body<R, W>(
    buf: &mut BytesMut,
    from: &mut R,
    to: &mut W,
    framing: Framing,
    read_timeout: Duration,
    counted: &mut u64,
) -> Result<(), ExchangeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::Empty | Framing::UntilClose => Ok(()),
        Framing::Length(mut remaining) => {
            while remaining > 0 {
                if buf.is_empty() {
                    fill(from, buf, BODY_CHUNK, read_timeout)
                        .await
                        .map_err(client_read_error)?;
                }
                let take = remaining.min(buf.len() as u64) as usize;
                to.write_all(&buf[..take])
                    .await
                    .map_err(ExchangeError::UpstreamIo)?;
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
                        to.write_all(&out)
                            .await
                            .map_err(ExchangeError::UpstreamIo)?;
                        to.write_all(&data)
                            .await
                            .map_err(ExchangeError::UpstreamIo)?;
                        to.write_all(b"\r\n")
                            .await
                            .map_err(ExchangeError::UpstreamIo)?;
                    }
                    Decoded::NeedMore => {
                        fill(from, buf, BODY_CHUNK, read_timeout)
                            .await
                            .map_err(client_read_error)?;
                    }
                    Decoded::Done => {
                        to.write_all(LAST_CHUNK)
                            .await
                            .map_err(ExchangeError::UpstreamIo)?;
                        return Ok(());
                    }
                }
            }
        }
    }
}

enum FillError {
    Closed,
    Io(std::io::Error),
    Timeout,
}

fn client_read_error(error: FillError) -> ExchangeError {
    match error {
        FillError::Closed => ExchangeError::ClientClosedEarly,
        FillError::Io(error) => ExchangeError::ClientIo(error),
        FillError::Timeout => ExchangeError::ClientTimeout,
    }
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

/// Reads the final response head, relaying 100/102/103 to HTTP/1.1 clients.
async fn read_response_head<R, W>(
    from: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    request: &Head,
    limits: crate::http1::HeadLimits,
    read_timeout: Duration,
    to_client: &mut u64,
) -> Result<Head, ExchangeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let mut scanned = 0;
        let raw = loop {
            match find_head_end(buf, &mut scanned, limits.max_head_bytes) {
                Ok(Some(end)) => break buf.split_to(end).freeze(),
                Ok(None) => {}
                Err(error) => return Err(ExchangeError::BadResponse(error)),
            }
            let was_empty = buf.is_empty();
            match fill(from, buf, READ_CHUNK, read_timeout).await {
                Ok(_) => {}
                // A reused connection closed before any byte of the response: stale.
                Err(FillError::Closed) if was_empty => {
                    return Err(ExchangeError::UpstreamClosedEarly);
                }
                Err(FillError::Closed) => {
                    return Err(ExchangeError::BadResponse(HeadError::InvalidStatusLine));
                }
                Err(error) => return Err(upstream_read_error(error, read_timeout)),
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
            let line = format!(
                "HTTP/1.1 {status} {}\r\n\r\n",
                String::from_utf8_lossy(response.reason())
            );
            client
                .write_all(line.as_bytes())
                .await
                .map_err(ExchangeError::ClientIo)?;
            *to_client += line.len() as u64;
        }
    }
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

/// Hop-by-hop fields (RFC 9110 7.6.1) plus the framing fields we always set ourselves.
const HOP_BY_HOP: &[&str] = &[
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

/// Whether a header must not be forwarded: hop-by-hop, or named by `Connection`.
fn is_hop_by_hop(name: &[u8], head: &Head) -> bool {
    if HOP_BY_HOP
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
    {
        return true;
    }
    head.header_all("connection").any(|value| {
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
) -> BytesMut {
    let mut out = BytesMut::with_capacity(head.len() + 128);
    out.extend_from_slice(head.method().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(target.authority.host_header().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in head.headers() {
        if is_hop_by_hop(name, head)
            || name.eq_ignore_ascii_case(b"host")
            || (max_forwards.is_some() && name.eq_ignore_ascii_case(b"max-forwards"))
            // An HTTP/1.0 client's Expect must be ignored (RFC 9110 10.1.1).
            || (head.version == Version::Http10 && name.eq_ignore_ascii_case(b"expect"))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(max_forwards) = max_forwards {
        out.extend_from_slice(format!("Max-Forwards: {}\r\n", max_forwards - 1).as_bytes());
    }
    out.extend_from_slice(b"Via: ");
    out.extend_from_slice(proxy.via_for(head.version).as_bytes());
    out.extend_from_slice(b"\r\n");
    match head.framing {
        Framing::Length(length) => {
            out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
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

fn write_response_head(
    proxy: &Proxy,
    response: &Head,
    client_version: Version,
    framing: ClientFraming,
    keep_alive: bool,
    out: &mut BytesMut,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(format!("{} ", response.status()).as_bytes());
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
            out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
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
            if let Err(error) = client.write_all(bytes).await {
                return Err((sent, ExchangeError::ClientIo(error)));
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
    if client.stream.write_all(&out).await.is_err() {
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
