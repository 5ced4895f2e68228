//! palisade's data plane: the forward proxy.
//!
//! **Architecture Invariant:** the proxy never waits for a control plane. The compiled
//! policy is read with one `ArcSwap` load per request; whatever happens to VRRP, replication
//! or the admin API, traffic keeps flowing under the last good policy.

pub mod access_log;
mod conn;
pub mod error_page;
pub mod http1;
pub mod metrics;
pub mod resolve;
pub mod ssrf;
pub mod target;
mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use palisade_policy::CompiledPolicy;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::http1::{HeadLimits, Version};
use crate::metrics::ProxyMetrics;
use crate::resolve::{Resolver, ResolverSettings};
use crate::ssrf::OwnAddresses;
use crate::upstream::{Pool, PoolSettings};

/// Data-plane settings (node-local; validated by the binary from the config file).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name: on error pages, in `Via`, in the access log.
    pub node_hostname: String,
    pub head_limits: HeadLimits,
    /// Client connections served at once; above it new connections get 503.
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes from an upstream or a client in mid-request.
    pub read_timeout: Duration,
    /// Longest wait for the next request on a kept-alive client connection.
    pub client_idle_timeout: Duration,
    /// A tunnel (CONNECT, upgrade) with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub pool: PoolSettings,
    pub resolver: ResolverSettings,
    /// Ports this node listens on; an own address on one of them is a forwarding loop.
    pub own_ports: Vec<u16>,
    pub forwarded_for: ForwardedFor,
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
            node_hostname: "palisade".to_owned(),
            head_limits: HeadLimits::default(),
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(600),
            pool: PoolSettings::default(),
            resolver: ResolverSettings::default(),
            own_ports: Vec::new(),
            forwarded_for: ForwardedFor::default(),
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
    metrics: ProxyMetrics,
    access_log: AccessLog,
    node: Arc<str>,
    /// "<node> (palisade)": our entry in `Via`, also used to spot loops.
    via_token: String,
    via_http10: String,
    via_http11: String,
    request_id_prefix: u32,
    request_counter: AtomicU64,
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
        let node: Arc<str> = Arc::from(config.node_hostname.as_str());
        let via_token = format!("{node} (palisade)");
        // Request ids: start time plus a counter, unique per node across restarts.
        let request_id_prefix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs() as u32)
            .unwrap_or(0);
        Ok(Arc::new(Proxy {
            config,
            policy,
            resolver,
            pool,
            own_addresses: ArcSwap::from_pointee(own_addresses),
            metrics,
            access_log,
            node,
            via_http10: format!("1.0 {via_token}"),
            via_http11: format!("1.1 {via_token}"),
            via_token,
            request_id_prefix,
            request_counter: AtomicU64::new(0),
        }))
    }

    fn next_request_id(&self) -> String {
        let counter = self.request_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{counter:x}", self.request_id_prefix)
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

    /// Re-reads this machine's addresses (a VIP added or removed since the last look).
    pub fn refresh_own_addresses(&self) {
        self.own_addresses
            .store(std::sync::Arc::new(OwnAddresses::from_interfaces()));
    }

    /// Accepts connections on `listener` until `shutdown` fires. Each connection runs on
    /// its own task, tracked by `tracker` so a drain can wait for them.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, client) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.metrics.active_connections.get() as usize >= self.config.max_connections {
                self.shed(stream);
                continue;
            }
            // Counted before the task starts, so a burst of accepts cannot overshoot the
            // limit; uncounted by a guard, so even a panicking task gives its slot back.
            let slot = ConnectionSlot::take(&self.metrics.active_connections);
            let proxy = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let _slot = slot;
                conn::serve_connection(proxy, stream, client, shutdown).await;
            });
        }
    }

    /// Over the connection limit: one non-blocking write of a 503, then close. Shedding
    /// must cost nothing that grows with the overload, so there is no task and no wait.
    fn shed(&self, stream: TcpStream) {
        self.metrics.shed_connections.inc();
        let request_id = self.next_request_id();
        let response = error_page::error_response(
            503,
            "the proxy is at its connection limit; retry shortly",
            error_page::Stamp {
                node: &self.node,
                request_id: &request_id,
            },
            true,
        );
        let _ = stream.try_write(&response);
    }
}

/// One counted client connection; gives the count back when dropped.
struct ConnectionSlot {
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl ConnectionSlot {
    fn take(gauge: &prometheus_client::metrics::gauge::Gauge) -> ConnectionSlot {
        gauge.inc();
        ConnectionSlot {
            gauge: gauge.clone(),
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

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
