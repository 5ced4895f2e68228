//! What a member keeps so that, when a director dies, whoever takes its VIP over can tickle
//! each of its clients (issue 12), sans-IO: the director's own list of the connections it
//! serves in-process ([`Share`], shared with the group as changes), what a member knows of
//! other directors' connections ([`Known`]: their shares, and scanning nodes' orphans), and
//! when a director counts as dead ([`confirmed_dead`]); and what a member does with a
//! draining director's handover messages ([`handover_step`], issue 12 §2).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use palisade_identity::NodeId;

use crate::wire::{Connection, ConnectionList, Handover, HandoverPhase, ListKind};

/// Connections listed at most per director (its own share, or what is known of another's).
pub const SHARE_MAX: usize = 262_144;

/// Whether `director` is confirmed dead as the director of a group, for a member that may
/// act on it (`me`): no link to it is up (`linked` false), and another member directs the
/// group now (this one, or `directed_by`, whose report is fresh), so VRRP moved the VIP
/// because its adverts stopped. A lost link alone is only a hint: a false failover must
/// never reset a healthy director's clients.
pub fn confirmed_dead(
    director: NodeId,
    me: NodeId,
    linked: bool,
    directing: bool,
    directed_by: Option<NodeId>,
) -> bool {
    director != me && !linked && (directing || directed_by.is_some_and(|id| id != director))
}

/// The connections this node serves in-process as a group's director, and what changed
/// since the group last heard.
#[derive(Debug, Default)]
pub struct Share {
    next: u64,
    current: HashMap<u64, Connection>,
    added: Vec<Connection>,
    removed: Vec<Connection>,
}

impl Share {
    /// Lists a connection; its id for [`Share::unlist`], or `None` at [`SHARE_MAX`].
    pub fn list(&mut self, connection: Connection) -> Option<u64> {
        if self.current.len() >= SHARE_MAX {
            return None;
        }
        let id = self.next;
        self.next += 1;
        self.current.insert(id, connection);
        self.added.push(connection);
        Some(id)
    }

    /// The connection ended.
    pub fn unlist(&mut self, id: u64) {
        if let Some(connection) = self.current.remove(&id) {
            self.removed.push(connection);
        }
    }

    /// What changed since the last call: (added, removed).
    pub fn changes(&mut self) -> (Vec<Connection>, Vec<Connection>) {
        (
            std::mem::take(&mut self.added),
            std::mem::take(&mut self.removed),
        )
    }

    /// Every connection listed now.
    pub fn all(&self) -> Vec<Connection> {
        self.current.values().copied().collect()
    }
}

/// A connection list that names the wrong director: a share is its sender's own, orphans
/// are another director's (never the receiver's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the connection list names the wrong director")]
pub struct WrongDirector;

/// What a member knows of other directors' connections, by group and director.
#[derive(Debug, Default)]
pub struct Known {
    by_director: HashMap<(u8, NodeId), HashSet<Connection>>,
}

impl Known {
    /// A list from `from`, received by `me`: a share replaces (full) or changes what is
    /// known of `from`'s connections; orphans add to what is known of a dead director's.
    /// At most [`SHARE_MAX`] are kept per director.
    pub fn apply(
        &mut self,
        from: NodeId,
        me: NodeId,
        list: ConnectionList,
    ) -> Result<(), WrongDirector> {
        let share = matches!(list.kind, ListKind::ShareFull | ListKind::ShareDelta);
        if share != (list.director == from) || list.director == me {
            return Err(WrongDirector);
        }
        let known = self
            .by_director
            .entry((list.vrid, list.director))
            .or_default();
        if list.kind == ListKind::ShareFull {
            known.clear();
        }
        for connection in list.added {
            if known.len() < SHARE_MAX {
                known.insert(connection);
            }
        }
        for connection in &list.removed {
            known.remove(connection);
        }
        Ok(())
    }

    /// `director` is alive (its link came up): what was known is stale (its full share
    /// follows).
    pub fn forget(&mut self, director: NodeId) {
        self.by_director.retain(|(_, of), _| *of != director);
    }

    /// Every (group, director) something is known of.
    pub fn directors(&self) -> impl Iterator<Item = (u8, NodeId)> + '_ {
        self.by_director.keys().copied()
    }

    /// What is known of `director`'s connections in group `vrid`, forgotten.
    pub fn take(&mut self, vrid: u8, director: NodeId) -> HashSet<Connection> {
        self.by_director
            .remove(&(vrid, director))
            .unwrap_or_default()
    }
}

/// A member forwards this much longer than a draining director asked (its `Done` may be
/// late or lost).
pub const FORWARD_MARGIN: Duration = Duration::from_secs(5);
/// The longest a member forwards for, whatever a director asks.
pub const FORWARD_MAX: Duration = Duration::from_secs(3600);

/// What a member does with a handover message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoverStep {
    /// A member confirms it forwards this node's connections (this node drains).
    Confirmed,
    /// Send packets of connections not seen starting here to `to`, for at most `for_at_most`
    /// (the margin included), and close what the director relays here after each response.
    Forward { to: IpAddr, for_at_most: Duration },
    /// The director's drain is over: stop forwarding, keep its connections alive again.
    Stop,
    /// Not for this node.
    Ignore,
    /// Refused, with the reason for the log.
    Refuse(&'static str),
}

/// The rules of a drain's second chance for a member `me` that got `handover` from `from`,
/// its VRRP knowing `master` as the group's master: only a director begins or ends its own
/// drain; packets go back only to the group's master (a member cannot have another's
/// traffic sent to an address of its choosing), for at most [`FORWARD_MAX`].
pub fn handover_step(
    me: NodeId,
    from: NodeId,
    handover: &Handover,
    master: Option<IpAddr>,
) -> HandoverStep {
    match handover.phase {
        HandoverPhase::Ready if handover.director == me => HandoverStep::Confirmed,
        HandoverPhase::Ready => HandoverStep::Ignore,
        _ if handover.director != from => {
            HandoverStep::Refuse("only a director may begin or end its own drain")
        }
        HandoverPhase::Begin { forward_to, .. } if master != Some(forward_to) => {
            HandoverStep::Refuse("its address is not the group's master here")
        }
        HandoverPhase::Begin { forward_to, for_ms } => HandoverStep::Forward {
            to: forward_to,
            for_at_most: Duration::from_millis(u64::from(for_ms)).min(FORWARD_MAX) + FORWARD_MARGIN,
        },
        HandoverPhase::Done => HandoverStep::Stop,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn connection(port: u16) -> Connection {
        (
            SocketAddr::from(([10, 0, 1, 7], port)),
            SocketAddr::from(([10, 0, 0, 100], 3128)),
        )
    }

    fn list(director: u8, kind: ListKind, added: &[u16], removed: &[u16]) -> ConnectionList {
        ConnectionList {
            vrid: 51,
            director: node(director),
            kind,
            added: added.iter().map(|port| connection(*port)).collect(),
            removed: removed.iter().map(|port| connection(*port)).collect(),
        }
    }

    #[test]
    fn a_director_is_dead_only_when_its_link_is_down_and_another_member_directs() {
        let (dead, me, other) = (node(1), node(2), node(3));
        assert!(confirmed_dead(dead, me, false, true, None));
        assert!(confirmed_dead(dead, me, false, false, Some(other)));
        // A lost link alone, or the old director still directing: a hint.
        assert!(!confirmed_dead(dead, me, false, false, None));
        assert!(!confirmed_dead(dead, me, false, false, Some(dead)));
        // Its link is up: alive, whoever directs.
        assert!(!confirmed_dead(dead, me, true, true, Some(other)));
        assert!(!confirmed_dead(me, me, false, true, None));
    }

    #[test]
    fn a_share_reports_what_changed_once_and_lists_what_is_open() {
        let mut share = Share::default();
        let first = share.list(connection(1));
        let second = share.list(connection(2));
        assert_eq!(
            share.changes(),
            (vec![connection(1), connection(2)], vec![])
        );
        assert_eq!(share.changes(), (vec![], vec![]));
        if let Some(first) = first {
            share.unlist(first);
        }
        assert_eq!(share.changes(), (vec![], vec![connection(1)]));
        assert_eq!(share.all(), vec![connection(2)]);
        // Unlisted twice (or never listed): nothing more changes.
        if let Some(first) = first {
            share.unlist(first);
        }
        assert_eq!(share.changes(), (vec![], vec![]));
        assert!(second.is_some());
    }

    #[test]
    fn known_connections_follow_shares_and_orphans_and_refuse_the_wrong_director() {
        let (me, director, scanner) = (node(9), 1, 2);
        let mut known = Known::default();
        let apply = |known: &mut Known, from: u8, list| known.apply(node(from), me, list);
        assert_eq!(
            apply(
                &mut known,
                director,
                list(director, ListKind::ShareDelta, &[1, 2], &[])
            ),
            Ok(())
        );
        assert_eq!(
            apply(
                &mut known,
                director,
                list(director, ListKind::ShareDelta, &[3], &[1])
            ),
            Ok(())
        );
        // Orphans from a scanning node add to the director's.
        assert_eq!(
            apply(
                &mut known,
                scanner,
                list(director, ListKind::Orphans, &[4], &[])
            ),
            Ok(())
        );
        let mut taken: Vec<Connection> = known.take(51, node(director)).into_iter().collect();
        taken.sort();
        assert_eq!(taken, vec![connection(2), connection(3), connection(4)]);
        assert!(known.take(51, node(director)).is_empty(), "taken once");
        // A full share replaces.
        assert_eq!(
            apply(
                &mut known,
                director,
                list(director, ListKind::ShareDelta, &[5], &[])
            ),
            Ok(())
        );
        assert_eq!(
            apply(
                &mut known,
                director,
                list(director, ListKind::ShareFull, &[6], &[])
            ),
            Ok(())
        );
        assert_eq!(
            known
                .take(51, node(director))
                .into_iter()
                .collect::<Vec<_>>(),
            vec![connection(6)]
        );
        // A share of someone else's, orphans of the sender's own or of the receiver's.
        assert_eq!(
            apply(
                &mut known,
                scanner,
                list(director, ListKind::ShareDelta, &[7], &[])
            ),
            Err(WrongDirector)
        );
        assert_eq!(
            apply(
                &mut known,
                director,
                list(director, ListKind::Orphans, &[7], &[])
            ),
            Err(WrongDirector)
        );
        assert_eq!(
            apply(&mut known, scanner, list(9, ListKind::Orphans, &[7], &[])),
            Err(WrongDirector)
        );
        assert_eq!(known.directors().count(), 0);
        // A director whose link comes up is forgotten.
        assert_eq!(
            apply(
                &mut known,
                director,
                list(director, ListKind::ShareDelta, &[8], &[])
            ),
            Ok(())
        );
        known.forget(node(director));
        assert_eq!(known.directors().count(), 0);
    }

    #[test]
    fn a_member_forwards_only_a_directors_own_drain_to_the_master_it_knows_for_a_bounded_time() {
        let (me, director, other) = (
            NodeId::from_bytes([1; 16]),
            NodeId::from_bytes([2; 16]),
            NodeId::from_bytes([3; 16]),
        );
        let master = IpAddr::from([10, 0, 0, 2]);
        let handover = |director, phase| Handover {
            vrid: 51,
            director,
            phase,
        };
        let begin = |for_ms| HandoverPhase::Begin {
            forward_to: master,
            for_ms,
        };
        assert_eq!(
            handover_step(
                me,
                director,
                &handover(director, begin(30_000)),
                Some(master)
            ),
            HandoverStep::Forward {
                to: master,
                for_at_most: Duration::from_secs(30) + FORWARD_MARGIN
            }
        );
        assert_eq!(
            handover_step(
                me,
                director,
                &handover(director, begin(u32::MAX)),
                Some(master)
            ),
            HandoverStep::Forward {
                to: master,
                for_at_most: FORWARD_MAX + FORWARD_MARGIN
            },
            "capped"
        );
        assert!(matches!(
            handover_step(me, other, &handover(director, begin(1)), Some(master)),
            HandoverStep::Refuse(_)
        ));
        assert!(matches!(
            handover_step(
                me,
                director,
                &handover(director, begin(1)),
                Some(IpAddr::from([10, 0, 0, 9]))
            ),
            HandoverStep::Refuse(_)
        ));
        assert!(matches!(
            handover_step(me, director, &handover(director, begin(1)), None),
            HandoverStep::Refuse(_)
        ));
        assert_eq!(
            handover_step(me, director, &handover(director, HandoverPhase::Done), None),
            HandoverStep::Stop
        );
        assert!(matches!(
            handover_step(me, other, &handover(director, HandoverPhase::Done), None),
            HandoverStep::Refuse(_)
        ));
        assert_eq!(
            handover_step(me, other, &handover(me, HandoverPhase::Ready), None),
            HandoverStep::Confirmed
        );
        assert_eq!(
            handover_step(me, other, &handover(director, HandoverPhase::Ready), None),
            HandoverStep::Ignore
        );
    }
}
