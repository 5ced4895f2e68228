//! Time as the core sees it: a value handed in by the driver, never read from a clock.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time: the time elapsed since an epoch the driver chooses.
///
/// The Linux driver takes the epoch as the moment it started and measures with a monotonic
/// clock (`std::time::Instant::now() - start`); simulations start at [`Instant::ZERO`] and jump
/// from event to event. The core only compares instants and adds durations to them, so any
/// epoch works as long as the driver keeps it for the life of a [`Router`](crate::Router) and
/// time never goes backwards.
///
/// Arithmetic saturates instead of panicking: a deadline past the end of time is simply never
/// reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// The epoch.
    pub const ZERO: Instant = Instant(Duration::ZERO);

    /// The instant `elapsed` after the epoch.
    pub const fn from_epoch(elapsed: Duration) -> Instant {
        Instant(elapsed)
    }

    /// The instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Instant {
        Instant(Duration::from_micros(micros))
    }

    /// The instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Instant {
        Instant(Duration::from_millis(millis))
    }

    /// The time elapsed since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + duration`, or `None` past the end of representable time.
    pub fn checked_add(self, duration: Duration) -> Option<Instant> {
        self.0.checked_add(duration).map(Instant)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, duration: Duration) -> Instant {
        Instant(self.0.saturating_add(duration))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the epoch.
    fn sub(self, duration: Duration) -> Instant {
        Instant(self.0.saturating_sub(duration))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    /// Saturating, as [`Instant::saturating_duration_since`].
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Display for Instant {
    /// Seconds since the epoch with microseconds: `13.023437s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0.as_secs(), self.0.subsec_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_display_shows_micros() {
        let t = Instant::from_micros(13_023_437);
        assert_eq!(t.to_string(), "13.023437s");
        assert_eq!(Instant::ZERO - t, Duration::ZERO);
        assert_eq!(t - Instant::ZERO, Duration::from_micros(13_023_437));
        let end = Instant::from_epoch(Duration::MAX);
        assert_eq!(end + Duration::from_secs(1), end);
        assert_eq!(end.checked_add(Duration::from_secs(1)), None);
        assert_eq!(Instant::from_millis(5), Instant::from_micros(5_000));
    }
}
