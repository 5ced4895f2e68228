//! Prometheus metrics of the data plane. The registry is made by the binary and passed in
//! (no global registry); the admin plane encodes it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    pub upstream_connect_seconds: Histogram,
    pub bytes: Family<DirectionLabels, Counter>,
    pub access_log_dropped: Counter,
    /// Handles into `bytes`, resolved once: no label lookup per request.
    bytes_from_client: Counter,
    bytes_to_client: Counter,
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
        let metrics = ProxyMetrics {
            bytes_from_client,
            bytes_to_client,
            requests: Family::default(),
            active_connections: Gauge::default(),
            shed_connections: Counter::default(),
            refused_connections: Family::default(),
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
        decision: &'static str,
        status: u16,
        from_client: u64,
        to_client: u64,
    ) {
        self.requests
            .get_or_create(&RequestLabels { decision, status })
            .inc();
        self.bytes_from_client.inc_by(from_client);
        self.bytes_to_client.inc_by(to_client);
    }
}
