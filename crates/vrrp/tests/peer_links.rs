//! The fast paths around the advert timers, decided by the router on peer-link events and
//! run on a simulated LAN in virtual time (issue 9): a crash proved by a dial is taken over
//! at once, a lost link to a live Master changes nothing (security review F3), a leaving
//! Master hands over to the node next in line.
//!
//! Set-up as in `election.rs`: VRID 51, VIP 10.213.0.100, node1 = 10.213.0.11 (priority
//! 150), node2 = .12 (100), node3 = .13 (50), 1 s adverts, peer links with 1 ms latency.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use palisade_vrrp::sim::Lan;
use palisade_vrrp::{
    Action, Command, HANDOVER_OVERLAP, Instant, PeerEvent, Reason, RouterConfig, State, Vrid,
    VrrpPriority,
};

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 100));
const LATENCY: Duration = Duration::from_millis(1);

fn addr(last_octet: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 213, 0, last_octet))
}

fn cfg(last_octet: u8, priority: u8) -> RouterConfig {
    let Some(vrid) = Vrid::new(51) else {
        panic!("VRID 51 is valid");
    };
    RouterConfig::new(vrid, VrrpPriority(priority), addr(last_octet), vec![VIP])
}

/// Three nodes with peer links, settled: node1 Master, the others Backup and every status
/// known.
fn three() -> Lan {
    let mut lan = Lan::new(7);
    for (octet, priority) in [(11, 150), (12, 100), (13, 50)] {
        if lan.add_router(cfg(octet, priority)).is_err() {
            panic!("valid config");
        }
    }
    lan.enable_peer_links();
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        lan.set_delay(a, b, LATENCY);
    }
    lan.start_all();
    let settled = lan.drive_until(
        |lan| lan.masters() == [0] && lan.router(0).successor() == Some(addr(12)),
        Instant::from_micros(10_000_000),
    );
    assert!(settled, "node1 Master with node2 as its successor");
    lan.run_for(Duration::from_secs(1));
    lan
}

fn confirmations(lan: &Lan, node: usize, since: Instant) -> usize {
    lan.actions_since(node, since)
        .iter()
        .filter(|(_, action)| matches!(action, Action::ConfirmDeath { .. }))
        .count()
}

fn became_master(lan: &Lan, node: usize, since: Instant) -> Option<(Instant, Reason)> {
    lan.actions_since(node, since)
        .into_iter()
        .find_map(|(at, action)| match action {
            Action::Notify(t) if t.to == State::Master && t.from != State::Master => {
                Some((at, t.reason))
            }
            _ => None,
        })
}

#[test]
fn a_crash_proved_by_the_dial_is_taken_over_by_the_next_in_line_at_once() {
    let mut lan = three();
    let crashed_at = lan.now();
    lan.crash(0);
    let master_down = lan.router(1).master_down_interval();
    lan.run_for(master_down * 2);
    // Link lost after 1 ms, refused dial back after 2 more: node2 is Master 3 ms after the
    // crash, not Master_Down_Interval later.
    assert_eq!(
        became_master(&lan, 1, crashed_at),
        Some((crashed_at + LATENCY * 3, Reason::MasterDied))
    );
    // Only the node next in line dialled; node3 never took over.
    assert_eq!(confirmations(&lan, 1, crashed_at), 1);
    assert_eq!(confirmations(&lan, 2, crashed_at), 0);
    assert_eq!(became_master(&lan, 2, crashed_at), None);
    assert_eq!(
        lan.vip_holders(VIP),
        [0, 1],
        "node1 crashed with its VIP configured"
    );
}

#[test]
fn a_lost_link_to_a_live_master_changes_nothing() {
    let mut lan = three();
    let cut_at = lan.now();
    lan.cut_peer_link(0, 1);
    lan.run_for(lan.router(1).master_down_interval() * 3);
    // node2 asked for a confirmation, which found node1 alive: no take-over, one Master all
    // along, and node1 knows node2 as its successor again.
    assert_eq!(confirmations(&lan, 1, cut_at), 1);
    assert_eq!(became_master(&lan, 1, cut_at), None);
    assert_eq!(lan.masters(), [0]);
    assert_eq!(lan.vip_holders(VIP), [0]);
    assert_eq!(lan.router(0).stats().master_transitions, 1);
    assert_eq!(lan.router(0).successor(), Some(addr(12)));
}

#[test]
fn a_lost_link_seen_by_a_node_not_next_in_line_asks_nothing() {
    let mut lan = three();
    let cut_at = lan.now();
    lan.cut_peer_link(0, 2);
    lan.run_for(Duration::from_secs(5));
    assert_eq!(confirmations(&lan, 2, cut_at), 0);
    assert_eq!(lan.masters(), [0]);
}

#[test]
fn a_leaving_master_hands_over_to_the_next_in_line_and_releases_after_the_overlap() {
    let mut lan = three();
    let left_at = lan.now();
    lan.shutdown(0);
    let handed = lan.actions_since(0, left_at);
    let kinds: Vec<&str> = handed
        .iter()
        .filter_map(|(_, action)| match action {
            Action::SendAdvert(advert) if advert.priority == VrrpPriority::STOP => Some("prio 0"),
            Action::SendHandover { to } if *to == addr(12) => Some("handover to node2"),
            Action::RemoveVip(_) => Some("release"),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        ["prio 0", "handover to node2"],
        "the VIP is still held"
    );
    assert!(lan.router(0).is_releasing());
    lan.run_for(HANDOVER_OVERLAP);
    assert_eq!(
        became_master(&lan, 1, left_at),
        Some((left_at + LATENCY, Reason::TakeoverRequested))
    );
    assert_eq!(lan.vip_holders(VIP), [1]);
    assert!(!lan.router(0).is_releasing());
    let released_at = lan
        .actions_since(0, left_at)
        .into_iter()
        .find_map(|(at, action)| matches!(action, Action::RemoveVip(_)).then_some(at));
    assert_eq!(released_at, Some(left_at + HANDOVER_OVERLAP));
    lan.run_for(Duration::from_secs(10));
    assert_eq!(lan.masters(), [1]);
    assert_eq!(became_master(&lan, 2, left_at), None);
    // A handover is no split brain: the old Master's "no longer Master" status heals nothing.
    assert_eq!(lan.router(1).stats().split_brain_heals, 0);
}

#[test]
fn without_peer_links_a_crash_waits_for_master_down_interval() {
    let mut lan = Lan::new(7);
    for (octet, priority) in [(11, 150), (12, 100)] {
        if lan.add_router(cfg(octet, priority)).is_err() {
            panic!("valid config");
        }
    }
    lan.start_all();
    assert!(lan.drive_until(|lan| lan.masters() == [0], Instant::from_micros(10_000_000)));
    lan.run_for(Duration::from_millis(500));
    let crashed_at = lan.now();
    lan.crash(0);
    lan.run_for(Duration::from_secs(10));
    let Some((at, reason)) = became_master(&lan, 1, crashed_at) else {
        panic!("node2 never took over");
    };
    assert_eq!(reason, Reason::MasterDown);
    assert!(at - crashed_at > lan.router(1).master_down_interval() / 2);
}

#[test]
fn a_handover_from_a_node_that_is_not_the_master_is_ignored() {
    let mut lan = three();
    let since = lan.now();
    // node3 (not the master) tells node2 to take over: a stale or stray message.
    lan.peer_event(1, PeerEvent::Handover { from: addr(13) });
    lan.run_for(Duration::from_secs(5));
    assert_eq!(became_master(&lan, 1, since), None);
    assert_eq!(lan.masters(), [0]);
}

#[test]
fn a_master_that_crashes_and_comes_back_at_once_is_proved_dead_by_its_new_incarnation() {
    let mut lan = three();
    let crashed_at = lan.now();
    lan.crash(0);
    // Back before anyone could dial it: the dial reaches a new process.
    lan.restart(0);
    lan.run_for(Duration::from_millis(10));
    let Some((at, reason)) = became_master(&lan, 1, crashed_at) else {
        panic!("node2 did not take over from the restarted master");
    };
    assert_eq!(reason, Reason::MasterDied);
    assert!(at - crashed_at <= LATENCY * 3, "took {:?}", at - crashed_at);
    // The restarted node1 preempts later by the RFC rules (priority 150 > 100).
    lan.run_for(lan.router(0).master_down_interval() * 2);
    assert_eq!(lan.masters(), [0]);
}

#[test]
fn an_owner_back_in_service_within_the_overlap_keeps_its_vips() {
    let mut lan = Lan::new(7);
    for (octet, priority) in [(11, 255), (12, 100)] {
        if lan.add_router(cfg(octet, priority)).is_err() {
            panic!("valid config");
        }
    }
    lan.enable_peer_links();
    lan.set_delay(0, 1, LATENCY);
    lan.start_all();
    assert!(lan.drive_until(
        |lan| lan.router(0).successor() == Some(addr(12)),
        Instant::from_micros(10_000_000)
    ));
    let drained_at = lan.now();
    assert_eq!(lan.command(0, Command::Drain(true)), Ok(()));
    assert!(lan.router(0).is_releasing());
    lan.run_for(HANDOVER_OVERLAP / 4);
    // The operator resumes at once: the address owner is Master again, and the release the
    // handover scheduled must not take its VIPs away.
    assert_eq!(lan.command(0, Command::Drain(false)), Ok(()));
    assert_eq!(lan.router(0).state(), State::Master);
    lan.run_for(HANDOVER_OVERLAP * 2);
    let released = lan
        .actions_since(0, drained_at)
        .into_iter()
        .any(|(_, action)| matches!(action, Action::RemoveVip(_)));
    assert!(
        !released,
        "the owner's VIPs were released after it came back"
    );
    lan.run_for(Duration::from_secs(5));
    assert_eq!(lan.masters(), [0]);
    assert_eq!(lan.vip_holders(VIP), [0]);
}

fn stepped_down_for_split_brain(lan: &Lan, node: usize, since: Instant) -> Vec<Instant> {
    lan.actions_since(node, since)
        .into_iter()
        .filter_map(|(at, action)| match action {
            Action::Notify(t) if t.reason == Reason::SplitBrainPeerLink => Some(at),
            _ => None,
        })
        .collect()
}

#[test]
fn adverts_lost_while_the_links_work_make_a_second_master_that_steps_down_and_stays_backup() {
    let mut lan = three();
    let split_at = lan.now();
    // node1's adverts no longer reach node2 (and node2's not node1), the links still work.
    lan.split_adverts(0, 1);
    lan.run_for(Duration::from_secs(30));
    // node2 took over when the adverts stopped (it cannot tell a split from a death at
    // that moment), then node1's next status on the link proved node1 alive and Master: node2
    // stepped down once, within a status period and two advert intervals, and stayed
    // Backup for the rest of the split although no advert reached it.
    let stepped = stepped_down_for_split_brain(&lan, 1, split_at);
    assert_eq!(stepped.len(), 1, "{stepped:?}");
    let Some((master_at, _)) = became_master(&lan, 1, split_at) else {
        panic!("node2 took over when the adverts stopped");
    };
    assert!(
        stepped[0] <= master_at + Duration::from_secs(3),
        "{master_at:?} -> {:?}",
        stepped[0]
    );
    assert_eq!(lan.masters(), [0]);
    assert_eq!(lan.vip_holders(VIP), [0]);
    assert_eq!(lan.router(1).stats().split_brain_stepdowns, 1);
    assert_eq!(lan.router(1).state(), State::Backup);
    assert_eq!(lan.router(1).master_address(), Some(addr(11)));
    // node1, the better one, never stepped down; it re-announced once node2 had (clients
    // that followed node2's gratuitous ARPs come back).
    let healed = lan
        .actions_since(0, split_at)
        .into_iter()
        .find_map(|(at, action)| match action {
            Action::Notify(t) if t.reason == Reason::SplitBrainHeal => Some(at),
            _ => None,
        });
    assert!(
        healed.is_some_and(|at| at >= stepped[0]),
        "{healed:?} after {:?}",
        stepped[0]
    );
    assert_eq!(lan.router(0).stats().split_brain_stepdowns, 0);
    assert_eq!(lan.router(0).stats().master_transitions, 1);

    // node1 dies while the adverts are still split: its links close, node2 takes over.
    let crashed_at = lan.now();
    lan.crash(0);
    lan.run_for(Duration::from_secs(10));
    assert!(became_master(&lan, 1, crashed_at).is_some());
    assert_eq!(lan.masters(), [1]);
}

#[test]
fn the_better_node_taking_over_in_a_split_makes_the_old_master_step_down() {
    let mut lan = three();
    // node2 takes a higher priority than node1 while their adverts are split: without
    // adverts it cannot preempt by the RFC, but it would win the election.
    lan.split_adverts(0, 1);
    lan.run_for(Duration::from_secs(30));
    assert_eq!(lan.masters(), [0]);
    let raised_at = lan.now();
    let _ = lan.command(1, Command::SetPriority(VrrpPriority(200)));
    // node2 no longer waits for node1: it takes over when its timer expires, and node1,
    // told over the links, steps down and stays Backup.
    lan.run_for(Duration::from_secs(30));
    assert_eq!(lan.masters(), [1]);
    assert!(became_master(&lan, 1, raised_at).is_some());
    assert_eq!(stepped_down_for_split_brain(&lan, 0, raised_at).len(), 1);
    // The adverts heal: the RFC agrees, one Master.
    lan.heal();
    lan.run_for(Duration::from_secs(30));
    assert_eq!(lan.masters(), [1]);
    assert_eq!(lan.vip_holders(VIP), [1]);
}

#[test]
fn a_master_whose_host_died_before_its_links_timed_out_is_taken_over_without_delay() {
    let mut lan = three();
    // node1's host goes silent: no adverts, no statuses, and its links only time out later
    // (no LinkLost here at all). Its last status is older than node2's takeover, so it
    // proves nothing: node2 takes over at Master_Down_Interval and stays Master.
    let cut_at = lan.now();
    lan.isolate(0);
    lan.run_for(Duration::from_secs(20));
    let Some((master_at, reason)) = became_master(&lan, 1, cut_at) else {
        panic!("node2 took over");
    };
    assert_eq!(reason, Reason::MasterDown);
    assert!(master_at <= cut_at + lan.router(1).master_down_interval() + Duration::from_secs(1));
    assert_eq!(
        stepped_down_for_split_brain(&lan, 1, cut_at),
        Vec::<Instant>::new()
    );
    assert!(lan.masters().contains(&1));
}

#[test]
fn a_split_brain_winner_whose_host_goes_silent_is_taken_over_once_its_statuses_stop() {
    let mut lan = three();
    lan.split_adverts(0, 1);
    lan.run_for(Duration::from_secs(30));
    assert_eq!(lan.masters(), [0]);
    assert_eq!(lan.router(1).stats().split_brain_stepdowns, 1);
    // node1's host goes silent: no adverts, no statuses, and here its links never report
    // the loss. node2 held back only while node1's statuses kept coming: it takes over.
    let silent_at = lan.now();
    lan.isolate(0);
    let limit = 2 * palisade_vrrp::STATUS_REPEAT + 2 * lan.router(1).master_down_interval();
    lan.run_for(limit);
    assert!(
        became_master(&lan, 1, silent_at).is_some_and(|(at, _)| at <= silent_at + limit),
        "node2 never took over from the silent winner"
    );
}

#[test]
fn a_split_brain_hold_ends_when_the_winners_adverts_arrive_again() {
    let mut lan = three();
    lan.split_adverts(0, 1);
    lan.run_for(Duration::from_secs(30));
    assert_eq!(lan.router(1).stats().split_brain_stepdowns, 1);
    // The adverts flow again: the hold is over, so when node1 later dies without a word
    // on its links (isolated), node2 takes over at Master_Down_Interval.
    lan.heal();
    lan.run_for(Duration::from_secs(5));
    let silent_at = lan.now();
    lan.isolate(0);
    lan.run_for(Duration::from_secs(10));
    let Some((at, reason)) = became_master(&lan, 1, silent_at) else {
        panic!("node2 never took over");
    };
    assert_eq!(reason, Reason::MasterDown);
    assert!(
        at <= silent_at + lan.router(1).master_down_interval() + LATENCY,
        "{:?} after the silence",
        at - silent_at
    );
}
