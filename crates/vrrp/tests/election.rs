//! Elections on a simulated LAN, in virtual time, every instant asserted exactly.
//!
//! The set-up mirrors the keepalived lab (vrrp-lab.md): VRID 51, VIP 10.213.0.100, node1 =
//! 10.213.0.11, node2 = 10.213.0.12, node3 = 10.213.0.13, 1 s adverts unless a test says
//! otherwise. With priorities 150 and 100 the numbers are those of keepalived:
//! Master_Down_Interval 3.414062 s and 3.609375 s, Skew_Time 0.609375 s for priority 100.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use palisade_vrrp::sim::Lan;
use palisade_vrrp::{
    Action, Centiseconds, Command, DecodeContext, Instant, Reason, RouterConfig, State, Transition,
    Version, Vrid, VrrpPriority,
};

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 100));
const SECOND: u64 = 1_000_000;
/// Master_Down_Interval of priority 150 at 1 s: 3 s + 106/256 s.
const MDI_150: u64 = 3_414_062;
/// Master_Down_Interval of priority 100 at 1 s: 3 s + 156/256 s.
const MDI_100: u64 = 3_609_375;
/// Skew_Time of priority 100 at 1 s.
const SKEW_100: u64 = 609_375;

fn addr(last_octet: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 213, 0, last_octet))
}

fn cfg(last_octet: u8, priority: u8) -> RouterConfig {
    RouterConfig::new(
        Vrid::new(51).unwrap(),
        VrrpPriority(priority),
        addr(last_octet),
        vec![VIP],
    )
}

fn at(micros: u64) -> Instant {
    Instant::from_micros(micros)
}

/// A LAN with these routers, none started.
fn lan(configs: impl IntoIterator<Item = RouterConfig>) -> Lan {
    let mut lan = Lan::new(7);
    for config in configs {
        lan.add_router(config).unwrap();
    }
    lan
}

/// node1 (priority 150) and node2 (priority 100), started at 0: node1 is Master from
/// MDI_150 on, with adverts at MDI_150 + k s.
fn pair() -> Lan {
    let mut lan = lan([cfg(11, 150), cfg(12, 100)]);
    lan.start_all();
    assert!(lan.drive_until(|lan| lan.masters() == [0], at(10 * SECOND)));
    assert_eq!(lan.now(), at(MDI_150));
    // Deliver the first advert, sent at this same instant.
    lan.run_until(at(MDI_150));
    lan
}

fn transitions(lan: &Lan, node: usize) -> Vec<(Instant, Transition)> {
    lan.actions_since(node, Instant::ZERO)
        .into_iter()
        .filter_map(|(at, action)| match action {
            Action::Notify(transition) => Some((at, transition)),
            _ => None,
        })
        .collect()
}

fn last_transition(lan: &Lan, node: usize) -> (Instant, Transition) {
    *transitions(lan, node).last().unwrap()
}

fn transition(from: State, to: State, reason: Reason) -> Transition {
    Transition { from, to, reason }
}

fn advert_priorities(actions: &[(Instant, Action)]) -> Vec<(Instant, u8)> {
    actions
        .iter()
        .filter_map(|(at, action)| match action {
            Action::SendAdvert(advert) => Some((*at, advert.priority.0)),
            _ => None,
        })
        .collect()
}

fn holds_vip(node: usize) -> impl Fn(&Lan) -> bool {
    move |lan| lan.vip_holders(VIP).contains(&node)
}

#[test]
fn backup_becomes_master_after_master_down_interval() {
    let mut lan = pair();
    assert_eq!(lan.router(1).state(), State::Backup);
    assert_eq!(lan.router(1).master_address(), Some(addr(11)));
    assert_eq!(lan.router(1).master_priority(), Some(VrrpPriority(150)));
    assert_eq!(lan.vip_holders(VIP), [0]);
    lan.run_until(at(10 * SECOND));
    lan.crash(0);
    // node1's last advert left at MDI_150 + 6 s; node2 takes over MDI_100 later.
    let last_advert = MDI_150 + 6 * SECOND;
    assert!(lan.drive_until(holds_vip(1), at(30 * SECOND)));
    assert_eq!(lan.now(), at(last_advert + MDI_100));
    assert_eq!(
        last_transition(&lan, 1),
        (
            at(13_023_437),
            transition(State::Backup, State::Master, Reason::MasterDown)
        )
    );
    // As with keepalived, a crashed node keeps its VIP configured (vrrp-lab.md pitfall 2).
    assert_eq!(lan.vip_holders(VIP), [0, 1]);
}

#[test]
fn priority_zero_hands_over_after_skew_time() {
    // vrrp-lab.md: SIGTERM -> takeover after 609 ms at 1 s adverts, 61 ms at 100 ms.
    for (interval, skew) in [(100, SKEW_100), (10, 60_937)] {
        let mut configs = [cfg(11, 150), cfg(12, 100)];
        for config in &mut configs {
            config.advert_interval = Centiseconds(interval);
        }
        let mut lan = lan(configs);
        lan.start_all();
        lan.run_until(at(10 * SECOND));
        assert_eq!(lan.masters(), [0]);
        lan.shutdown(0);
        let node1 = lan.actions_since(0, at(10 * SECOND));
        assert_eq!(
            node1,
            [
                (at(10 * SECOND), stop_advert(interval)),
                (at(10 * SECOND), Action::RemoveVip(VIP)),
                (
                    at(10 * SECOND),
                    Action::Notify(transition(
                        State::Master,
                        State::Initialize,
                        Reason::Shutdown
                    ))
                ),
            ]
        );
        assert!(lan.drive_until(holds_vip(1), at(20 * SECOND)));
        assert_eq!(lan.now(), at(10 * SECOND + skew), "interval {interval} cs");
        assert_eq!(
            last_transition(&lan, 1).1,
            transition(State::Backup, State::Master, Reason::PriorityZeroReceived)
        );
        assert_eq!(lan.vip_holders(VIP), [1]);
    }
}

fn stop_advert(interval: u16) -> Action {
    Action::SendAdvert(palisade_vrrp::Advert {
        version: Version::V3,
        vrid: Vrid::new(51).unwrap(),
        priority: VrrpPriority::STOP,
        max_adver_int: Centiseconds(interval),
        addresses: vec![VIP],
    })
}

/// node1 crashes at 10 s and node2 takes over at 13.023437 s; node1 restarts at 20 s.
fn restart_after_failover(node1: RouterConfig) -> Lan {
    let mut lan = lan([node1, cfg(12, 100)]);
    lan.start_all();
    lan.run_until(at(10 * SECOND));
    lan.crash(0);
    lan.run_until(at(20 * SECOND));
    assert_eq!(lan.masters(), [1]);
    lan.restart(0);
    // The new process removes the VIP its crashed predecessor left behind.
    assert_eq!(lan.vip_holders(VIP), [1]);
    assert_eq!(lan.router(0).state(), State::Backup);
    lan
}

#[test]
fn higher_priority_preempts_when_it_returns() {
    let mut lan = restart_after_failover(cfg(11, 150));
    // node1 discards node2's lower-priority adverts and lets its own timer run out.
    assert!(lan.drive_until(|lan| lan.masters() == [0], at(40 * SECOND)));
    let preempted_at = at(20 * SECOND + MDI_150);
    assert_eq!(lan.now(), preempted_at);
    assert_eq!(
        last_transition(&lan, 0),
        (
            preempted_at,
            transition(State::Backup, State::Master, Reason::Preempted)
        )
    );
    // node2 steps down at once, and node1 does not mistake that for a split brain.
    assert_eq!(
        lan.actions_since(1, preempted_at),
        [
            (preempted_at, last_advert(100)),
            (preempted_at, Action::RemoveVip(VIP)),
            (
                preempted_at,
                Action::Notify(transition(
                    State::Master,
                    State::Backup,
                    Reason::HigherPriorityAdvert
                ))
            ),
        ]
    );
    assert_eq!(lan.vip_holders(VIP), [0]);
    lan.run_until(at(60 * SECOND));
    assert_eq!(
        last_transition(&lan, 0),
        (
            preempted_at,
            transition(State::Backup, State::Master, Reason::Preempted)
        )
    );
    assert_eq!(lan.masters(), [0]);
}

fn last_advert(priority: u8) -> Action {
    Action::SendAdvert(palisade_vrrp::Advert {
        version: Version::V3,
        vrid: Vrid::new(51).unwrap(),
        priority: VrrpPriority(priority),
        max_adver_int: Centiseconds(100),
        addresses: vec![VIP],
    })
}

#[test]
fn no_preempt_keeps_lower_priority_master() {
    let mut node1 = cfg(11, 150);
    node1.preempt = false;
    let mut lan = restart_after_failover(node1);
    lan.run_until(at(120 * SECOND));
    assert_eq!(lan.masters(), [1]);
    assert_eq!(lan.router(0).state(), State::Backup);
    assert_eq!(lan.router(0).master_address(), Some(addr(12)));
    assert_eq!(lan.vip_holders(VIP), [1]);
}

#[test]
fn preempt_delay_is_respected() {
    let mut node1 = cfg(11, 150);
    node1.preempt_delay = Duration::from_secs(5);
    let mut lan = restart_after_failover(node1);
    // node2 has advertised at 13.023437 + k s since taking over. Until 25 s node1 accepts
    // them; the one at 25.023437 s is the first it discards, so its timer, last reset at
    // 24.023437 s, expires MDI_150 later.
    assert!(lan.drive_until(|lan| lan.masters() == [0], at(60 * SECOND)));
    assert_eq!(lan.now(), at(24_023_437 + MDI_150));
    assert_eq!(
        last_transition(&lan, 0).1,
        transition(State::Backup, State::Master, Reason::Preempted)
    );
    assert!(lan.now() >= at(25 * SECOND));
}

#[test]
fn equal_priority_higher_address_wins() {
    // Both timers expire at the same instant: both become Master, then the adverts cross.
    let mut lan = lan([cfg(11, 100), cfg(12, 100)]);
    lan.start_all();
    lan.run_until(at(MDI_100));
    assert_eq!(lan.masters(), [1]);
    assert_eq!(lan.vip_holders(VIP), [1]);
    assert_eq!(
        transitions(&lan, 0)[1..],
        [
            (
                at(MDI_100),
                transition(State::Backup, State::Master, Reason::MasterDown)
            ),
            (
                at(MDI_100),
                transition(State::Master, State::Backup, Reason::HigherPriorityAdvert)
            ),
        ]
    );
    // The winner re-announced: node1's gratuitous ARPs may have reached clients after its own.
    assert_eq!(
        last_transition(&lan, 1),
        (
            at(MDI_100),
            transition(State::Master, State::Master, Reason::SplitBrainHeal)
        )
    );
    lan.run_until(at(60 * SECOND));
    assert_eq!(lan.masters(), [1]);
    assert_eq!(last_transition(&lan, 1).0, at(MDI_100));
}

#[test]
fn backup_learns_master_adver_interval() {
    let mut node1 = cfg(11, 150);
    node1.advert_interval = Centiseconds(200);
    let mut lan = lan([node1, cfg(12, 100)]);
    lan.start(0);
    // node1's own Master_Down_Interval at 2 s: 6 s + 2 s * 106/256.
    let node1_master = 6_828_125;
    lan.run_until(at(10 * SECOND));
    assert_eq!(last_transition(&lan, 0).0, at(node1_master));
    lan.start(1);
    assert_eq!(lan.router(1).master_adver_interval(), Centiseconds(100));
    lan.run_until(at(20 * SECOND));
    assert_eq!(lan.router(1).master_adver_interval(), Centiseconds(200));
    // 3 x 2 s + 2 s * 156/256.
    assert_eq!(
        lan.router(1).master_down_interval(),
        Duration::from_micros(7_218_750)
    );
    assert_eq!(lan.masters(), [0]);
    lan.crash(0);
    let last_advert = node1_master + 6 * 2 * SECOND;
    assert!(lan.drive_until(|lan| lan.masters() == [1], at(60 * SECOND)));
    assert_eq!(lan.now(), at(last_advert + 7_218_750));
}

#[test]
fn owner_priority_255_becomes_master_at_startup() {
    let mut lan = lan([cfg(11, 255), cfg(12, 100)]);
    lan.start(1);
    lan.run_until(at(10 * SECOND));
    assert_eq!(lan.masters(), [1]);
    lan.start(0);
    assert_eq!(lan.router(0).state(), State::Master);
    let actions: Vec<Action> = lan
        .actions_since(0, at(10 * SECOND))
        .into_iter()
        .map(|(when, action)| {
            assert_eq!(when, at(10 * SECOND));
            action
        })
        .collect();
    assert_eq!(
        actions,
        [
            last_advert(255),
            Action::AddVip(VIP),
            Action::SendGratuitous {
                vip: VIP,
                repeat: 5
            },
            Action::Notify(transition(
                State::Initialize,
                State::Master,
                Reason::StartupOwner
            )),
        ]
    );
    lan.run_until(at(60 * SECOND));
    assert_eq!(lan.masters(), [0]);
    assert_eq!(lan.vip_holders(VIP), [0]);
    // The owner's announcement is the newest: node2's last advert triggers no heal.
    assert_eq!(last_transition(&lan, 0).1.reason, Reason::StartupOwner);
    assert_eq!(
        last_transition(&lan, 1),
        (
            at(10 * SECOND),
            transition(State::Master, State::Backup, Reason::HigherPriorityAdvert)
        )
    );
}

#[test]
fn split_brain_heals_with_one_master_and_reannounce() {
    // After the partition node1 advertises at 20.414062, 21.414062 s and node2 (Master since
    // 13.023437 s) at 21.023437, 22.023437 s. Healing at 20.5 s lets node2 (the loser) speak
    // first; healing at 21.1 s lets node1 (the winner) speak first, and node2's last advert
    // tells it about the split.
    for (heal_at, first_contact) in [(20_500_000, 21_023_437), (21_100_000, 21_414_062)] {
        let mut lan = pair();
        lan.run_until(at(10 * SECOND));
        lan.partition(0, 1);
        lan.run_until(at(heal_at));
        assert_eq!(lan.masters(), [0, 1]);
        assert_eq!(last_transition(&lan, 1).0, at(9_414_062 + MDI_100));
        lan.heal();
        lan.run_until(at(first_contact));
        assert_eq!(lan.masters(), [0], "heal at {heal_at}");
        assert_eq!(lan.vip_holders(VIP), [0]);
        let contact = at(first_contact);
        let winner: Vec<Action> = lan
            .actions_since(0, contact)
            .into_iter()
            .map(|(_, action)| action)
            .filter(|action| !matches!(action, Action::SendAdvert(_)))
            .collect();
        assert_eq!(
            winner,
            [
                Action::AddVip(VIP),
                Action::SendGratuitous {
                    vip: VIP,
                    repeat: 5
                },
                Action::Notify(transition(
                    State::Master,
                    State::Master,
                    Reason::SplitBrainHeal
                )),
            ],
            "heal at {heal_at}"
        );
        assert_eq!(
            last_transition(&lan, 1),
            (
                contact,
                transition(State::Master, State::Backup, Reason::HigherPriorityAdvert)
            )
        );
        // Stable afterwards, and the winner's adverts keep their rhythm from the heal.
        lan.run_until(at(60 * SECOND));
        assert_eq!(lan.masters(), [0]);
        assert_eq!(transitions(&lan, 0).last().unwrap().0, contact);
        assert_eq!(transitions(&lan, 1).last().unwrap().0, contact);
        let adverts = advert_priorities(&lan.actions_since(0, contact + Duration::from_micros(1)));
        assert_eq!(adverts[0], (contact + Duration::from_secs(1), 150));
    }
}

#[test]
fn fault_state_never_holds_vip() {
    let mut lan = pair();
    lan.run_until(at(10 * SECOND));
    lan.set_fault(0, true);
    assert_eq!(lan.router(0).state(), State::Fault);
    assert_eq!(lan.vip_holders(VIP), []);
    assert!(lan.drive_until(holds_vip(1), at(20 * SECOND)));
    assert_eq!(lan.now(), at(10 * SECOND + SKEW_100));
    // With the only other router gone, the faulty one still stays out.
    lan.run_until(at(20 * SECOND));
    lan.crash(1);
    lan.run_until(at(40 * SECOND));
    assert_eq!(lan.router(0).state(), State::Fault);
    assert!(lan.vips(0).is_empty());
    let adds = lan
        .actions_since(0, at(10 * SECOND))
        .into_iter()
        .filter(|(_, action)| matches!(action, Action::AddVip(_) | Action::SendAdvert(_)))
        .count();
    assert_eq!(adds, 1, "only the priority-0 advert when entering FAULT");
    // Healthy again: Backup, and Master once nobody advertises.
    lan.set_fault(0, false);
    assert_eq!(lan.router(0).state(), State::Backup);
    assert!(lan.drive_until(|lan| lan.masters() == [0], at(60 * SECOND)));
    assert_eq!(lan.now(), at(40 * SECOND + MDI_150));
}

#[test]
fn takeover_command_is_immediate() {
    // Graceful handover: the leaving Master tells node2 to take over, then stops.
    let mut lan = pair();
    lan.run_until(at(10 * SECOND));
    lan.command(1, Command::TakeOver).unwrap();
    lan.shutdown(0);
    assert_eq!(lan.masters(), [1]);
    assert_eq!(
        last_transition(&lan, 1),
        (
            at(10 * SECOND),
            transition(State::Backup, State::Master, Reason::TakeoverRequested)
        )
    );
    lan.run_until(at(30 * SECOND));
    assert_eq!(lan.masters(), [1]);
    assert_eq!(lan.vip_holders(VIP), [1]);
    assert_eq!(last_transition(&lan, 1).0, at(10 * SECOND));
}

#[test]
fn takeover_while_a_better_master_lives_is_undone_at_once() {
    let mut lan = pair();
    lan.run_until(at(10 * SECOND));
    lan.command(1, Command::TakeOver).unwrap();
    lan.run_until(at(10 * SECOND));
    assert_eq!(lan.masters(), [0]);
    assert_eq!(lan.vip_holders(VIP), [0]);
    assert_eq!(
        last_transition(&lan, 0),
        (
            at(10 * SECOND),
            transition(State::Master, State::Master, Reason::SplitBrainHeal)
        )
    );
}

#[test]
fn three_routers_elect_highest_priority() {
    let mut lan = lan([cfg(11, 100), cfg(12, 200), cfg(13, 150)]);
    lan.start_all();
    // 3 s + 56/256 s.
    assert!(lan.drive_until(|lan| lan.masters() == [1], at(10 * SECOND)));
    assert_eq!(lan.now(), at(3_218_750));
    lan.run_until(at(10 * SECOND));
    assert_eq!(lan.router(0).master_address(), Some(addr(12)));
    assert_eq!(lan.router(2).master_address(), Some(addr(12)));
    lan.crash(1);
    // The next in line (150) wins the race against 100: its skew is shorter.
    assert!(lan.drive_until(|lan| lan.masters() == [2], at(20 * SECOND)));
    assert_eq!(lan.now(), at(9_218_750 + MDI_150));
    lan.run_until(at(20 * SECOND));
    assert_eq!(lan.masters(), [2]);
    assert_eq!(lan.router(0).state(), State::Backup);
    lan.restart(1);
    assert!(lan.drive_until(|lan| lan.masters() == [1], at(40 * SECOND)));
    assert_eq!(lan.now(), at(20 * SECOND + 3_218_750));
    assert_eq!(lan.vip_holders(VIP), [1]);
}

#[test]
fn missing_two_adverts_does_not_fail_over() {
    let mut lan = pair();
    lan.run_until(at(10 * SECOND));
    lan.partition(0, 1);
    // Adverts at 10.414062 and 11.414062 s are lost; the one at 12.414062 s arrives before
    // node2's timer (9.414062 + 3.609375 = 13.023437 s) expires.
    lan.run_until(at(12 * SECOND));
    lan.heal();
    lan.run_until(at(30 * SECOND));
    assert_eq!(lan.masters(), [0]);
    assert_eq!(
        transitions(&lan, 1).len(),
        1,
        "node2 only ever entered BACKUP"
    );
}

#[test]
fn crash_at_100ms_adverts_takes_over_after_361_ms() {
    // vrrp-lab.md, v3 0.1 s kill -9: master-down on the wire 361 ms (3 x 0.1 s + 156/256 x 0.1 s).
    let mut configs = [cfg(11, 150), cfg(12, 100)];
    for config in &mut configs {
        config.advert_interval = Centiseconds(10);
    }
    let mut lan = lan(configs);
    lan.start_all();
    // node1 is Master at 341.406 ms and advertises every 100 ms after that.
    lan.run_until(at(1_000_000));
    assert_eq!(lan.masters(), [0]);
    lan.crash(0);
    assert!(lan.drive_until(|lan| lan.masters() == [1], at(2 * SECOND)));
    assert_eq!(lan.now(), at(941_406 + 360_937));
}

#[test]
fn link_delay_adds_to_the_takeover_time() {
    let mut lan = lan([cfg(11, 150), cfg(12, 100)]);
    lan.set_delay(0, 1, Duration::from_millis(2));
    lan.start_all();
    lan.run_until(at(10 * SECOND));
    lan.crash(0);
    assert!(lan.drive_until(|lan| lan.masters() == [1], at(20 * SECOND)));
    // The last advert left at 9.414062 s and arrived 2 ms later.
    assert_eq!(lan.now(), at(9_414_062 + 2_000 + MDI_100));
}

#[test]
fn two_groups_on_one_lan_elect_independently() {
    let vip52: IpAddr = addr(200);
    let group52 = |last_octet, priority| {
        RouterConfig::new(
            Vrid::new(52).unwrap(),
            VrrpPriority(priority),
            addr(last_octet),
            vec![vip52],
        )
    };
    // Nodes 0 and 1 are node1 and node2 in VRID 51; nodes 2 and 3 are the same hosts' VRID 52
    // routers, with the priorities the other way round.
    let mut lan = lan([
        cfg(11, 150),
        cfg(12, 100),
        group52(11, 100),
        group52(12, 150),
    ]);
    lan.start_all();
    lan.run_until(at(10 * SECOND));
    assert_eq!(lan.masters(), [0, 3]);
    assert_eq!(lan.vip_holders(VIP), [0]);
    assert_eq!(lan.vip_holders(vip52), [3]);
    // Each router saw the other group's adverts and counted them, nothing more.
    assert!(lan.router(0).stats().vrid_errors > 0);
    assert_eq!(lan.router(0).stats().checksum_errors, 0);
}

#[test]
fn forged_adverts_on_the_lan_change_nothing() {
    let mut lan = pair();
    lan.run_until(at(10 * SECOND));
    let forged = palisade_vrrp::Advert {
        version: Version::V3,
        vrid: Vrid::new(51).unwrap(),
        priority: VrrpPriority(254),
        max_adver_int: Centiseconds(100),
        addresses: vec![VIP],
    };
    let attacker = addr(66);
    let group = palisade_vrrp::packet::multicast_group(attacker);
    let bytes = forged.encode(attacker, group).unwrap();
    // Sent from off-link (TTL decremented) and with a wrong checksum.
    lan.inject(0, DecodeContext::new(attacker, group, 254), bytes.clone());
    let mut broken = bytes;
    broken[6] ^= 0xff;
    lan.inject(0, DecodeContext::new(attacker, group, 255), broken);
    lan.run_until(at(30 * SECOND));
    assert_eq!(lan.masters(), [0]);
    assert_eq!(lan.router(0).stats().ttl_errors, 1);
    assert_eq!(lan.router(0).stats().checksum_errors, 1);
    assert_eq!(transitions(&lan, 0).len(), 2);
}

#[test]
fn v2_mode_has_keepalived_v2_timings() {
    let mut configs = [cfg(11, 150), cfg(12, 100)];
    for config in &mut configs {
        config.version = Version::V2;
    }
    let mut lan = lan(configs);
    lan.start_all();
    lan.run_until(at(10 * SECOND));
    assert_eq!(lan.masters(), [0]);
    lan.crash(0);
    // vrrp-lab.md, v2 kill -9: master-down on the wire 3610 ms, theory 3609.
    assert!(lan.drive_until(|lan| lan.masters() == [1], at(20 * SECOND)));
    assert_eq!(lan.now(), at(9_414_062 + MDI_100));
}

#[test]
fn ipv6_group_elects_and_fails_over() {
    let vip6: IpAddr = "2001:db8::100".parse().unwrap();
    let v6 = |address: &str, priority| {
        RouterConfig::new(
            Vrid::new(51).unwrap(),
            VrrpPriority(priority),
            address.parse().unwrap(),
            vec![vip6],
        )
    };
    let mut lan = lan([v6("fe80::11", 150), v6("fe80::12", 100)]);
    lan.start_all();
    lan.run_until(at(10 * SECOND));
    assert_eq!(lan.masters(), [0]);
    assert_eq!(lan.router(1).master_address(), "fe80::11".parse().ok());
    lan.shutdown(0);
    assert!(lan.drive_until(|lan| lan.vip_holders(vip6) == [1], at(20 * SECOND)));
    assert_eq!(lan.now(), at(10 * SECOND + SKEW_100));
}
