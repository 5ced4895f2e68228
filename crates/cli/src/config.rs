//! The node config file: parsed once, here, into each plane's plain `Config`.
//!
//! `raw::*` mirrors what was typed (serde, unknown fields refused, spans kept); `NodeConfig`
//! is what the planes get. Every problem is reported as `file:line:col: setting = value: what
//! is wrong`, and validation collects all problems before giving up.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_proxy::ForwardedFor;
use palisade_proxy::access_log::{LogFormat, LogTarget};
use palisade_proxy::http1::HeadLimits;
use palisade_proxy::resolve::ResolverSettings;
use palisade_proxy::upstream::PoolSettings;
use toml::Spanned;

/// The whole validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub hostname: palisade_identity::NodeName,
    /// The cluster's node priority (lower wins), not VRRP's.
    pub node_priority: palisade_identity::NodePriority,
    pub data_dir: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub test_listen: Vec<SocketAddr>,
    pub admin_listen: SocketAddr,
    pub admin_limits: palisade_admin::AdminLimits,
    pub worker_threads: usize,
    pub drain_timeout: Duration,
    pub proxy: palisade_proxy::Config,
    /// `None`: `<data_dir>/policy.toml`, created from the built-in default when missing.
    pub policy_file: Option<PathBuf>,
    pub policy_poll_interval: Duration,
    pub log_level: String,
    pub log_json: bool,
    pub access_log: LogTarget,
    pub access_log_format: LogFormat,
    /// HA groups this node takes part in (empty: a single node without a VIP).
    pub vrrp: Vec<VrrpGroup>,
    pub health: HealthConfig,
    /// Heartbeat links between the HA nodes (fast take-over on a crash, explicit handover).
    pub heartbeat: Option<HeartbeatConfig>,
    /// Central management: where this node talks to the other members. The cluster plane
    /// runs when the data directory holds a cluster certificate (`palisade cluster init` or
    /// `join`); these settings only say where.
    pub cluster: ClusterSettings,
    /// The director's side of this node: its scan port and its weight in the choice.
    pub director: DirectorSettings,
}

/// `[director]`: how the HA group's director treats this node, and where it relays to.
#[derive(Clone, Debug)]
pub struct DirectorSettings {
    /// The scan port: PROXY v2 connections from the group's director only. Default
    /// 0.0.0.0:9190 on a node of an HA group, none otherwise.
    pub scan_listen: Option<SocketAddr>,
    /// This node's share of clients relative to the others' (0: maintenance).
    pub weight: u32,
    /// Connections at most (0: no cap).
    pub max_connections: u32,
    /// ε of bounded loads (none: a client always goes home).
    pub balance_factor: Option<f64>,
    /// How long this node takes to get its clients back after being out.
    pub slow_start: Duration,
}

#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// The cluster port (mutual TLS), 12346 by default.
    pub listen: SocketAddr,
    /// Other members' cluster addresses this node dials (members it does not list may dial
    /// it: their certificate admits them).
    pub peers: Vec<SocketAddr>,
    /// The source address of links this node dials (unset: whatever routes to the peer).
    pub address: Option<std::net::IpAddr>,
    /// How far apart members' clocks may be (the seeds' 2 minutes).
    pub max_time_difference: Duration,
    /// Anti-entropy digests this often.
    pub digest_interval: Duration,
    /// How much of the release members must share to replicate (a rolling upgrade between
    /// compatible releases keeps the cluster together).
    pub version_match: palisade_replication::coordinator::VersionMatch,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 12346)),
            peers: Vec::new(),
            address: None,
            max_time_difference: Duration::from_secs(120),
            digest_interval: Duration::from_secs(2),
            version_match: palisade_replication::coordinator::VersionMatch::Minor,
        }
    }
}

#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub key: Vec<u8>,
}

/// One HA group (VRRP instance), validated.
#[derive(Clone, Debug)]
pub struct VrrpGroup {
    pub name: String,
    pub vrid: u8,
    pub interface: String,
    pub priority: u8,
    pub advert_interval_cs: u16,
    pub vips: Vec<std::net::IpAddr>,
    pub vip_prefix_len: u8,
    /// `None`: the interface's first address of the VIPs' family.
    pub primary_address: Option<std::net::IpAddr>,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub version: u8,
    pub unicast_peers: Vec<std::net::IpAddr>,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    /// A notify hook still running after this is killed (its whole process group).
    pub notify_timeout: Duration,
}

/// The in-process port monitor that drives FAULT state.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The deep health check's endpoint (200 only while a request through this node's own
    /// proxy succeeds). Default 0.0.0.0:9099 on a node of an HA group, none otherwise.
    pub deep_check_listen: Option<SocketAddr>,
    pub deep_check_interval: Duration,
    pub deep_check_timeout: Duration,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// All problems of a config file, one per line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

mod raw {
    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub node: Node,
        #[serde(default)]
        pub proxy: Proxy,
        #[serde(default)]
        pub dns: Dns,
        #[serde(default)]
        pub policy: Policy,
        #[serde(default)]
        pub admin: Admin,
        #[serde(default)]
        pub log: Log,
        #[serde(default)]
        pub access_log: AccessLog,
        #[serde(default)]
        pub vrrp: Vec<Vrrp>,
        #[serde(default)]
        pub health: Health,
        pub heartbeat: Option<Heartbeat>,
        #[serde(default)]
        pub cluster: Cluster,
        #[serde(default)]
        pub director: Director,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Director {
        pub scan_listen: Option<Spanned<String>>,
        pub weight: Option<Spanned<i64>>,
        pub max_connections: Option<Spanned<i64>>,
        /// A number (0.25), or "off".
        pub balance_factor: Option<Spanned<toml::Value>>,
        pub slow_start: Option<Spanned<String>>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Cluster {
        pub listen: Option<Spanned<String>>,
        pub peers: Option<Spanned<Vec<Spanned<String>>>>,
        pub address: Option<Spanned<String>>,
        pub max_time_difference: Option<Spanned<String>>,
        pub digest_interval: Option<Spanned<String>>,
        pub version_match: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Heartbeat {
        pub listen: Option<Spanned<String>>,
        pub peers: Spanned<Vec<Spanned<String>>>,
        pub key: Option<Spanned<String>>,
        pub key_file: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Vrrp {
        pub name: Option<Spanned<String>>,
        pub vrid: Spanned<i64>,
        pub interface: Option<Spanned<String>>,
        pub priority: Option<Spanned<i64>>,
        pub advert_interval: Option<Spanned<String>>,
        pub vips: Spanned<Vec<Spanned<String>>>,
        pub primary_address: Option<Spanned<String>>,
        pub preempt: Option<bool>,
        pub preempt_delay: Option<Spanned<String>>,
        pub version: Option<Spanned<i64>>,
        pub unicast_peers: Option<Vec<Spanned<String>>>,
        pub notify_master: Option<String>,
        pub notify_backup: Option<String>,
        pub notify_fault: Option<String>,
        pub notify_timeout: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub interval: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub rise: Option<Spanned<i64>>,
        pub fall: Option<Spanned<i64>>,
        pub deep_check_listen: Option<Spanned<String>>,
        pub deep_check_interval: Option<Spanned<String>>,
        pub deep_check_timeout: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Node {
        pub hostname: Option<Spanned<String>>,
        pub data_dir: Option<Spanned<String>>,
        pub priority: Option<Spanned<i64>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Proxy {
        pub listen: Option<Spanned<Vec<Spanned<String>>>>,
        pub test_listen: Option<Spanned<Vec<Spanned<String>>>>,
        pub max_connections: Option<Spanned<i64>>,
        pub max_connections_per_source: Option<Spanned<i64>>,
        pub max_head_bytes: Option<Spanned<i64>>,
        pub max_headers: Option<Spanned<i64>>,
        pub max_request_line: Option<Spanned<i64>>,
        pub connect_timeout: Option<Spanned<String>>,
        pub read_timeout: Option<Spanned<String>>,
        pub write_timeout: Option<Spanned<String>>,
        pub first_byte_timeout: Option<Spanned<String>>,
        pub client_idle_timeout: Option<Spanned<String>>,
        pub min_body_rate: Option<Spanned<i64>>,
        pub body_rate_window: Option<Spanned<String>>,
        pub tunnel_idle_timeout: Option<Spanned<String>>,
        pub drain_timeout: Option<Spanned<String>>,
        pub forwarded_for: Option<Spanned<String>>,
        pub refuse_escaped_slashes: Option<bool>,
        pub worker_threads: Option<Spanned<i64>>,
        #[serde(default)]
        pub upstream_pool: UpstreamPool,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct UpstreamPool {
        pub max_idle_per_host: Option<Spanned<i64>>,
        pub max_idle_total: Option<Spanned<i64>>,
        pub idle_timeout: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Dns {
        pub servers: Option<Vec<Spanned<String>>>,
        pub cache_size: Option<Spanned<i64>>,
        pub timeout: Option<Spanned<String>>,
        pub max_ttl: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Policy {
        pub file: Option<Spanned<String>>,
        pub poll_interval: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub listen: Option<Spanned<String>>,
        pub max_connections: Option<Spanned<i64>>,
        pub header_read_timeout: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub level: Option<Spanned<String>>,
        pub format: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct AccessLog {
        pub path: Option<Spanned<String>>,
        pub format: Option<Spanned<String>>,
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigErrors> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: display.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read config file: {error}"),
        }])
    })?;
    parse(&text, &display)
}

/// The embedded defaults (no config file).
pub fn defaults() -> NodeConfig {
    // An empty document is valid by construction; the test `empty_config_is_valid` holds
    // this invariant.
    match parse("", "<defaults>") {
        Ok(config) => config,
        Err(errors) => unreachable!("embedded defaults invalid: {errors}"),
    }
}

/// Validates config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<NodeConfig, ConfigErrors> {
    let raw: raw::File = toml::from_str(text).map_err(|error| {
        let (line, column) = error
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((1, 1));
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            line,
            column,
            message: error.message().trim_end().to_owned(),
        }])
    })?;
    let mut check = Checker {
        text,
        file,
        errors: Vec::new(),
    };
    let config = check.node_config(raw);
    if check.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(check.errors))
    }
}

struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error<T>(&mut self, value: &Spanned<T>, setting: &str, shown: &str, problem: &str) {
        let (line, column) = line_col(self.text, value.span().start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            message: format!("{setting} = {shown}: {problem}"),
        });
    }

    fn socket_addr(&mut self, value: &Spanned<String>, setting: &str) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => Some(addr),
            Ok(_) => {
                self.error(
                    value,
                    setting,
                    &format!("{:?}", value.get_ref()),
                    "port must not be 0",
                );
                None
            }
            Err(_) => {
                self.error(
                    value,
                    setting,
                    &format!("{:?}", value.get_ref()),
                    "not a socket address (expected IP:PORT, IPv6 as [addr]:port)",
                );
                None
            }
        }
    }

    /// A listening address: port 0 lets the kernel choose (the node logs what it bound).
    fn listen_addr(&mut self, value: &Spanned<String>, setting: &str) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => Some(addr),
            _ => self.socket_addr(value, setting),
        }
    }

    fn socket_addrs(
        &mut self,
        value: Option<Spanned<Vec<Spanned<String>>>>,
        setting: &str,
        default: &str,
    ) -> Vec<SocketAddr> {
        let Some(list) = value else {
            return default.parse().map(|addr| vec![addr]).unwrap_or_default();
        };
        let mut addrs = Vec::new();
        for (index, item) in list.get_ref().iter().enumerate() {
            if let Some(addr) = self.listen_addr(item, &format!("{setting}[{index}]")) {
                addrs.push(addr);
            }
        }
        addrs
    }

    fn duration(
        &mut self,
        value: Option<Spanned<String>>,
        setting: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        match parse_duration(value.get_ref()) {
            Some(duration) if !duration.is_zero() => duration,
            Some(_) => {
                self.error(
                    &value,
                    setting,
                    &format!("{:?}", value.get_ref()),
                    "must be greater than zero",
                );
                default
            }
            None => {
                self.error(
                    &value,
                    setting,
                    &format!("{:?}", value.get_ref()),
                    "not a duration (examples: \"500ms\", \"10s\", \"5m\", \"1h\")",
                );
                default
            }
        }
    }

    fn integer(
        &mut self,
        value: Option<Spanned<i64>>,
        setting: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        let Some(value) = value else {
            return default;
        };
        let number = *value.get_ref();
        if range.contains(&number) {
            number
        } else {
            self.error(
                &value,
                setting,
                &number.to_string(),
                &format!("must be {}..={}", range.start(), range.end()),
            );
            default
        }
    }

    fn choice<T: Copy>(
        &mut self,
        value: Option<Spanned<String>>,
        setting: &str,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if let Some((_, chosen)) = options.iter().find(|(name, _)| *name == value.get_ref()) {
            return *chosen;
        }
        let names: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        self.error(
            &value,
            setting,
            &format!("{:?}", value.get_ref()),
            &format!("must be one of {}", names.join(", ")),
        );
        default
    }

    fn director(&mut self, raw: raw::Director, in_a_group: bool) -> DirectorSettings {
        let scan_listen = match &raw.scan_listen {
            Some(value) if value.get_ref() == "off" => None,
            Some(value) => self.listen_addr(value, "director.scan_listen"),
            None => in_a_group.then(|| SocketAddr::from(([0, 0, 0, 0], 9190))),
        };
        let balance_factor = match raw.balance_factor {
            None => Some(0.25),
            Some(value) => match value.get_ref() {
                toml::Value::String(text) if text == "off" => None,
                toml::Value::Float(number) if (0.0..=10.0).contains(number) => Some(*number),
                toml::Value::Integer(number) if (0..=10).contains(number) => Some(*number as f64),
                other => {
                    let shown = other.to_string();
                    self.error(
                        &value,
                        "director.balance_factor",
                        &shown,
                        "must be a number 0..=10 (0.25: no node above 1.25 times its share) or \"off\"",
                    );
                    Some(0.25)
                }
            },
        };
        DirectorSettings {
            scan_listen,
            weight: self.integer(raw.weight, "director.weight", 0..=1_000_000, 100) as u32,
            max_connections: self.integer(
                raw.max_connections,
                "director.max_connections",
                0..=10_000_000,
                0,
            ) as u32,
            balance_factor,
            slow_start: self.duration(
                raw.slow_start,
                "director.slow_start",
                Duration::from_secs(60),
            ),
        }
    }

    fn heartbeat(&mut self, raw: raw::Heartbeat) -> Option<HeartbeatConfig> {
        let before = self.errors.len();
        let listen = match &raw.listen {
            Some(value) => self.socket_addr(value, "heartbeat.listen"),
            None => Some(SocketAddr::from(([0, 0, 0, 0], 9192))),
        };
        let mut peers = Vec::new();
        for (index, peer) in raw.peers.get_ref().iter().enumerate() {
            peers.extend(self.socket_addr(peer, &format!("heartbeat.peers[{index}]")));
        }
        let key = match (&raw.key, &raw.key_file) {
            (Some(key), None) if key.get_ref().len() >= 16 => {
                Some(key.get_ref().as_bytes().to_vec())
            }
            (Some(key), None) => {
                self.error(
                    key,
                    "heartbeat.key",
                    "\"...\"",
                    "must be at least 16 characters",
                );
                None
            }
            (None, Some(file)) => match std::fs::read(file.get_ref()) {
                Ok(key) if key.len() >= 16 => Some(key),
                Ok(_) => {
                    self.error(
                        file,
                        "heartbeat.key_file",
                        &format!("{:?}", file.get_ref()),
                        "key must be at least 16 bytes",
                    );
                    None
                }
                Err(error) => {
                    self.error(
                        file,
                        "heartbeat.key_file",
                        &format!("{:?}", file.get_ref()),
                        &format!("cannot read: {error}"),
                    );
                    None
                }
            },
            (Some(key), Some(_)) => {
                self.error(
                    key,
                    "heartbeat.key",
                    "\"...\"",
                    "set key or key_file, not both",
                );
                None
            }
            (None, None) => {
                self.error(
                    &raw.peers,
                    "heartbeat",
                    "{...}",
                    "needs key or key_file (the HA group's shared secret)",
                );
                None
            }
        };
        if self.errors.len() != before {
            return None;
        }
        Some(HeartbeatConfig {
            listen: listen?,
            peers,
            key: key?,
        })
    }

    fn cluster(&mut self, raw: raw::Cluster) -> ClusterSettings {
        let defaults = ClusterSettings::default();
        let listen = match &raw.listen {
            Some(value) => self
                .socket_addr(value, "cluster.listen")
                .unwrap_or(defaults.listen),
            None => defaults.listen,
        };
        let mut peers = Vec::new();
        if let Some(list) = &raw.peers {
            for (index, peer) in list.get_ref().iter().enumerate() {
                peers.extend(self.socket_addr(peer, &format!("cluster.peers[{index}]")));
            }
        }
        let address = raw.address.as_ref().and_then(|value| {
            match value.get_ref().parse::<std::net::IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.error(
                        value,
                        "cluster.address",
                        &format!("{:?}", value.get_ref()),
                        "must be an IP address of this node",
                    );
                    None
                }
            }
        });
        ClusterSettings {
            listen,
            peers,
            address,
            max_time_difference: self.duration(
                raw.max_time_difference,
                "cluster.max_time_difference",
                defaults.max_time_difference,
            ),
            digest_interval: self.duration(
                raw.digest_interval,
                "cluster.digest_interval",
                defaults.digest_interval,
            ),
            version_match: match raw.version_match.as_ref() {
                None => defaults.version_match,
                Some(value) => {
                    use palisade_replication::coordinator::VersionMatch;
                    match value.get_ref().as_str() {
                        "major" => VersionMatch::Major,
                        "minor" => VersionMatch::Minor,
                        "exact" => VersionMatch::Exact,
                        other => {
                            self.error(
                                value,
                                "cluster.version_match",
                                &format!("{other:?}"),
                                "must be one of major, minor, exact",
                            );
                            defaults.version_match
                        }
                    }
                }
            },
        }
    }

    fn vrrp_group(&mut self, raw: raw::Vrrp) -> Option<VrrpGroup> {
        let before = self.errors.len();
        let vrid = self.integer(Some(raw.vrid.clone()), "vrrp.vrid", 1..=255, 51) as u8;
        let name = raw
            .name
            .map(Spanned::into_inner)
            .unwrap_or_else(|| format!("VI_{vrid}"));
        let interface = raw
            .interface
            .map(Spanned::into_inner)
            .unwrap_or_else(|| "eth0".to_owned());
        let priority = self.integer(raw.priority, "vrrp.priority", 1..=255, 100) as u8;
        let version = self.integer(raw.version, "vrrp.version", 2..=3, 3) as u8;
        let interval = self.duration(
            raw.advert_interval.clone(),
            "vrrp.advert_interval",
            Duration::from_secs(1),
        );
        let centiseconds = interval.as_millis() / 10;
        let advert_interval_cs = if let Some(value) = &raw.advert_interval
            && (!interval.as_millis().is_multiple_of(10) || !(1..=4095).contains(&centiseconds))
        {
            self.error(
                value,
                "vrrp.advert_interval",
                &format!("{:?}", value.get_ref()),
                "must be a multiple of 10ms between 10ms and 40.95s (VRRPv3 centiseconds)",
            );
            100
        } else if version == 2 && !centiseconds.is_multiple_of(100) {
            if let Some(value) = &raw.advert_interval {
                self.error(
                    value,
                    "vrrp.advert_interval",
                    &format!("{:?}", value.get_ref()),
                    "VRRPv2 needs whole seconds",
                );
            }
            100
        } else {
            centiseconds as u16
        };
        let mut vips = Vec::new();
        let mut prefix = None;
        for (index, vip) in raw.vips.get_ref().iter().enumerate() {
            let text = vip.get_ref();
            let (address, length) = match text.split_once('/') {
                Some((address, length)) => (address, length.parse::<u8>().ok()),
                None => (text.as_str(), None),
            };
            match address.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let length = match (text.contains('/'), length) {
                        (false, _) => max,
                        (true, Some(length)) if length <= max => length,
                        (true, _) => {
                            self.error(
                                vip,
                                &format!("vrrp.vips[{index}]"),
                                &format!("{text:?}"),
                                "invalid prefix length",
                            );
                            max
                        }
                    };
                    if prefix.is_some_and(|prefix| prefix != length) {
                        self.error(
                            vip,
                            &format!("vrrp.vips[{index}]"),
                            &format!("{text:?}"),
                            "all VIPs of a group need the same prefix length",
                        );
                    }
                    prefix = Some(length);
                    vips.push(ip);
                }
                Err(_) => self.error(
                    vip,
                    &format!("vrrp.vips[{index}]"),
                    &format!("{text:?}"),
                    "not an IP address (ADDRESS or ADDRESS/PREFIX)",
                ),
            }
        }
        if vips.is_empty() && self.errors.len() == before {
            self.error(
                &raw.vips,
                "vrrp.vips",
                "[]",
                "a group needs at least one VIP",
            );
        }
        let primary_address = raw
            .primary_address
            .and_then(|value| match value.get_ref().parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.error(
                        &value,
                        "vrrp.primary_address",
                        &format!("{:?}", value.get_ref()),
                        "not an IP address",
                    );
                    None
                }
            });
        let mut unicast_peers = Vec::new();
        for (index, peer) in raw.unicast_peers.unwrap_or_default().iter().enumerate() {
            match peer.get_ref().parse() {
                Ok(ip) => unicast_peers.push(ip),
                Err(_) => self.error(
                    peer,
                    &format!("vrrp.unicast_peers[{index}]"),
                    &format!("{:?}", peer.get_ref()),
                    "not an IP address",
                ),
            }
        }
        let notify_timeout = self.duration(
            raw.notify_timeout,
            "vrrp.notify_timeout",
            Duration::from_secs(60),
        );
        let preempt_delay = match raw.preempt_delay {
            Some(value) if value.get_ref() == "0s" => Duration::ZERO,
            other => self.duration(other, "vrrp.preempt_delay", Duration::ZERO),
        };
        if self.errors.len() != before {
            return None;
        }
        Some(VrrpGroup {
            name,
            vrid,
            interface,
            priority,
            advert_interval_cs,
            vips,
            vip_prefix_len: prefix.unwrap_or(32),
            primary_address,
            preempt: raw.preempt.unwrap_or(true),
            preempt_delay,
            version,
            unicast_peers,
            notify_master: raw.notify_master,
            notify_backup: raw.notify_backup,
            notify_fault: raw.notify_fault,
            notify_timeout,
        })
    }

    fn node_config(&mut self, raw: raw::File) -> NodeConfig {
        let hostname = match raw.node.hostname {
            Some(value) => match palisade_identity::NodeName::new(value.get_ref()) {
                Ok(name) => name,
                Err(error) => {
                    self.error(
                        &value,
                        "node.hostname",
                        &format!("{:?}", value.get_ref()),
                        &format!("must be a host name (letters, digits, '-', '.', '_'): {error}"),
                    );
                    system_hostname()
                }
            },
            None => system_hostname(),
        };
        let node_priority = palisade_identity::NodePriority::new(self.integer(
            raw.node.priority,
            "node.priority",
            0..=65_535,
            i64::from(palisade_identity::NodePriority::DEFAULT.value()),
        ) as u16);
        let data_dir = raw
            .node
            .data_dir
            .map(|value| PathBuf::from(value.into_inner()))
            .unwrap_or_else(|| PathBuf::from("palisade-data"));

        let listen = self.socket_addrs(raw.proxy.listen, "proxy.listen", "127.0.0.1:9090");
        let test_listen =
            self.socket_addrs(raw.proxy.test_listen, "proxy.test_listen", "127.0.0.1:9091");
        let admin_listen = match raw.admin.listen {
            Some(value) => self
                .listen_addr(&value, "admin.listen")
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4711))),
            None => SocketAddr::from(([127, 0, 0, 1], 4711)),
        };
        let admin_limits = palisade_admin::AdminLimits {
            max_connections: self.integer(
                raw.admin.max_connections,
                "admin.max_connections",
                1..=10_000,
                64,
            ) as usize,
            header_read_timeout: self.duration(
                raw.admin.header_read_timeout,
                "admin.header_read_timeout",
                Duration::from_secs(10),
            ),
        };
        let max_connections = self.integer(
            raw.proxy.max_connections,
            "proxy.max_connections",
            1..=1_000_000,
            10_000,
        );
        let max_connections_per_source = self.integer(
            raw.proxy.max_connections_per_source,
            "proxy.max_connections_per_source",
            1..=1_000_000,
            1_000,
        );
        let min_body_rate = self.integer(
            raw.proxy.min_body_rate,
            "proxy.min_body_rate",
            0..=1_000_000_000,
            500,
        );
        let body_rate_window = match raw.proxy.body_rate_window {
            Some(value) => {
                let window = self.duration(
                    Some(value.clone()),
                    "proxy.body_rate_window",
                    Duration::from_secs(10),
                );
                if window < Duration::from_secs(1) {
                    self.error(
                        &value,
                        "proxy.body_rate_window",
                        &format!("{:?}", value.get_ref()),
                        "must be at least 1s",
                    );
                }
                window
            }
            None => Duration::from_secs(10),
        };
        let max_head_bytes = self.integer(
            raw.proxy.max_head_bytes,
            "proxy.max_head_bytes",
            1024..=1_048_576,
            65_536,
        );
        let max_headers = self.integer(
            raw.proxy.max_headers,
            "proxy.max_headers",
            8..=palisade_proxy::http1::head::MAX_HEADERS as i64,
            100,
        );
        let max_request_line = self.integer(
            raw.proxy.max_request_line,
            "proxy.max_request_line",
            256..=1_048_576,
            16_384,
        );
        let worker_threads = self.integer(
            raw.proxy.worker_threads,
            "proxy.worker_threads",
            0..=1024,
            0,
        );
        let pool = PoolSettings {
            max_idle_per_host: self.integer(
                raw.proxy.upstream_pool.max_idle_per_host,
                "proxy.upstream_pool.max_idle_per_host",
                0..=100_000,
                256,
            ) as usize,
            max_idle_total: self.integer(
                raw.proxy.upstream_pool.max_idle_total,
                "proxy.upstream_pool.max_idle_total",
                0..=1_000_000,
                4096,
            ) as usize,
            idle_timeout: self.duration(
                raw.proxy.upstream_pool.idle_timeout,
                "proxy.upstream_pool.idle_timeout",
                Duration::from_secs(30),
            ),
        };
        let mut dns_servers = Vec::new();
        for (index, server) in raw.dns.servers.unwrap_or_default().iter().enumerate() {
            // A bare IP means port 53.
            let text = server.get_ref();
            let parsed = text
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
                .ok()
                .or_else(|| self.socket_addr(server, &format!("dns.servers[{index}]")));
            dns_servers.extend(parsed);
        }
        let resolver = ResolverSettings {
            servers: dns_servers,
            cache_size: self.integer(raw.dns.cache_size, "dns.cache_size", 0..=10_000_000, 4096)
                as u64,
            timeout: self.duration(raw.dns.timeout, "dns.timeout", Duration::from_secs(2)),
            max_ttl: self.duration(raw.dns.max_ttl, "dns.max_ttl", Duration::from_secs(300)),
        };
        let heartbeat = raw
            .heartbeat
            .and_then(|heartbeat| self.heartbeat(heartbeat));
        let cluster = self.cluster(raw.cluster);
        let director = self.director(raw.director, !raw.vrrp.is_empty());
        let deep_check_listen = match &raw.health.deep_check_listen {
            Some(value) if value.get_ref() == "off" => None,
            Some(value) => self.listen_addr(value, "health.deep_check_listen"),
            None => (!raw.vrrp.is_empty()).then(|| SocketAddr::from(([0, 0, 0, 0], 9099))),
        };
        // Every port this node serves: a proxied request to one of them on an own address is
        // a self-connection, whatever allow_destinations says.
        let mut own_ports: Vec<u16> = listen
            .iter()
            .chain(&test_listen)
            .chain(std::iter::once(&admin_listen))
            .chain(heartbeat.as_ref().map(|heartbeat| &heartbeat.listen))
            .chain(std::iter::once(&cluster.listen))
            .chain(&director.scan_listen)
            .chain(&deep_check_listen)
            .map(SocketAddr::port)
            .collect();
        own_ports.sort_unstable();
        own_ports.dedup();
        let proxy = palisade_proxy::Config {
            node_name: hostname.clone(),
            head_limits: HeadLimits {
                max_head_bytes: max_head_bytes as usize,
                max_request_line: max_request_line as usize,
                max_headers: max_headers as usize,
            },
            max_connections: max_connections as usize,
            max_connections_per_source: max_connections_per_source as u32,
            connect_timeout: self.duration(
                raw.proxy.connect_timeout,
                "proxy.connect_timeout",
                Duration::from_secs(10),
            ),
            read_timeout: self.duration(
                raw.proxy.read_timeout,
                "proxy.read_timeout",
                Duration::from_secs(60),
            ),
            write_timeout: self.duration(
                raw.proxy.write_timeout,
                "proxy.write_timeout",
                Duration::from_secs(60),
            ),
            first_byte_timeout: self.duration(
                raw.proxy.first_byte_timeout,
                "proxy.first_byte_timeout",
                Duration::from_secs(10),
            ),
            client_idle_timeout: self.duration(
                raw.proxy.client_idle_timeout,
                "proxy.client_idle_timeout",
                Duration::from_secs(60),
            ),
            min_body_rate: min_body_rate as u64,
            body_rate_window,
            tunnel_idle_timeout: self.duration(
                raw.proxy.tunnel_idle_timeout,
                "proxy.tunnel_idle_timeout",
                Duration::from_secs(600),
            ),
            pool,
            resolver,
            own_ports,
            forwarded_for: self.choice(
                raw.proxy.forwarded_for,
                "proxy.forwarded_for",
                &[
                    ("transparent", ForwardedFor::Transparent),
                    ("on", ForwardedFor::On),
                    ("off", ForwardedFor::Off),
                    ("truncate", ForwardedFor::Truncate),
                    ("delete", ForwardedFor::Delete),
                ],
                ForwardedFor::Transparent,
            ),
            refuse_escaped_slashes: raw.proxy.refuse_escaped_slashes.unwrap_or(false),
            // Set by the node when it starts its deep health check.
            canary: None,
        };
        let drain_timeout = self.duration(
            raw.proxy.drain_timeout,
            "proxy.drain_timeout",
            Duration::from_secs(30),
        );
        let policy_file = raw
            .policy
            .file
            .map(|value| PathBuf::from(value.into_inner()));
        let policy_poll_interval = self.duration(
            raw.policy.poll_interval,
            "policy.poll_interval",
            Duration::from_secs(1),
        );
        let log_level = raw
            .log
            .level
            .map(Spanned::into_inner)
            .unwrap_or_else(|| "info".to_owned());
        let log_json = self.choice(
            raw.log.format,
            "log.format",
            &[("text", false), ("json", true)],
            false,
        );
        let access_log = match raw.access_log.path.map(Spanned::into_inner) {
            None => LogTarget::File(data_dir.join("access.log")),
            Some(path) if path == "off" => LogTarget::Off,
            Some(path) if path == "-" => LogTarget::Stdout,
            Some(path) => LogTarget::File(data_dir.join(path)),
        };
        let access_log_format = self.choice(
            raw.access_log.format,
            "access_log.format",
            &[("json", LogFormat::Json), ("squid", LogFormat::Squid)],
            LogFormat::Json,
        );
        let mut vrrp = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for group in raw.vrrp {
            if let Some(group) = self.vrrp_group(group) {
                // The peer links' statuses and the director's reports name a group by its
                // VRID: two groups of one node must not share one, even on two interfaces.
                if !seen.insert(group.vrid) {
                    self.errors.push(ConfigError {
                        file: self.file.to_owned(),
                        line: 0,
                        column: 0,
                        message: format!(
                            "vrrp: two groups with vrid {} (the second on {}): a node's groups need distinct VRIDs",
                            group.vrid, group.interface
                        ),
                    });
                }
                // A VIP no redirect listener accepts is a group that directs nothing.
                for vip in &group.vips {
                    let accepted = listen.iter().any(|addr| {
                        addr.ip() == *vip
                            || (addr.ip().is_unspecified() && (addr.is_ipv6() || vip.is_ipv4()))
                    });
                    if !accepted {
                        let listeners: Vec<String> =
                            listen.iter().map(ToString::to_string).collect();
                        self.errors.push(ConfigError {
                            file: self.file.to_owned(),
                            line: 0,
                            column: 0,
                            message: format!(
                                "vrrp group {}: no redirect listener can receive traffic for VIP {vip} (proxy.listen = {listeners:?}): listen on 0.0.0.0 (or [::]) or on the VIP",
                                group.name
                            ),
                        });
                    }
                }
                vrrp.push(group);
            }
        }
        let health = HealthConfig {
            interval: self.duration(
                raw.health.interval,
                "health.interval",
                Duration::from_millis(200),
            ),
            timeout: self.duration(
                raw.health.timeout,
                "health.timeout",
                Duration::from_millis(500),
            ),
            rise: self.integer(raw.health.rise, "health.rise", 1..=100, 2) as u32,
            fall: self.integer(raw.health.fall, "health.fall", 1..=100, 2) as u32,
            deep_check_listen,
            deep_check_interval: self.duration(
                raw.health.deep_check_interval,
                "health.deep_check_interval",
                Duration::from_millis(500),
            ),
            deep_check_timeout: self.duration(
                raw.health.deep_check_timeout,
                "health.deep_check_timeout",
                Duration::from_secs(1),
            ),
        };
        NodeConfig {
            vrrp,
            health,
            heartbeat,
            cluster,
            director,
            hostname,
            node_priority,
            data_dir,
            listen,
            test_listen,
            admin_listen,
            admin_limits,
            worker_threads: worker_threads as usize,
            drain_timeout,
            proxy,
            policy_file,
            policy_poll_interval,
            log_level,
            log_json,
            access_log,
            access_log_format,
        }
    }
}

/// "500ms", "10s", "5m", "1h".
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|ch: char| !ch.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60)?),
        "h" => Duration::from_secs(number.checked_mul(3600)?),
        _ => return None,
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |newline| before.len() - newline - 1)
        + 1;
    (line, column)
}

/// A name fit for `Via`, `X-Palisade-Node` and pages: nothing that could end a header line
/// or need escaping (`NodeName` holds the rule).
#[cfg(test)]
fn is_valid_hostname(name: &str) -> bool {
    palisade_identity::NodeName::new(name).is_ok()
}

/// The machine's host name when it is a valid one, else "palisade": the kernel's name is
/// whatever root set, and it goes into headers.
fn system_hostname() -> palisade_identity::NodeName {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .and_then(|name| palisade_identity::NodeName::new(&name).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_errors(text: &str, expected: &[&str]) {
        match parse(text, "palisade.toml") {
            Ok(_) => panic!("accepted: {text}"),
            Err(errors) => {
                let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn empty_config_is_valid() {
        let config = defaults();
        assert_eq!(
            config.listen,
            vec![SocketAddr::from(([127, 0, 0, 1], 9090))]
        );
        assert_eq!(
            config.test_listen,
            vec![SocketAddr::from(([127, 0, 0, 1], 9091))]
        );
        assert_eq!(
            config.admin_listen,
            SocketAddr::from(([127, 0, 0, 1], 4711))
        );
        assert_eq!(config.proxy.own_ports, vec![4711, 9090, 9091, 12346]);
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../examples/palisade.toml");
        if let Err(errors) = parse(text, "examples/palisade.toml") {
            panic!("{errors}");
        }
    }

    #[test]
    fn errors_name_line_and_setting() {
        check_errors(
            "[proxy]\nlisten = [\"127.0.0.1:9090\", \"nonsense\"]\nconnect_timeout = \"10 s\"\n",
            &[
                "palisade.toml:2:29: proxy.listen[1] = \"nonsense\": not a socket address (expected IP:PORT, IPv6 as [addr]:port)",
                "palisade.toml:3:19: proxy.connect_timeout = \"10 s\": not a duration (examples: \"500ms\", \"10s\", \"5m\", \"1h\")",
            ],
        );
        check_errors(
            "[proxy]\nmax_connections = 0\n",
            &["palisade.toml:2:19: proxy.max_connections = 0: must be 1..=1000000"],
        );
        check_errors(
            "[node]\npriority = 70000\n",
            &["palisade.toml:2:12: node.priority = 70000: must be 0..=65535"],
        );
        check_errors(
            "[access_log]\nformat = \"apache\"\n",
            &[
                "palisade.toml:2:10: access_log.format = \"apache\": must be one of \"json\", \"squid\"",
            ],
        );
    }

    #[test]
    fn syntax_and_unknown_fields_name_line() {
        match parse("[proxy]\nlisten_port = 1\n", "p.toml") {
            Err(errors) => {
                let text = errors.to_string();
                assert!(
                    text.starts_with("p.toml:2:1: unknown field `listen_port`"),
                    "{text}"
                );
            }
            Ok(_) => panic!("unknown field accepted"),
        }
        match parse("[proxy\n", "p.toml") {
            Err(errors) => assert!(errors.to_string().starts_with("p.toml:1:"), "{errors}"),
            Ok(_) => panic!("syntax error accepted"),
        }
    }

    #[test]
    fn a_vip_no_redirect_listener_accepts_is_refused() {
        let text = "[proxy]\nlisten = [\"127.0.0.1:9090\", \"10.0.0.5:9090\"]\n[[vrrp]]\nvrid = 7\nvips = [\"10.0.0.100/24\"]\n";
        match parse(text, "p.toml") {
            Err(errors) => assert!(
                errors.to_string().contains(
                    "vrrp group VI_7: no redirect listener can receive traffic for VIP 10.0.0.100"
                ),
                "{errors}"
            ),
            Ok(_) => panic!("a group whose VIP nothing listens on was accepted"),
        }
        for listen in ["0.0.0.0:9090", "10.0.0.100:9090", "[::]:9090"] {
            let text = format!(
                "[proxy]\nlisten = [\"{listen}\"]\n[[vrrp]]\nvrid = 7\nvips = [\"10.0.0.100/24\"]\n"
            );
            assert!(parse(&text, "p.toml").is_ok(), "{listen}");
        }
    }

    #[test]
    fn vrrp_groups() {
        let config = parse(
            "[proxy]\nlisten = [\"0.0.0.0:9090\"]\n[[vrrp]]\nvrid = 7\npriority = 150\nadvert_interval = \"100ms\"\nvips = [\"10.0.0.100/24\", \"10.0.0.101/24\"]\n",
            "p.toml",
        );
        match config {
            Ok(config) => {
                let group = &config.vrrp[0];
                assert_eq!(group.name, "VI_7");
                assert_eq!(group.advert_interval_cs, 10);
                assert_eq!(group.vip_prefix_len, 24);
                assert_eq!(group.vips.len(), 2);
                assert_eq!(group.interface, "eth0");
            }
            Err(errors) => panic!("{errors}"),
        }
        check_errors(
            "[[vrrp]]\nvrid = 300\nadvert_interval = \"15ms\"\nvips = [\"10.0.0.1/24\", \"nope\"]\n",
            &[
                "palisade.toml:2:8: vrrp.vrid = 300: must be 1..=255",
                "palisade.toml:3:19: vrrp.advert_interval = \"15ms\": must be a multiple of 10ms between 10ms and 40.95s (VRRPv3 centiseconds)",
                "palisade.toml:4:24: vrrp.vips[1] = \"nope\": not an IP address (ADDRESS or ADDRESS/PREFIX)",
            ],
        );
        // One VRID per node, even on two interfaces: statuses and reports name groups by it.
        check_errors(
            "[proxy]\nlisten = [\"0.0.0.0:9090\"]\n[[vrrp]]\nvrid = 7\ninterface = \"eth0\"\nvips = [\"10.0.0.100/24\"]\n[[vrrp]]\nvrid = 7\ninterface = \"eth1\"\nvips = [\"10.1.0.100/24\"]\n",
            &[
                "palisade.toml:0:0: vrrp: two groups with vrid 7 (the second on eth1): a node's groups need distinct VRIDs",
            ],
        );
    }

    #[test]
    fn host_names_that_could_break_a_header_are_refused() {
        for good in ["proxy-1", "proxy-1.example.com", "node_a"] {
            assert!(is_valid_hostname(good), "{good}");
        }
        for bad in [
            "",
            "a\r\nX-Injected: 1",
            "a b",
            "<script>",
            "é",
            &"a".repeat(254),
        ] {
            assert!(!is_valid_hostname(bad), "{bad:?}");
        }
        assert!(is_valid_hostname(system_hostname().as_str()));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
