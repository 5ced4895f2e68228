//! palisade's data plane: the forward proxy.
//!
//! **Architecture Invariant:** the proxy never waits for a control plane. The compiled
//! policy is read with one `ArcSwap` load per request; whatever happens to VRRP, replication
//! or the admin API, traffic keeps flowing under the last good policy.

pub mod access_log;
pub mod admission;
mod conn;
mod decimal;
mod drain;
pub mod error_page;
pub mod http1;
pub mod metrics;
pub mod relay;
pub mod resolve;
pub mod scan_port;
pub mod ssrf;
pub mod target;
mod tunnel;
pub mod upstream;

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_policy::CompiledPolicy;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use palisade_log_throttle::LogThrottle;

use crate::access_log::AccessLog;
use crate::admission::{ConnectionSlot, RefusedReason, SourceKey, SourceLimiter};
use crate::http1::{HeadLimits, Version};
use crate::metrics::ProxyMetrics;
use crate::resolve::{Resolver, ResolverSettings};
use crate::ssrf::{InternalEndpoints, OwnAddresses};
use crate::upstream::{Pool, PoolSettings};

/// Data-plane settings (node-local; validated by the binary from the config file).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name: on error pages, in `Via`, in the access log.
    pub node_name: palisade_identity::NodeName,
    pub head_limits: HeadLimits,
    /// Client connections served at once; above it new connections get 503.
    pub max_connections: usize,
    /// Client connections open at once from one source (an IPv4 address or an IPv6 /64);
    /// above it new connections from that source are reset.
    pub max_connections_per_source: u32,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes from an upstream or a client in mid-request.
    pub read_timeout: Duration,
    /// Longest a write to a client or an upstream may wait for the peer to take the bytes.
    pub write_timeout: Duration,
    /// Longest wait for the first byte on a new client connection.
    pub first_byte_timeout: Duration,
    /// Longest wait for the next request on a kept-alive client connection.
    pub client_idle_timeout: Duration,
    /// A request body must arrive at least this fast (bytes per second, measured over
    /// `body_rate_window`); 0 turns the check off.
    pub min_body_rate: u64,
    pub body_rate_window: Duration,
    /// A tunnel (CONNECT, upgrade) with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub pool: PoolSettings,
    pub resolver: ResolverSettings,
    /// Ports this node listens on (redirect, test, admin, heartbeat): on an own address they
    /// are a self-connection, whatever `allow_destinations` says.
    pub own_ports: Vec<u16>,
    pub forwarded_for: ForwardedFor,
    /// Refuse (400) paths with `%2F` or `%5C`. Off by default: OCSP GET requests carry
    /// base64 with `%2F` in the path.
    pub refuse_escaped_slashes: bool,
    /// The deep health check's canary (issue 11): its source address is admitted for the
    /// canary request only, whatever the policy's client allowlist says.
    pub canary: Option<CanaryAccess>,
}

/// How the deep health check reaches its canary through this proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryAccess {
    /// The loopback address the check connects from.
    pub source: std::net::IpAddr,
    /// The one request target served from it (`http://ORIGIN/palisade-canary`).
    pub url: String,
    /// The canary origin.
    pub origin: SocketAddr,
    /// The value of `X-Palisade-Canary` it must carry.
    pub token: String,
}

/// What the node does with `X-Forwarded-For` on forwarded requests: Squid's `forwarded_for`
/// directive, same words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedFor {
    /// Pass whatever the client sent, add nothing (no internal address leaves the network
    /// because of us).
    #[default]
    Transparent,
    /// Append the client's address to the list the client sent (a parent proxy can then
    /// apply per-client rules).
    On,
    /// Append `unknown` instead of the address.
    Off,
    /// Replace the list with just the client's address.
    Truncate,
    /// Remove the header.
    Delete,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: palisade_identity::NodeName::default(),
            head_limits: HeadLimits::default(),
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            first_byte_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            min_body_rate: 500,
            body_rate_window: Duration::from_secs(10),
            tunnel_idle_timeout: Duration::from_secs(600),
            pool: PoolSettings::default(),
            resolver: ResolverSettings::default(),
            own_ports: Vec::new(),
            forwarded_for: ForwardedFor::default(),
            refuse_escaped_slashes: false,
            canary: None,
        }
    }
}

/// The shared state of the data plane: one per node, shared by all listeners.
pub struct Proxy {
    config: Config,
    policy: Arc<ArcSwap<CompiledPolicy>>,
    resolver: Resolver,
    pool: Pool,
    /// Refreshed periodically: VIPs come and go with VRRP.
    own_addresses: ArcSwap<OwnAddresses>,
    /// Other members' addresses and the groups' VIPs: their internal ports (scan, cluster,
    /// admin, peer links) are as closed to clients as ours, wherever a VIP is.
    member_addresses: ArcSwap<Vec<std::net::IpAddr>>,
    internal: InternalEndpoints,
    metrics: ProxyMetrics,
    access_log: AccessLog,
    node: Arc<str>,
    /// "-": the rule of a request no rule has judged yet, shared (no allocation per request).
    no_rule: Arc<str>,
    /// "<node> (palisade)": our entry in `Via`, also used to spot loops.
    via_token: String,
    via_http10: String,
    via_http11: String,
    /// Request ids are a keyed hash of a counter: unique, and they say nothing about the
    /// node's start time or how many requests it has served.
    request_id_key: std::hash::RandomState,
    request_counter: AtomicU64,
    sources: Arc<SourceLimiter>,
    /// One log line per interval for connections refused at accept: anyone can cause them.
    refused_log: LogThrottle,
    /// Shed connections that linger to deliver their 503; bounded so that shedding costs
    /// nothing that grows with the overload.
    shed_lingering: Arc<tokio::sync::Semaphore>,
    /// `palisade drain` and the stop: which connections close after their response, which
    /// are cut.
    drain: drain::NodeDrain,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Resolver(#[from] resolve::ResolveError),
}

impl Proxy {
    pub fn new(
        config: Config,
        policy: Arc<ArcSwap<CompiledPolicy>>,
        metrics: ProxyMetrics,
        access_log: AccessLog,
        own_addresses: OwnAddresses,
    ) -> Result<Arc<Proxy>, StartError> {
        let resolver = Resolver::new(&config.resolver)?;
        let pool = Pool::new(config.pool);
        let node: Arc<str> = Arc::from(config.node_name.as_str());
        let via_token = format!("{node} (palisade)");
        let sources = SourceLimiter::new(config.max_connections_per_source);
        let internal = InternalEndpoints::new(config.own_ports.clone());
        Ok(Arc::new(Proxy {
            config,
            policy,
            resolver,
            pool,
            own_addresses: ArcSwap::from_pointee(own_addresses),
            member_addresses: ArcSwap::from_pointee(Vec::new()),
            internal,
            metrics,
            access_log,
            node,
            no_rule: Arc::from("-"),
            via_http10: format!("1.0 {via_token}"),
            via_http11: format!("1.1 {via_token}"),
            via_token,
            request_id_key: std::hash::RandomState::new(),
            request_counter: AtomicU64::new(0),
            sources,
            refused_log: LogThrottle::new(REFUSED_LOG_INTERVAL),
            shed_lingering: Arc::new(tokio::sync::Semaphore::new(SHED_LINGER_MAX)),
            drain: drain::NodeDrain::default(),
        }))
    }

    fn next_request_id(&self) -> RequestId {
        let counter = self.request_counter.fetch_add(1, Ordering::Relaxed);
        RequestId(self.request_id_key.hash_one(counter))
    }

    /// Our `Via` entry for a message received with `version`.
    fn via_for(&self, version: Version) -> &str {
        match version {
            Version::Http10 => &self.via_http10,
            Version::Http11 => &self.via_http11,
        }
    }

    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// Closes expired idle upstream connections; the binary calls this periodically.
    pub fn sweep_pool(&self) {
        self.pool.sweep();
    }

    /// The cluster's and HA groups' other addresses (members, VIPs): a proxied request to one
    /// of them on one of this node's internal ports is refused like one to this node.
    pub fn set_member_addresses(&self, addresses: Vec<std::net::IpAddr>) {
        let addresses = addresses.into_iter().map(ssrf::canonical).collect();
        self.member_addresses.store(Arc::new(addresses));
    }

    /// Whether `ip` is the deep health check's source (admitted for the canary only).
    pub(crate) fn is_canary_source(&self, ip: std::net::IpAddr) -> bool {
        self.config
            .canary
            .as_ref()
            .is_some_and(|canary| canary.source == ip)
    }

    /// Whether `addr` is one of this node's, or another member's, internal endpoints.
    fn internal_endpoint(&self, own: &OwnAddresses, addr: SocketAddr) -> bool {
        self.internal.contains(own, addr)
            || (self.config.own_ports.contains(&addr.port())
                && self
                    .member_addresses
                    .load()
                    .contains(&ssrf::canonical(addr.ip())))
    }

    /// Re-reads this machine's addresses (a VIP added or removed since the last look).
    pub fn refresh_own_addresses(&self) {
        self.own_addresses
            .store(std::sync::Arc::new(OwnAddresses::from_interfaces()));
    }

    /// Drains the node's connections: each closes after its current response (with
    /// `Connection: close`), idle kept-alive ones at once. Listeners keep accepting; what
    /// they accept closes after one response.
    pub fn drain_connections(&self) {
        self.drain.close();
    }

    /// Whether the node's connections are draining.
    pub fn draining(&self) -> bool {
        self.drain.is_closing()
    }

    /// The drain's deadline: every connection still open (tunnels, long downloads, relays)
    /// is reset now.
    pub fn cut_connections(&self) {
        self.drain.cut();
    }

    /// Back in service after a drain.
    pub fn resume_connections(&self) {
        self.drain.resume();
    }

    /// Client connections open now (redirect, test and scan ports; relays included).
    pub fn open_connections(&self) -> i64 {
        self.metrics.active_connections.get()
    }

    /// Accepts connections on `listener` until `shutdown` fires. Each connection runs on
    /// its own task, tracked by `tracker` so a drain can wait for them. On a redirect port,
    /// `dispatch` (the director) says whether a connection is served here or relayed.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        dispatch: Option<Arc<dyn relay::Dispatch>>,
    ) {
        while let Some((stream, client)) = accept_next(&listener, &shutdown, "proxy").await {
            // Judged on the address before anything is read or held (security review F1).
            let client_ip = ssrf::canonical(client.ip());
            if !self.policy.load().client_allowed(client_ip) && !self.is_canary_source(client_ip) {
                self.refuse_connection(stream, client, RefusedReason::ClientNotAllowed);
                continue;
            }
            let Some(source_slot) = self.sources.try_take(SourceKey::of(client_ip)) else {
                self.refuse_connection(stream, client, RefusedReason::PerSourceLimit);
                continue;
            };
            if self.metrics.active_connections.get() as usize >= self.config.max_connections {
                self.shed(stream, &tracker);
                continue;
            }
            // Counted before the task starts, so a burst of accepts cannot overshoot the
            // limit; uncounted by a guard, so even a panicking task gives its slot back.
            let slot = ConnectionSlot::take(&self.metrics.active_connections);
            let proxy = self.clone();
            let route = match (&dispatch, stream.local_addr()) {
                // The deep health check is about this node: never relayed.
                (Some(_), _) if self.is_canary_source(client_ip) => None,
                (Some(dispatch), Ok(local)) => match dispatch.route(client, local) {
                    relay::Route::Serve => None,
                    relay::Route::Relay(targets) => Some((dispatch.clone(), local, targets)),
                    relay::Route::Refuse => {
                        drop((slot, source_slot));
                        self.shed(stream, &tracker);
                        continue;
                    }
                },
                _ => None,
            };
            let ending = self.drain.ending();
            tracker.spawn(async move {
                let _slots = (slot, source_slot);
                match route {
                    None => {
                        conn::serve_connection(
                            proxy,
                            stream,
                            client,
                            ending,
                            conn::UncleanClose::Fin,
                        )
                        .await
                    }
                    Some((dispatch, local, targets)) => {
                        let cut = ending.cut.clone();
                        // A relay's sockets close with a reset until it ends in order, so
                        // dropping it at the drain's deadline resets both ends.
                        tokio::select! {
                            () = proxy.relay(stream, client, local, targets, dispatch, ending) => {}
                            () = cut.cancelled() => {}
                        }
                    }
                }
            });
        }
    }

    /// A connection refused at accept: reset, counted, and logged at a bounded rate.
    fn refuse_connection(&self, stream: TcpStream, client: SocketAddr, reason: RefusedReason) {
        admission::reset(stream);
        self.metrics
            .refused_connections
            .get_or_create(&metrics::ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
        if let Some(suppressed) = self.refused_log.admit() {
            tracing::warn!(
                %client,
                reason = reason.as_str(),
                suppressed,
                "client connection refused at accept (lines for the others are suppressed for {}s; see palisade_refused_connections_total)",
                REFUSED_LOG_INTERVAL.as_secs()
            );
        }
    }

    /// Over the connection limit: one non-blocking write of a 503, then a half-close and a
    /// short linger so the client reads the 503 rather than a reset (a close with its
    /// request unread would reset). At most `SHED_LINGER_MAX` linger at once; beyond that
    /// the connection is closed at once, after draining what has arrived.
    fn shed(&self, stream: TcpStream, tracker: &TaskTracker) {
        self.metrics.shed_connections.inc();
        let response = error_page::error_response(
            503,
            "the proxy is at its connection limit; retry shortly",
            error_page::Stamp {
                node: &self.node,
                request_id: self.next_request_id(),
            },
            true,
        );
        let _ = stream.try_write(&response);
        match self.shed_lingering.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(async move {
                    conn::linger_close(stream).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let mut scratch = [0u8; 4096];
                while matches!(stream.try_read(&mut scratch), Ok(read) if read > 0) {}
                let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

/// Lets a connection this node directs keep answering from its VIP after the VIP has moved
/// (`IP_TRANSPARENT`; set only on a director, so a node without the privilege that directs
/// nothing never warns): a director's drain hands the VIP over and still serves the
/// connections it has, whose packets the next director sends back (the second chance).
/// Without `CAP_NET_ADMIN` the option is refused; then such a drain resets them instead.
pub(crate) fn keep_replies_from_vip(stream: &TcpStream) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let socket = socket2::SockRef::from(stream);
    let set = match stream.local_addr() {
        Ok(SocketAddr::V4(_)) => socket.set_ip_transparent_v4(true),
        Ok(SocketAddr::V6(_)) => socket.set_ip_transparent_v6(true),
        Err(error) => Err(error),
    };
    if let Err(error) = set {
        WARNED.call_once(|| {
            tracing::warn!(%error, "cannot make director connections transparent (needs CAP_NET_ADMIN): a director's drain will reset its connections when the VIP moves");
        });
    }
}

/// The next accepted connection, or `None` once `shutdown` fires. Accept errors (EMFILE and
/// friends) are logged and retried after a short pause instead of spinning.
pub(crate) async fn accept_next(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(error) => {
                tracing::warn!(%error, what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A request's id: in the access log, on error pages, in `X-Palisade-Request-Id`. Kept as a
/// number and written as 16 hex digits only where it is shown, so a request that nobody
/// logs costs no formatting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId(pub u64);

impl RequestId {
    /// The 16 hex digits appended to `out`, without the formatting machinery.
    pub fn push_hex(self, out: &mut Vec<u8>) {
        let mut text = [0u8; 16];
        for (index, digit) in text.iter_mut().enumerate() {
            let nibble = ((self.0 >> ((15 - index) * 4)) & 0xf) as u8;
            *digit = if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            };
        }
        out.extend_from_slice(&text);
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Refused-at-accept connections get one log line per this interval.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Shed connections lingering at once to deliver their 503.
const SHED_LINGER_MAX: usize = 256;

/// Binds a listening socket the way a proxy wants it: SO_REUSEADDR for fast restarts and a
/// deep accept backlog.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
