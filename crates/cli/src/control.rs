//! The node's controls behind the admin API: status, `palisade drain` and `palisade resume`.
//!
//! A drain takes the node out of service: every HA group leaves like a fault (a Master hands
//! its VIPs to the next node in line over the heartbeat, or sends priority 0), `/healthz`
//! answers 503 so that load balancers in front of the node follow, and a marker file in the
//! data directory keeps the node drained across restarts until `palisade resume`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_admin::{BoxFuture, NodeControl};
use palisade_vrrp::State;
use palisade_vrrp_linux::driver::{GroupHandle, GroupStatus, Left};

/// The file whose presence means "drained"; its content says since when, for the operator.
const MARKER: &str = "drained";

pub struct Control {
    node: String,
    groups: Vec<GroupHandle>,
    marker: PathBuf,
    drained: AtomicBool,
    /// One drain or resume at a time.
    busy: tokio::sync::Mutex<()>,
}

/// Whether a drain survived the last run (the node then starts drained).
pub fn drained_at_start(data_dir: &Path) -> bool {
    data_dir.join(MARKER).exists()
}

impl Control {
    pub fn new(node: String, groups: Vec<GroupHandle>, data_dir: &Path) -> Control {
        let marker = data_dir.join(MARKER);
        let drained = AtomicBool::new(marker.exists());
        Control {
            node,
            groups,
            marker,
            drained,
            busy: tokio::sync::Mutex::new(()),
        }
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

    async fn drain_now(self: Arc<Self>, force: bool) -> Result<serde_json::Value, String> {
        let _busy = self.busy.lock().await;
        let orphaned = self.orphaned_vips();
        if !orphaned.is_empty() && !force {
            return Err(format!(
                "no other healthy node is in line to take over ({}); nothing changed. \
                 `palisade drain --force` releases the VIPs anyway",
                orphaned.join("; ")
            ));
        }
        // Recorded first, so that a crash half-way through still comes back drained.
        write_marker(&self.marker).map_err(|error| {
            format!(
                "cannot record the drain in {}: {error}",
                self.marker.display()
            )
        })?;
        let newly = !self.drained.swap(true, Ordering::SeqCst);
        if newly {
            tracing::warn!(node = %self.node, "node drained: leaving every HA group, /healthz answers 503");
        }
        let mut reports = Vec::new();
        for group in &self.groups {
            let name = group.status.borrow().name.clone();
            let was = group.status.borrow().state;
            let started = std::time::Instant::now();
            let left = group.drain(true).await;
            let mut report = serde_json::json!({ "name": name, "was": was.to_string() });
            match left {
                Some(Left::HandedOver(to)) => {
                    let confirmed = wait_for_master(group, to).await;
                    report["handed_over_to"] = to.to_string().into();
                    report["confirmed_ms"] = confirmed
                        .map(|_| started.elapsed().as_millis() as u64)
                        .into();
                }
                Some(Left::Released) => report["released"] = true.into(),
                Some(Left::NotMaster) => {}
                None => report["error"] = "the group's task is gone".into(),
            }
            reports.push(report);
        }
        Ok(serde_json::json!({ "node": self.node, "drained": true, "groups": reports }))
    }

    async fn resume_now(self: Arc<Self>) -> serde_json::Value {
        let _busy = self.busy.lock().await;
        if let Err(error) = std::fs::remove_file(&self.marker)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            // The node resumes now; the operator must know it would come back drained.
            tracing::error!(marker = %self.marker.display(), %error, "cannot remove the drain marker: the node will start drained again");
        }
        if self.drained.swap(false, Ordering::SeqCst) {
            tracing::warn!(node = %self.node, "node resumed: back in every HA group");
        }
        let mut reports = Vec::new();
        for group in &self.groups {
            let resumed = group.drain(false).await.is_some();
            let status = group.status.borrow();
            reports.push(serde_json::json!({
                "name": status.name,
                "state": status.state.to_string(),
                "resumed": resumed,
            }));
        }
        serde_json::json!({ "node": self.node, "drained": false, "groups": reports })
    }
}

impl NodeControl for Control {
    fn status(&self) -> serde_json::Value {
        let groups: Vec<serde_json::Value> = self
            .groups
            .iter()
            .map(|group| status_json(&group.status.borrow()))
            .collect();
        serde_json::json!({ "node": self.node, "drained": self.drained(), "groups": groups })
    }

    fn drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    fn drain(self: Arc<Self>, force: bool) -> BoxFuture<Result<serde_json::Value, String>> {
        Box::pin(self.drain_now(force))
    }

    fn resume(self: Arc<Self>) -> BoxFuture<serde_json::Value> {
        Box::pin(self.resume_now())
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

/// Writes the marker atomically (temporary file, then rename): a torn write must not leave a
/// marker that reads as something else.
fn write_marker(path: &Path) -> std::io::Result<()> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let temporary = path.with_extension("tmp");
    std::fs::write(
        &temporary,
        format!("drained by `palisade drain` at unix time {since}; undo with `palisade resume`\n"),
    )?;
    std::fs::rename(&temporary, path)
}
