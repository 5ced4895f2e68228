//! At most one log line per interval for events that anyone on the network can cause at will
//! (a refused client, a connection to an internal port from an unknown address, a forged
//! packet). Without it, a flood of such events becomes a flood of log lines: a full disk or a
//! journald that drops the lines that matter. The events are still counted in metrics; the
//! throttle only decides which of them also get a line, and how many were left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one event through per `interval` and counts the ones it holds back.
#[derive(Debug)]
pub struct LogThrottle {
    epoch: Instant,
    interval_ms: u64,
    /// Milliseconds since `epoch` before which no line may be logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            epoch: Instant::now(),
            interval_ms: interval.as_millis().max(1) as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether this event may be logged now; if so, how many events were held back since
    /// the last line (to put in that line). Lock-free: callers are accept loops.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let start = throttle.epoch;
        assert_eq!(throttle.admit_at(start), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit_at(start + Duration::from_secs(1)), None);
        }
        assert_eq!(
            throttle.admit_at(start + Duration::from_millis(9_999)),
            None
        );
        assert_eq!(throttle.admit_at(start + Duration::from_secs(10)), Some(6));
        assert_eq!(throttle.admit_at(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn concurrent_callers_get_one_line() {
        let throttle = std::sync::Arc::new(LogThrottle::new(Duration::from_secs(3600)));
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let throttle = throttle.clone();
                    scope.spawn(move || (0..1000).filter(|_| throttle.admit().is_some()).count())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("counting thread panicked"))
                .sum()
        });
        assert_eq!(admitted, 1);
    }
}
