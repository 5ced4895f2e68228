//! A drain as the data plane sees it: connections close in order after their current
//! response (idle kept-alive ones at once), and at the drain's deadline whatever is still
//! open (tunnels, long downloads) is cut with a reset.
//!
//! The node's drain covers every connection; a director's drain covers only the connections
//! that director relays to this node (their clients' packets stop coming once it has handed
//! its VIP over and finished), so the scan port adds one token per director.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// The node's current drain: replaced as a whole on resume, so a connection holds the
/// tokens of the drain it started under.
#[derive(Default)]
struct Tokens {
    close: CancellationToken,
    cut: CancellationToken,
}

/// The node's drain, shared by every listener.
#[derive(Default)]
pub(crate) struct NodeDrain {
    tokens: ArcSwap<Tokens>,
}

impl NodeDrain {
    /// What ends a connection accepted now.
    pub(crate) fn ending(&self) -> Ending {
        let tokens = self.tokens.load();
        Ending {
            close: tokens.close.clone(),
            director_close: None,
            cut: tokens.cut.clone(),
        }
    }

    /// Every connection closes after its current response; idle ones close now.
    pub(crate) fn close(&self) {
        self.tokens.load().close.cancel();
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.tokens.load().close.is_cancelled()
    }

    /// Resets every connection still open. Connections accepted later still close after
    /// their first response but are not cut.
    pub(crate) fn cut(&self) {
        let tokens = self.tokens.load_full();
        tokens.cut.cancel();
        self.tokens.store(Arc::new(Tokens {
            close: tokens.close.clone(),
            cut: CancellationToken::new(),
        }));
    }

    /// Back in service: connections accepted from now on are kept alive as usual.
    pub(crate) fn resume(&self) {
        self.tokens.store(Arc::new(Tokens::default()));
    }
}

/// What ends one connection before its client does.
#[derive(Clone)]
pub(crate) struct Ending {
    /// The node drains: close after the current response (idle: at once).
    close: CancellationToken,
    /// The director that relayed the connection drains: the same.
    director_close: Option<CancellationToken>,
    /// The drain's deadline: reset now.
    pub(crate) cut: CancellationToken,
}

impl Ending {
    /// Also closes when `director` (the relaying director's drain) fires.
    pub(crate) fn with_director(mut self, director: CancellationToken) -> Ending {
        self.director_close = Some(director);
        self
    }

    /// Whether the connection is to close after its current response.
    pub(crate) fn is_closing(&self) -> bool {
        self.close.is_cancelled()
            || (self.director_close.as_ref()).is_some_and(CancellationToken::is_cancelled)
    }

    /// Resolves once the connection is to close after its current response.
    pub(crate) async fn closing(&self) {
        match &self.director_close {
            Some(director) => tokio::select! {
                () = self.close.cancelled() => {}
                () = director.cancelled() => {}
            },
            None => self.close.cancelled().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_closes_the_connections_it_started_with_and_resume_spares_later_ones() {
        let drain = NodeDrain::default();
        let before = drain.ending();
        assert!(!before.is_closing());
        drain.close();
        assert!(before.is_closing());
        let during = drain.ending();
        assert!(during.is_closing(), "accepted while drained: closes too");
        drain.cut();
        assert!(before.cut.is_cancelled() && during.cut.is_cancelled());
        let after_cut = drain.ending();
        assert!(after_cut.is_closing() && !after_cut.cut.is_cancelled());
        drain.resume();
        let resumed = drain.ending();
        assert!(!resumed.is_closing() && !resumed.cut.is_cancelled());
        assert!(
            before.is_closing(),
            "a resume does not reopen what the drain closed"
        );
    }

    #[test]
    fn a_directors_drain_closes_only_its_connections() {
        let drain = NodeDrain::default();
        let director = CancellationToken::new();
        let relayed = drain.ending().with_director(director.clone());
        let direct = drain.ending();
        director.cancel();
        assert!(relayed.is_closing());
        assert!(!direct.is_closing());
    }
}
