//! Prometheus metrics of the peer links. The registry is the binary's; events whose log
//! lines are throttled (refused connections) are all counted here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub answer: &'static str,
}

#[derive(Clone, Default)]
pub struct MeshMetrics {
    /// Peers with at least one link up.
    pub peers_up: Gauge,
    /// Links ended, by why (`bye`, `lost`, `rejected`, `replaced`).
    pub link_ends: Family<EndLabels, Counter>,
    /// Connections refused before or during the handshake, by reason.
    pub refused: Family<ReasonLabels, Counter>,
    /// Death confirmations, by answer (`refused`, `new_incarnation`, `alive`, `unknown`).
    pub confirmations: Family<AnswerLabels, Counter>,
    /// Authentic frames of a plane or plane version this build does not speak.
    pub skipped_frames: Counter,
}

impl MeshMetrics {
    /// The HA heartbeat mesh's metrics (`palisade_peer_...`).
    pub fn new(registry: &mut Registry) -> MeshMetrics {
        MeshMetrics::registered(
            registry,
            [
                "palisade_peer_links_peers_up",
                "palisade_peer_link_ends",
                "palisade_peer_link_refused_connections",
                "palisade_peer_death_confirmations",
                "palisade_peer_link_skipped_frames",
            ],
        )
    }

    /// The cluster mesh's metrics (`palisade_cluster_...`): the same events on the cluster
    /// port, where refused peers are the ones without a member certificate.
    pub fn for_cluster(registry: &mut Registry) -> MeshMetrics {
        MeshMetrics::registered(
            registry,
            [
                "palisade_cluster_peers_up",
                "palisade_cluster_link_ends",
                "palisade_cluster_refused_connections",
                "palisade_cluster_death_confirmations",
                "palisade_cluster_skipped_frames",
            ],
        )
    }

    fn registered(registry: &mut Registry, names: [&str; 5]) -> MeshMetrics {
        let metrics = MeshMetrics::default();
        // Every label value from the start, so a dashboard sees zeros, not gaps.
        for why in ["bye", "lost", "rejected", "replaced"] {
            let _ = metrics.link_ends.get_or_create(&EndLabels { why });
        }
        for reason in ["unknown_address", "busy", "handshake"] {
            let _ = metrics.refused.get_or_create(&ReasonLabels { reason });
        }
        for answer in ["refused", "new_incarnation", "alive", "unknown"] {
            let _ = metrics
                .confirmations
                .get_or_create(&AnswerLabels { answer });
        }
        let [peers_up, link_ends, refused, confirmations, skipped] = names;
        registry.register(
            peers_up,
            "Peers with at least one authenticated link up",
            metrics.peers_up.clone(),
        );
        registry.register(
            link_ends,
            "Peer links ended, by why (lost: a hint, never proof of a death)",
            metrics.link_ends.clone(),
        );
        registry.register(
            refused,
            "Connections to the peer-link port refused, by reason",
            metrics.refused.clone(),
        );
        registry.register(
            confirmations,
            "Dials made to confirm a peer's death, by answer",
            metrics.confirmations.clone(),
        );
        registry.register(
            skipped,
            "Authentic frames of a plane or version this build does not speak",
            metrics.skipped_frames.clone(),
        );
        metrics
    }

    pub(crate) fn ended(&self, why: &'static str) {
        self.link_ends.get_or_create(&EndLabels { why }).inc();
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn confirmed(&self, answer: &'static str) {
        self.confirmations
            .get_or_create(&AnswerLabels { answer })
            .inc();
    }
}
