//! Prometheus metrics of the data plane. The registry is made by the binary and passed in
//! (no global registry); the admin plane encodes it.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::access_log::Decision;

/// Statuses whose `requests` counter is cached (every valid HTTP status).
const CACHED_STATUSES: std::ops::RangeInclusive<u16> = 100..=599;
const DECISIONS: [Decision; 4] = [
    Decision::Allow,
    Decision::Block,
    Decision::Deny,
    Decision::Error,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub decision: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct ProxyMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub active_connections: Gauge,
    pub shed_connections: Counter,
    /// Connections reset at accept, by reason (`RefusedReason`).
    pub refused_connections: Family<ReasonLabels, Counter>,
    /// Scan-port connections reset before serving, by reason (`scan_port::REFUSAL_REASONS`).
    pub scan_refused: Family<ReasonLabels, Counter>,
    /// Scan-port connections whose header passed, served for the client it names.
    pub scan_relayed: Counter,
    pub upstream_connect_seconds: Histogram,
    pub bytes: Family<DirectionLabels, Counter>,
    pub access_log_dropped: Counter,
    /// Handles into `bytes`, resolved once: no label lookup per request.
    bytes_from_client: Counter,
    bytes_to_client: Counter,
    /// Handles into `requests` by (decision, status), each resolved on first use: a label
    /// lookup costs a lock and a hash of the labels, on every request (callgrind: ~5% of
    /// a request's instructions). Unused slots stay empty and untouched.
    request_counters: Arc<[OnceLock<Counter>]>,
}

impl ProxyMetrics {
    pub fn new(registry: &mut Registry) -> ProxyMetrics {
        let bytes: Family<DirectionLabels, Counter> = Family::default();
        let bytes_from_client = bytes
            .get_or_create(&DirectionLabels {
                direction: "from_client",
            })
            .clone();
        let bytes_to_client = bytes
            .get_or_create(&DirectionLabels {
                direction: "to_client",
            })
            .clone();
        let slots = DECISIONS.len() * CACHED_STATUSES.len();
        let metrics = ProxyMetrics {
            request_counters: (0..slots).map(|_| OnceLock::new()).collect(),
            bytes_from_client,
            bytes_to_client,
            requests: Family::default(),
            active_connections: Gauge::default(),
            shed_connections: Counter::default(),
            refused_connections: Family::default(),
            scan_refused: Family::default(),
            scan_relayed: Counter::default(),
            // 0.1 ms .. ~3.3 s
            upstream_connect_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            bytes,
            access_log_dropped: Counter::default(),
        };
        registry.register(
            "palisade_requests",
            "Requests handled, by decision (allow, block, deny, error) and status",
            metrics.requests.clone(),
        );
        registry.register(
            "palisade_active_connections",
            "Client connections open now",
            metrics.active_connections.clone(),
        );
        registry.register(
            "palisade_shed_connections",
            "Client connections refused with 503 because the connection limit was reached",
            metrics.shed_connections.clone(),
        );
        // Every reason present from the start, so a dashboard sees 0 rather than nothing.
        for reason in crate::admission::RefusedReason::ALL {
            let _ = metrics.refused_connections.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        registry.register(
            "palisade_refused_connections",
            "Client connections reset at accept, before reading a byte: client_not_allowed (not in access.clients), per_source_limit (max_connections_per_source reached)",
            metrics.refused_connections.clone(),
        );
        for reason in crate::scan_port::REFUSAL_REASONS {
            let _ = metrics.scan_refused.get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "palisade_scan_port_refused_connections",
            "Scan-port connections reset before serving: a header that is missing, malformed, forged, stale, replayed or too slow, too many unauthenticated at once, or a client the policy or per-source caps refuse",
            metrics.scan_refused.clone(),
        );
        registry.register(
            "palisade_scan_port_relayed_connections",
            "Scan-port connections from a director whose header passed, served for the client it names",
            metrics.scan_relayed.clone(),
        );
        registry.register(
            "palisade_upstream_connect_seconds",
            "Time to establish a TCP connection to an upstream",
            metrics.upstream_connect_seconds.clone(),
        );
        registry.register(
            "palisade_bytes",
            "Bytes proxied: from_client = received from clients, to_client = sent to clients",
            metrics.bytes.clone(),
        );
        registry.register(
            "palisade_access_log_dropped",
            "Access log records dropped because the writer fell behind",
            metrics.access_log_dropped.clone(),
        );
        metrics
    }

    pub fn record_request(
        &self,
        decision: Decision,
        status: u16,
        from_client: u64,
        to_client: u64,
    ) {
        let labels = || RequestLabels {
            decision: decision.as_str(),
            status,
        };
        let slot = DECISIONS
            .iter()
            .position(|known| *known == decision)
            .filter(|_| CACHED_STATUSES.contains(&status))
            .map(|row| row * CACHED_STATUSES.len() + usize::from(status - CACHED_STATUSES.start()))
            .and_then(|index| self.request_counters.get(index));
        match slot {
            Some(slot) => {
                slot.get_or_init(|| self.requests.get_or_create(&labels()).clone())
                    .inc();
            }
            None => {
                self.requests.get_or_create(&labels()).inc();
            }
        }
        self.bytes_from_client.inc_by(from_client);
        self.bytes_to_client.inc_by(to_client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap_or_default();
        text
    }

    #[test]
    fn cached_and_uncached_request_counters_land_in_the_same_family() {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::new(&mut registry);
        metrics.record_request(Decision::Allow, 200, 10, 20);
        metrics.record_request(Decision::Allow, 200, 1, 2);
        metrics.record_request(Decision::Block, 403, 0, 0);
        // Outside the cached range: no status was ever set.
        metrics.record_request(Decision::Error, 0, 0, 0);
        metrics.record_request(Decision::Error, 599, 0, 0);
        let text = encoded(&registry);
        for sample in [
            "palisade_requests_total{decision=\"allow\",status=\"200\"} 2",
            "palisade_requests_total{decision=\"block\",status=\"403\"} 1",
            "palisade_requests_total{decision=\"error\",status=\"0\"} 1",
            "palisade_requests_total{decision=\"error\",status=\"599\"} 1",
            "palisade_bytes_total{direction=\"from_client\"} 11",
        ] {
            assert!(text.contains(sample), "{sample} missing:\n{text}");
        }
        // A clone shares the cache and the counters.
        metrics.clone().record_request(Decision::Allow, 200, 0, 0);
        assert!(encoded(&registry).contains("status=\"200\"} 3"));
    }
}
