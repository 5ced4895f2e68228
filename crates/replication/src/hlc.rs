//! A hybrid logical clock: physical milliseconds plus a counter, never going backwards,
//! always ahead of every stamp it has seen (Kulkarni, Demirbas et al., "Logical Physical
//! Clocks", 2014). A node persists its high-water mark ([`Hlc::high_water`]) so a clock that
//! stepped back across a reboot cannot issue smaller stamps, and refuses a peer's stamp
//! further ahead of its own wall clock than the cluster allows (the seeds' `(405 - 'time
//! difference too high')`).

use std::fmt;
use std::time::Duration;

/// One stamp. Ordered by milliseconds, then counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HlcTime {
    /// Milliseconds since the Unix epoch (physical part).
    pub ms: u64,
    /// Logical part: orders stamps within one millisecond.
    pub counter: u16,
}

impl fmt::Display for HlcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ms, self.counter)
    }
}

/// A peer's stamp too far ahead of this node's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "time difference too high: remote time {remote_ms} ms is {ahead_ms} ms ahead of local time {local_ms} ms (allowed {allowed_ms} ms)"
)]
pub struct ClockSkew {
    pub remote_ms: u64,
    pub local_ms: u64,
    pub ahead_ms: u64,
    pub allowed_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Hlc {
    last: HlcTime,
    max_ahead: Duration,
}

impl Hlc {
    /// A clock that never issues a stamp at or below `high_water` (the persisted mark), and
    /// refuses peers' stamps more than `max_ahead` ahead of local time.
    pub fn new(high_water: HlcTime, max_ahead: Duration) -> Hlc {
        Hlc {
            last: high_water,
            max_ahead,
        }
    }

    /// The largest stamp issued or seen: persist it before using a stamp durably.
    pub fn high_water(&self) -> HlcTime {
        self.last
    }

    /// A new stamp for a local event at wall-clock `wall_ms`.
    pub fn now(&mut self, wall_ms: u64) -> HlcTime {
        self.last = if wall_ms > self.last.ms {
            HlcTime {
                ms: wall_ms,
                counter: 0,
            }
        } else {
            tick(self.last)
        };
        self.last
    }

    /// Takes in a peer's stamp; refused (and not taken in) if it is too far ahead.
    pub fn observe(&mut self, remote: HlcTime, wall_ms: u64) -> Result<(), ClockSkew> {
        let allowed_ms = self.max_ahead.as_millis().min(u128::from(u64::MAX)) as u64;
        let ahead_ms = remote.ms.saturating_sub(wall_ms);
        if ahead_ms > allowed_ms {
            return Err(ClockSkew {
                remote_ms: remote.ms,
                local_ms: wall_ms,
                ahead_ms,
                allowed_ms,
            });
        }
        let newest = self.last.max(remote);
        self.last = if wall_ms > newest.ms {
            HlcTime {
                ms: wall_ms,
                counter: 0,
            }
        } else {
            tick(newest)
        };
        Ok(())
    }
}

/// The next stamp after `time` in the same millisecond, or the next millisecond when the
/// counter is full (the clock then runs ahead of the wall by a millisecond: still ordered).
fn tick(time: HlcTime) -> HlcTime {
    match time.counter.checked_add(1) {
        Some(counter) => HlcTime {
            ms: time.ms,
            counter,
        },
        None => HlcTime {
            ms: time.ms + 1,
            counter: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTES_2: Duration = Duration::from_secs(120);

    #[test]
    fn stamps_grow_even_when_the_wall_clock_steps_back() {
        let mut hlc = Hlc::new(HlcTime::default(), MINUTES_2);
        let a = hlc.now(1_000);
        let b = hlc.now(900);
        let c = hlc.now(1_000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(
            b,
            HlcTime {
                ms: 1_000,
                counter: 1
            }
        );
    }

    #[test]
    fn a_restart_never_goes_below_the_persisted_high_water() {
        let mut before = Hlc::new(HlcTime::default(), MINUTES_2);
        let _ = before.now(7_200_000);
        let mark = before.high_water();
        // Rebooted with a clock an hour behind.
        let mut after = Hlc::new(mark, MINUTES_2);
        assert!(after.now(7_200_000 - 3_600_000) > mark);
    }

    #[test]
    fn a_stamp_too_far_ahead_is_refused_and_not_taken_in() {
        let mut hlc = Hlc::new(HlcTime::default(), MINUTES_2);
        let local = 1_000_000;
        let far = HlcTime {
            ms: local + 121_000,
            counter: 0,
        };
        assert_eq!(
            hlc.observe(far, local),
            Err(ClockSkew {
                remote_ms: far.ms,
                local_ms: local,
                ahead_ms: 121_000,
                allowed_ms: 120_000
            })
        );
        assert!(hlc.now(local) < far);
        let near = HlcTime {
            ms: local + 119_000,
            counter: 7,
        };
        assert_eq!(hlc.observe(near, local), Ok(()));
        assert!(hlc.now(local) > near);
    }

    proptest! {
        /// Whatever the wall clock does and whatever is observed, every stamp issued is larger
        /// than everything issued or accepted before it.
        #[test]
        fn monotonic(events in proptest::collection::vec((any::<bool>(), 0u64..10_000, 0u64..10_000, any::<u16>()), 1..200)) {
            let mut hlc = Hlc::new(HlcTime::default(), Duration::from_millis(5_000));
            let mut highest = HlcTime::default();
            for (local, wall, remote_ms, counter) in events {
                if local {
                    let stamp = hlc.now(wall);
                    prop_assert!(stamp > highest);
                    highest = stamp;
                } else {
                    let remote = HlcTime { ms: remote_ms, counter };
                    if hlc.observe(remote, wall).is_ok() {
                        // Ahead of everything issued and of what it just saw.
                        prop_assert!(hlc.high_water() > highest.max(remote));
                        highest = hlc.high_water();
                    }
                }
            }
        }
    }
}
