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
    pub fn new(registry: &mut Registry) -> MeshMetrics {
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
        registry.register(
            "palisade_peer_links_peers_up",
            "Peers with at least one authenticated link up",
            metrics.peers_up.clone(),
        );
        registry.register(
            "palisade_peer_link_ends",
            "Peer links ended, by why (lost: a hint, never proof of a death)",
            metrics.link_ends.clone(),
        );
        registry.register(
            "palisade_peer_link_refused_connections",
            "Connections to the peer-link port refused, by reason",
            metrics.refused.clone(),
        );
        registry.register(
            "palisade_peer_death_confirmations",
            "Dials made to confirm a peer's death, by answer",
            metrics.confirmations.clone(),
        );
        registry.register(
            "palisade_peer_link_skipped_frames",
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
