//! When a watched file's change may be acted on. A file being written in place (an editor
//! without rename, `echo >`, a half-finished copy) can be caught between its truncation and
//! its last write, and a partial policy may even compile: a torn read of `[access]` without
//! its `allow_destinations` once refused every request in the soak benchmark. So a change
//! counts only once the file looks the same on two consecutive polls.

/// Tracks what a set of files looked like (`S`: their stamps) at each poll.
#[derive(Debug)]
pub struct SettledChange<S> {
    /// What the live state was built from.
    acted_on: S,
    /// A change seen at the previous poll, not yet confirmed.
    pending: Option<S>,
}

impl<S: PartialEq + Clone> SettledChange<S> {
    pub fn new(acted_on: S) -> SettledChange<S> {
        SettledChange {
            acted_on,
            pending: None,
        }
    }

    /// One poll: true when the files differ from what was acted on and looked the same at
    /// the previous poll (the caller then reloads and calls [`acted_on`](Self::acted_on)).
    pub fn poll(&mut self, now: S) -> bool {
        if now == self.acted_on {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            return true;
        }
        self.pending = Some(now);
        false
    }

    /// Records what the live state is now built from (after a reload, forced or not,
    /// successful or refused: a refused file is not retried until it changes again).
    pub fn acted_on(&mut self, stamps: S) {
        self.acted_on = stamps;
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_acted_on_once_it_holds_for_a_poll() {
        let mut watch = SettledChange::new(1);
        assert!(!watch.poll(1), "nothing changed");
        assert!(!watch.poll(2), "first sight of a change: maybe mid-write");
        assert!(!watch.poll(3), "still moving");
        assert!(watch.poll(3), "the same twice: settled");
        watch.acted_on(3);
        assert!(!watch.poll(3));
        // A file that changes back before settling needs nothing.
        assert!(!watch.poll(4));
        assert!(!watch.poll(3));
        assert!(!watch.poll(3));
    }

    proptest::proptest! {
        /// Whatever the sequence of observations, a reload is only ever asked for a state
        /// seen on two consecutive polls and different from the one acted on.
        #[test]
        fn only_settled_states_trigger(seen in proptest::collection::vec(0u8..4, 1..40)) {
            let mut watch = SettledChange::new(0u8);
            let mut acted_on = 0u8;
            let mut previous = None;
            for now in seen {
                if watch.poll(now) {
                    proptest::prop_assert_eq!(previous, Some(now));
                    proptest::prop_assert_ne!(now, acted_on);
                    watch.acted_on(now);
                    acted_on = now;
                }
                previous = Some(now);
            }
        }
    }
}
