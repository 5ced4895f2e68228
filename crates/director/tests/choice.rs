//! The director's choice: spread by weight, stickiness, minimal disruption, bounded loads,
//! out-marking, slow start, fail-open, caps; the same answer on every node.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use palisade_director::{Director, Load, Member, Out, Reason, Settings};
use palisade_identity::NodeId;
use proptest::prelude::*;

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

fn members(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(index, weight)| Member {
            id: node(index as u8 + 1),
            name: format!("node{}", index + 1),
            weight: *weight,
            max_connections: 0,
        })
        .collect()
}

/// A director whose members all reported healthy at `now`.
fn director(weights: &[u32], settings: Settings, now: u64) -> Director {
    let mut director = Director::new(settings, members(weights));
    for member in members(weights) {
        director.report(member.id, Load::default(), now);
    }
    director
}

fn no_overflow() -> Settings {
    Settings {
        balance_factor: None,
        seed: 0x5eed,
        ..Settings::default()
    }
}

/// SplitMix64: reproducible client addresses.
fn addresses(count: usize, seed: u64, v6: bool) -> Vec<IpAddr> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count)
        .map(|_| {
            if v6 {
                IpAddr::V6(Ipv6Addr::from(
                    (u128::from(next()) << 64) | u128::from(next()),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(next() as u32))
            }
        })
        .collect()
}

fn homes(director: &Director, clients: &[IpAddr], now: u64) -> Vec<Option<NodeId>> {
    clients
        .iter()
        .map(|client| director.choose(*client, node(1), now).home)
        .collect()
}

#[test]
fn the_spread_over_100000_clients_follows_the_weights_within_10_percent() {
    for weights in [&[1, 1, 1][..], &[1, 2, 3], &[3, 1, 1, 1, 2], &[5, 5, 5, 5]] {
        for v6 in [false, true] {
            let director = director(weights, no_overflow(), 1_000);
            let clients = addresses(100_000, 7, v6);
            let mut counts: HashMap<NodeId, usize> = HashMap::new();
            for home in homes(&director, &clients, 1_000) {
                *counts
                    .entry(home.unwrap_or_else(|| panic!("no home")))
                    .or_default() += 1;
            }
            let total: u32 = weights.iter().sum();
            for (index, weight) in weights.iter().enumerate() {
                let expected = 100_000.0 * f64::from(*weight) / f64::from(total);
                let got = counts.get(&node(index as u8 + 1)).copied().unwrap_or(0) as f64;
                assert!(
                    (got - expected).abs() <= 0.10 * expected,
                    "weights {weights:?} (v6 {v6}): node{} got {got}, expected {expected}",
                    index + 1
                );
            }
        }
    }
}

#[test]
fn when_a_node_leaves_only_its_clients_move_and_when_one_joins_at_most_its_share_moves() {
    let clients = addresses(20_000, 11, false);
    let four = director(&[1, 2, 1, 1], no_overflow(), 1_000);
    let before = homes(&four, &clients, 1_000);
    // node3 goes into maintenance (weight 0): it leaves.
    let mut three = four.clone();
    let mut changed = members(&[1, 2, 1, 1]);
    changed[2].weight = 0;
    three.set_members(changed);
    let after = homes(&three, &clients, 1_000);
    for (was, is) in before.iter().zip(&after) {
        if *was == Some(node(3)) {
            assert_ne!(*is, Some(node(3)));
        } else {
            assert_eq!(was, is, "a client of another node moved");
        }
    }
    // A fifth node (weight 1 of 6) joins: whoever moves, moves to it, and about 1/6 move.
    let five = director(&[1, 2, 1, 1, 1], no_overflow(), 1_000);
    let joined = homes(&five, &clients, 1_000);
    let mut moved = 0;
    for (was, is) in before.iter().zip(&joined) {
        if was != is {
            assert_eq!(
                *is,
                Some(node(5)),
                "a client moved elsewhere than to the new node"
            );
            moved += 1;
        }
    }
    let share = clients.len() as f64 / 6.0;
    assert!(
        f64::from(moved) <= 1.1 * share,
        "{moved} moved, share {share}"
    );
}

#[test]
fn a_loaded_node_gets_no_new_clients_beyond_its_bound() {
    let settings = Settings {
        seed: 0x5eed,
        ..Settings::default()
    };
    let mut director = director(&[1, 1, 1], settings, 1_000);
    // node1 holds 20 live connections, the others none: (1 + 0.25) * 21 / 3 = 8.75 -> 9,
    // plus one.
    for _ in 0..20 {
        director.connected(node(1));
    }
    let clients = addresses(3_000, 3, false);
    let mut overflowed = 0;
    for client in &clients {
        let choice = director.choose(*client, node(1), 1_000);
        assert_ne!(choice.order.first(), Some(&node(1)), "{choice:?}");
        if choice.home == Some(node(1)) {
            overflowed += 1;
            assert_eq!(
                choice.reason,
                Reason::Overflow {
                    home: node(1),
                    active: 20,
                    bound: 10
                }
            );
            // Its next node in the client's order.
            assert_eq!(choice.order.first(), Some(&choice.candidates[1].id));
        }
    }
    assert!(overflowed > 800, "{overflowed}");
    // Once its connections close, its clients come home again (per connection, no memory).
    for _ in 0..20 {
        director.closed(node(1));
    }
    let home_again = clients
        .iter()
        .filter(|client| {
            let choice = director.choose(**client, node(1), 1_000);
            choice.home == Some(node(1)) && choice.reason == Reason::Home
        })
        .count();
    assert_eq!(home_again, overflowed);
    // At low load a connection or two still left on a node does not push its clients away.
    director.connected(node(1));
    let stays = clients
        .iter()
        .filter(|client| {
            let choice = director.choose(**client, node(1), 1_000);
            choice.home == Some(node(1)) && choice.reason == Reason::Home
        })
        .count();
    assert_eq!(stays, overflowed);
}

#[test]
fn a_refused_connect_takes_a_node_out_at_once_and_three_timeouts_in_a_row() {
    let mut director = director(&[1, 1, 1], no_overflow(), 1_000);
    director.connect_refused(node(2), 1_100);
    assert_eq!(director.out(&node(2), 1_100), Some(Out::Refused));
    // A report before retry_after does not bring it back; one after does.
    director.report(node(2), Load::default(), 2_000);
    assert_eq!(director.out(&node(2), 2_000), Some(Out::Refused));
    director.report(node(2), Load::default(), 6_200);
    director.report(node(3), Load::default(), 6_200);
    assert_eq!(director.out(&node(2), 6_200), None);

    director.connect_timed_out(node(3), 6_300);
    director.connect_timed_out(node(3), 6_400);
    director.connected(node(3));
    director.connect_timed_out(node(3), 6_500);
    director.connect_timed_out(node(3), 6_600);
    assert_eq!(director.out(&node(3), 6_600), None, "not three in a row");
    director.connect_timed_out(node(3), 6_700);
    assert_eq!(director.out(&node(3), 6_700), Some(Out::TimedOut));
    // Clients of an out node go to the next in their order: a refused relay is retried there.
    let clients = addresses(2_000, 5, false);
    for client in &clients {
        let choice = director.choose(*client, node(1), 6_700);
        assert!(!choice.order.contains(&node(3)), "{choice:?}");
    }
}

#[test]
fn three_missed_load_reports_take_a_node_out_and_a_failure_report_too() {
    let mut director = director(&[1, 1, 1], no_overflow(), 1_000);
    for at in [2_000, 3_000, 4_000] {
        director.report(node(1), Load::default(), at);
        director.report(node(3), Load::default(), at);
    }
    assert_eq!(
        director.out(&node(2), 4_000),
        None,
        "3 s since its last report"
    );
    assert_eq!(director.out(&node(2), 4_001), Some(Out::NoReports));
    director.report(
        node(3),
        Load {
            failure: Some("port 9090 not listening".to_owned()),
            ..Load::default()
        },
        4_001,
    );
    assert_eq!(
        director.out(&node(3), 4_001),
        Some(Out::Failed("port 9090 not listening".to_owned()))
    );
    let choice = director.choose(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), node(1), 4_001);
    assert_eq!(choice.order, vec![node(1)]);
    // node2 reports again (its host came back): a return, so a slow start.
    director.report(node(2), Load::default(), 4_500);
    let choice = director.choose(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), node(1), 4_500);
    let node2 = choice.candidates.iter().find(|c| c.id == node(2));
    assert_eq!(
        node2.map(|c| (c.out.clone(), c.effective_weight)),
        Some((None, 0.1))
    );
}

#[test]
fn when_no_node_is_eligible_the_director_serves_itself_and_when_all_are_at_cap_refuses() {
    let director = Director::new(no_overflow(), members(&[1, 1]));
    let choice = director.choose(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), node(2), 1_000);
    assert_eq!(choice.reason, Reason::FailOpen);
    assert_eq!(choice.order, vec![node(2)]);

    let mut capped = members(&[1, 1]);
    for member in &mut capped {
        member.max_connections = 2;
    }
    let mut director = Director::new(no_overflow(), capped);
    for id in [node(1), node(2)] {
        director.report(id, Load::default(), 1_000);
    }
    director.connected(node(1));
    director.connected(node(1));
    let clients = addresses(500, 9, false);
    for client in &clients {
        let choice = director.choose(*client, node(1), 1_000);
        assert_eq!(choice.order, vec![node(2)], "node1 at its cap");
        if choice.home == Some(node(1)) {
            assert_eq!(
                choice.reason,
                Reason::HomeAtCap {
                    home: node(1),
                    cap: 2
                }
            );
        }
    }
    director.connected(node(2));
    director.connected(node(2));
    let choice = director.choose(clients[0], node(1), 1_000);
    assert_eq!((choice.order.len(), choice.reason), (0, Reason::AllAtCap));
}

#[test]
fn a_node_sees_whether_any_other_member_reports_healthy_for_its_fail_open() {
    let failing = |why: &str| Load {
        failure: Some(why.to_owned()),
        ..Load::default()
    };
    let mut group = director(&[1, 1, 1], no_overflow(), 1_000);
    group.report(node(1), failing("port 9090 not listening"), 1_000);
    assert!(
        group.others_healthy(node(1), 1_000),
        "node2 and node3 serve"
    );
    group.report(node(2), failing("deep check"), 1_000);
    assert!(group.others_healthy(node(1), 1_000), "node3 still serves");
    group.report(node(3), failing("drained"), 1_000);
    // Every member fails: each comes to the same conclusion.
    for id in [node(1), node(2), node(3)] {
        assert!(!group.others_healthy(id, 1_000));
    }
    // node3 recovers: the others fault again; node3's own health is not its others'.
    group.report(node(3), Load::default(), 1_500);
    assert!(group.others_healthy(node(1), 1_500) && group.others_healthy(node(2), 1_500));
    assert!(!group.others_healthy(node(3), 1_500));
    // node3 falls silent (its host died): after three missed reports it is gone.
    assert!(
        group.others_healthy(node(1), 4_500),
        "3 s since node3's report"
    );
    assert!(
        !group.others_healthy(node(1), 4_501),
        "node3 missed three reports"
    );
    // A member behind the cluster's policy is no healthy member either.
    group.report(
        node(3),
        Load {
            behind: true,
            ..Load::default()
        },
        4_600,
    );
    assert!(!group.others_healthy(node(1), 4_600));
    // Alone in its group: nobody else.
    let alone = director(&[1], no_overflow(), 1_000);
    assert!(!alone.others_healthy(node(1), 1_000));
}

#[test]
fn a_returning_node_takes_its_clients_back_over_the_slow_start() {
    let settings = Settings {
        slow_start: Duration::from_secs(10),
        ..no_overflow()
    };
    let mut director = director(&[1, 1, 1], settings, 1_000);
    let clients = addresses(20_000, 13, false);
    let own: Vec<IpAddr> = clients
        .iter()
        .copied()
        .filter(|client| director.choose(*client, node(1), 1_000).home == Some(node(2)))
        .collect();
    director.report(
        node(2),
        Load {
            failure: Some("deep check".to_owned()),
            ..Load::default()
        },
        1_500,
    );
    for at in (2_000..=20_000).step_by(1_000) {
        director.report(node(1), Load::default(), at);
        director.report(node(3), Load::default(), at);
    }
    // Back at 20 s: about a tenth of its clients at once, all of them after 10 s.
    director.report(node(2), Load::default(), 20_000);
    let back = |director: &Director, at: u64| {
        own.iter()
            .filter(|client| director.choose(**client, node(1), at).home == Some(node(2)))
            .count() as f64
            / own.len() as f64
    };
    let first = back(&director, 20_000);
    assert!((0.05..0.2).contains(&first), "{first}");
    let mut previous = first;
    for at in (21_000..30_000).step_by(1_000) {
        director.report(node(1), Load::default(), at);
        director.report(node(2), Load::default(), at);
        director.report(node(3), Load::default(), at);
        let now = back(&director, at);
        assert!(now >= previous, "clients move back, never away again");
        previous = now;
    }
    director.report(node(2), Load::default(), 30_000);
    director.report(node(1), Load::default(), 30_000);
    director.report(node(3), Load::default(), 30_000);
    assert_eq!(back(&director, 30_000), 1.0);
}

#[test]
fn a_node_back_from_maintenance_returns_through_a_slow_start_and_counts_alone_are_no_report() {
    let mut director = director(&[1, 1, 1], no_overflow(), 1_000);
    let mut maintenance = members(&[1, 1, 1]);
    maintenance[1].weight = 0;
    director.set_members(maintenance);
    director.report(node(2), Load::default(), 2_000);
    assert_eq!(director.out(&node(2), 2_000), Some(Out::Maintenance));
    director.set_members(members(&[1, 1, 1]));
    director.report(node(2), Load::default(), 3_000);
    let choice = director.choose(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), node(1), 3_000);
    let node2 = choice.candidates.iter().find(|c| c.id == node(2));
    assert_eq!(node2.map(|c| c.effective_weight), Some(0.1), "slow start");
    // A member the director only counted a connect for has not reported: out.
    let mut fresh = Director::new(no_overflow(), members(&[1, 1]));
    fresh.reserve(node(2));
    fresh.connect_refused(node(2), 1_000);
    assert_eq!(fresh.out(&node(2), 1_000), Some(Out::NoReports));
}

#[test]
fn a_node_whose_link_went_down_is_out_until_it_reports_again() {
    let mut director = director(&[1, 1, 1], no_overflow(), 1_000);
    director.report(node(2), Load::default(), 1_500);
    director.link_lost(node(2), false, 1_600);
    assert_eq!(director.out(&node(2), 1_600), Some(Out::LinkDown));
    assert_eq!(director.out(&node(3), 1_600), None, "the others stay in");
    // Its clients go elsewhere, not to a node whose relay connect would time out.
    for client in addresses(50, 7, false) {
        let choice = director.choose(client, node(1), 1_700);
        assert_ne!(choice.order.first(), Some(&node(2)), "{client}");
    }
    // A report (over a new link) puts it back, through a slow start, even one in the same
    // millisecond as the loss (a restarted node's new link comes up before the old one's
    // end is noticed).
    director.link_lost(node(2), false, 2_000);
    director.report(node(2), Load::default(), 2_000);
    assert_eq!(director.out(&node(2), 2_000), None);
    let choice = director.choose(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), node(1), 2_000);
    let node2 = choice.candidates.iter().find(|c| c.id == node(2));
    assert_eq!(node2.map(|c| c.effective_weight), Some(0.1), "slow start");
    // A lost link becomes missed reports (the driver then probes its scan port)...
    director.link_lost(node(2), false, 2_100);
    assert_eq!(director.out(&node(2), 4_999), Some(Out::LinkDown));
    assert_eq!(director.out(&node(2), 5_001), Some(Out::NoReports));
    // ...a goodbye stays a stop (it drains what it has: nothing may probe and cut it).
    director.report(node(2), Load::default(), 6_000);
    director.link_lost(node(2), true, 6_100);
    assert_eq!(director.out(&node(2), 6_100), Some(Out::Stopping));
    assert_eq!(director.out(&node(2), 60_000), Some(Out::Stopping));
}

#[test]
fn ipv6_clients_of_one_64_share_a_node_and_v4_mapped_is_v4() {
    let director = director(&[1, 1, 1, 1, 1], no_overflow(), 1_000);
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or_else(|_| unreachable!());
    let b: IpAddr = "2001:db8:1:2:ffff::9"
        .parse()
        .unwrap_or_else(|_| unreachable!());
    assert_eq!(
        director.choose(a, node(1), 1_000).home,
        director.choose(b, node(1), 1_000).home
    );
    let v4: IpAddr = "192.0.2.7".parse().unwrap_or_else(|_| unreachable!());
    let mapped: IpAddr = "::ffff:192.0.2.7"
        .parse()
        .unwrap_or_else(|_| unreachable!());
    assert_eq!(
        director.choose(v4, node(1), 1_000).home,
        director.choose(mapped, node(1), 1_000).home
    );
}

proptest! {
    /// Every node computes the same choice from the same configuration and loads, whatever
    /// order it learnt the members in and whoever it is.
    #[test]
    fn every_node_computes_the_same_choice(
        weights in proptest::collection::vec(0u32..5, 1..8),
        actives in proptest::collection::vec(0u32..30, 8),
        seed in any::<u64>(),
        rotate in 0usize..8,
        client in any::<u32>(),
        v6 in any::<u128>(),
    ) {
        let settings = Settings { seed, ..Settings::default() };
        let mut listed = members(&weights);
        let mut a = Director::new(settings.clone(), listed.clone());
        let rotation = rotate % listed.len();
        listed.rotate_left(rotation);
        let mut b = Director::new(settings, listed.clone());
        for (member, active) in listed.iter().zip(&actives) {
            for director in [&mut a, &mut b] {
                director.report(member.id, Load::default(), 1_000);
                for _ in 0..*active {
                    director.connected(member.id);
                }
            }
        }
        for client in [IpAddr::V4(Ipv4Addr::from(client)), IpAddr::V6(Ipv6Addr::from(v6))] {
            let (x, y) = (a.choose(client, node(1), 1_000), b.choose(client, node(2), 1_000));
            prop_assert_eq!(x.home, y.home);
            if x.reason == Reason::FailOpen {
                // Each serves the client itself.
                prop_assert_eq!((x.order, y.order), (vec![node(1)], vec![node(2)]));
                continue;
            }
            prop_assert_eq!(&x.order, &y.order);
            prop_assert_eq!(&x.reason, &y.reason);
            // The order holds eligible nodes only, each once, home first unless overflowed.
            for id in &x.order {
                prop_assert!(x.candidates.iter().any(|c| c.id == *id && c.out.is_none()));
            }
            if x.reason == Reason::Home {
                prop_assert_eq!(x.order.first().copied(), x.home);
            }
        }
    }
}
