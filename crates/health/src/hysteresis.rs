//! Rise/fall hysteresis over probe results (pure; HAProxy's `rise`/`fall` semantics).

use std::fmt;

/// A node's health as the election sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Failed,
}

impl fmt::Display for Health {
    /// The words swg-mon logs: `current state: failure`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "ok",
            Health::Failed => "failure",
        })
    }
}

/// Counts consecutive probe results; the state flips after `fall` failures (when healthy) or
/// `rise` successes (when failed).
#[derive(Clone, Debug)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    state: Health,
    /// Consecutive results that disagree with `state`.
    streak: u32,
}

impl Hysteresis {
    /// Starts in `initial`. `rise` and `fall` of 0 are treated as 1.
    pub fn new(rise: u32, fall: u32, initial: Health) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            state: initial,
            streak: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one probe result; returns the new state if it changed.
    pub fn record(&mut self, success: bool) -> Option<Health> {
        let agrees = matches!(
            (self.state, success),
            (Health::Healthy, true) | (Health::Failed, false)
        );
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match self.state {
            Health::Healthy => self.fall,
            Health::Failed => self.rise,
        };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.state = match self.state {
            Health::Healthy => Health::Failed,
            Health::Failed => Health::Healthy,
        };
        Some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(rise: u32, fall: u32, initial: Health, probes: &str, expected: &str) {
        let mut hysteresis = Hysteresis::new(rise, fall, initial);
        let states: String = probes
            .chars()
            .map(|probe| {
                hysteresis.record(probe == '+');
                match hysteresis.state() {
                    Health::Healthy => 'H',
                    Health::Failed => 'F',
                }
            })
            .collect();
        assert_eq!(states, expected, "probes {probes}");
    }

    #[test]
    fn flips_only_after_streaks() {
        check(2, 3, Health::Healthy, "--+---", "HHHHHF");
        check(2, 3, Health::Failed, "+-++", "FFFH");
        check(1, 1, Health::Healthy, "-+-+", "FHFH");
        check(0, 0, Health::Healthy, "-", "F");
    }

    proptest! {
        /// A state change is always preceded by exactly the required streak of results.
        #[test]
        fn changes_need_a_full_streak(rise in 1u32..5, fall in 1u32..5,
                                      probes in proptest::collection::vec(any::<bool>(), 0..60)) {
            let mut hysteresis = Hysteresis::new(rise, fall, Health::Healthy);
            for (index, probe) in probes.iter().enumerate() {
                let before = hysteresis.state();
                if let Some(after) = hysteresis.record(*probe) {
                    let needed = if before == Health::Healthy { fall } else { rise } as usize;
                    prop_assert!(index + 1 >= needed);
                    let streak = &probes[index + 1 - needed..=index];
                    prop_assert!(streak.iter().all(|result| *result == (after == Health::Healthy)));
                }
            }
        }
    }
}
