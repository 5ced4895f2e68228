//! Random crashes, restarts, partitions, loss, faults and stray take-overs on a 2- or 3-router
//! LAN. Whatever happened, once the network is healed and quiet for a while:
//! - exactly the best live, healthy router is Master (highest priority; preempt on),
//! - the VIP is on it and on no other running node, and nothing changes any more;
//!
//! and at every instant, a running router holds the VIP only while Master (so a faulty one
//! never does).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use palisade_vrrp::sim::Lan;
use palisade_vrrp::{
    Action, Command, Instant, RouterConfig, State, Version, Vrid, VrrpPriority, election_winner,
};
use proptest::prelude::*;

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 100));

fn addr(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 213, 0, 11 + node as u8))
}

#[derive(Clone, Copy, Debug)]
enum Event {
    Crash(usize),
    Restart(usize),
    Shutdown(usize),
    Start(usize),
    Partition(usize, usize),
    /// Adverts lost both ways, peer links working (split brain, with peer links).
    SplitAdverts(usize, usize),
    Isolate(usize),
    Loss(usize, usize, u32),
    Heal,
    Fault(usize, bool),
    Drain(usize, bool),
    TakeOver(usize),
}

fn arb_event() -> impl Strategy<Value = Event> {
    let node = 0usize..3;
    prop_oneof![
        node.clone().prop_map(Event::Crash),
        node.clone().prop_map(Event::Restart),
        node.clone().prop_map(Event::Shutdown),
        node.clone().prop_map(Event::Start),
        (node.clone(), node.clone()).prop_map(|(a, b)| Event::Partition(a, b)),
        (node.clone(), node.clone()).prop_map(|(a, b)| Event::SplitAdverts(a, b)),
        node.clone().prop_map(Event::Isolate),
        (node.clone(), node.clone(), 1u32..600_000).prop_map(|(a, b, ppm)| Event::Loss(a, b, ppm)),
        Just(Event::Heal),
        (node.clone(), any::<bool>()).prop_map(|(n, faulty)| Event::Fault(n, faulty)),
        (node.clone(), any::<bool>()).prop_map(|(n, drained)| Event::Drain(n, drained)),
        node.prop_map(Event::TakeOver),
    ]
}

#[derive(Debug)]
struct Scenario {
    priorities: Vec<u8>,
    version: Version,
    delay: Duration,
    seed: u64,
    /// The nodes also have peer links (statuses, fast paths, split-brain detection).
    peer_links: bool,
    /// (gap before, event), node indices taken modulo the number of routers.
    events: Vec<(Duration, Event)>,
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    let priorities = (2usize..=3).prop_flat_map(|n_nodes| {
        prop::sample::subsequence((1u8..=255).collect::<Vec<_>>(), n_nodes).prop_shuffle()
    });
    (
        priorities,
        prop_oneof![Just(Version::V3), Just(Version::V2)],
        0u64..3_000,
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec((0u64..5_000_000, arb_event()), 0..16),
    )
        .prop_map(
            |(priorities, version, delay, seed, peer_links, events)| Scenario {
                priorities,
                version,
                delay: Duration::from_micros(delay),
                seed,
                peer_links,
                events: (events.into_iter())
                    .map(|(gap, event)| (Duration::from_micros(gap), event))
                    .collect(),
            },
        )
}

/// A running router holds the VIP exactly while it is Master, or for the overlap after it
/// handed over (peer links), and no longer.
fn check_vips(lan: &Lan) -> Result<(), TestCaseError> {
    for node in (0..lan.len()).filter(|&node| lan.is_up(node)) {
        let router = lan.router(node);
        let holds = lan.vips(node).contains(&VIP);
        // The release is a timer of HANDOVER_OVERLAP: it cannot outlast it.
        let releasing = router.is_releasing();
        prop_assert!(
            holds == (router.state() == State::Master) || (holds && releasing),
            "node {} in {} at {} holds the VIP: {}",
            node,
            router.state(),
            lan.now(),
            holds
        );
        prop_assert!(
            !(router.is_faulty() && holds && !releasing),
            "faulty node {} holds the VIP",
            node
        );
    }
    Ok(())
}

/// Runs to `until`, checking the VIP invariant after every step.
fn run_checked(lan: &mut Lan, until: Instant) -> Result<(), TestCaseError> {
    while lan.next_event_at().is_some_and(|at| at <= until) {
        lan.step();
        check_vips(lan)?;
    }
    lan.run_until(until);
    Ok(())
}

fn apply(lan: &mut Lan, event: Event) {
    let n_nodes = lan.len();
    match event {
        Event::Crash(node) => lan.crash(node % n_nodes),
        Event::Restart(node) => lan.restart(node % n_nodes),
        Event::Shutdown(node) => lan.shutdown(node % n_nodes),
        Event::Start(node) => lan.start(node % n_nodes),
        Event::Partition(a, b) if a % n_nodes != b % n_nodes => {
            lan.partition(a % n_nodes, b % n_nodes)
        }
        Event::Partition(..) => {}
        Event::SplitAdverts(a, b) if a % n_nodes != b % n_nodes => {
            lan.split_adverts(a % n_nodes, b % n_nodes)
        }
        Event::SplitAdverts(..) => {}
        Event::Isolate(node) => lan.isolate(node % n_nodes),
        Event::Loss(a, b, ppm) => lan.set_loss(a % n_nodes, b % n_nodes, ppm),
        Event::Heal => lan.heal(),
        Event::Fault(node, faulty) => lan.set_fault(node % n_nodes, faulty),
        Event::Drain(node, drained) => {
            // Drain is never refused.
            let _ = lan.command(node % n_nodes, Command::Drain(drained));
        }
        Event::TakeOver(node) => {
            // Refused unless a healthy Backup; either way the election must recover.
            let _ = lan.command(node % n_nodes, Command::TakeOver);
        }
    }
}

fn notify_count(lan: &Lan) -> usize {
    (lan.log().iter())
        .filter(|record| matches!(record.action, Action::Notify(_)))
        .count()
}

fn run(scenario: &Scenario) -> Result<(), TestCaseError> {
    let mut lan = Lan::new(scenario.seed);
    for (node, &priority) in scenario.priorities.iter().enumerate() {
        let mut cfg = RouterConfig::new(
            Vrid::new(51).unwrap(),
            VrrpPriority(priority),
            addr(node),
            vec![VIP],
        );
        cfg.version = scenario.version;
        lan.add_router(cfg).unwrap();
    }
    for a in 0..lan.len() {
        for b in a + 1..lan.len() {
            lan.set_delay(a, b, scenario.delay);
        }
    }
    if scenario.peer_links {
        lan.enable_peer_links();
    }
    lan.start_all();
    for &(gap, event) in &scenario.events {
        let until = lan.now() + gap;
        run_checked(&mut lan, until)?;
        apply(&mut lan, event);
        check_vips(&lan)?;
    }

    lan.heal();
    // The best router's down timer (at most 3 s + 255/256 s, plus a delay) runs out, and its
    // first advert makes every other Master step down.
    let settled = lan.now() + Duration::from_secs(5);
    run_checked(&mut lan, settled)?;
    let candidates = (0..lan.len()).filter(|&node| {
        let router = lan.router(node);
        lan.is_up(node) && router.is_eligible() && router.state() != State::Initialize
    });
    let best = election_winner(candidates.map(|node| (addr(node), lan.router(node).priority())));
    let expected: Vec<usize> = (best
        .and_then(|address| (0..lan.len()).find(|&node| addr(node) == address)))
    .into_iter()
    .collect();
    prop_assert_eq!(&lan.masters(), &expected, "at {}", lan.now());
    let running_holders: Vec<usize> = (lan.vip_holders(VIP).into_iter())
        .filter(|&node| lan.is_up(node))
        .collect();
    prop_assert_eq!(&running_holders, &expected);

    // Quiet: no transition and no heal for the next 10 s.
    let notifications = notify_count(&lan);
    let quiet_until = lan.now() + Duration::from_secs(10);
    run_checked(&mut lan, quiet_until)?;
    prop_assert_eq!(
        notify_count(&lan),
        notifications,
        "flapping after {}",
        settled
    );
    prop_assert_eq!(lan.masters(), expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn elections_converge_to_the_best_live_healthy_router(scenario in arb_scenario()) {
        run(&scenario)?;
    }
}
