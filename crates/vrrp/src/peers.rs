//! Who is next in line, from what the peer links say of the other nodes: the choice behind
//! the fast paths that go around the advert timers (a crash take-over, a handover on stop or
//! drain). The RFC election itself stays in [`Router`](crate::Router); this only names the
//! node that the election would pick, so that it can be told at once.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::router::election_winner;
use crate::time::Instant;
use crate::types::VrrpPriority;

/// The other nodes of one HA group with the priority each last announced (0: out of the
/// election: stopped, faulty or drained).
#[derive(Clone, Debug, Default)]
pub struct PeerTable {
    priorities: HashMap<IpAddr, VrrpPriority>,
    /// Peers that say they are the group's Master.
    masters: std::collections::HashSet<IpAddr>,
    /// When each peer's latest status arrived.
    heard_at: HashMap<IpAddr, Instant>,
}

impl PeerTable {
    pub fn new() -> PeerTable {
        PeerTable::default()
    }

    /// A peer announced its priority in this group, and whether it is Master.
    pub fn set(&mut self, peer: IpAddr, priority: VrrpPriority, master: bool, now: Instant) {
        self.priorities.insert(peer, priority);
        self.heard_at.insert(peer, now);
        if master && priority != VrrpPriority::STOP {
            self.masters.insert(peer);
        } else {
            self.masters.remove(&peer);
        }
    }

    /// A peer left or was lost: it is in line no more.
    pub fn remove(&mut self, peer: IpAddr) {
        self.priorities.remove(&peer);
        self.masters.remove(&peer);
        self.heard_at.remove(&peer);
    }

    pub fn priority(&self, peer: IpAddr) -> Option<VrrpPriority> {
        self.priorities.get(&peer).copied()
    }

    /// The live peers that say they are Master, with their priorities.
    pub fn masters(&self) -> impl Iterator<Item = (IpAddr, VrrpPriority)> + '_ {
        (self.masters.iter()).filter_map(|peer| Some((*peer, *self.priorities.get(peer)?)))
    }

    /// Those of [`PeerTable::masters`] whose latest status arrived at `since` or later.
    pub fn masters_heard_since(
        &self,
        since: Instant,
    ) -> impl Iterator<Item = (IpAddr, VrrpPriority)> + '_ {
        self.masters()
            .filter(move |(peer, _)| self.heard_at.get(peer).is_some_and(|at| *at >= since))
    }

    /// The node the election would pick among the live peers in the election, leaving out
    /// `except` (a node that just died), plus `own` (this node, when it may hold the VIPs):
    /// the highest priority, then the highest address.
    pub fn next_in_line(
        &self,
        own: Option<(IpAddr, VrrpPriority)>,
        except: Option<IpAddr>,
    ) -> Option<IpAddr> {
        let peers = (self.priorities.iter())
            .filter(|(peer, priority)| **priority != VrrpPriority::STOP && Some(**peer) != except)
            .map(|(peer, priority)| (*peer, *priority));
        election_winner(peers.chain(own))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn addr(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, 0, last))
    }

    fn octets(address: IpAddr) -> [u8; 4] {
        match address {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => [0; 4],
        }
    }

    #[test]
    fn picks_priority_then_address_and_skips_the_dead_and_the_out() {
        let mut peers = PeerTable::new();
        peers.set(addr(12), VrrpPriority(100), false, Instant::ZERO);
        peers.set(addr(13), VrrpPriority(100), false, Instant::ZERO);
        peers.set(addr(14), VrrpPriority(0), false, Instant::ZERO);
        assert_eq!(peers.next_in_line(None, None), Some(addr(13)));
        assert_eq!(peers.next_in_line(None, Some(addr(13))), Some(addr(12)));
        assert_eq!(
            peers.next_in_line(Some((addr(11), VrrpPriority(100))), Some(addr(13))),
            Some(addr(12))
        );
        assert_eq!(
            peers.next_in_line(Some((addr(11), VrrpPriority(101))), None),
            Some(addr(11))
        );
        peers.remove(addr(12));
        peers.remove(addr(13));
        assert_eq!(peers.next_in_line(None, None), None);
    }

    proptest! {
        /// The pick is never the excluded node nor a node out of the election, and no
        /// candidate outranks it.
        #[test]
        fn next_in_line_is_the_best_eligible_candidate(
            table in proptest::collection::vec((1u8..20, 0u8..=255), 0..8),
            own in proptest::option::of((1u8..20, 1u8..=254)),
            except in proptest::option::of(1u8..20),
        ) {
            let mut peers = PeerTable::new();
            for &(last, priority) in &table {
                peers.set(addr(last), VrrpPriority(priority), false, Instant::ZERO);
            }
            let own = own.map(|(last, priority)| (addr(100 + last), VrrpPriority(priority)));
            let except = except.map(addr);
            let candidates: Vec<(IpAddr, VrrpPriority)> = (peers.priorities.iter())
                .map(|(peer, priority)| (*peer, *priority))
                .filter(|(peer, priority)| priority.0 > 0 && Some(*peer) != except)
                .chain(own)
                .collect();
            let pick = peers.next_in_line(own, except);
            prop_assert_eq!(pick.is_some(), !candidates.is_empty());
            if let Some(pick) = pick {
                prop_assert!(Some(pick) != except);
                let rank = |(peer, priority): (IpAddr, VrrpPriority)| (priority, octets(peer));
                let picked = candidates.iter().copied().find(|(peer, _)| *peer == pick);
                prop_assert!(picked.is_some(), "picked a node out of the election");
                if let Some(picked) = picked {
                    for candidate in &candidates {
                        prop_assert!(rank(*candidate) <= rank(picked));
                    }
                }
            }
        }
    }
}
