//! Prometheus metrics of the cluster plane. The registry is the binary's; the driver updates
//! these as it goes and refreshes the per-peer gauges on every digest tick.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
    pub peer_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Default)]
pub struct ClusterMetrics {
    /// Revisions in this node's history.
    pub revisions: Gauge,
    /// The head's time (the seeds' storage timestamp), seconds since the epoch.
    pub head_time: Gauge<f64, AtomicU64>,
    /// Concurrent saves settled by a merge (each one left a loser in history).
    pub conflicts: Counter,
    /// Saves a member refused because their policy does not compile there.
    pub refused_revisions: Counter,
    /// Peers whose hello failed a check, by the seeds' code.
    pub refusals: Family<CodeLabels, Counter>,
    /// Per peer: its clock minus this node's at its last hello.
    pub clock_difference: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    /// Per peer: 1 while this node replicates with it.
    pub replicating: Family<PeerLabels, Gauge>,
    /// Per peer: its head's time (its storage timestamp), when this node holds that revision.
    pub peer_head_time: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    /// Per peer: 1 when its last digest named this node's head.
    pub in_sync: Family<PeerLabels, Gauge>,
    /// How far behind its save time the last head went live here (replication lag).
    pub activation_lag: Gauge<f64, AtomicU64>,
    /// When this node's cluster certificate expires, seconds since the epoch (alert when
    /// less than 30 days away).
    pub certificate_expiry: Gauge,
}

impl ClusterMetrics {
    pub fn new(registry: &mut Registry) -> ClusterMetrics {
        let metrics = ClusterMetrics::default();
        for code in ["404", "405"] {
            let _ = metrics.refusals.get_or_create(&CodeLabels { code });
        }
        registry.register(
            "palisade_cluster_revisions",
            "Policy revisions in this node's history",
            metrics.revisions.clone(),
        );
        registry.register(
            "palisade_cluster_head_time_seconds",
            "Time of this node's head revision (the storage timestamp)",
            metrics.head_time.clone(),
        );
        registry.register(
            "palisade_cluster_conflicts",
            "Concurrent saves settled by node priority, then time (the losers stay in history)",
            metrics.conflicts.clone(),
        );
        registry.register(
            "palisade_cluster_refused_revisions",
            "Policy saves a member could not install and refused: never the head on any node",
            metrics.refused_revisions.clone(),
        );
        registry.register(
            "palisade_cluster_replication_refusals",
            "Peers refused for replication, by the seeds' code (404 version mismatch, 405 time difference too high)",
            metrics.refusals.clone(),
        );
        registry.register(
            "palisade_cluster_peer_clock_difference_seconds",
            "Each peer's clock minus this node's, at its last hello",
            metrics.clock_difference.clone(),
        );
        registry.register(
            "palisade_cluster_peer_replicating",
            "1 while this node replicates with the peer (its checks pass)",
            metrics.replicating.clone(),
        );
        registry.register(
            "palisade_cluster_peer_head_time_seconds",
            "Each peer's head revision time (its storage timestamp), from its last digest",
            metrics.peer_head_time.clone(),
        );
        registry.register(
            "palisade_cluster_peer_in_sync",
            "1 when the peer's last digest named this node's head",
            metrics.in_sync.clone(),
        );
        registry.register(
            "palisade_cluster_activation_lag_seconds",
            "How long after it was saved the last head went live on this node",
            metrics.activation_lag.clone(),
        );
        registry.register(
            "palisade_cluster_certificate_expiry_timestamp_seconds",
            "When this node's cluster certificate expires (renew with `palisade cluster renew`)",
            metrics.certificate_expiry.clone(),
        );
        metrics
    }
}
