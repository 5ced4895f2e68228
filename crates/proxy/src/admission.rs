//! Between `accept` and the first byte: who may hold a connection slot at all.
//!
//! Everything here is judged on the client's address alone, before the connection gets a
//! task, a buffer or a slot of `max_connections`, so that hosts the policy does not serve
//! cannot take the slots of those it does (security review F1). Refusals are resets: a host
//! that is not allowed gets no response to parse and costs no more than the accept.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

/// Connections are counted per source: an IPv4 address, or the /64 of an IPv6 address (the
/// block one host or one site usually gets, so a host cannot escape the cap by rotating
/// through its addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    /// `ip` must be canonical (an IPv4-mapped IPv6 address already turned into IPv4).
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(_) => SourceKey(ip),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                SourceKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

/// Open connections per source, capped.
#[derive(Debug)]
pub struct SourceLimiter {
    limit: u32,
    counts: Mutex<HashMap<SourceKey, u32>>,
}

impl SourceLimiter {
    pub fn new(limit: u32) -> Arc<SourceLimiter> {
        Arc::new(SourceLimiter {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `key`, or `None` if it already has `limit`.
    pub fn try_take(self: &Arc<Self>, key: SourceKey) -> Option<SourceSlot> {
        // The counts stay consistent whatever a panicking holder did: every update is one
        // statement.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            limiter: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection counted against its source; gives the count back when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    limiter: Arc<SourceLimiter>,
    key: SourceKey,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Sources come and go: the map holds only the ones with open connections.
                counts.remove(&self.key);
            }
        }
    }
}

/// One counted client connection (of `max_connections`); gives the count back when dropped.
pub struct ConnectionSlot {
    gauge: Gauge,
}

impl ConnectionSlot {
    pub fn take(gauge: &Gauge) -> ConnectionSlot {
        gauge.inc();
        ConnectionSlot {
            gauge: gauge.clone(),
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Why a connection was refused at accept (the `reason` label of
/// `palisade_refused_connections_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    /// The policy's `access.clients` does not include the address.
    ClientNotAllowed,
    /// The source already has `max_connections_per_source` connections open.
    PerSourceLimit,
}

impl RefusedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReason::ClientNotAllowed => "client_not_allowed",
            RefusedReason::PerSourceLimit => "per_source_limit",
        }
    }

    pub const ALL: [RefusedReason; 2] = [
        RefusedReason::ClientNotAllowed,
        RefusedReason::PerSourceLimit,
    ];
}

/// Closes with a reset: nothing is read, nothing is written, nothing lingers.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let key = |text: &str| SourceKey::of(text.parse().expect("address literal"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn per_source_cap_and_release() {
        let limiter = SourceLimiter::new(2);
        let a = SourceKey::of("10.0.0.1".parse().expect("address literal"));
        let b = SourceKey::of("10.0.0.2".parse().expect("address literal"));
        let first = limiter.try_take(a);
        let second = limiter.try_take(a);
        assert!(first.is_some() && second.is_some());
        assert!(limiter.try_take(a).is_none(), "a third connection from a");
        let other = limiter.try_take(b);
        assert!(other.is_some(), "another source is not affected");
        drop(first);
        let again = limiter.try_take(a);
        assert!(again.is_some(), "a slot given back is usable");
        drop((second, again, other));
        assert_eq!(limiter.sources(), 0, "no entry outlives its connections");
    }
}
