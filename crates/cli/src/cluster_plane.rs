//! The cluster plane in the node (issue 10): when the data directory holds a cluster
//! certificate, a mesh over mutual TLS on the cluster port carries replication, and every
//! head the replica settles on is compiled, installed through the policy installer (the one
//! writer of the live policy) and written back to the policy file with its revision in the
//! header, in the order the heads came.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use palisade_cluster::{ClusterConfig, ClusterHandle};
use palisade_cluster_trust::files::{EXPIRY_WARNING, Membership, TrustDir};
use palisade_identity::{NodeId, NodePriority};
use palisade_peer_link::mesh::{MeshConfig, MeshHandle};
use palisade_peer_link::metrics::MeshMetrics;
use palisade_policy::PolicyBundle;
use palisade_replication::RevisionId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterSettings;
use crate::policy_install::PolicyInstaller;

/// A member's trust, loaded at build time (nothing bound).
pub struct Prepared {
    trust: TrustDir,
    membership: Membership,
}

/// Loads this node's membership, if it is a member. A trust directory that is there but
/// unusable fails the start with the file and the reason: serving outside the cluster by
/// mistake would let its policy drift unseen.
pub fn prepare(data_dir: &std::path::Path, node: NodeId) -> anyhow::Result<Option<Prepared>> {
    let trust = TrustDir::of_data_dir(data_dir);
    if !trust.is_member() {
        return Ok(None);
    }
    let membership = trust.membership(node).with_context(|| {
        format!(
            "cannot load this node's cluster membership from {}",
            trust.path().display()
        )
    })?;
    Ok(Some(Prepared { trust, membership }))
}

/// The running plane.
#[derive(Clone)]
pub struct ClusterPlane {
    pub handle: ClusterHandle,
    pub mesh: MeshHandle,
    pub cluster_id: String,
    pub certificate_expires: time::OffsetDateTime,
    pub holds_ca_key: bool,
    pub policy_file: PathBuf,
    pub installer: Arc<PolicyInstaller>,
    /// The revision whose policy is live on this node (installed, not only received).
    pub live: tokio::sync::watch::Receiver<Option<RevisionId>>,
    pub trust: TrustDir,
    /// The admin accounts of the live revision.
    pub accounts: tokio::sync::watch::Receiver<Arc<palisade_admin::accounts::Accounts>>,
}

/// This node's record for the cluster: its node-local configuration as other members may
/// see it (never a secret: no keys, tokens or the heartbeat key).
pub fn node_record(config: &crate::config::NodeConfig, node: NodeId) -> serde_json::Value {
    let settings = &config.cluster;
    let dial_ip = settings
        .address
        .or_else(|| (!settings.listen.ip().is_unspecified()).then(|| settings.listen.ip()));
    let mut proxy_ips: Vec<String> = config
        .listen
        .iter()
        .chain(&config.test_listen)
        .map(|addr| addr.ip().to_string())
        .collect();
    proxy_ips.sort();
    proxy_ips.dedup();
    serde_json::json!({
        "node_id": node.to_string(),
        "name": config.hostname.as_str(),
        "release": release(),
        "node_priority": config.node_priority.value(),
        "cluster": {
            "listen": settings.listen.to_string(),
            "dial": dial_ip.map(|ip| std::net::SocketAddr::new(ip, settings.listen.port()).to_string()),
            "peers": settings.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "max_time_difference_ms": settings.max_time_difference.as_millis() as u64,
        },
        "proxy": {
            "listen": config.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "test_listen": config.test_listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "ips": proxy_ips,
        },
        "admin_listen": config.admin_listen.to_string(),
        "director": {
            "scan_listen": config.director.scan_listen.map(|addr| addr.to_string()),
            "weight": config.director.weight,
            "max_connections": config.director.max_connections,
            "balance_factor": config.director.balance_factor,
            "slow_start_ms": config.director.slow_start.as_millis() as u64,
        },
        "vrrp": config.vrrp.iter().map(|group| serde_json::json!({
            "name": group.name,
            "vrid": group.vrid,
            "interface": group.interface,
            "priority": group.priority,
            "vips": group.vips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "heartbeat": config.heartbeat.as_ref().map(|heartbeat| serde_json::json!({
            "listen": heartbeat.listen.to_string(),
            "peers": heartbeat.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
        "policy_file": config.policy_file.as_ref().map(|file| file.display().to_string()),
        "data_dir": config.data_dir.display().to_string(),
    })
}

pub struct StartArgs<'a> {
    pub settings: &'a ClusterSettings,
    pub store: Arc<palisade_store::Store>,
    pub local: palisade_peer_link::LocalIdentity,
    pub priority: NodePriority,
    pub installer: Arc<PolicyInstaller>,
    pub policy_file: PathBuf,
    pub metrics: MeshMetrics,
    /// The links' pings and silence, from the node's fastest VRRP adverts.
    pub link_timing: palisade_peer_link::link::LinkTiming,
    pub cluster_metrics: palisade_cluster::metrics::ClusterMetrics,
    pub own_record: serde_json::Value,
    pub tasks: &'a TaskTracker,
    pub stop: &'a CancellationToken,
}

pub async fn start(prepared: Prepared, args: StartArgs<'_>) -> anyhow::Result<ClusterPlane> {
    let Prepared { trust, membership } = prepared;
    let joins = membership
        .holds_ca_key
        .then(|| palisade_cluster::join::join_handler(trust.clone(), args.tasks.clone()));
    // Removed nodes, from the trust bundle held here (refused from the first link on).
    let denied = palisade_cluster::DeniedNodes::default();
    match trust.trust_bundle() {
        Ok(Some(signed)) => {
            *denied
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = signed.bundle.denied;
        }
        Ok(None) => {}
        Err(error) => tracing::error!("cannot read the cluster's trust bundle: {error}"),
    }
    let (auth, tls) = palisade_cluster::link_auth(&membership.identity, joins, denied.clone())
        .context("cannot set up the cluster's TLS")?;
    let settings = args.settings;
    let me = args.local.node_id;
    let mesh = palisade_peer_link::mesh::start(
        MeshConfig {
            listen: settings.listen,
            peers: settings.peers.clone(),
            local_addr: settings
                .address
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            auth,
            identity: args.local,
            metrics: args.metrics,
            timing: args.link_timing,
        },
        args.tasks,
        args.stop.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on the cluster port {}", settings.listen))?;
    let cluster_id = membership.identity.cluster.as_str().to_owned();
    let expires = membership.certificate.not_after;
    tracing::info!(addr = %mesh.listen_addr(), cluster = %cluster_id, peers = ?settings.peers, certificate_expires = %expires, ca_key = membership.holds_ca_key, "Cluster port listening (mutual TLS)");
    args.cluster_metrics
        .certificate_expiry
        .set(expires.unix_timestamp());
    // The expiry alert: at start, then twice a day while it stands.
    let stop = args.stop.clone();
    args.tasks.spawn(async move {
        let mut check = tokio::time::interval(std::time::Duration::from_secs(12 * 3600));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = check.tick() => {}
            }
            let left = expires - time::OffsetDateTime::now_utc();
            if left < time::Duration::seconds(EXPIRY_WARNING.as_secs() as i64) {
                tracing::warn!(certificate_expires = %expires, "this node's cluster certificate expires in {} days: renew it with `palisade cluster renew`", left.whole_days());
            }
        }
    });

    // A node that joined this cluster adopts its head: history from any other is archived
    // (kept in the store, never replicated), not merged into this cluster's.
    match args.store.adopt_cluster(&cluster_id) {
        Ok(0) => {}
        Ok(archived) => {
            tracing::warn!(cluster = %cluster_id, archived, "this node's policy history from before it joined this cluster is archived; it adopts the cluster's policy")
        }
        Err(error) => anyhow::bail!("cannot adopt cluster {cluster_id}'s history: {error}"),
    }
    let (activations, mut queued) = mpsc::unbounded_channel::<(RevisionId, PolicyBundle)>();
    let handle = palisade_cluster::start(
        ClusterConfig {
            me,
            priority: args.priority,
            max_ahead: settings.max_time_difference,
            digest_interval: settings.digest_interval,
            release: release(),
            version_match: settings.version_match,
            metrics: args.cluster_metrics.clone(),
            trust: Some(trust.clone()),
            denied,
            tls: Some(tls),
            own_record: serde_json::to_vec(&args.own_record).unwrap_or_default(),
        },
        args.store,
        mesh.clone(),
        Arc::new(move |head, bundle| {
            let _ = activations.send((head, bundle));
        }),
        args.tasks,
        args.stop.clone(),
    )
    .context("cannot start replication")?;
    // One at a time, in order: a later head is never overwritten by an earlier one.
    let (installer, policy_file) = (args.installer.clone(), args.policy_file.clone());
    let reporter = handle.clone();
    let stop = args.stop.clone();
    let (live_tx, live) = tokio::sync::watch::channel(None);
    let (accounts_tx, accounts) =
        tokio::sync::watch::channel(Arc::new(palisade_admin::accounts::Accounts::default()));
    args.tasks.spawn(async move {
        loop {
            let (head, bundle) = tokio::select! {
                () = stop.cancelled() => return,
                next = queued.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
            };
            if stalled_by_test_hook(&bundle.document) {
                continue;
            }
            let accounts = bundle.lists.get(palisade_admin::accounts::ACCOUNTS_KEY).cloned();
            let result = activate(&installer, &policy_file, head, bundle).await;
            if result.is_ok() {
                live_tx.send_replace(Some(head));
                let parsed = match accounts {
                    None => Ok(palisade_admin::accounts::Accounts::default()),
                    Some(text) => palisade_admin::accounts::Accounts::from_json(&text),
                };
                match parsed {
                    Ok(parsed) => {
                        accounts_tx.send_replace(Arc::new(parsed));
                    }
                    Err(error) => tracing::error!("the admin accounts of revision {head:?} are unreadable; the previous ones stay: {error}"),
                }
            }
            let _ = reporter.report_activation(head, result).await;
        }
    });
    Ok(ClusterPlane {
        handle,
        mesh,
        cluster_id,
        certificate_expires: expires,
        holds_ca_key: membership.holds_ca_key,
        policy_file: args.policy_file,
        installer: args.installer,
        live,
        trust,
        accounts,
    })
}

/// Debug builds only (the tests): a node started with `PALISADE_TEST_STALL_ACTIVATION=TEXT`
/// never activates (nor reports) a replicated policy containing TEXT, as a node whose
/// installs hang would not, so a node left behind the cluster's policy can be tested.
fn stalled_by_test_hook(document: &str) -> bool {
    #[cfg(debug_assertions)]
    if let Ok(marker) = std::env::var("PALISADE_TEST_STALL_ACTIVATION")
        && !marker.is_empty()
        && document.contains(&marker)
    {
        tracing::warn!("policy activation stalled by PALISADE_TEST_STALL_ACTIVATION (test hook)");
        return true;
    }
    let _ = document;
    false
}

/// This build's release; debug builds (the tests) may claim another, to make a 404.
fn release() -> String {
    #[cfg(debug_assertions)]
    if let Ok(release) = std::env::var("PALISADE_TEST_RELEASE") {
        return release;
    }
    env!("CARGO_PKG_VERSION").to_owned()
}

async fn activate(
    installer: &PolicyInstaller,
    policy_file: &std::path::Path,
    head: RevisionId,
    bundle: PolicyBundle,
) -> Result<(), palisade_cluster::NotInstalled> {
    let written = bundle.clone();
    // The installer logged it; the last good policy stays live.
    installer.install_bundle(bundle, policy_file).await?;
    // What the apply-to-live benchmark times on every node.
    tracing::info!(revision = %head, "policy revision live");
    let (path, revision) = (policy_file.to_owned(), head.to_string());
    let wrote = tokio::task::spawn_blocking(move || written.write_to(&path, &revision)).await;
    match wrote {
        Ok(Ok(())) => {
            tracing::debug!(revision = %head, policy = %policy_file.display(), "policy revision written back")
        }
        Ok(Err(error)) => {
            tracing::error!(revision = %head, %error, "policy revision live, but not written back to the policy file")
        }
        Err(error) => tracing::error!(%error, "write-back task failed"),
    }
    Ok(())
}
