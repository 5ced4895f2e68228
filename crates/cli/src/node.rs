//! Wiring a node: data directory, policy, planes, signals, drain.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use arc_swap::ArcSwap;
use palisade_health::{Health, MonitoredPort, PortMonitor, PortMonitorConfig, PortState};
use palisade_peer_link::mesh::{MeshConfig, MeshHandle};
use palisade_policy::{CompiledPolicy, NodeIdentity};
use palisade_proxy::access_log::AccessLog;
use palisade_proxy::metrics::ProxyMetrics;
use palisade_proxy::ssrf::OwnAddresses;
use palisade_proxy::{Proxy, bind_listener};
use palisade_vrrp::{Centiseconds, RouterConfig, Version, Vrid, VrrpPriority};
use palisade_vrrp_linux::driver::{GroupHandle, GroupSpec, NotifyHooks};
use prometheus_client::registry::Registry;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, NodeConfig};
use crate::file_watch::SettledChange;
use crate::policy_install::PolicyInstaller;

pub fn check_config(file: &Path, policy: Option<&Path>) -> anyhow::Result<()> {
    let config =
        config::load(file).map_err(|errors| anyhow!("invalid configuration:\n{errors}"))?;
    let policy_file = policy.map(Path::to_path_buf).or(config.policy_file.clone());
    if let Some(policy_file) = policy_file {
        crate::policy_install::load(&policy_file, &identity(&config, None))?;
        println!(
            "{}: ok (policy {}: ok)",
            file.display(),
            policy_file.display()
        );
    } else {
        println!("{}: ok", file.display());
    }
    Ok(())
}

pub fn run(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &config_file {
        Some(file) => {
            config::load(file).map_err(|errors| anyhow!("invalid configuration:\n{errors}"))?
        }
        None => config::defaults(),
    };
    init_tracing(&config);
    crate::allocator::tune();
    raise_fd_limit(config.proxy.max_connections);
    let node = Node::build(config)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("palisade");
    if node.config.worker_threads > 0 {
        runtime.worker_threads(node.config.worker_threads);
    }
    let runtime = runtime.build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut terminate =
            signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
        let running = node.start().await?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
            _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
        }
        running.stop().await;
        Ok(())
    })
}

/// A node built from its configuration: everything validated and loaded (config, data
/// directory, store, policy, HA groups), nothing bound and nothing spawned. [`Node::start`]
/// binds and spawns (linkerd's build-then-spawn, STYLE.md §14), so a node that cannot run
/// fails before it touches a port.
pub struct Node {
    config: NodeConfig,
    policy_file: PathBuf,
    node_identity: NodeIdentity,
    loaded: crate::policy_install::LoadedPolicy,
    store: NodeStore,
    group_specs: Vec<GroupSpec>,
    drained: bool,
    cluster: Option<crate::cluster_plane::Prepared>,
}

/// How long stopping waits for the node's own tasks after the drain (a notify hook may
/// still run; it is killed at its own timeout).
const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    pub fn build(config: NodeConfig) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let store = NodeStore::open(&config.data_dir)?;
        let policy_file = match &config.policy_file {
            Some(file) => file.clone(),
            None => {
                let file = config.data_dir.join("policy.toml");
                if !file.exists() {
                    std::fs::write(&file, palisade_policy::default_source())
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    tracing::info!(path = %file.display(), "wrote the built-in default policy");
                }
                file
            }
        };
        let node_identity = identity(&config, Some(store.node_id));
        let loaded = crate::policy_install::load(&policy_file, &node_identity)?;
        let drained = crate::control::drained_at_start(store.store.as_deref(), &config.data_dir);
        let cluster = match &store.store {
            Some(_) => crate::cluster_plane::prepare(&config.data_dir, store.node_id)?,
            None => {
                if palisade_cluster_trust::files::TrustDir::of_data_dir(&config.data_dir)
                    .is_member()
                {
                    tracing::error!(
                        "the store is unusable: this node serves outside its cluster until it is repaired"
                    );
                }
                None
            }
        };
        let heartbeat_peers: Vec<IpAddr> = (config.heartbeat.iter())
            .flat_map(|heartbeat| heartbeat.peers.iter().map(SocketAddr::ip))
            .collect();
        let group_specs = config
            .vrrp
            .iter()
            .map(|group| group_spec(group, &heartbeat_peers, drained))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Node {
            config,
            policy_file,
            node_identity,
            loaded,
            store,
            group_specs,
            drained,
            cluster,
        })
    }
}

fn identity(config: &NodeConfig, id: Option<palisade_identity::NodeId>) -> NodeIdentity {
    let mut proxy_ips: Vec<_> = config
        .listen
        .iter()
        .chain(&config.test_listen)
        .map(|addr| addr.ip())
        .collect();
    proxy_ips.sort();
    proxy_ips.dedup();
    NodeIdentity {
        id,
        name: config.hostname.clone(),
        proxy_ips,
    }
}

/// `palisade store export`: the store of the configured data directory as JSON on stdout.
pub fn store_export(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open_store_offline(config_file)?;
    let export = store.export()?;
    println!("{export:#}");
    Ok(())
}

/// `palisade store import FILE`: replaces the store's contents with an export.
pub fn store_import(config_file: Option<PathBuf>, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let export: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let mut store = open_store_offline(config_file)?;
    store.import(&export)?;
    println!(
        "{}: imported (node id {})",
        store.path().display(),
        store.node_id()
    );
    Ok(())
}

fn open_store_offline(config_file: Option<PathBuf>) -> anyhow::Result<palisade_store::Store> {
    let config = match &config_file {
        Some(file) => {
            config::load(file).map_err(|errors| anyhow!("invalid configuration:\n{errors}"))?
        }
        None => config::defaults(),
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    Ok(palisade_store::Store::open(&config.data_dir)?)
}

/// The node's store and the identity it holds. A store that cannot be used does not stop
/// the node (every node can serve alone, with the policy file it has): it runs under a
/// temporary identity and says so at start, in status and in the log.
struct NodeStore {
    /// Held for the node's life: it also keeps the data directory's lock.
    store: Option<Arc<palisade_store::Store>>,
    node_id: palisade_identity::NodeId,
    problem: Option<String>,
}

impl NodeStore {
    fn open(data_dir: &Path) -> anyhow::Result<NodeStore> {
        match palisade_store::Store::open(data_dir) {
            Ok(store) => {
                let node_id = store.node_id();
                tracing::info!(%node_id, store = %store.path().display(), "Node identity");
                Ok(NodeStore {
                    store: Some(Arc::new(store)),
                    node_id,
                    problem: None,
                })
            }
            // Two processes on one data directory would fight over every file in it.
            Err(error @ palisade_store::StoreError::InUse { .. }) => Err(error.into()),
            Err(error) => {
                let node_id = palisade_identity::NodeId::random();
                tracing::error!(%node_id, "STORE UNUSABLE: {error}. Serving with the policy file under a temporary node identity");
                Ok(NodeStore {
                    store: None,
                    node_id,
                    problem: Some(error.to_string()),
                })
            }
        }
    }

    /// Who this node is, for status: id, node priority and the store's state.
    fn status(&self, node_priority: palisade_identity::NodePriority) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.node_id.to_string(),
            "node_priority": node_priority.value(),
            "store": match (&self.store, &self.problem) {
                (Some(store), _) => serde_json::json!({ "path": store.path().display().to_string(), "error": null }),
                (None, problem) => serde_json::json!({ "path": null, "error": problem }),
            },
        })
    }
}

/// The bound addresses of one kind of listener.
fn bound_of(
    listeners: &[(tokio::net::TcpListener, SocketAddr, &str)],
    kind: &str,
) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter(|(_, _, listener_kind)| *listener_kind == kind)
        .map(|(_, bound, _)| *bound)
        .collect()
}

/// File descriptors one proxied connection can hold: a tunnel has two sockets and a pipe
/// (two descriptors) per direction for splice.
const FDS_PER_CONNECTION: u64 = 6;
/// Descriptors for everything else: listeners, admin, heartbeat, logs, DNS, netlink.
const FDS_RESERVED: u64 = 256;

/// Raises the soft descriptor limit to the hard one (the usual 1024 soft limit would cap a
/// proxy at ~170 tunnels), and warns when `max_connections` cannot be served with it.
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the file descriptor limit");
            return;
        }
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the file descriptor limit");
                hard
            }
            Err(error) => {
                tracing::warn!(soft, hard, %error, "cannot raise the file descriptor limit");
                soft
            }
        }
    } else {
        tracing::info!(limit = soft, "file descriptor limit");
        soft
    };
    let needed = max_connections as u64 * FDS_PER_CONNECTION + FDS_RESERVED;
    if limit < needed {
        tracing::warn!(
            "proxy.max_connections = {max_connections} needs up to {needed} file descriptors ({FDS_PER_CONNECTION} per tunnel) but the limit is {limit}: raise the hard limit (LimitNOFILE= in the systemd unit, ulimit -Hn) or lower proxy.max_connections"
        );
    }
}

fn init_tracing(config: &NodeConfig) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A started node; [`RunningNode::stop`] takes it down in order.
pub struct RunningNode {
    /// Every task the node spawned, apart from client connections.
    tasks: TaskTracker,
    /// Ends them (after the drain).
    stop: CancellationToken,
    /// Client connections: the drain waits for these.
    connections: TaskTracker,
    /// Closes the proxy listeners.
    stop_accepting: CancellationToken,
    /// Closes and, at the deadline, cuts the connections.
    proxy: Arc<palisade_proxy::Proxy>,
    groups: Vec<GroupHandle>,
    /// The HA heartbeat mesh and the cluster's, when they run.
    meshes: Vec<MeshHandle>,
    drain_timeout: Duration,
}

impl Node {
    /// Binds every listener and spawns every task under one tracker.
    pub async fn start(self) -> anyhow::Result<RunningNode> {
        start_node(self).await
    }
}

impl RunningNode {
    /// Leaves the HA groups (handing the VIPs over), says goodbye to the peers, stops
    /// accepting, waits up to `drain_timeout` for the connections in flight, then stops and
    /// joins every task.
    pub async fn stop(self) {
        for group in &self.groups {
            group.shutdown().await;
        }
        for mesh in &self.meshes {
            mesh.leave().await;
        }
        self.stop_accepting.cancel();
        self.proxy.drain_connections();
        self.connections.close();
        let in_flight = self.connections.len();
        tracing::info!(connections = in_flight, timeout = ?self.drain_timeout, "stopped accepting; waiting for in-flight requests");
        if tokio::time::timeout(self.drain_timeout, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.connections.len(),
                "drain timeout reached; cutting the remaining connections"
            );
            // A reset each: a FIN could pass for the end of a body read until close.
            self.proxy.cut_connections();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.connections.wait()).await;
        } else {
            tracing::info!("drained");
        }
        self.stop.cancel();
        self.tasks.close();
        let running = self.tasks.len();
        if tokio::time::timeout(TASKS_STOP_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "tasks still running at exit (a notify hook?)"
            );
        } else {
            tracing::info!(tasks = running, "stopped: every task joined");
        }
    }
}

async fn start_node(node: Node) -> anyhow::Result<RunningNode> {
    let Node {
        mut config,
        policy_file,
        node_identity,
        loaded,
        store,
        group_specs,
        drained: start_drained,
        cluster: prepared_cluster,
    } = node;
    let summary = loaded.policy.summary();
    let policy = Arc::new(ArcSwap::from_pointee(loaded.policy));
    let mut registry = Registry::default();
    let installer = Arc::new(PolicyInstaller::new(
        policy.clone(),
        loaded.revision,
        node_identity,
        &mut registry,
    ));
    let metrics = ProxyMetrics::new(&mut registry);
    registry.register_collector(Box::new(palisade_admin::process_metrics::ProcessCollector));
    let access_log = AccessLog::start(
        config.access_log.clone(),
        config.access_log_format,
        metrics.access_log_dropped.clone(),
    )
    .context("cannot start the access log")?;
    // Bind everything first: a port given as 0 gets one from the kernel, and every later
    // user (the self-connection guard, the port monitor, the logs) needs the real one.
    let mut proxy_listeners = Vec::new();
    for (addr, kind) in config
        .listen
        .iter()
        .map(|addr| (addr, "redirect port"))
        .chain(config.test_listen.iter().map(|addr| (addr, "test port")))
    {
        let listener = bind_retrying(*addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({kind})"))?;
        let bound = listener.local_addr().unwrap_or(*addr);
        tracing::info!(addr = %bound, kind, "Proxy listening");
        proxy_listeners.push((listener, bound, kind));
    }
    let scan_listener = match config.director.scan_listen {
        Some(addr) => {
            let listener = bind_retrying(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (scan port)"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(addr = %bound, "Scan port listening (PROXY v2 from the group's director only)");
            config.director.scan_listen = Some(bound);
            Some(listener)
        }
        None => None,
    };
    let admin_listener = bind_retrying(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin_listen))?;
    let admin_bound = admin_listener.local_addr().unwrap_or(config.admin_listen);
    tracing::info!(addr = %admin_bound, "Admin interface listening (/metrics, /healthz)");
    config.listen = bound_of(&proxy_listeners, "redirect port");
    config.test_listen = bound_of(&proxy_listeners, "test port");
    config.admin_listen = admin_bound;
    config.proxy.own_ports.retain(|port| *port != 0);
    config.proxy.own_ports.extend(
        config
            .listen
            .iter()
            .chain(&config.test_listen)
            .chain(std::iter::once(&config.admin_listen))
            .chain(&config.director.scan_listen)
            .map(SocketAddr::port),
    );
    // The deep health check (seed 004): a canary origin on loopback, reached through this
    // node's own proxy from a loopback source only the canary request may use.
    let deep = match config.health.deep_check_listen {
        Some(addr) => {
            let canary_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .context("cannot listen for the deep health check's canary")?;
            let origin = canary_listener
                .local_addr()
                .context("the canary listener has no address")?;
            let ipv6 = deep_check_target(&config).is_some_and(|target| target.is_ipv6());
            let canary = palisade_health::deep::Canary::new(origin, ipv6)
                .context("cannot make the deep health check's canary")?;
            config.proxy.canary = Some(palisade_proxy::CanaryAccess {
                source: canary.source,
                url: format!("http://{origin}{}", palisade_health::deep::CANARY_PATH),
                origin,
                token: canary.token.clone(),
            });
            config.proxy.own_ports.push(origin.port());
            let endpoint = bind_retrying(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (deep health check)"))?;
            let bound = endpoint.local_addr().unwrap_or(addr);
            config.proxy.own_ports.push(bound.port());
            tracing::info!(addr = %bound, "Deep health check listening (200 only while a request through this node's proxy succeeds)");
            Some((canary, canary_listener, endpoint))
        }
        None => None,
    };

    let proxy = Proxy::new(
        config.proxy.clone(),
        policy.clone(),
        metrics,
        access_log.clone(),
        OwnAddresses::from_interfaces(),
    )
    .context("cannot start the proxy")?;
    // Other members and the VIPs: their internal ports are closed to clients too (a VIP held
    // by another node leads to that node). Members the cluster's links prove are added as
    // they link (below).
    let configured_members: Vec<IpAddr> = config
        .heartbeat
        .iter()
        .flat_map(|heartbeat| heartbeat.peers.iter().map(SocketAddr::ip))
        .chain(config.cluster.peers.iter().map(SocketAddr::ip))
        .chain(
            config
                .vrrp
                .iter()
                .flat_map(|group| group.vips.iter().copied()),
        )
        .collect();
    proxy.set_member_addresses(configured_members.clone());

    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let connections = TaskTracker::new();
    // In a cluster the scan port's keys and members come from the cluster's links, which
    // start later; without one, from the HA group key and the heartbeat's peers.
    let cluster_links: Arc<std::sync::OnceLock<MeshHandle>> = Arc::default();
    let in_cluster = prepared_cluster.is_some() && store.store.is_some();
    let mut relayed = None;
    if let Some(listener) = scan_listener {
        let (keys, members) = if in_cluster {
            cluster_scan_keys(cluster_links.clone(), store.node_id)
        } else {
            (scan_keys(&config, store.node_id), scan_members(&config))
        };
        let gate = palisade_proxy::scan_port::ScanGate::new(keys, members);
        relayed = Some(gate.relayed());
        tasks.spawn(proxy.clone().serve_scan_port(
            listener,
            gate,
            stop_accepting.clone(),
            connections.clone(),
        ));
    }
    // Redirect ports ask the director (once the HA groups run) where each connection goes;
    // test ports always serve here.
    let dispatch = Arc::new(crate::director_plane::LateDispatch::default());
    for (listener, _, kind) in proxy_listeners {
        let dispatch: Option<Arc<dyn palisade_proxy::relay::Dispatch>> =
            (kind == "redirect port").then(|| dispatch.clone() as _);
        tasks.spawn(proxy.clone().serve(
            listener,
            stop_accepting.clone(),
            connections.clone(),
            dispatch,
        ));
    }
    let deep_state = match deep {
        Some((canary, canary_listener, endpoint)) => {
            let (canary_stop, token) = (stop.clone(), canary.token.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = palisade_health::deep::serve_canary(canary_listener, token) => {}
                    () = canary_stop.cancelled() => {}
                }
            });
            let target = deep_check_target(&config)
                .context("the deep health check needs a redirect listener on an address of this node's own (not a VIP)")?;
            let check =
                palisade_health::deep::DeepCheck::new(palisade_health::deep::DeepCheckConfig {
                    target,
                    canary,
                    interval: config.health.deep_check_interval,
                    timeout: config.health.deep_check_timeout,
                    rise: 2,
                    fall: 3,
                });
            let first = check.probe().await;
            let initial = if first.is_ok() {
                Health::Healthy
            } else {
                Health::Failed
            };
            if let Err(why) = &first {
                tracing::warn!("current state: failure (deep check: {why})");
            }
            let (deep_tx, deep_rx) = watch::channel((initial, first.err()));
            let deep_stop = stop.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = check.run(initial, deep_tx) => {}
                    () = deep_stop.cancelled() => {}
                }
            });
            let (endpoint_stop, name, state) = (
                stop.clone(),
                config.hostname.as_str().to_owned(),
                deep_rx.clone(),
            );
            tasks.spawn(async move {
                tokio::select! {
                    () = palisade_health::deep::serve_endpoint(endpoint, name, state) => {}
                    () = endpoint_stop.cancelled() => {}
                }
            });
            Some(deep_rx)
        }
        None => None,
    };
    if start_drained {
        tracing::warn!(
            "starting drained: out of every HA group, /healthz answers 503, each connection closes after one response (undo with `palisade resume`)"
        );
        proxy.drain_connections();
    }
    let local = palisade_peer_link::LocalIdentity {
        node_id: store.node_id,
        incarnation: palisade_identity::Incarnation::random(),
        name: config.hostname.clone(),
    };
    let link_timing = link_timing(&config);
    let cluster = match (prepared_cluster, &store.store) {
        (Some(prepared), Some(node_store)) => Some(
            crate::cluster_plane::start(
                prepared,
                crate::cluster_plane::StartArgs {
                    settings: &config.cluster,
                    store: node_store.clone(),
                    local: local.clone(),
                    priority: config.node_priority,
                    installer: installer.clone(),
                    policy_file: policy_file.clone(),
                    metrics: palisade_peer_link::metrics::MeshMetrics::for_cluster(&mut registry),
                    link_timing,
                    cluster_metrics: palisade_cluster::metrics::ClusterMetrics::new(&mut registry),
                    own_record: crate::cluster_plane::node_record(&config, store.node_id),
                    tasks: &tasks,
                    stop: &stop,
                },
            )
            .await?,
        ),
        _ => None,
    };
    if let Some(cluster) = &cluster {
        let _ = cluster_links.set(cluster.mesh.clone());
    }
    // A node behind the cluster's policy takes no director role and gets no clients.
    let behind = match &cluster {
        Some(cluster) => cluster.handle.behind(),
        None => watch::channel(None).1,
    };
    if !group_specs.is_empty() {
        // A drain's second chance that an earlier process left (it died mid-drain).
        let _ = tokio::task::spawn_blocking(|| {
            palisade_vrrp_linux::second_chance::clear_stale();
            // And a drill's cut of the links (`palisade fault cut-link`).
            crate::fault::remove_cut();
        })
        .await;
    }
    let HaPlane {
        groups,
        mesh,
        ports,
        failure,
        others_healthy,
    } = start_ha_groups(
        &config,
        group_specs,
        local,
        HaInputs {
            deep: deep_state.clone(),
            behind: behind.clone(),
            cluster_links: cluster.as_ref().map(|cluster| cluster.mesh.clone()),
        },
        &mut registry,
        &tasks,
        &stop,
    )
    .await?;
    registry.register_collector(Box::new(palisade_vrrp_linux::metrics::HaMetrics::new(
        groups.iter().map(|group| group.status.clone()).collect(),
    )));
    // The director: with peer links every healthy member serves clients. In a cluster its
    // reports ride the cluster's mutual-TLS links and the pair keys come from them; without
    // one, the heartbeat's links and the HA group key.
    let director_links = match (&cluster, &mesh, &config.heartbeat) {
        (Some(cluster), _, _) => Some((
            cluster.mesh.clone(),
            crate::director_plane::PairKeys::Links(cluster.mesh.clone()),
        )),
        (None, Some(mesh), Some(heartbeat)) => Some((
            mesh.clone(),
            crate::director_plane::PairKeys::GroupKey(heartbeat.key.clone()),
        )),
        _ => None,
    };
    let mut director = None;
    if let (Some((director_mesh, keys)), false) = (director_links, groups.is_empty()) {
        let own = crate::director_plane::OwnReport {
            weight: config.director.weight,
            max_connections: config.director.max_connections,
            scan: config.director.scan_listen,
            settings: config
                .vrrp
                .iter()
                .map(|group| {
                    (
                        group.vrid,
                        palisade_director::GroupSettings {
                            vips: group.vips.clone(),
                            advert_interval_cs: group.advert_interval_cs,
                            version: group.version,
                            redirect_ports: config.listen.iter().map(SocketAddr::port).collect(),
                        },
                    )
                })
                .collect(),
            active_connections: proxy.metrics().active_connections.clone(),
            failure,
            behind,
            policy: installer.revision(),
            others_healthy,
            relayed,
        };
        let plane = crate::director_plane::DirectorPlane::new(
            store.node_id,
            config.hostname.as_str(),
            keys,
            &groups,
            &config.director,
            &own,
            &mut registry,
        );
        dispatch.set(plane.clone());
        let declared_by = cluster.as_ref().map(|cluster| cluster.handle.clone());
        tasks.spawn(
            plane
                .clone()
                .run(director_mesh, own, declared_by, stop.clone()),
        );
        director = Some(plane);
    }
    let control = Arc::new(
        crate::control::Control::new(
            config.hostname.clone(),
            store.status(config.node_priority),
            installer.revision(),
            groups.clone(),
            mesh.clone(),
            store.store.clone(),
            start_drained,
        )
        .with_cluster(cluster.clone())
        .with_director(director)
        .with_proxy(proxy.clone(), config.drain_timeout)
        .with_monitor(ports),
    );
    tasks.spawn(control.clone().resume_pending_confirm());
    let accounts = match &cluster {
        Some(cluster) => cluster.accounts.clone(),
        // A single node has no accounts: changes come from the node itself only.
        None => {
            tokio::sync::watch::channel(Arc::new(palisade_admin::accounts::Accounts::default())).1
        }
    };
    let admin_state = palisade_admin::AdminState {
        accounts,
        registry: Arc::new(registry),
        node: config.hostname.clone(),
        control,
    };
    // The admin interface answers through the drain (status, /healthz 503) until the end.
    tasks.spawn(palisade_admin::serve(
        admin_listener,
        admin_state,
        config.admin_limits,
        stop.clone(),
    ));
    tracing::info!(
        node = %config.hostname,
        policy = %policy_file.display(),
        revision = %loaded.revision.short(),
        rulesets = summary.rulesets,
        rules = summary.rules,
        "palisade node started"
    );

    {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        let cluster_links = cluster.as_ref().map(|cluster| cluster.mesh.watch_peers());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut members: std::collections::BTreeSet<IpAddr> =
                configured_members.into_iter().collect();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                proxy.sweep_pool();
                proxy.refresh_own_addresses();
                // Members learnt at run time (`cluster add`, a join): kept once seen.
                if let Some(links) = &cluster_links {
                    let before = members.len();
                    members.extend(links.borrow().iter().map(|peer| peer.addr));
                    if members.len() != before {
                        proxy.set_member_addresses(members.iter().copied().collect());
                    }
                }
            }
        });
    }
    tasks.spawn(watch_policy(
        policy_file,
        installer,
        access_log,
        config.policy_poll_interval,
        cluster.is_some(),
        stop.clone(),
    ));
    let meshes = mesh
        .into_iter()
        .chain(cluster.map(|cluster| cluster.mesh))
        .collect();
    Ok(RunningNode {
        tasks,
        stop,
        connections,
        stop_accepting,
        proxy,
        groups,
        meshes,
        drain_timeout: config.drain_timeout,
    })
}

/// Binds a listener, retrying for a moment while the address is in use: right after a crash
/// the dead process's sockets can take a few milliseconds to go, and a node restarted by its
/// supervisor must come back rather than fail.
async fn bind_retrying(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut attempts = 0;
    loop {
        match bind_listener(addr) {
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && attempts < 20 => {
                attempts += 1;
                if attempts == 1 {
                    tracing::warn!(%addr, "address in use, retrying for up to 2 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

/// What the HA groups take from the rest of the node.
struct HaInputs {
    /// The deep health check's state, when it runs.
    deep: Option<watch::Receiver<palisade_health::deep::DeepState>>,
    /// Why this node is behind the cluster's policy, if it is.
    behind: watch::Receiver<Option<String>>,
    /// The cluster's links, which the groups' statuses and handovers ride when no
    /// `[heartbeat]` gives them links of their own.
    cluster_links: Option<MeshHandle>,
}

/// Starts the health monitor and one VRRP driver per configured HA group.
/// What the HA groups run with.
struct HaPlane {
    groups: Vec<GroupHandle>,
    mesh: Option<MeshHandle>,
    /// Each monitored port's state at the last probe (`palisade monitor -v`).
    ports: Option<watch::Receiver<Vec<PortState>>>,
    /// Why this node fails (port monitor, deep check), if it does.
    failure: watch::Receiver<Option<String>>,
    /// Per group (by VRID): whether another member reports healthy, which the director
    /// plane tells each group's fault gate.
    others_healthy: HashMap<u8, watch::Sender<bool>>,
}

async fn start_ha_groups(
    config: &NodeConfig,
    specs: Vec<GroupSpec>,
    local: palisade_peer_link::LocalIdentity,
    inputs: HaInputs,
    registry: &mut Registry,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<HaPlane> {
    let HaInputs {
        deep,
        behind,
        cluster_links,
    } = inputs;
    if config.vrrp.is_empty() {
        return Ok(HaPlane {
            groups: Vec::new(),
            mesh: None,
            ports: None,
            failure: watch::channel(None).1,
            others_healthy: HashMap::new(),
        });
    }
    // The redirect ports and the scan port must all accept connections, as swg-mon demands;
    // the test port is watched and reported, but never fails the node.
    let probe_addr = |addr: &SocketAddr| {
        let ip = match addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, addr.port())
    };
    let watched = |addrs: &[SocketAddr], kind: &str, required: bool| -> Vec<MonitoredPort> {
        addrs
            .iter()
            .map(|addr| MonitoredPort {
                addr: probe_addr(addr),
                kind: kind.to_owned(),
                required,
            })
            .collect()
    };
    let mut ports = watched(&config.listen, "redirect port", true);
    ports.extend(watched(
        config.director.scan_listen.as_slice(),
        "scan port",
        true,
    ));
    ports.extend(watched(&config.test_listen, "test port", false));
    let monitor = PortMonitor::new(PortMonitorConfig {
        ports,
        interval: config.health.interval,
        timeout: config.health.timeout,
        rise: config.health.rise,
        fall: config.health.fall,
    });
    let first_probe = monitor.probe().await;
    let initial = if PortMonitor::healthy(&first_probe) {
        Health::Healthy
    } else {
        Health::Failed
    };
    let (health_tx, mut health_rx) = watch::channel(initial);
    let (port_states_tx, port_states) = watch::channel(first_probe);
    let monitor_stop = stop.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = monitor.run(initial, health_tx, port_states_tx) => {}
            () = monitor_stop.cancelled() => {}
        }
    });
    // The node fails while the port monitor or the deep check does; why, for its load
    // reports and the fail-open log.
    let failure_now = |health: Health,
                       ports: &[PortState],
                       deep: &Option<watch::Receiver<palisade_health::deep::DeepState>>|
     -> Option<String> {
        let mut why = Vec::new();
        if health == Health::Failed {
            let down: Vec<String> = ports
                .iter()
                .filter(|port| port.port.required && !port.listening)
                .map(|port| format!("{} {} not listening", port.port.kind, port.port.addr))
                .collect();
            if down.is_empty() {
                why.push("port monitor".to_owned());
            } else {
                why.extend(down);
            }
        }
        if let Some(deep) = deep {
            let deep = deep.borrow();
            if deep.0 == Health::Failed {
                why.push(format!(
                    "deep check: {}",
                    deep.1.as_deref().unwrap_or("failing")
                ));
            }
        }
        (!why.is_empty()).then(|| why.join(", "))
    };
    let initial_failure = failure_now(initial, &port_states.borrow(), &deep);
    let (failure_tx, failure) = watch::channel(initial_failure.clone());
    // Ends with the monitor (its sender dropped).
    let ports_seen = port_states.clone();
    tasks.spawn(async move {
        let mut deep = deep;
        loop {
            let changed = match deep.as_mut() {
                Some(deep) => tokio::select! {
                    changed = health_rx.changed() => changed.is_ok(),
                    changed = deep.changed() => changed.is_ok(),
                },
                None => health_rx.changed().await.is_ok(),
            };
            if !changed {
                break;
            }
            let health = *health_rx.borrow_and_update();
            let why = failure_now(health, &ports_seen.borrow(), &deep);
            failure_tx.send_if_modified(|now| {
                let modified = *now != why;
                *now = why;
                modified
            });
            if failure_tx.is_closed() {
                break;
            }
        }
    });
    let mesh = match (&config.heartbeat, specs.first()) {
        (Some(heartbeat), Some(first)) => {
            let incarnation = local.incarnation;
            // Links leave from the primary address, so peers see the address VRRP knows this
            // node by; an IPv6 group's primary is link-local, which a link cannot be bound to
            // without its scope: such links leave from any address (statuses name the primary).
            let primary = first.router.primary_address;
            let local_addr = match primary {
                IpAddr::V6(v6) if v6.is_unicast_link_local() => {
                    if heartbeat.peers.iter().any(SocketAddr::is_ipv4) {
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    }
                }
                primary => primary,
            };
            let mesh = palisade_peer_link::mesh::start(
                MeshConfig {
                    listen: heartbeat.listen,
                    peers: heartbeat.peers.clone(),
                    local_addr,
                    auth: palisade_peer_link::LinkAuth::group_key(&heartbeat.key),
                    identity: local,
                    metrics: palisade_peer_link::metrics::MeshMetrics::new(registry),
                    timing: link_timing(config),
                },
                tasks,
                stop.clone(),
            )
            .await
            .with_context(|| format!("cannot listen for peer links on {}", heartbeat.listen))?;
            tracing::info!(addr = %heartbeat.listen, peers = ?heartbeat.peers, %incarnation, "Peer links listening");
            Some(mesh)
        }
        _ => None,
    };
    let mut handles = Vec::new();
    let mut others_healthy = HashMap::new();
    for (group, spec) in config.vrrp.iter().zip(specs) {
        // Until the director plane knows better (or without one: no peer links, so nothing
        // is known of the others), another member is taken to be healthy: a failing node
        // faults.
        let (others_tx, others_rx) = watch::channel(true);
        others_healthy.insert(group.vrid, others_tx);
        let (faulty_tx, faulty_rx) = watch::channel(initial_failure.is_some());
        tasks.spawn(fault_gate(
            group.name.clone(),
            failure.clone(),
            behind.clone(),
            others_rx,
            faulty_tx,
        ));
        let links = mesh.clone().or_else(|| cluster_links.clone());
        let handle = palisade_vrrp_linux::driver::spawn(spec, faulty_rx, links, tasks)
            .await
            .with_context(|| format!("cannot start HA group {}", group.name))?;
        tracing::info!(
            instance = %group.name,
            vrid = group.vrid,
            interface = %group.interface,
            priority = group.priority,
            vips = ?group.vips,
            "VRRP instance started"
        );
        handles.push(handle);
    }
    Ok(HaPlane {
        groups: handles,
        mesh,
        ports: Some(port_states),
        failure,
        others_healthy,
    })
}

/// What one HA group's VRRP router is told of this node's health: faulty while the node
/// fails or is behind the cluster's policy, unless no other member of the group is healthy
/// (fail-open: it stays in the election, so the best-priority node keeps the VIP and serves;
/// the last eligible node is never taken out).
async fn fault_gate(
    instance: String,
    mut failure: watch::Receiver<Option<String>>,
    mut behind: watch::Receiver<Option<String>>,
    mut others_healthy: watch::Receiver<bool>,
    faulty: watch::Sender<bool>,
) {
    let mut open = false;
    let mut others_known = true;
    let mut behind_known = true;
    loop {
        let why = failure
            .borrow_and_update()
            .clone()
            .or_else(|| behind.borrow_and_update().clone());
        let others = *others_healthy.borrow_and_update();
        let fail_open = why.is_some() && !others;
        match (&why, open, fail_open) {
            (Some(why), false, true) => tracing::warn!(
                instance = %instance,
                "VRRP_Instance({instance}) current state: failure (fail-open): no other member of the group is healthy, so this node stays in the election and serves ({why})"
            ),
            (Some(why), true, false) => tracing::warn!(
                instance = %instance,
                "VRRP_Instance({instance}) fail-open over: another member is healthy; current state: failure ({why})"
            ),
            (None, true, _) => tracing::info!(
                instance = %instance,
                "VRRP_Instance({instance}) fail-open over: this node is healthy again"
            ),
            _ => {}
        }
        open = fail_open;
        faulty.send_if_modified(|now| {
            let next = why.is_some() && !fail_open;
            let modified = *now != next;
            *now = next;
            modified
        });
        tokio::select! {
            changed = failure.changed() => if changed.is_err() { return },
            changed = behind.changed(), if behind_known => behind_known = changed.is_ok(),
            changed = others_healthy.changed(), if others_known => {
                // The director plane is gone (or never came): keep its last word.
                others_known = changed.is_ok();
            },
            () = faulty.closed() => return,
        }
    }
}

fn group_spec(
    group: &crate::config::VrrpGroup,
    heartbeat_peers: &[IpAddr],
    drained: bool,
) -> anyhow::Result<GroupSpec> {
    let ipv6 = group.vips.first().is_some_and(IpAddr::is_ipv6);
    let primary = match group.primary_address {
        Some(primary) => primary,
        None => palisade_vrrp_linux::socket::primary_address(&group.interface, ipv6).with_context(|| {
            format!(
                "HA group {}: interface {} has no {} address to send adverts from (set vrrp.primary_address)",
                group.name,
                group.interface,
                if ipv6 { "IPv6 link-local" } else { "IPv4" }
            )
        })?,
    };
    let vrid = Vrid::new(group.vrid).context("VRID 0 is not valid")?;
    let mut router = RouterConfig::new(
        vrid,
        VrrpPriority(group.priority),
        primary,
        group.vips.clone(),
    );
    router.advert_interval = Centiseconds(group.advert_interval_cs);
    // The members known from this node's config: its unicast peers, or its peer links'.
    router.members = if group.unicast_peers.is_empty() {
        heartbeat_peers.to_vec()
    } else {
        group.unicast_peers.clone()
    };
    router.preempt = group.preempt;
    router.preempt_delay = group.preempt_delay;
    router.version = if group.version == 2 {
        Version::V2
    } else {
        Version::V3
    };
    Ok(GroupSpec {
        name: group.name.clone(),
        interface: group.interface.clone(),
        router,
        vip_prefix_len: group.vip_prefix_len,
        unicast_peers: group.unicast_peers.clone(),
        notify: NotifyHooks {
            master: group.notify_master.clone(),
            backup: group.notify_backup.clone(),
            fault: group.notify_fault.clone(),
            timeout: group.notify_timeout,
        },
        drained,
    })
}

/// Reloads the policy when its file changes (checked every `interval`; a change counts once
/// it holds for two polls, so a file caught mid-write is not compiled) or at once on SIGHUP.
/// A policy that does not compile is refused with its errors and the old one stays live.
/// On a cluster member the file is the cluster's policy written back: an edit there is not
/// installed (it would leave this node alone with it) but pointed at `palisade policy apply`.
async fn watch_policy(
    path: PathBuf,
    installer: Arc<PolicyInstaller>,
    access_log: AccessLog,
    interval: Duration,
    cluster: bool,
    stop: CancellationToken,
) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::error!(%error, "cannot install SIGHUP handler; policy reloads only on file change");
            None
        }
    };
    // The policy file and every list file the live policy read (a blocklist edit must take
    // effect like a policy edit, or the list fails open: security review F8).
    let watched = |live: &CompiledPolicy| {
        let mut files = vec![path.clone()];
        files.extend(live.source_files().iter().cloned());
        files
    };
    let mut files = watched(&installer.live());
    let mut change = SettledChange::new(stamps_of(&files));
    loop {
        let forced = tokio::select! {
            () = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => false,
            Some(()) = async { match hangup.as_mut() { Some(hangup) => hangup.recv().await, None => std::future::pending().await } } => true,
        };
        if forced {
            access_log.reopen();
        }
        let stamps = stamps_of(&files);
        if !forced && !change.poll(stamps.clone()) {
            continue;
        }
        change.acted_on(stamps);
        if cluster {
            // The cluster's own write-back holds the live document: nothing to say.
            let written_back =
                std::fs::read_to_string(&path).is_ok_and(|text| installer.is_live_document(&text));
            if !forced && !written_back {
                tracing::warn!(path = %path.display(), "the policy file changed; on a cluster member it is saved with `palisade policy apply {}`, which makes it live on every node", path.display());
            }
            continue;
        }
        // The installer logs and counts the outcome; a refused policy leaves the live one.
        if installer.install_file(&path).await.is_ok() {
            let now_watched = watched(&installer.live());
            if now_watched != files {
                // Stamps of the new set, as the policy just compiled saw them.
                change.acted_on(stamps_of(&now_watched));
                files = now_watched;
            }
        }
    }
}

fn stamps_of(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|file| file_stamp(file)).collect()
}

/// Modification time and size: enough to notice an edit or an atomic rename.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The keys this node shares with each director. In an HA group with a group key every
/// holder of the key is a member, so the pair key is derived for whichever node id the
/// header names; without one (keepalived peers) no director is known and the scan port
/// refuses every header.
/// Where the deep check reaches this node's proxy: a redirect listener on one of its own
/// addresses (never a VIP: a backup does not hold it, and the director would relay it),
/// IPv4 first (its loopback source can be chosen; IPv6 has only `::1`).
fn deep_check_target(config: &NodeConfig) -> Option<SocketAddr> {
    let vips: Vec<IpAddr> = config
        .vrrp
        .iter()
        .flat_map(|group| group.vips.iter().copied())
        .collect();
    let own = |addr: &&SocketAddr| !vips.contains(&addr.ip());
    let loopback = |addr: &SocketAddr| match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => *addr,
    };
    let candidates: Vec<&SocketAddr> = config.listen.iter().filter(own).collect();
    candidates
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(candidates.first())
        .map(|addr| loopback(addr))
}

/// The addresses a director may relay from: the group's members as the heartbeat lists them
/// (their primary addresses, which relays leave from).
fn scan_members(config: &NodeConfig) -> palisade_proxy::scan_port::ScanMembers {
    let members: std::collections::HashSet<IpAddr> = config
        .heartbeat
        .iter()
        .flat_map(|heartbeat| heartbeat.peers.iter().map(|peer| peer.ip().to_canonical()))
        .collect();
    Arc::new(move |ip| members.contains(&ip))
}

/// A cluster member's scan port: keys exported from its links to the director, members the
/// peers its links prove (their link addresses, which relays leave from).
fn cluster_scan_keys(
    links: Arc<std::sync::OnceLock<MeshHandle>>,
    me: palisade_identity::NodeId,
) -> (
    palisade_proxy::scan_port::ScanKeys,
    palisade_proxy::scan_port::ScanMembers,
) {
    let for_keys = links.clone();
    let keys: palisade_proxy::scan_port::ScanKeys =
        Arc::new(move |director| match for_keys.get() {
            Some(mesh) => {
                crate::director_plane::PairKeys::Links(mesh.clone()).verifying(me, director)
            }
            None => Vec::new(),
        });
    let members: palisade_proxy::scan_port::ScanMembers = Arc::new(move |ip| {
        links.get().is_some_and(|mesh| {
            (mesh.watch_peers().borrow().iter()).any(|peer| peer.addr.to_canonical() == ip)
        })
    });
    (keys, members)
}

fn scan_keys(
    config: &NodeConfig,
    me: palisade_identity::NodeId,
) -> palisade_proxy::scan_port::ScanKeys {
    match &config.heartbeat {
        Some(heartbeat) => {
            let key = heartbeat.key.clone();
            Arc::new(move |director| {
                vec![palisade_scan_header::PairKey::from_group_key(
                    &key, director, me,
                )]
            })
        }
        None => Arc::new(|_| Vec::new()),
    }
}

/// Links ping as fast as the node's fastest adverts, so a dead peer's link is down by the
/// time VRRP moves its VIP (the director's tickles wait for both).
fn link_timing(config: &NodeConfig) -> palisade_peer_link::link::LinkTiming {
    (config.vrrp.iter())
        .map(|group| Duration::from_millis(u64::from(group.advert_interval_cs) * 10))
        .min()
        .map(palisade_peer_link::link::LinkTiming::for_advert_interval)
        .unwrap_or_default()
}
