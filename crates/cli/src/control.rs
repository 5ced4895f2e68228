//! The node's controls behind the admin API: status, `palisade drain` and `palisade resume`.
//!
//! A drain takes the node out of service: every HA group leaves like a fault (a Master hands
//! its VIPs to the next node in line over the heartbeat, or sends priority 0), `/healthz`
//! answers 503 so that load balancers in front of the node follow, and a marker in the
//! node's store keeps the node drained across restarts until `palisade resume`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_admin::{BoxFuture, ControlError, NodeControl};
use palisade_vrrp::State;
use palisade_vrrp_linux::driver::{GroupHandle, GroupStatus, Left};

/// The marker file of releases before the store: honoured once at start, then moved into
/// the store.
const LEGACY_MARKER: &str = "drained";

pub struct Control {
    node: palisade_identity::NodeName,
    /// `node_id`, `store` and `node_priority` for status (fixed for the process's life).
    identity: serde_json::Value,
    policy_revision: tokio::sync::watch::Receiver<crate::policy_install::PolicyRevision>,
    groups: Vec<GroupHandle>,
    /// The peer links, when configured.
    mesh: Option<palisade_peer_link::mesh::MeshHandle>,
    /// Where the drain is recorded; `None` when the store is unusable (then no drain or
    /// resume can be recorded, and both are refused with the reason).
    store: Option<Arc<palisade_store::Store>>,
    drained: AtomicBool,
    /// One drain or resume at a time.
    busy: tokio::sync::Mutex<()>,
    /// Central management, when this node is a cluster member.
    cluster: Option<crate::cluster_plane::ClusterPlane>,
    director: Option<Arc<crate::director_plane::DirectorPlane>>,
    /// The data plane, whose connections a drain closes, and how long they get.
    proxy: Option<(Arc<palisade_proxy::Proxy>, Duration)>,
    /// The drain of connections under way, if any.
    closing: std::sync::Mutex<Option<Closing>>,
    ports: Option<tokio::sync::watch::Receiver<Vec<palisade_health::PortState>>>,
    /// A save waiting for `palisade policy confirm`: its revision, and what cancels the
    /// automatic rollback.
    pending_confirm: tokio::sync::Mutex<Option<(String, tokio_util::sync::CancellationToken)>>,
}

/// Whether a drain survived the last run (the node then starts drained). A drain that
/// cannot be checked counts as present: starting in service by mistake could take a VIP from
/// a node the operator meant to keep. A marker file of an earlier release is moved into the
/// store.
pub fn drained_at_start(store: Option<&palisade_store::Store>, data_dir: &Path) -> bool {
    let legacy = data_dir.join(LEGACY_MARKER);
    let legacy_present = legacy.try_exists().unwrap_or(true);
    let Some(store) = store else {
        tracing::error!(
            "the store is unusable: cannot tell whether the node was drained; starting drained"
        );
        return true;
    };
    if legacy_present {
        match store.set_drained_since(Some(unix_now())) {
            Ok(()) => {
                if let Err(error) = std::fs::remove_file(&legacy) {
                    tracing::warn!(marker = %legacy.display(), %error, "drain moved into the store; cannot remove the old marker");
                }
            }
            Err(error) => tracing::error!(%error, "cannot move the drain marker into the store"),
        }
        return true;
    }
    match store.drained_since() {
        Ok(since) => since.is_some(),
        Err(error) => {
            tracing::error!(%error, "cannot tell whether the node was drained; starting drained");
            true
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Records the drain (or its end) in the store, off the async workers (a commit waits for
/// the disk).
async fn record_drain(
    store: Option<Arc<palisade_store::Store>>,
    since: Option<u64>,
) -> Result<(), String> {
    let Some(store) = store else {
        return Err("the store is unusable (see `palisade status`)".to_owned());
    };
    tokio::task::spawn_blocking(move || store.set_drained_since(since))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}

impl Control {
    pub fn new(
        node: palisade_identity::NodeName,
        identity: serde_json::Value,
        policy_revision: tokio::sync::watch::Receiver<crate::policy_install::PolicyRevision>,
        groups: Vec<GroupHandle>,
        mesh: Option<palisade_peer_link::mesh::MeshHandle>,
        store: Option<Arc<palisade_store::Store>>,
        drained: bool,
    ) -> Control {
        Control {
            cluster: None,
            director: None,
            proxy: None,
            closing: std::sync::Mutex::new(None),
            ports: None,
            pending_confirm: tokio::sync::Mutex::new(None),
            node,
            identity,
            policy_revision,
            groups,
            mesh,
            store,
            drained: AtomicBool::new(drained),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// The port monitor's results, on a node of an HA group.
    pub fn with_monitor(
        mut self,
        ports: Option<tokio::sync::watch::Receiver<Vec<palisade_health::PortState>>>,
    ) -> Control {
        self.ports = ports;
        self
    }

    /// The director of the node's HA groups, when it has one.
    pub fn with_director(
        mut self,
        director: Option<Arc<crate::director_plane::DirectorPlane>>,
    ) -> Control {
        self.director = director;
        self
    }

    /// The data plane: a drain closes its connections in order and cuts what is still open
    /// after `drain_timeout`.
    pub fn with_proxy(
        mut self,
        proxy: Arc<palisade_proxy::Proxy>,
        drain_timeout: Duration,
    ) -> Control {
        self.proxy = Some((proxy, drain_timeout));
        self
    }

    /// Central management's controls, on a cluster member.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster_plane::ClusterPlane>) -> Control {
        self.cluster = cluster;
        self
    }

    /// Refuses a drain that would leave a VIP with nobody to take it: a Master whose heartbeat
    /// knows no live, healthy peer in line. Without heartbeat links a Master cannot know its
    /// Backups; it sends priority 0 and they take over after Skew_Time.
    fn orphaned_vips(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter_map(|group| {
                let status = group.status.borrow();
                (status.state == State::Master && status.heartbeat && status.successor.is_none())
                    .then(|| {
                        let vips: Vec<String> =
                            status.vips.iter().map(ToString::to_string).collect();
                        format!("{} holds {}", status.name, vips.join(" "))
                    })
            })
            .collect()
    }

    async fn drain_now(
        self: Arc<Self>,
        drain: palisade_admin::DrainRequest,
    ) -> Result<serde_json::Value, ControlError> {
        let _busy = self.busy.lock().await;
        let orphaned = self.orphaned_vips();
        if !orphaned.is_empty() && !drain.force {
            return Err(ControlError::Conflict(format!(
                "no other healthy node is in line to take over ({}); nothing changed. \
                 `palisade drain --force` releases the VIPs anyway",
                orphaned.join("; ")
            )));
        }
        // Recorded first, so that a crash half-way through still comes back drained.
        record_drain(self.store.clone(), Some(unix_now()))
            .await
            .map_err(|error| {
                ControlError::Failed(format!("cannot record the drain: {error}; nothing changed"))
            })?;
        if !self.drained.swap(true, Ordering::SeqCst) {
            tracing::warn!(node = %self.node, "node drained: leaving every HA group, /healthz answers 503");
        }
        // A director keeps the connections it has: once its VIPs move, their packets come
        // back to it (the second chance) until they have ended or drain_timeout cuts them.
        let mut second_chance: HashMap<u8, Result<usize, String>> = HashMap::new();
        if !drain.now
            && let (Some(director), Some((_, timeout))) = (&self.director, &self.proxy)
        {
            for group in &self.groups {
                let vrid = {
                    let status = group.status.borrow();
                    (status.state == State::Master).then_some(status.vrid)
                };
                let Some(vrid) = vrid else { continue };
                let begun = director.begin_handover(vrid, *timeout).await;
                match &begun {
                    Ok(confirmed) => tracing::info!(
                        instance = vrid,
                        confirmed,
                        "drain: this director's connections stay with it after the VIP moves (the members send their packets back) until they end, at most {timeout:?}"
                    ),
                    Err(why) => tracing::warn!(
                        instance = vrid,
                        "drain: the connections through this director will be reset when its VIP moves: {why}"
                    ),
                }
                second_chance.insert(vrid, begun);
            }
        }
        let kept: Vec<u8> = (second_chance.iter())
            .filter(|(_, begun)| begun.is_ok())
            .map(|(vrid, _)| *vrid)
            .collect();
        if let Some((proxy, _)) = &self.proxy {
            proxy.drain_connections();
        }
        // Every group at once: each may wait up to an advert interval or so for its
        // successor's first advert.
        let tasks: Vec<_> = (self.groups.iter().cloned())
            .map(|group| tokio::spawn(drain_group(group)))
            .collect();
        let mut reports = Vec::new();
        for (task, group) in tasks.into_iter().zip(&self.groups) {
            let mut report = task.await.unwrap_or_else(
                |error| serde_json::json!({ "error": format!("drain task failed: {error}") }),
            );
            match second_chance.remove(&group.status.borrow().vrid) {
                Some(Ok(confirmed)) => {
                    report["connections_kept"] =
                        serde_json::json!({ "members_confirmed": confirmed })
                }
                Some(Err(why)) => report["connections_reset"] = why.into(),
                None => {}
            }
            reports.push(report);
        }
        // Only once the VIPs have moved: a drain that ended before (no connection open yet)
        // would end the second chance of connections accepted until the move.
        self.close_connections(kept);
        Ok(serde_json::json!({ "node": self.node, "drained": true, "groups": reports }))
    }

    async fn resume_now(self: Arc<Self>) -> Result<serde_json::Value, ControlError> {
        let _busy = self.busy.lock().await;
        // Removed first: a node that resumes now but would come back drained after its next
        // restart is worse than a resume refused with the reason.
        if let Err(error) = record_drain(self.store.clone(), None).await {
            return Err(ControlError::Failed(format!(
                "cannot record the resume: {error}; still drained"
            )));
        }
        if self.drained.swap(false, Ordering::SeqCst) {
            tracing::warn!(node = %self.node, "node resumed: back in every HA group");
        }
        if let Some(closing) = self.closing_slot().take() {
            closing.over.cancel();
        }
        if let Some((proxy, _)) = &self.proxy {
            proxy.resume_connections();
        }
        let mut reports = Vec::new();
        for group in &self.groups {
            let resumed = group.drain(false).await;
            let status = group.status.borrow();
            let mut report = serde_json::json!({
                "name": status.name,
                "state": status.state.to_string(),
            });
            if let Err(error) = resumed {
                report["error"] = error.to_string().into();
            }
            reports.push(report);
        }
        Ok(serde_json::json!({ "node": self.node, "drained": false, "groups": reports }))
    }
}

/// A drain of the node's connections: they close after their current response, and what is
/// still open at the deadline is cut.
struct Closing {
    started: std::time::Instant,
    deadline: std::time::Instant,
    /// Cancelled when it is over: every connection closed, the deadline cut the rest, or a
    /// resume.
    over: tokio_util::sync::CancellationToken,
    /// Groups whose connections came back to this director after its VIPs moved: their
    /// second chance ends with the drain. `None` once it has ended.
    handovers: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

/// How often a drain looks whether every connection has closed.
const CLOSING_POLL: Duration = Duration::from_millis(100);

impl Control {
    fn closing_slot(&self) -> std::sync::MutexGuard<'_, Option<Closing>> {
        self.closing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes every connection in order: each after its current response (with
    /// `Connection: close`), idle kept-alive ones now; at `drain_timeout` whatever is still
    /// open (tunnels, long downloads) is reset. Listeners keep accepting: a client that the
    /// director sent before it learnt of the drain is still served, once.
    fn close_connections(&self, handovers: Vec<u8>) {
        let Some((proxy, timeout)) = self.proxy.clone() else {
            return;
        };
        proxy.drain_connections();
        let mut slot = self.closing_slot();
        if let Some(closing) = slot.as_ref()
            && let Some(running) = (closing.handovers.lock())
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_mut()
        {
            running.extend(handovers);
            return;
        }
        let started = std::time::Instant::now();
        let over = tokio_util::sync::CancellationToken::new();
        let handovers = Arc::new(std::sync::Mutex::new(Some(handovers)));
        *slot = Some(Closing {
            started,
            deadline: started + timeout,
            over: over.clone(),
            handovers: handovers.clone(),
        });
        let director = self.director.clone();
        let resumed = over.clone();
        // Whichever way the drain ends, the second chance ends with it.
        let end = move || {
            let vrids = (handovers.lock())
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            over.cancel();
            if let Some(director) = &director {
                for vrid in vrids.into_iter().flatten() {
                    director.end_handover(vrid);
                }
            }
        };

        tracing::info!(
            open = proxy.open_connections(),
            timeout = ?timeout,
            "closing every connection after its current response"
        );
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::from_std(started + timeout);
            loop {
                let open = proxy.open_connections();
                if open <= 0 {
                    tracing::info!(
                        after_ms = started.elapsed().as_millis() as u64,
                        "drain: every connection has closed"
                    );
                    end();
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        open,
                        "drain_timeout reached: cutting the connections still open (tunnels, long downloads)"
                    );
                    proxy.cut_connections();
                    end();
                    return;
                }
                let next = (tokio::time::Instant::now() + CLOSING_POLL).min(deadline);
                tokio::select! {
                    () = resumed.cancelled() => {
                        end();
                        return;
                    }
                    () = tokio::time::sleep_until(next) => {}
                }
            }
        });
    }

    /// The node's connections for `status`: how many are open, and while a drain closes
    /// them, since when and how long until the rest are cut.
    fn connections_json(&self) -> serde_json::Value {
        let Some((proxy, _)) = &self.proxy else {
            return serde_json::Value::Null;
        };
        let mut value = serde_json::json!({
            "open": proxy.open_connections().max(0),
            "closing": proxy.draining(),
        });
        if let Some(closing) = self.closing_slot().as_ref()
            && !closing.over.is_cancelled()
        {
            value["closing_for_ms"] = (closing.started.elapsed().as_millis() as u64).into();
            value["cut_in_ms"] = (closing
                .deadline
                .saturating_duration_since(std::time::Instant::now())
                .as_millis() as u64)
                .into();
        }
        value
    }
}

/// Drains one group and says what happened, waiting for a handover to be confirmed.
async fn drain_group(group: GroupHandle) -> serde_json::Value {
    let (name, was) = {
        let status = group.status.borrow();
        (status.name.clone(), status.state)
    };
    let started = std::time::Instant::now();
    let mut report = serde_json::json!({ "name": name, "was": was.to_string() });
    match group.drain(true).await {
        Ok(Left::HandedOver(to)) => {
            report["handed_over_to"] = to.to_string().into();
            report["confirmed_ms"] = wait_for_master(&group, to)
                .await
                .map(|()| started.elapsed().as_millis() as u64)
                .into();
        }
        Ok(Left::Released) => report["released"] = true.into(),
        Ok(Left::NotMaster) => {}
        Err(error) => report["error"] = error.to_string().into(),
    }
    report
}

/// A bundle's lists without the accounts' hashes (read-only endpoints answer anyone who can
/// reach the admin port), and the account names.
fn without_account_hashes(
    mut lists: std::collections::BTreeMap<String, String>,
) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
    let accounts = lists
        .remove(palisade_admin::accounts::ACCOUNTS_KEY)
        .and_then(|text| palisade_admin::accounts::Accounts::from_json(&text).ok())
        .map(|accounts| accounts.accounts.into_keys().collect())
        .unwrap_or_default();
    (lists, accounts)
}

/// A revision id as `palisade policy history` prints it (64 hex digits).
fn parse_revision(text: &str) -> Option<palisade_replication::RevisionId> {
    text.parse().ok()
}

impl Control {
    fn cluster(&self) -> Result<&crate::cluster_plane::ClusterPlane, ControlError> {
        self.cluster.as_ref().ok_or_else(|| {
            ControlError::Unavailable(
                "this node is not a cluster member (`palisade cluster init` makes a cluster, `palisade cluster join` joins one)".to_owned(),
            )
        })
    }

    async fn cluster_status_now(self: Arc<Self>) -> Result<serde_json::Value, ControlError> {
        let cluster = self.cluster()?;
        let replica = cluster
            .handle
            .status()
            .await
            .map_err(|error| ControlError::Failed(error.to_string()))?;
        let addresses: std::collections::HashMap<String, String> = cluster
            .mesh
            .peers()
            .into_iter()
            .map(|peer| (peer.id.to_string(), peer.addr.to_string()))
            .collect();
        let peers: Vec<serde_json::Value> = replica
            .peers
            .iter()
            .map(|peer| {
                let mut value = serde_json::to_value(peer).unwrap_or_default();
                value["address"] = addresses.get(&peer.node_id).cloned().into();
                value["reachable"] = true.into();
                value
            })
            .collect();
        let left = cluster.certificate_expires - time::OffsetDateTime::now_utc();
        Ok(serde_json::json!({
            "cluster": cluster.cluster_id,
            "node": self.node.as_str(),
            "node_id": self.identity["node_id"],
            "node_priority": self.identity["node_priority"],
            "version": env!("CARGO_PKG_VERSION"),
            "listen": cluster.mesh.listen_addr().to_string(),
            "holds_ca_key": cluster.holds_ca_key,
            "certificate": {
                "expires": cluster.certificate_expires.to_string(),
                "days_left": left.whole_days(),
                "alert": left < time::Duration::days(30),
            },
            "head": replica.head,
            "members": self.members().await?,
            "active": cluster.live.borrow().map(|id| id.to_string()),
            "revisions": replica.revisions,
            "peers": peers,
        }))
    }

    async fn cluster_remove_now(
        self: Arc<Self>,
        node_id: String,
    ) -> Result<serde_json::Value, ControlError> {
        let cluster = self.cluster()?;
        let node: palisade_identity::NodeId = node_id.trim().parse().map_err(|_| {
            ControlError::Invalid(format!(
                "{node_id:?} is not a node id (`palisade cluster status` lists them)"
            ))
        })?;
        if Some(node.to_string().as_str()) == self.identity["node_id"].as_str() {
            return Err(ControlError::Invalid(
                "a node cannot remove itself: remove it from the node that holds the CA key, after moving the CA key elsewhere".to_owned(),
            ));
        }
        let trust = cluster.trust.clone();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as u64)
            .unwrap_or(0);
        let signed = tokio::task::spawn_blocking(move || trust.remove_node(node, now_ms))
            .await
            .map_err(|error| ControlError::Failed(error.to_string()))?
            .map_err(|error| match error {
                palisade_cluster_trust::files::FilesError::NoCaKey => {
                    ControlError::Conflict(error.to_string())
                }
                other => ControlError::Failed(other.to_string()),
            })?;
        let serial = signed.bundle.serial;
        cluster
            .handle
            .publish_trust(signed)
            .await
            .map_err(|error| ControlError::Failed(error.to_string()))?;
        tracing::warn!(%node, serial, "node removed from the cluster");
        Ok(serde_json::json!({ "removed": node.to_string(), "trust_serial": serial }))
    }

    /// `palisade admin add|remove|passwd`: the head's policy with its accounts changed,
    /// saved on top of the head (a concurrent save makes it refused: run it again).
    async fn accounts_change_now(
        self: Arc<Self>,
        change: palisade_admin::AccountChange,
    ) -> Result<serde_json::Value, ControlError> {
        use palisade_admin::accounts::{ACCOUNTS_KEY, Account, Accounts, check_name};
        let cluster = self.cluster()?;
        check_name(&change.name).map_err(|error| ControlError::Invalid(error.to_string()))?;
        let (head, mut bundle) = cluster.handle.bundle("head").await.map_err(|error| {
            ControlError::Conflict(format!(
                "accounts are saved with the policy, and the cluster has none yet ({error}): `palisade policy apply` one first"
            ))
        })?;
        let mut accounts = match bundle.lists.get(ACCOUNTS_KEY) {
            Some(text) => Accounts::from_json(text)
                .map_err(|error| ControlError::Failed(error.to_string()))?,
            None => Accounts::default(),
        };
        let now_ms = unix_now() * 1000;
        let hash = || -> Result<String, ControlError> {
            let hash = change.hash.clone().unwrap_or_default();
            if !hash.starts_with("$argon2id$") {
                return Err(ControlError::Invalid(
                    "an account needs an argon2id hash of its password".to_owned(),
                ));
            }
            Ok(hash)
        };
        let exists = accounts.accounts.contains_key(&change.name);
        match (change.op.as_str(), exists) {
            ("add", false) | ("passwd", true) => {
                accounts.accounts.insert(
                    change.name.clone(),
                    Account {
                        hash: hash()?,
                        changed_ms: now_ms,
                    },
                );
            }
            ("add", true) => {
                return Err(ControlError::Conflict(format!(
                    "account {} exists (`palisade admin passwd` sets its password)",
                    change.name
                )));
            }
            ("remove", true) => {
                accounts.accounts.remove(&change.name);
            }
            ("remove" | "passwd", false) => {
                return Err(ControlError::Invalid(format!("no account {}", change.name)));
            }
            (other, _) => {
                return Err(ControlError::Invalid(format!(
                    "unknown account operation {other:?} (add, remove, passwd)"
                )));
            }
        }
        bundle
            .lists
            .insert(ACCOUNTS_KEY.to_owned(), accounts.to_json());
        let base =
            parse_revision(&head.id).map(|id| palisade_replication::Base::Revision(Some(id)));
        let saved_by = if change.saved_by.is_empty() {
            format!("node {}", self.node)
        } else {
            change.saved_by.clone()
        };
        self.save_prepared(
            bundle,
            base.unwrap_or(palisade_replication::Base::Head),
            true,
            saved_by,
            &format!("admin {} {}", change.op, change.name),
        )
        .await
    }

    /// `palisade cluster add HOST:PORT`: dials a node that holds a certificate of this CA
    /// (the name resolves here); it adopts the cluster's head, and the members learn its
    /// address from its record.
    async fn cluster_add_now(
        self: Arc<Self>,
        address: String,
    ) -> Result<serde_json::Value, ControlError> {
        let Some(cluster) = self.cluster.as_ref() else {
            return Err(ControlError::Unavailable(
                "cannot add node because the local node has no running listener available - new node would not be able to talk back to this node".to_owned(),
            ));
        };
        let lookup = address.clone();
        let resolved = tokio::task::spawn_blocking(move || {
            std::net::ToSocketAddrs::to_socket_addrs(&lookup).map(|mut addrs| addrs.next())
        })
        .await
        .map_err(|error| ControlError::Failed(error.to_string()))?;
        let addr = match resolved {
            Ok(Some(addr)) => addr,
            Ok(None) | Err(_) => {
                return Err(ControlError::Invalid(format!(
                    "cannot resolve {address} (HOST:PORT of the node's cluster port)"
                )));
            }
        };
        // Can it be reached at all? A refusal or a timeout is the seeds' 301 with its errno.
        let probe =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                .await;
        let failure = match probe {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some((
                error.raw_os_error().unwrap_or(0),
                error
                    .to_string()
                    .split(" (os error")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            )),
            Err(_) => Some((110, "Connection timed out".to_owned())),
        };
        if let Some((errno, text)) = failure {
            let failed = palisade_replication::coordinator::RequestFailed::cannot_connect(
                "co_distribute_add_cluster_node",
                palisade_identity::NodeId::from_bytes([0; 16]),
                &address,
                errno,
                &text,
                "connect",
            );
            tracing::warn!("{}", failed.log_line(unix_now() * 1000));
            return Err(ControlError::Failed(failed.to_string()));
        }
        let mut peers = cluster.mesh.watch_peers();
        cluster.mesh.add_peer(addr);
        let linked = tokio::time::timeout(
            Duration::from_secs(10),
            peers.wait_for(|peers| peers.iter().any(|peer| peer.addr == addr.ip())),
        )
        .await;
        match linked {
            Ok(Ok(peers)) => {
                let peer = peers
                    .iter()
                    .find(|peer| peer.addr == addr.ip())
                    .cloned()
                    .ok_or_else(|| ControlError::Failed("the link went again".to_owned()))?;
                drop(peers);
                tracing::info!(node = %peer.id, name = %peer.name, %addr, "cluster node added");
                Ok(serde_json::json!({
                    "added": peer.id.to_string(),
                    "name": peer.name.as_str(),
                    "address": addr.to_string(),
                }))
            }
            _ => Err(ControlError::Failed(format!(
                "{addr} answers but no cluster link came up within 10 s: does it hold a certificate of this cluster's CA (and is it not removed)? See its log and this node's"
            ))),
        }
    }

    /// Every member's records, as JSON (a record that is not JSON is shown as text).
    async fn members(&self) -> Result<Vec<serde_json::Value>, ControlError> {
        let records = self
            .cluster()?
            .handle
            .records()
            .await
            .map_err(|error| ControlError::Failed(error.to_string()))?;
        Ok(records
            .into_iter()
            .map(|record| {
                let config = serde_json::from_slice::<serde_json::Value>(&record.bytes)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&record.bytes).into_owned().into());
                serde_json::json!({
                    "node_id": record.node.to_string(),
                    "recorded_ms": record.time.ms,
                    "config": config,
                })
            })
            .collect())
    }

    /// `palisade backup`: the cluster's policy (head and history), every member's node-local
    /// configuration (no secrets) and the trust it shares (CA certificates, removed nodes;
    /// no keys), from any one node.
    async fn cluster_backup_now(self: Arc<Self>) -> Result<serde_json::Value, ControlError> {
        let cluster = self.cluster()?;
        let head = cluster.handle.bundle("head").await.ok();
        let history = cluster
            .handle
            .history()
            .await
            .map_err(|error| ControlError::Failed(error.to_string()))?;
        let members = self.members().await?;
        let trust = cluster.trust.clone();
        let trust = tokio::task::spawn_blocking(move || {
            let cas = trust.trusted_cas().unwrap_or_default();
            let bundle = trust
                .trust_bundle()
                .ok()
                .flatten()
                .map(|signed| signed.bundle);
            serde_json::json!({
                "ca_pems": cas,
                "trust_bundle_serial": bundle.as_ref().map(|bundle| bundle.serial),
                "removed_nodes": bundle
                    .map(|bundle| bundle.denied.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .unwrap_or_default(),
            })
        })
        .await
        .map_err(|error| ControlError::Failed(error.to_string()))?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as u64)
            .unwrap_or(0);
        Ok(serde_json::json!({
            "format": "palisade cluster backup 1",
            "cluster": cluster.cluster_id,
            "taken_on": self.node.as_str(),
            "taken_ms": now_ms,
            "policy": head.map(|(summary, bundle)| {
                let (lists, accounts) = without_account_hashes(bundle.lists);
                serde_json::json!({
                    "revision": summary,
                    "document": bundle.document,
                    "lists": lists,
                    "accounts": accounts,
                })
            }),
            "history": history,
            "members": members,
            "trust": trust,
        }))
    }

    async fn policy_history_now(self: Arc<Self>) -> Result<serde_json::Value, ControlError> {
        let history = self
            .cluster()?
            .handle
            .history()
            .await
            .map_err(|error| ControlError::Failed(error.to_string()))?;
        Ok(serde_json::json!({ "revisions": history }))
    }

    async fn policy_apply_now(
        self: Arc<Self>,
        request: palisade_admin::PolicyApply,
    ) -> Result<serde_json::Value, ControlError> {
        let bundle = palisade_policy::PolicyBundle {
            document: request.document,
            lists: request.lists,
        };
        if let Some(reserved) = bundle
            .lists
            .keys()
            .find(|key| key.starts_with(palisade_policy::bundle::RESERVED_PREFIX))
        {
            return Err(ControlError::Invalid(format!(
                "list names under {} are the cluster's own: {reserved}",
                palisade_policy::bundle::RESERVED_PREFIX
            )));
        }
        // The revision to return to unless confirmed: the head this save replaces.
        let before = match request.confirm_seconds {
            0 => None,
            _ => {
                let cluster = self.cluster()?;
                let head = cluster
                    .handle
                    .status()
                    .await
                    .map_err(|error| ControlError::Failed(error.to_string()))?
                    .head
                    .map(|head| head.id);
                Some(head.ok_or_else(|| {
                    ControlError::Invalid(
                        "--confirm needs a policy to return to: the cluster has none saved yet"
                            .to_owned(),
                    )
                })?)
            }
        };
        let base = match (request.force, &request.base) {
            (true, _) => palisade_replication::Base::Head,
            (false, None) => palisade_replication::Base::Revision(None),
            (false, Some(text)) => match parse_revision(text) {
                Some(id) => palisade_replication::Base::Revision(Some(id)),
                None => {
                    return Err(ControlError::Invalid(format!(
                        "the base revision {text:?} is not a revision id (64 hex digits, as `palisade policy history` prints)"
                    )));
                }
            },
        };
        let mut saved = self
            .save_bundle(
                bundle,
                base,
                request.force,
                request.saved_by,
                &request.message,
            )
            .await?;
        if let (Some(before), Some(revision)) = (before, saved["revision"].as_str()) {
            let deadline = Duration::from_secs(request.confirm_seconds);
            self.clone()
                .arm_rollback(revision.to_owned(), before, deadline)
                .await;
            saved["confirm_within_s"] = request.confirm_seconds.into();
        }
        if request.wait > 0
            && let Some(revision) = saved["revision"].as_str().map(str::to_owned)
        {
            let (live_on, cannot) = self.wait_for_peers(&revision, request.wait).await?;
            saved["live_on"] = live_on.into();
            if !cannot.is_empty() {
                let cluster = self.cluster()?;
                let history = (cluster.handle.history().await)
                    .map_err(|error| ControlError::Failed(error.to_string()))?;
                let refused = history
                    .iter()
                    .any(|entry| entry.kind == "refusal" && entry.parents.contains(&revision));
                saved["refused"] = refused.into();
                let status = (cluster.handle.status().await)
                    .map_err(|error| ControlError::Failed(error.to_string()))?;
                saved["head"] = status.head.map(|head| head.id).into();
            }
            saved["cannot_install"] = cannot.into();
        }
        Ok(saved)
    }

    /// Unless `palisade policy confirm` comes within `deadline`, saves `before`'s policy over
    /// `revision` (only if `revision` is still the head: a later save is someone's work).
    async fn arm_rollback(self: Arc<Self>, revision: String, before: String, deadline: Duration) {
        // Kept in the store, so a restart before the deadline still owes the rollback.
        let due_ms = unix_ms().saturating_add(deadline.as_millis() as u64);
        self.keep_pending_confirm(Some(serde_json::json!({
            "revision": revision,
            "before": before,
            "due_unix_ms": due_ms,
        })))
        .await;
        let cancel = tokio_util::sync::CancellationToken::new();
        if let Some((_, previous)) = self
            .pending_confirm
            .lock()
            .await
            .replace((revision.clone(), cancel.clone()))
        {
            previous.cancel();
        }
        tracing::warn!(%revision, deadline = ?deadline, "policy saved with --confirm: it is rolled back unless `palisade policy confirm` comes in time");
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(deadline) => {}
            }
            {
                let mut pending = self.pending_confirm.lock().await;
                if pending
                    .as_ref()
                    .is_some_and(|(waiting, _)| *waiting == revision)
                {
                    *pending = None;
                } else {
                    return;
                }
            }
            self.keep_pending_confirm(None).await;
            let Ok(cluster) = self.cluster() else { return };
            let head = cluster
                .handle
                .status()
                .await
                .ok()
                .and_then(|status| status.head);
            if head.as_ref().map(|head| head.id.as_str()) != Some(revision.as_str()) {
                tracing::warn!(%revision, "not confirmed, but the policy changed since: no automatic rollback");
                return;
            }
            let rollback = palisade_admin::PolicyRollback {
                revision: before.clone(),
                message: format!(
                    "automatic rollback: {} not confirmed within {deadline:?}",
                    &revision[..12]
                ),
                saved_by: format!("node {}", self.node),
            };
            match self.clone().policy_rollback_now(rollback).await {
                Ok(_) => {
                    tracing::warn!(%revision, %before, "not confirmed within {deadline:?}: rolled back")
                }
                Err(error) => {
                    tracing::error!(%revision, "not confirmed, and the rollback failed: {error:?}")
                }
            }
        });
    }

    /// Records (or clears) the save waiting for confirmation in the store.
    async fn keep_pending_confirm(&self, pending: Option<serde_json::Value>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let bytes = pending.map(|pending| pending.to_string().into_bytes());
        let kept =
            tokio::task::spawn_blocking(move || store.set_pending_confirm(bytes.as_deref())).await;
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(
                %error,
                "cannot record the save waiting for confirmation: a restart would forget its rollback"
            ),
            Err(error) => tracing::error!(%error, "confirmation record task failed"),
        }
    }

    /// At start: a save made with `--confirm` before a restart and not confirmed yet is
    /// rolled back at its deadline (at once if that has passed), as if the node had not
    /// restarted.
    pub async fn resume_pending_confirm(self: Arc<Self>) {
        let (Some(store), Ok(_)) = (self.store.clone(), self.cluster()) else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || store.pending_confirm()).await;
        let pending = match read {
            Ok(Ok(Some(bytes))) => serde_json::from_slice::<serde_json::Value>(&bytes).ok(),
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot read the save waiting for confirmation");
                return;
            }
            Err(_) => return,
        };
        let fields = pending.as_ref().and_then(|pending| {
            Some((
                pending["revision"].as_str()?.to_owned(),
                pending["before"].as_str()?.to_owned(),
                pending["due_unix_ms"].as_u64()?,
            ))
        });
        let Some((revision, before, due_ms)) = fields else {
            tracing::error!(
                "the record of the save waiting for confirmation is unreadable: dropped"
            );
            self.keep_pending_confirm(None).await;
            return;
        };
        let left = Duration::from_millis(due_ms.saturating_sub(unix_ms()));
        tracing::warn!(%revision, "a save made with --confirm before this restart is still not confirmed: rolled back in {left:?} unless `palisade policy confirm`");
        self.arm_rollback(revision, before, left).await;
    }

    async fn policy_confirm_now(self: Arc<Self>) -> Result<serde_json::Value, ControlError> {
        self.cluster()?;
        match self.pending_confirm.lock().await.take() {
            Some((revision, cancel)) => {
                cancel.cancel();
                self.keep_pending_confirm(None).await;
                tracing::info!(%revision, "policy confirmed");
                Ok(serde_json::json!({ "confirmed": revision }))
            }
            None => Err(ControlError::Conflict(
                "no save is waiting for confirmation on this node".to_owned(),
            )),
        }
    }

    /// Waits up to 30 s until `count` peers say they run `revision`, or one says it cannot;
    /// returns how many run it and the refusals.
    async fn wait_for_peers(
        &self,
        revision: &str,
        count: u32,
    ) -> Result<(usize, Vec<String>), ControlError> {
        let cluster = self.cluster()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = cluster
                .handle
                .status()
                .await
                .map_err(|error| ControlError::Failed(error.to_string()))?;
            let live_on = status
                .peers
                .iter()
                .filter(|peer| peer.live.as_deref() == Some(revision))
                .count();
            let cannot: Vec<String> = status
                .peers
                .iter()
                .filter_map(|peer| {
                    let why = peer.cannot_install.as_ref()?;
                    why.starts_with(revision)
                        .then(|| format!("{}: {}", peer.name, &why[revision.len()..]))
                })
                .collect();
            if live_on >= count as usize
                || !cannot.is_empty()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok((live_on, cannot));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks a bundle (portable, compiles here) and saves it on top of `base`; saving what
    /// is the head already (unless `force`) records nothing.
    async fn save_bundle(
        &self,
        mut bundle: palisade_policy::PolicyBundle,
        base: palisade_replication::Base,
        force: bool,
        saved_by: String,
        message: &str,
    ) -> Result<serde_json::Value, ControlError> {
        let cluster = self.cluster()?;
        // The accounts are the head's, whatever the policy saved (a rollback or a restore of
        // the policy must not bring back an account removed since): only `palisade admin`
        // changes them.
        let key = palisade_admin::accounts::ACCOUNTS_KEY;
        bundle.lists.remove(key);
        if let Ok(Some(accounts)) = cluster.handle.head_entry(key).await {
            bundle.lists.insert(key.to_owned(), accounts);
        }
        self.save_prepared(bundle, base, force, saved_by, message)
            .await
    }

    /// Saves a bundle whose accounts are already what they should be.
    async fn save_prepared(
        &self,
        bundle: palisade_policy::PolicyBundle,
        base: palisade_replication::Base,
        force: bool,
        saved_by: String,
        message: &str,
    ) -> Result<serde_json::Value, ControlError> {
        let cluster = self.cluster()?;
        let unportable = bundle.unportable_lists();
        if !unportable.is_empty() {
            return Err(ControlError::Invalid(format!(
                "lists named by an absolute path or outside the policy's directory cannot be replicated (every node writes them beside its policy file): {}",
                unportable.join(", ")
            )));
        }
        // Validated before it is saved: a bundle this node cannot compile is never stored.
        let bundle = cluster
            .installer
            .check_bundle(bundle, &cluster.policy_file)
            .await
            .map_err(|errors| ControlError::Invalid(format!("invalid policy:\n{errors}")))?;
        let saved_by = if saved_by.is_empty() {
            format!("node {}", self.node)
        } else {
            saved_by
        };
        let bundle_id = bundle.id();
        let bundle_hex: String = bundle_id.iter().map(|byte| format!("{byte:02x}")).collect();
        // Saving what is already the head would only add noise to the history.
        if !force
            && let Ok(status) = cluster.handle.status().await
            && let Some(head) = status.head
            && head.bundle == bundle_hex
        {
            return Ok(serde_json::json!({
                "revision": head.id,
                "bundle": bundle_hex,
                "unchanged": true,
            }));
        }
        match cluster.handle.save(bundle, base, &saved_by, message).await {
            Ok(palisade_cluster::Saved { revision, stored }) => {
                tracing::info!(%revision, %saved_by, %message, stored_ms = stored.as_secs_f64() * 1e3, "policy saved");
                Ok(serde_json::json!({
                    "revision": revision.to_string(),
                    "stored_ms": stored.as_secs_f64() * 1e3,
                    "bundle": bundle_hex,
                    "saved_by": saved_by,
                }))
            }
            Err(palisade_cluster::ClusterError::Save(
                error @ palisade_replication::SaveError::Stale { .. },
            )) => Err(ControlError::Conflict(error.to_string())),
            Err(palisade_cluster::ClusterError::Save(error)) => {
                Err(ControlError::Invalid(error.to_string()))
            }
            Err(error) => Err(ControlError::Failed(error.to_string())),
        }
    }

    async fn policy_revision_now(
        self: Arc<Self>,
        which: String,
    ) -> Result<serde_json::Value, ControlError> {
        let (summary, bundle) = self
            .cluster()?
            .handle
            .bundle(&which)
            .await
            .map_err(ControlError::Invalid)?;
        let (lists, accounts) = without_account_hashes(bundle.lists);
        Ok(serde_json::json!({
            "revision": summary,
            "document": bundle.document,
            "lists": lists,
            "accounts": accounts,
        }))
    }

    async fn policy_rollback_now(
        self: Arc<Self>,
        request: palisade_admin::PolicyRollback,
    ) -> Result<serde_json::Value, ControlError> {
        let (summary, bundle) = self
            .cluster()?
            .handle
            .bundle(&request.revision)
            .await
            .map_err(ControlError::Invalid)?;
        let message = if request.message.is_empty() {
            format!("rollback to {}", &summary.id[..12])
        } else {
            format!("rollback to {}: {}", &summary.id[..12], request.message)
        };
        self.save_bundle(
            bundle,
            palisade_replication::Base::Head,
            false,
            request.saved_by,
            &message,
        )
        .await
    }
}

impl NodeControl for Control {
    fn status(&self) -> serde_json::Value {
        let groups: Vec<serde_json::Value> = self
            .groups
            .iter()
            .map(|group| status_json(&group.status.borrow()))
            .collect();
        serde_json::json!({
            "node": self.node.as_str(),
            "node_id": self.identity["node_id"],
            "store": self.identity["store"],
            "node_priority": self.identity["node_priority"],
            "policy": { "revision": self.policy_revision.borrow().to_string() },
            "drained": self.drained(),
            "connections": self.connections_json(),
            "cluster": self.cluster.as_ref().map(|cluster| cluster.cluster_id.clone()),
            "groups": groups,
            "peers": self.mesh.as_ref().map(|mesh| {
                mesh.peers()
                    .into_iter()
                    .map(|peer| serde_json::json!({
                        "name": peer.name.as_str(),
                        "node_id": peer.id.to_string(),
                        "address": peer.addr.to_string(),
                        "incarnation": peer.incarnation.to_string(),
                    }))
                    .collect::<Vec<_>>()
            }),
        })
    }

    fn monitor(&self) -> serde_json::Value {
        let Some(ports) = &self.ports else {
            return serde_json::Value::Null;
        };
        let states = ports.borrow().clone();
        let healthy = palisade_health::PortMonitor::healthy(&states);
        serde_json::json!({
            "state": if healthy { "healthy" } else { "failure" },
            "ports": states.iter().map(|state| serde_json::json!({
                "address": state.port.addr.to_string(),
                "kind": state.port.kind,
                "required": state.port.required,
                "listening": state.listening,
            })).collect::<Vec<_>>(),
        })
    }

    fn director(&self, client: Option<std::net::IpAddr>) -> serde_json::Value {
        match &self.director {
            Some(director) => director.describe(client),
            None => serde_json::Value::Null,
        }
    }

    fn drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    fn drain(
        self: Arc<Self>,
        drain: palisade_admin::DrainRequest,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.drain_now(drain))
    }

    fn resume(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.resume_now())
    }

    fn fault(
        self: Arc<Self>,
        fault: palisade_admin::FaultRequest,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(async move {
            match fault.kind.as_str() {
                "crash" => crate::fault::crash_soon(),
                "stop" => crate::fault::stop_soon(),
                "cut-link" => {
                    let seconds =
                        Duration::from_secs(fault.seconds.unwrap_or(10)).min(crate::fault::CUT_MAX);
                    let interfaces: Vec<String> = (self.groups.iter())
                        .map(|group| group.status.borrow().interface.clone())
                        .collect();
                    if interfaces.is_empty() {
                        return Err(ControlError::Invalid(
                            "this node is in no HA group: no link to cut".to_owned(),
                        ));
                    }
                    crate::fault::cut_link(&interfaces, seconds)
                        .await
                        .map_err(ControlError::Failed)?;
                }
                other => {
                    return Err(ControlError::Invalid(format!(
                        "unknown fault {other:?} (crash, cut-link, stop)"
                    )));
                }
            }
            Ok(serde_json::json!({ "node": self.node, "fault": fault.kind }))
        })
    }

    fn cluster_status(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.cluster_status_now())
    }

    fn policy_history(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.policy_history_now())
    }

    fn policy_apply(
        self: Arc<Self>,
        request: palisade_admin::PolicyApply,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.policy_apply_now(request))
    }

    fn policy_revision(
        self: Arc<Self>,
        which: String,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.policy_revision_now(which))
    }

    fn cluster_remove(
        self: Arc<Self>,
        node_id: String,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.cluster_remove_now(node_id))
    }

    fn policy_confirm(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.policy_confirm_now())
    }

    fn cluster_add(
        self: Arc<Self>,
        address: String,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.cluster_add_now(address))
    }

    fn accounts_change(
        self: Arc<Self>,
        change: palisade_admin::AccountChange,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.accounts_change_now(change))
    }

    fn cluster_backup(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.cluster_backup_now())
    }

    fn cluster_rotate_ca(
        self: Arc<Self>,
        finish: bool,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(async move {
            let cluster = self.cluster()?;
            let node: palisade_identity::NodeId = self.identity["node_id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| ControlError::Failed("this node's id is unknown".to_owned()))?;
            let trust = cluster.trust.clone();
            let now_ms = unix_now() * 1000;
            let signed = tokio::task::spawn_blocking(move || {
                if finish {
                    trust.finish_rotation(now_ms)
                } else {
                    trust.rotate_ca(node, time::OffsetDateTime::now_utc(), now_ms)
                }
            })
            .await
            .map_err(|error| ControlError::Failed(error.to_string()))?
            .map_err(|error| match error {
                palisade_cluster_trust::files::FilesError::NoCaKey => {
                    ControlError::Conflict(error.to_string())
                }
                other => ControlError::Failed(other.to_string()),
            })?;
            let (serial, cas) = (signed.bundle.serial, signed.bundle.cas.len());
            cluster
                .handle
                .publish_trust(signed)
                .await
                .map_err(|error| ControlError::Failed(error.to_string()))?;
            tracing::warn!(serial, cas, finish, "cluster CA rotation");
            Ok(
                serde_json::json!({ "trust_serial": serial, "trusted_cas": cas, "finished": finish }),
            )
        })
    }

    fn cluster_renew(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(async move {
            let expires = self
                .cluster()?
                .handle
                .renew()
                .await
                .map_err(ControlError::Failed)?;
            Ok(serde_json::json!({ "expires": expires }))
        })
    }

    fn policy_rollback(
        self: Arc<Self>,
        request: palisade_admin::PolicyRollback,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(self.policy_rollback_now(request))
    }
}

fn status_json(status: &GroupStatus) -> serde_json::Value {
    serde_json::json!({
        "name": status.name,
        "vrid": status.vrid,
        "interface": status.interface,
        "state": status.state.to_string(),
        "drained": status.drained,
        "priority": status.priority,
        "master": status.master.map(|ip| ip.to_string()),
        "master_priority": status.master_priority,
        "successor": status.successor.map(|ip| ip.to_string()),
        "advert_interval_ms": u32::from(status.advert_interval_cs) * 10,
        "vips": status.vips.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// Waits until this node hears `to` as Master (its first advert), for at most one
/// Master_Down_Interval's worth plus a second.
async fn wait_for_master(group: &GroupHandle, to: IpAddr) -> Option<()> {
    let mut status = group.status.clone();
    let interval = Duration::from_millis(u64::from(status.borrow().advert_interval_cs) * 10);
    let deadline = 4 * interval + Duration::from_secs(1);
    tokio::time::timeout(
        deadline,
        status.wait_for(|status| status.master == Some(to)),
    )
    .await
    .ok()?
    .ok()
    .map(|_| ())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_read_from_the_store_and_an_old_marker_file_moves_into_it() {
        let dir = std::env::temp_dir().join(format!("palisade-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{error}"));
        let store = palisade_store::Store::open(&dir).unwrap_or_else(|error| panic!("{error}"));
        assert!(!drained_at_start(Some(&store), &dir));
        std::fs::write(dir.join(LEGACY_MARKER), b"drained by an older release\n")
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(drained_at_start(Some(&store), &dir));
        assert!(!dir.join(LEGACY_MARKER).exists(), "moved into the store");
        assert!(
            drained_at_start(Some(&store), &dir),
            "and still drained from there"
        );
        store
            .set_drained_since(None)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(!drained_at_start(Some(&store), &dir));
        // No usable store: the drain cannot be checked, the node starts drained.
        assert!(drained_at_start(None, &dir));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
