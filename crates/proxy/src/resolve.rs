//! Upstream name resolution: hickory's stub resolver with its bounded cache, configured from
//! the node config (name servers may be on loopback, which is how tests run their own DNS).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

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

/// Why a name did not resolve, as the operator sees it in the error page and the log.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup for {name} failed: {detail}")]
pub struct LookupFailure {
    pub name: String,
    pub detail: String,
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
                        detail: "no addresses".to_owned(),
                    })
                } else {
                    Ok(addresses)
                }
            }
            Err(error) => Err(LookupFailure {
                name: name.clone(),
                detail: error.to_string(),
            }),
        }
    }
}
