//! One client connection: read a request head, decide, forward or tunnel, repeat while the
//! connection may be kept alive.
//!
//! The order of checks is the security argument: the whole head is parsed and its framing
//! validated before anything else happens; the client allowlist, the target, loops, the
//! policy and the destination address are all judged before a byte goes upstream; a body is
//! forwarded only re-framed by us, so the origin never parses the client's framing.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use palisade_policy::{Action, BlockPageContext, CompiledPolicy, RequestFacts};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::Proxy;
use crate::access_log::{AccessRecord, Decision};
use crate::drain::Ending;
use crate::error_page::{Stamp, error_response, html_response};
use crate::http1::head::{find_head_end, parse_request};
use crate::http1::{Framing, Head, HeadError, Version};
use crate::ssrf::{DeniedClass, canonical, classify};
use crate::target::{
    AbsoluteTarget, Authority, canonical_path, has_escaped_slash, parse_absolute, parse_connect,
};
use crate::tunnel;
use crate::upstream::{ConnectError, PoolKey, UpstreamConn, dial};

mod forward;

/// Spare client read buffers, per worker thread. Kept-alive connections hold no buffer while
/// idle (memory per idle client stays small), and taking one back from here costs a pop
/// instead of an 8 KiB allocation per request.
mod read_buffers {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::READ_CHUNK;

    /// Enough for the requests in flight on one worker; beyond it, buffers are freed.
    const SPARE_MAX: usize = 64;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn get() -> BytesMut {
        SPARE
            .with(|spare| spare.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
    }

    /// Keeps `buf` if it is empty and owns a whole buffer of `READ_CHUNK` again (no `Bytes`
    /// split from it is alive); otherwise it is dropped.
    pub(super) fn put(mut buf: BytesMut) {
        // A buffer a large head grew stays out: the spares must not pin big allocations.
        if !buf.is_empty() || !buf.try_reclaim(READ_CHUNK) || buf.capacity() > 4 * READ_CHUNK {
            return;
        }
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_MAX {
                spare.push(buf);
            }
        });
    }
}

/// Read size for heads and small bodies.
const READ_CHUNK: usize = 8 * 1024;
/// URLs longer than this are cut in the access log.
const MAX_LOGGED_URL: usize = 4096;
/// After a refusal, unread input is drained for at most this long before closing, so the
/// close does not turn into a reset that destroys the error response (RFC 9112 9.6).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// The client side of a connection.
struct Client {
    stream: TcpStream,
    /// Bytes received but not yet consumed. Empty and unallocated while idle, so a kept-alive
    /// connection costs little memory.
    buf: BytesMut,
    addr: SocketAddr,
}

/// Serves one accepted connection until it closes, the drain closes it after a response,
/// or the drain's deadline cuts it (with a reset: a FIN could pass for the end of a body
/// read until close).
pub(crate) async fn serve_connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    addr: SocketAddr,
    ending: Ending,
    unclean: UncleanClose,
) {
    let _ = stream.set_nodelay(true);
    if unclean == UncleanClose::Reset {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    let mut client = Client {
        stream,
        buf: BytesMut::new(),
        addr,
    };
    let cut = tokio::select! {
        biased;
        () = serve_requests(&proxy, &mut client, &ending) => false,
        () = ending.cut.cancelled() => true,
    };
    if cut {
        let _ = socket2::SockRef::from(&client.stream).set_linger(Some(Duration::ZERO));
        tracing::debug!(client.addr = %addr, "connection cut at the drain's deadline");
        return;
    }
    if unclean == UncleanClose::Reset {
        // An orderly end: the response written must still be delivered.
        let _ = socket2::SockRef::from(&client.stream).set_linger(None);
    }
    linger_close(client.stream).await;
    tracing::trace!(client.addr = %addr, "Connection closed");
}

/// Requests, one after another, while the connection may be kept alive.
async fn serve_requests(proxy: &Arc<Proxy>, client: &mut Client, ending: &Ending) {
    let mut first = true;
    loop {
        let head = match read_request_head(proxy, client, ending, first).await {
            HeadRead::Head(head) => head,
            HeadRead::Closed => return,
            HeadRead::Invalid(error) => {
                let mut exchange = Exchange::new(proxy, client, Cow::Borrowed("-"), "-".to_owned());
                exchange.reason = error.to_string();
                // The connection closes next, delivered or not.
                let _ = respond_error(
                    proxy,
                    client,
                    &mut exchange,
                    error.status(),
                    &error.to_string(),
                    true,
                )
                .await;
                proxy.finish(exchange);
                return;
            }
        };
        first = false;
        // Boxed: the request future is large, and an idle kept-alive connection should not
        // carry its space while it waits for the next request.
        let keep_alive = Box::pin(handle_request(proxy, client, head, ending)).await;
        if !keep_alive {
            return;
        }
        if client.buf.is_empty() {
            // Give the memory back while the connection idles (to this thread's spare
            // buffers: the next request, on any connection, takes it from there).
            read_buffers::put(std::mem::take(&mut client.buf));
        }
    }
}

/// How a connection's socket closes when its task does not end it in order (the process
/// dies, the task is aborted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UncleanClose {
    /// The kernel's default: a FIN after what was written.
    Fin,
    /// A reset (`SO_LINGER` 0 until the orderly close): connections a director relays, or
    /// serves as director, so a client never takes a dead node's FIN for the end of a body
    /// read until close, and the director passes it on as a reset.
    Reset,
}

/// Closes gracefully: send FIN, then read and discard what the client still sends for a
/// moment. Closing with unread input makes the kernel send a reset, and a client that gets
/// a reset may never read the response we just wrote.
pub(crate) async fn linger_close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    // On the heap, and only now: in the future's state it would make every connection's
    // task 4 KiB larger for its whole life.
    let mut scratch = vec![0u8; 4096];
    let mut drained = 0;
    let deadline = Instant::now() + LINGER;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(read)) if read > 0 => drained += read,
            _ => break,
        }
    }
}

enum HeadRead {
    Head(Head),
    Closed,
    Invalid(HeadError),
}

async fn read_request_head(
    proxy: &Proxy,
    client: &mut Client,
    ending: &Ending,
    first: bool,
) -> HeadRead {
    let limits = proxy.config.head_limits;
    // A new connection must start talking sooner than a kept-alive one may idle: a silent
    // connection holds a slot and does nothing for anyone.
    let idle = if first {
        proxy.config.first_byte_timeout
    } else {
        proxy.config.client_idle_timeout
    };
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
        // close idle connections (a new connection is served once, even while draining:
        // whoever sent it there had not heard of the drain yet).
        if client.buf.is_empty() {
            tokio::select! {
                biased;
                () = ending.closing(), if !first => return HeadRead::Closed,
                ready = tokio::time::timeout(idle, client.stream.readable()) => {
                    if !matches!(ready, Ok(Ok(()))) {
                        return HeadRead::Closed;
                    }
                }
            }
        }
        if client.buf.capacity() == 0 {
            client.buf = read_buffers::get();
        }
        client.buf.reserve(READ_CHUNK);
        let deadline = head_deadline.unwrap_or_else(|| Instant::now() + idle);
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
    request_id: crate::RequestId,
    time: SystemTime,
    start: Instant,
    client: SocketAddr,
    method: Cow<'static, str>,
    url: String,
    /// The canonical path the rules saw, when it differs from the one received.
    rule_path: Option<String>,
    status: u16,
    from_client: u64,
    to_client: u64,
    rule: Arc<str>,
    decision: Decision,
    reason: String,
    upstream: Option<SocketAddr>,
}

impl Exchange {
    fn new(proxy: &Proxy, client: &Client, method: Cow<'static, str>, mut url: String) -> Exchange {
        // Records wait in a bounded queue for the log writer; long URLs must not make that
        // queue large.
        if url.len() > MAX_LOGGED_URL {
            let mut cut = MAX_LOGGED_URL;
            while !url.is_char_boundary(cut) {
                cut -= 1;
            }
            url.truncate(cut);
            url.push_str("...");
        }
        Exchange {
            request_id: proxy.next_request_id(),
            time: SystemTime::now(),
            start: Instant::now(),
            client: client.addr,
            method,
            url,
            rule_path: None,
            status: 0,
            from_client: 0,
            to_client: 0,
            rule: proxy.no_rule.clone(),
            decision: Decision::Error,
            reason: String::new(),
            upstream: None,
        }
    }
}

impl Proxy {
    fn finish(&self, exchange: Exchange) {
        // The deep health check's requests, several a second: neither logged nor counted.
        if &*exchange.rule == CANARY_RULE {
            return;
        }
        self.metrics.record_request(
            exchange.decision,
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
            rule_path: exchange.rule_path,
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
            request_id: exchange.request_id,
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
) -> Delivered {
    let response = error_response(status, detail, proxy.stamp(exchange), close);
    exchange.status = status;
    if write_client(proxy, &mut client.stream, &response)
        .await
        .is_ok()
    {
        exchange.to_client += response.len() as u64;
        Delivered::Yes
    } else {
        Delivered::No
    }
}

/// Whether a response we made reached the client's socket. One that did not (the client
/// stopped reading, or went away) ends the connection whatever else was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
enum Delivered {
    Yes,
    No,
}

/// `write_all` bounded in time: a peer that stops reading cannot hold a task forever.
pub(crate) async fn write_all_timed<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), WriteError> {
    match tokio::time::timeout(timeout, to.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(WriteError::Io(error)),
        Err(_) => Err(WriteError::Timeout(timeout)),
    }
}

/// Every write to a client goes through here: bounded by `write_timeout`, so a client that
/// never reads is dropped whatever it pipelined (security review F2).
pub(crate) async fn write_client<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    to: &mut W,
    bytes: &[u8],
) -> Result<(), WriteError> {
    write_all_timed(to, bytes, proxy.config.write_timeout).await
}

pub(crate) enum WriteError {
    Io(std::io::Error),
    Timeout(Duration),
}

/// A refusal: status, how the access log classes it, why, what the client is told, and
/// whether the connection must close afterwards.
struct Denial {
    status: u16,
    decision: Decision,
    /// For the access log and the diagnostic log: every detail.
    reason: String,
    /// For the error page, when it must say less than `reason` (security review F12: no
    /// internal addresses for anyone allowed to use the proxy; the details stay in the log
    /// under the request id).
    page: Option<&'static str>,
    close: bool,
}

impl Denial {
    fn new(status: u16, decision: Decision, reason: impl Into<String>) -> Denial {
        Denial {
            status,
            decision,
            reason: reason.into(),
            page: None,
            close: false,
        }
    }

    /// The connection closes after the error response.
    fn closing(mut self) -> Denial {
        self.close = true;
        self
    }

    fn with_page(mut self, page: &'static str) -> Denial {
        self.page = Some(page);
        self
    }

    /// A failed dial: the address stays in the log.
    fn connect_failed(error: &ConnectError) -> Denial {
        let page = match error {
            ConnectError::Refused { .. } => "the origin refused the connection",
            ConnectError::TimedOut { .. } => "the origin did not accept the connection in time",
            ConnectError::Other { .. } | ConnectError::NoAddress => "cannot connect to the origin",
        };
        Denial::new(connect_failure(error), Decision::Error, error.to_string()).with_page(page)
    }
}

impl From<Refusal> for Denial {
    fn from(refusal: Refusal) -> Denial {
        let (status, decision) = refusal.status();
        let denial = Denial::new(status, decision, refusal.to_string());
        match refusal {
            // The client's own name and the resolver's verdict: nothing internal.
            Refusal::Dns(_) => denial,
            Refusal::Denied { .. } => {
                denial.with_page("the destination address is not allowed by policy")
            }
            Refusal::SelfConnection { .. } => {
                denial.with_page(
                    "the destination is this proxy itself or another member's internal port (forwarding loop)",
                )
            }
        }
    }
}

/// Refuses a request without forwarding it. Returns whether the connection stays usable:
/// only when the request had no body (nothing left unread) and closing was not asked for.
async fn refuse(
    proxy: &Proxy,
    client: &mut Client,
    mut exchange: Exchange,
    head: &Head,
    denial: Denial,
) -> bool {
    let close = denial.close || head.framing != Framing::Empty || !client_wants_keep_alive(head);
    exchange.decision = denial.decision;
    let delivered = respond_error(
        proxy,
        client,
        &mut exchange,
        denial.status,
        denial.page.unwrap_or(&denial.reason),
        close,
    )
    .await;
    exchange.reason = denial.reason;
    proxy.finish(exchange);
    delivered == Delivered::Yes && !close
}

fn client_wants_keep_alive(head: &Head) -> bool {
    match head.version {
        Version::Http11 => !head.connection.close,
        Version::Http10 => head.connection.keep_alive && !head.connection.close,
    }
}

/// What admission decided to do with a request.
enum Admission {
    Forward {
        target: AbsoluteTarget,
        addresses: Vec<IpAddr>,
        max_forwards: Option<u64>,
    },
    Connect {
        authority: Authority,
        addresses: Vec<IpAddr>,
    },
    /// A policy rule blocks it (`exchange.rule` names the rule).
    Block,
    /// `Max-Forwards: 0` on OPTIONS or TRACE: this proxy answers.
    AnswerMaxForwards,
}

/// Handles one request; returns whether the client connection may carry another.
async fn handle_request(
    proxy: &Arc<Proxy>,
    client: &mut Client,
    head: Head,
    ending: &Ending,
) -> bool {
    let mut exchange = Exchange::new(proxy, client, head.method_owned(), head.target().to_owned());
    exchange.from_client = head.len() as u64;
    // One policy snapshot for the whole request: a reload mid-request does not affect it.
    let policy = proxy.policy.load_full();
    match admit(proxy, client.addr, &head, &policy, &mut exchange).await {
        Err(denial) => refuse(proxy, client, exchange, &head, denial).await,
        Ok(Admission::Block) => block(proxy, client, exchange, &head, &policy).await,
        Ok(Admission::AnswerMaxForwards) => {
            answer_max_forwards(proxy, client, exchange, &head).await
        }
        Ok(Admission::Connect {
            authority,
            addresses,
        }) => connect_tunnel(proxy, client, exchange, &head, &authority, &addresses).await,
        Ok(Admission::Forward {
            target,
            addresses,
            max_forwards,
        }) => {
            let plan = forward::Plan {
                target,
                addresses,
                max_forwards,
            };
            forward::forward(proxy, client, &head, plan, exchange, ending).await
        }
    }
}

/// Every check before a byte goes upstream, in order: client allowlist, target, loops,
/// Max-Forwards, policy, destination addresses.
async fn admit(
    proxy: &Proxy,
    client_addr: SocketAddr,
    head: &Head,
    policy: &CompiledPolicy,
    exchange: &mut Exchange,
) -> Result<Admission, Denial> {
    let client_ip = canonical(client_addr.ip());
    if let Some(canary) = &proxy.config.canary
        && client_ip == canary.source
        && (head.header("x-palisade-canary").is_some() || !policy.client_allowed(client_ip))
    {
        return admit_canary(canary, client_ip, head, policy, exchange);
    }
    if !policy.client_allowed(client_ip) {
        let reason = format!("client {client_ip} is not allowed to use this proxy");
        return Err(Denial::new(403, Decision::Deny, reason).closing());
    }
    if head.method() == "CONNECT" {
        // Every refusal of a CONNECT closes the connection: a client may already have sent
        // tunnel bytes after the head (optimistic upgrade), which must never be read as HTTP.
        return admit_connect(proxy, client_ip, head, policy, exchange)
            .await
            .map_err(Denial::closing);
    }
    let target = parse_absolute(head.target())
        .map_err(|error| Denial::new(400, Decision::Error, error.to_string()).closing())?;
    if is_our_via(proxy, head) {
        let reason = "forwarding loop detected (our own Via header)";
        return Err(Denial::new(508, Decision::Deny, reason).closing());
    }
    let max_forwards = max_forwards(head)
        .map_err(|()| Denial::new(400, Decision::Error, "invalid Max-Forwards").closing())?;
    if max_forwards == Some(0) {
        exchange.rule = Arc::from("max-forwards");
        return Ok(Admission::AnswerMaxForwards);
    }
    if proxy.config.refuse_escaped_slashes && has_escaped_slash(&target.path_and_query) {
        let reason = "escaped slash (%2F or %5C) in the path (proxy.refuse_escaped_slashes)";
        return Err(Denial::new(400, Decision::Error, reason).closing());
    }
    let rule_path = canonical_path(&target.path_and_query);
    if rule_path != received_path(head.target()) {
        exchange.rule_path = Some(rule_path.clone().into_owned());
    }
    let verdict = judge(
        policy,
        client_ip,
        head.method(),
        &target.authority,
        &rule_path,
    );
    exchange.rule = verdict.rule;
    if verdict.action == Action::Block {
        return Ok(Admission::Block);
    }
    let addresses = vet_destination(proxy, policy, &target.authority).await?;
    Ok(Admission::Forward {
        target,
        addresses,
        max_forwards,
    })
}

/// The policy's verdict on a request for `authority` (its host in the policy's form).
fn judge(
    policy: &CompiledPolicy,
    client: IpAddr,
    method: &str,
    authority: &Authority,
    path: &str,
) -> palisade_policy::Verdict {
    let mut host_text = [0u8; 48];
    let host = authority.host.policy_form(&mut host_text);
    policy.evaluate(&RequestFacts {
        client,
        method,
        host,
        port: authority.port,
        path,
    })
}

/// The rule name of the deep health check's requests (no policy rule is named without a
/// ruleset: no clash).
const CANARY_RULE: &str = "deep-check";

/// The deep health check's request: from its source, exactly the canary URL with the token.
/// The policy engine runs as for any request (the check proves it answers); its verdict is
/// not applied (an operator's policy blocking loopback must not fail every node), and the
/// canary's own port is no self-connection for it.
fn admit_canary(
    canary: &crate::CanaryAccess,
    client_ip: IpAddr,
    head: &Head,
    policy: &CompiledPolicy,
    exchange: &mut Exchange,
) -> Result<Admission, Denial> {
    let token = head.header("x-palisade-canary");
    if head.method() != "GET"
        || head.target() != canary.url
        || token != Some(canary.token.as_bytes())
    {
        let reason = "only the deep health check's canary request is served from this address";
        return Err(Denial::new(403, Decision::Deny, reason).closing());
    }
    let target = parse_absolute(head.target())
        .map_err(|error| Denial::new(400, Decision::Error, error.to_string()).closing())?;
    let _ = judge(
        policy,
        client_ip,
        head.method(),
        &target.authority,
        &target.path_and_query,
    );
    exchange.rule = Arc::from(CANARY_RULE);
    Ok(Admission::Forward {
        target,
        addresses: vec![canary.origin.ip()],
        max_forwards: None,
    })
}

async fn admit_connect(
    proxy: &Proxy,
    client_ip: IpAddr,
    head: &Head,
    policy: &CompiledPolicy,
    exchange: &mut Exchange,
) -> Result<Admission, Denial> {
    let authority = parse_connect(head.target())
        .map_err(|error| Denial::new(400, Decision::Error, error.to_string()))?;
    if head.framing != Framing::Empty {
        return Err(Denial::new(
            400,
            Decision::Error,
            "CONNECT with a request body",
        ));
    }
    if !policy.connect_port_allowed(authority.port) {
        let reason = format!(
            "CONNECT to port {} is not allowed by policy",
            authority.port
        );
        return Err(Denial::new(403, Decision::Deny, reason));
    }
    let verdict = judge(policy, client_ip, "CONNECT", &authority, "");
    exchange.rule = verdict.rule;
    if verdict.action == Action::Block {
        return Ok(Admission::Block);
    }
    let addresses = vet_destination(proxy, policy, &authority).await?;
    Ok(Admission::Connect {
        authority,
        addresses,
    })
}

/// The path and query of an absolute-form target exactly as received ("/" when absent).
fn received_path(target: &str) -> &str {
    let rest = crate::target::split_scheme(target).map_or(target, |(_, rest)| rest);
    match rest.find(['/', '?']) {
        Some(at) => &rest[at..],
        None => "/",
    }
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
        let reason = "OPTIONS/TRACE with a body is not supported";
        let denial = Denial::new(400, Decision::Error, reason).closing();
        return refuse(proxy, client, exchange, head, denial).await;
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
    if write_client(proxy, &mut client.stream, response.as_bytes())
        .await
        .is_err()
    {
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
    // A blocked CONNECT closes like any refused CONNECT.
    let close = head.method() == "CONNECT"
        || head.framing != Framing::Empty
        || !client_wants_keep_alive(head);
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
        request_id: &exchange.request_id.to_string(),
    });
    let response = html_response(403, &page, proxy.stamp(&exchange), close, "");
    exchange.status = 403;
    exchange.decision = Decision::Block;
    exchange.reason = format!("blocked by rule {}", exchange.rule);
    let delivered = write_client(proxy, &mut client.stream, &response)
        .await
        .is_ok();
    if delivered {
        exchange.to_client += response.len() as u64;
    }
    proxy.finish(exchange);
    delivered && !close
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
        let own_addresses = proxy.own_addresses.load();
        // Before any exemption: allow_destinations never opens an internal endpoint.
        if proxy.internal_endpoint(&own_addresses, SocketAddr::new(judged, authority.port)) {
            first_refusal.get_or_insert(Refusal::SelfConnection {
                addr: SocketAddr::new(judged, authority.port),
            });
            continue;
        }
        // The specific class (loopback, private, ...) tells the operator more than "own".
        let class = classify(judged).or_else(|| {
            own_addresses
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
            kind: crate::resolve::LookupFailureKind::NoAddress,
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
        verify_on_reuse: false,
    })
}

fn connect_failure(error: &ConnectError) -> u16 {
    if error.is_timeout() { 504 } else { 502 }
}

// === CONNECT ===

/// Dials an admitted CONNECT target and tunnels bytes both ways. The connection ends with
/// the tunnel.
async fn connect_tunnel(
    proxy: &Proxy,
    client: &mut Client,
    mut exchange: Exchange,
    head: &Head,
    authority: &Authority,
    addresses: &[IpAddr],
) -> bool {
    let key = PoolKey {
        host: authority.host.clone(),
        port: authority.port,
    };
    let mut upstream = match connect_upstream(proxy, &mut exchange, addresses, &key).await {
        Ok(upstream) => upstream,
        Err(error) => {
            let denial = Denial::connect_failed(&error);
            refuse(proxy, client, exchange, head, denial.closing()).await;
            return false;
        }
    };
    let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
    exchange.status = 200;
    exchange.decision = Decision::Allow;
    if write_client(proxy, &mut client.stream, established)
        .await
        .is_err()
    {
        proxy.finish(exchange);
        return false;
    }
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
