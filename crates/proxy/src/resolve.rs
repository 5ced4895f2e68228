//! Upstream name resolution: hickory's stub resolver with its bounded cache, configured from
//! the node config (name servers may be on loopback, which is how tests run their own DNS).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;

use crate::target::Host;

/// Resolver settings (node-local config).
#[derive(Clone, Debug)]
pub struct ResolverSettings {
    /// Name servers with ports; empty means /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// Maximum cached records (answers are capped, so memory is bounded).
    pub cache_size: u64,
    /// Per-query timeout.
    pub timeout: Duration,
    /// Upper bound on how long a positive answer is cached.
    pub max_ttl: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            servers: Vec::new(),
            cache_size: 4096,
            timeout: Duration::from_secs(2),
            max_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(String),
    #[error("resolver setup failed: {0}")]
    Setup(String),
}

/// Why a name did not resolve, as the operator sees it in the error page and the log: one
/// readable line, never the resolver's debug dump.
#[derive(Debug, thiserror::Error)]
#[error("DNS: {}", describe(.name, .kind))]
pub struct LookupFailure {
    pub name: String,
    pub kind: LookupFailureKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupFailureKind {
    /// NXDOMAIN.
    NoSuchName,
    /// The name exists but has no A or AAAA record.
    NoAddress,
    /// No server answered in time.
    Timeout,
    /// A server answered with an error code (SERVFAIL, REFUSED, ...).
    ServerError(String),
    /// Anything else (no usable server, a network error), in the resolver's words.
    Other(String),
}

fn describe(name: &str, kind: &LookupFailureKind) -> String {
    match kind {
        LookupFailureKind::NoSuchName => format!("{name} does not exist (NXDOMAIN)"),
        LookupFailureKind::NoAddress => format!("no A/AAAA record for {name}"),
        LookupFailureKind::Timeout => format!("no answer for {name} in time"),
        LookupFailureKind::ServerError(code) => format!("the server answered {code} for {name}"),
        LookupFailureKind::Other(detail) => format!("lookup of {name} failed: {detail}"),
    }
}

impl LookupFailureKind {
    fn of(error: &NetError) -> LookupFailureKind {
        match error {
            NetError::Dns(DnsError::NoRecordsFound(no_records)) => {
                if no_records.response_code == ResponseCode::NXDomain {
                    LookupFailureKind::NoSuchName
                } else {
                    LookupFailureKind::NoAddress
                }
            }
            NetError::Dns(DnsError::ResponseCode(code)) => {
                LookupFailureKind::ServerError(code.to_string())
            }
            NetError::Timeout => LookupFailureKind::Timeout,
            // Display text is one line for these; cut it anyway, it reaches a log line.
            other => {
                let mut text = other.to_string().replace(['\r', '\n'], " ");
                if text.len() > 200 {
                    let mut cut = 200;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                LookupFailureKind::Other(text)
            }
        }
    }
}

#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    pub fn new(settings: &ResolverSettings) -> Result<Resolver, ResolveError> {
        let mut options;
        let config = if settings.servers.is_empty() {
            let (config, system_options) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|error| ResolveError::SystemConfig(error.to_string()))?;
            options = system_options;
            config
        } else {
            options = ResolverOpts::default();
            let servers = settings
                .servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            ResolverConfig::from_name_servers(servers)
        };
        options.cache_size = settings.cache_size;
        options.timeout = settings.timeout;
        options.attempts = 2;
        options.positive_max_ttl = Some(settings.max_ttl);
        options.negative_max_ttl = Some(Duration::from_secs(30));
        // Both families, IPv4 first: connection attempts then fall back across all of them.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|error| ResolveError::Setup(error.to_string()))?;
        Ok(Resolver { inner })
    }

    /// All addresses for `host`, in preference order. Literals resolve to themselves.
    pub async fn resolve(&self, host: &Host) -> Result<Vec<IpAddr>, LookupFailure> {
        let name = match host {
            Host::Ip(ip) => return Ok(vec![*ip]),
            Host::Name(name) => name,
        };
        // A trailing dot makes the name fully qualified: a proxy must not append the
        // machine's search domains to a client's host name.
        let fqdn = format!("{name}.");
        match self.inner.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => {
                let addresses: Vec<IpAddr> = lookup.iter().collect();
                if addresses.is_empty() {
                    Err(LookupFailure {
                        name: name.clone(),
                        kind: LookupFailureKind::NoAddress,
                    })
                } else {
                    Ok(addresses)
                }
            }
            Err(error) => Err(LookupFailure {
                name: name.clone(),
                kind: LookupFailureKind::of(&error),
            }),
        }
    }
}
