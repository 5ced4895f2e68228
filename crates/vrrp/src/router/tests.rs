//! One router, driven by hand: timer arithmetic, action order, commands, and packets that
//! must change nothing.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::packet::{self, REQUIRED_TTL, multicast_group};

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 11));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 12));
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 100));
const T0: Instant = Instant::ZERO;

fn vrid(value: u8) -> Vrid {
    Vrid::new(value).unwrap()
}

fn cfg(primary: IpAddr, priority: u8) -> RouterConfig {
    RouterConfig::new(vrid(51), VrrpPriority(priority), primary, vec![VIP])
}

fn drain(router: &mut Router) -> Vec<Action> {
    std::iter::from_fn(|| router.poll_action()).collect()
}

fn notify(from: State, to: State, reason: Reason) -> Action {
    Action::Notify(Transition { from, to, reason })
}

fn advert_from(router_cfg: &RouterConfig, priority: u8) -> Advert {
    Advert {
        version: router_cfg.version,
        vrid: router_cfg.vrid,
        priority: VrrpPriority(priority),
        max_adver_int: router_cfg.advert_interval,
        addresses: router_cfg.vips.clone(),
    }
}

fn garp(vip: IpAddr) -> Action {
    Action::SendGratuitous { vip, repeat: 5 }
}

/// Router A (priority 150) in Backup since T0.
fn backup() -> Router {
    let mut router = Router::new(cfg(A, 150), T0).unwrap();
    router.handle_startup(T0);
    drain(&mut router);
    router
}

/// Router A (priority 150), Master since its down timer expired.
fn master() -> Router {
    let mut router = backup();
    let at = router.poll_timeout().unwrap();
    router.handle_timeout(at);
    drain(&mut router);
    assert_eq!(router.state(), State::Master);
    router
}

fn us(micros: u64) -> Duration {
    Duration::from_micros(micros)
}

// === config ===

#[test]
fn config_validation_collects_every_problem() {
    let mut bad = cfg(A, 0);
    bad.advert_interval = Centiseconds(4096);
    bad.vips = vec![
        VIP,
        "fe80::1".parse().unwrap(),
        VIP,
        "224.0.0.1".parse().unwrap(),
    ];
    let errors = bad.validate().unwrap_err();
    assert_eq!(
        errors.0,
        [
            ConfigError::PriorityZero,
            ConfigError::AdvertIntervalTooLong(Centiseconds(4096)),
            ConfigError::VipFamily {
                vip: "fe80::1".parse().unwrap(),
                primary: A
            },
            ConfigError::DuplicateVip(VIP),
            ConfigError::BadVip("224.0.0.1".parse().unwrap()),
        ]
    );
    assert_eq!(
        errors.to_string(),
        "priority 0: must be 1..=254 (255 means address owner); \
         advert interval 4096 cs: VRRPv3 allows at most 4095 cs (40.95 s); \
         virtual address fe80::1 is not of the family of the primary address 10.213.0.11: use one HA group per family; \
         virtual address 10.213.0.100 is listed twice; \
         virtual address 224.0.0.1: must be a unicast address"
    );

    let mut v2 = RouterConfig::new(
        vrid(1),
        VrrpPriority(100),
        "fe80::1".parse().unwrap(),
        vec![],
    );
    v2.version = Version::V2;
    v2.advert_interval = Centiseconds(10);
    assert_eq!(
        v2.validate().unwrap_err().0,
        [
            ConfigError::V2IntervalNotWholeSeconds(Centiseconds(10)),
            ConfigError::V2OverIpv6("fe80::1".parse().unwrap()),
            ConfigError::NoVips,
        ]
    );
    let mut zero = cfg("0.0.0.0".parse().unwrap(), 100);
    zero.advert_interval = Centiseconds(0);
    assert_eq!(
        zero.validate().unwrap_err().0,
        [
            ConfigError::AdvertIntervalZero,
            ConfigError::BadPrimaryAddress("0.0.0.0".parse().unwrap()),
        ]
    );
    assert!(Router::new(cfg(A, 255), T0).is_ok());
    assert!(matches!(Router::new(cfg(A, 0), T0), Err(ConfigErrors(_))));
}

// === timers ===

#[track_caller]
fn check_timing(version: Version, priority: u8, interval: u16, skew: u64, down: u64) {
    let mut config = cfg(A, priority);
    config.version = version;
    config.advert_interval = Centiseconds(interval);
    let router = Router::new(config, T0).unwrap();
    assert_eq!(router.skew_time(), us(skew), "skew");
    assert_eq!(
        router.master_down_interval(),
        us(down),
        "master down interval"
    );
}

#[test]
fn skew_and_master_down_interval_match_keepalived() {
    // vrp-lab.md: "MDI = 3·1 + 156/256 = 3609", "3·0.1 + 156·0.1/256 = 361", skew 609 / 61.
    check_timing(Version::V3, 100, 100, 609_375, 3_609_375);
    check_timing(Version::V3, 150, 100, 414_062, 3_414_062);
    check_timing(Version::V3, 100, 10, 60_937, 360_937);
    check_timing(Version::V3, 150, 10, 41_406, 341_406);
    check_timing(Version::V3, 255, 100, 3_906, 3_003_906);
    check_timing(Version::V3, 1, 4095, 40_790_039, 163_640_039);
    // v2 skew does not scale with the interval (RFC 3768 section 6.1).
    check_timing(Version::V2, 100, 100, 609_375, 3_609_375);
    check_timing(Version::V2, 100, 300, 609_375, 9_609_375);
}

#[test]
fn startup_into_backup_clears_leftover_vips_and_arms_the_down_timer() {
    let mut router = Router::new(cfg(A, 150), T0).unwrap();
    assert_eq!(router.state(), State::Initialize);
    assert_eq!(router.poll_timeout(), None);
    router.handle_startup(T0);
    assert_eq!(
        drain(&mut router),
        [
            Action::RemoveVip(VIP),
            notify(State::Initialize, State::Backup, Reason::Startup)
        ]
    );
    assert_eq!(router.poll_timeout(), Some(T0 + us(3_414_062)));
    assert_eq!(router.master_address(), None);
    // A second Startup event changes nothing.
    router.handle_startup(T0 + us(5));
    assert_eq!(drain(&mut router), []);
}

#[test]
fn becoming_master_sends_advert_then_vip_then_garp_then_notify() {
    let mut config = cfg(A, 150);
    let vip2: IpAddr = "10.213.0.101".parse().unwrap();
    config.vips.push(vip2);
    let mut router = Router::new(config.clone(), T0).unwrap();
    router.handle_startup(T0);
    drain(&mut router);
    let down = T0 + us(3_414_062);
    router.handle_timeout(down - us(1));
    assert_eq!(drain(&mut router), []);
    router.handle_timeout(down);
    assert_eq!(
        drain(&mut router),
        [
            Action::SendAdvert(advert_from(&config, 150)),
            Action::AddVip(VIP),
            Action::AddVip(vip2),
            garp(VIP),
            garp(vip2),
            notify(State::Backup, State::Master, Reason::MasterDown),
        ]
    );
    assert_eq!(router.master_address(), Some(A));
    // Adverts every second; the second gratuitous burst 5 s after taking over.
    assert_eq!(router.poll_timeout(), Some(down + us(1_000_000)));
    for n in 1..=5 {
        router.handle_timeout(down + us(n * 1_000_000));
        let expected = if n == 5 {
            vec![
                Action::SendAdvert(advert_from(&config, 150)),
                garp(VIP),
                garp(vip2),
            ]
        } else {
            vec![Action::SendAdvert(advert_from(&config, 150))]
        };
        assert_eq!(drain(&mut router), expected, "after {n} s");
    }
    assert_eq!(router.stats().adverts_sent, 6);
    assert_eq!(router.stats().master_transitions, 1);
}

#[test]
fn owner_becomes_master_at_startup_without_waiting() {
    let config = cfg(A, 255);
    let mut router = Router::new(config.clone(), T0).unwrap();
    router.handle_startup(T0);
    assert_eq!(
        drain(&mut router),
        [
            Action::SendAdvert(advert_from(&config, 255)),
            Action::AddVip(VIP),
            garp(VIP),
            notify(State::Initialize, State::Master, Reason::StartupOwner),
        ]
    );
    assert!(router.accepts_vip_traffic());
}

#[test]
fn master_answers_a_priority_zero_advert_with_its_own() {
    let mut router = master();
    let now = T0 + us(4_000_000);
    router
        .handle_advert(now, B, advert_from(&cfg(B, 100), 0))
        .unwrap();
    assert_eq!(
        drain(&mut router),
        [Action::SendAdvert(advert_from(&cfg(A, 150), 150))]
    );
    assert_eq!(router.poll_timeout(), Some(now + us(1_000_000)));
    assert_eq!(router.state(), State::Master);
}

#[test]
fn backup_priority_zero_sets_the_down_timer_to_skew_time() {
    let mut router = backup();
    let now = T0 + us(1_000_000);
    router
        .handle_advert(now, B, advert_from(&cfg(B, 200), 200))
        .unwrap();
    assert_eq!(router.master_address(), Some(B));
    assert_eq!(router.master_priority(), Some(VrrpPriority(200)));
    router
        .handle_advert(now, B, advert_from(&cfg(B, 200), 0))
        .unwrap();
    assert_eq!(router.poll_timeout(), Some(now + us(414_062)));
    assert_eq!(router.master_address(), None);
    assert_eq!(router.master_priority(), None);
    router.handle_timeout(now + us(414_062));
    let actions = drain(&mut router);
    assert_eq!(
        actions.last(),
        Some(&notify(
            State::Backup,
            State::Master,
            Reason::PriorityZeroReceived
        ))
    );
    assert_eq!(router.stats().priority_zero_received, 1);
}

#[test]
fn v2_discards_adverts_with_another_interval() {
    let mut config = cfg(A, 100);
    config.version = Version::V2;
    let mut router = Router::new(config, T0).unwrap();
    router.handle_startup(T0);
    drain(&mut router);
    let mut advert = advert_from(&cfg(B, 200), 200);
    advert.version = Version::V2;
    advert.max_adver_int = Centiseconds(200);
    let before = router.poll_timeout();
    assert_eq!(
        router.handle_advert(T0 + us(10), B, advert.clone()),
        Err(RxError::IntervalMismatch {
            local: Centiseconds(100),
            received: Centiseconds(200)
        })
    );
    assert_eq!(router.poll_timeout(), before);
    assert_eq!(router.stats().interval_errors, 1);
    // The same advert at our interval is accepted, but v2 never learns the interval.
    advert.max_adver_int = Centiseconds(100);
    router.handle_advert(T0 + us(10), B, advert).unwrap();
    assert_eq!(router.poll_timeout(), Some(T0 + us(10 + 3_609_375)));
    assert_eq!(router.master_adver_interval(), Centiseconds(100));
}

#[test]
fn stepping_down_cancels_the_second_gratuitous_burst() {
    let mut router = master();
    assert!(
        !router.accepts_vip_traffic(),
        "accept mode is off by default"
    );
    let became_master = T0 + us(3_414_062);
    let now = became_master + us(2_000_000);
    router
        .handle_advert(now, B, advert_from(&cfg(B, 200), 200))
        .unwrap();
    assert_eq!(
        drain(&mut router),
        [
            Action::SendAdvert(advert_from(&cfg(A, 150), 150)),
            Action::RemoveVip(VIP),
            notify(State::Master, State::Backup, Reason::HigherPriorityAdvert),
        ]
    );
    assert_eq!(router.master_priority(), Some(VrrpPriority(200)));
    // Only the Master_Down_Timer is left: 3 s + 106/256 s, nothing at the 5 s GARP mark.
    assert_eq!(router.poll_timeout(), Some(now + us(3_414_062)));
    router.handle_timeout(became_master + us(5_000_000));
    assert_eq!(drain(&mut router), []);
}

#[test]
fn accept_mode_lets_a_master_take_vip_traffic() {
    let mut owner = Router::new(cfg(A, 255), T0).unwrap();
    owner.handle_startup(T0);
    assert!(owner.accepts_vip_traffic(), "the owner always does");
    let mut config = cfg(A, 150);
    config.accept_mode = true;
    let mut router = Router::new(config, T0).unwrap();
    router.handle_startup(T0);
    assert!(!router.accepts_vip_traffic(), "not as Backup");
    router.handle_command(T0, Command::TakeOver).unwrap();
    assert!(router.accepts_vip_traffic());
}

// === packets that must change nothing ===

/// Everything a packet could change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    state: State,
    timeout: Option<Instant>,
    master: Option<IpAddr>,
    interval: Centiseconds,
    adverts_received: u64,
}

fn snapshot(router: &Router) -> Snapshot {
    Snapshot {
        state: router.state(),
        timeout: router.poll_timeout(),
        master: router.master_address(),
        interval: router.master_adver_interval(),
        adverts_received: router.stats().adverts_received,
    }
}

fn fix_checksum(bytes: &mut [u8], version: Version, src: IpAddr) {
    let sum = packet::checksum(version, src, multicast_group(src), bytes);
    bytes[6..8].copy_from_slice(&sum.to_be_bytes());
}

/// A packet that would change the router's state if it were valid: priority 0 for a Backup
/// (down timer to Skew_Time), priority 200 for a Master (step down).
fn forged(state: State) -> Advert {
    let priority = if state == State::Backup { 0 } else { 200 };
    let mut advert = advert_from(&cfg(B, 200), priority);
    advert.max_adver_int = Centiseconds(300);
    advert
}

type Counter = fn(&Stats) -> u64;

struct Forgery {
    name: &'static str,
    src: IpAddr,
    ttl: u8,
    bytes: Vec<u8>,
    counter: Counter,
}

fn forgeries(state: State) -> Vec<Forgery> {
    let advert = forged(state);
    let good = advert.encode(B, multicast_group(B)).unwrap();
    let mutate = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.clone();
        edit(&mut bytes);
        fix_checksum(&mut bytes, Version::V3, B);
        bytes
    };
    let forgery = |name, bytes, counter: Counter| Forgery {
        name,
        src: B,
        ttl: REQUIRED_TTL,
        bytes,
        counter,
    };
    let mut list = vec![
        Forgery {
            ttl: 254,
            ..forgery("ttl 254", good.clone(), |s| s.ttl_errors)
        },
        Forgery {
            ttl: 1,
            ..forgery("ttl 1", good.clone(), |s| s.ttl_errors)
        },
        forgery(
            "bad checksum",
            {
                let mut bytes = good.clone();
                bytes[7] ^= 0x80;
                bytes
            },
            |s| s.checksum_errors,
        ),
        forgery("version 4", mutate(&|b| b[0] = 0x41), |s| s.version_errors),
        forgery(
            "version 2 to a v3 router",
            Advert {
                version: Version::V2,
                max_adver_int: Centiseconds(100),
                ..advert.clone()
            }
            .encode(B, multicast_group(B))
            .unwrap(),
            |s| s.version_errors,
        ),
        forgery("type 2", mutate(&|b| b[0] = 0x32), |s| s.type_errors),
        forgery(
            "other VRID",
            Advert {
                vrid: vrid(52),
                ..advert.clone()
            }
            .encode(B, multicast_group(B))
            .unwrap(),
            |s| s.vrid_errors,
        ),
        forgery("VRID 0", mutate(&|b| b[1] = 0), |s| s.vrid_errors),
        forgery("count 3 with 1 address", mutate(&|b| b[3] = 3), |s| {
            s.pkt_length_errors
        }),
        forgery(
            "trailing bytes",
            mutate(&|b| b.extend_from_slice(&[0; 4])),
            |s| s.pkt_length_errors,
        ),
        forgery(
            "interval 0",
            mutate(&|b| {
                b[4] = 0;
                b[5] = 0;
            }),
            |s| s.interval_errors,
        ),
        Forgery {
            src: "fe80::2".parse().unwrap(),
            ..forgery(
                "IPv6 advert to an IPv4 router",
                Advert {
                    addresses: vec!["fe80::100".parse().unwrap()],
                    ..advert.clone()
                }
                .encode(
                    "fe80::2".parse().unwrap(),
                    multicast_group("fe80::2".parse().unwrap()),
                )
                .unwrap(),
                |s| s.address_family_errors,
            )
        },
        Forgery {
            src: A,
            ..forgery(
                "own advert looped back",
                advert.encode(A, multicast_group(A)).unwrap(),
                |s| s.own_adverts,
            )
        },
    ];
    for len in 0..good.len() {
        list.push(forgery("truncated", good[..len].to_vec(), |s| {
            s.pkt_length_errors
        }));
    }
    list
}

#[test]
fn forged_and_broken_packets_change_nothing() {
    for state in [State::Backup, State::Master] {
        let start = || {
            if state == State::Backup {
                backup()
            } else {
                master()
            }
        };
        let now = T0 + us(4_000_000);
        for forgery in forgeries(state) {
            let mut router = start();
            let before = snapshot(&router);
            let ctx = DecodeContext::new(forgery.src, multicast_group(forgery.src), forgery.ttl);
            let res = router.handle_packet(now, &ctx, &forgery.bytes);
            let what = format!("{} in {state}", forgery.name);
            assert!(res.is_err(), "{what}: accepted");
            assert_eq!(snapshot(&router), before, "{what}: state changed");
            assert_eq!(drain(&mut router), [], "{what}: acted");
            assert_eq!((forgery.counter)(router.stats()), 1, "{what}: not counted");
        }
        // Control: the genuine packet does change the state.
        let mut router = start();
        let before = snapshot(&router);
        let genuine = forged(state).encode(B, multicast_group(B)).unwrap();
        let ctx = DecodeContext::new(B, multicast_group(B), REQUIRED_TTL);
        router.handle_packet(now, &ctx, &genuine).unwrap();
        assert_ne!(snapshot(&router), before, "genuine packet in {state}");
    }
}

#[test]
fn adverts_are_ignored_before_startup_and_in_fault() {
    let mut router = Router::new(cfg(A, 150), T0).unwrap();
    let now = T0 + us(1);
    router
        .handle_advert(now, B, advert_from(&cfg(B, 200), 200))
        .unwrap();
    assert_eq!(router.state(), State::Initialize);
    assert_eq!(drain(&mut router), []);

    let mut router = backup();
    router.handle_command(now, Command::Fault(true)).unwrap();
    drain(&mut router);
    router
        .handle_advert(now, B, advert_from(&cfg(B, 100), 0))
        .unwrap();
    router
        .handle_advert(now, B, advert_from(&cfg(B, 100), 100))
        .unwrap();
    assert_eq!(router.state(), State::Fault);
    assert_eq!(router.poll_timeout(), None);
    assert_eq!(router.master_address(), Some(B));
    assert_eq!(drain(&mut router), []);
}

// === commands ===

#[test]
fn shutdown_as_master_sends_priority_zero_and_releases_the_vips() {
    let mut router = master();
    let now = T0 + us(4_000_000);
    router.handle_command(now, Command::Shutdown).unwrap();
    assert_eq!(
        drain(&mut router),
        [
            Action::SendAdvert(advert_from(&cfg(A, 150), 0)),
            Action::RemoveVip(VIP),
            notify(State::Master, State::Initialize, Reason::Shutdown),
        ]
    );
    assert_eq!(router.poll_timeout(), None);
    assert_eq!(router.stats().priority_zero_sent, 1);
    // Startup again goes through Backup.
    router.handle_startup(now);
    assert_eq!(router.state(), State::Backup);
}

#[test]
fn fault_as_master_sends_priority_zero_and_recovery_waits_in_backup() {
    let mut router = master();
    let now = T0 + us(4_000_000);
    router.handle_command(now, Command::Fault(true)).unwrap();
    assert_eq!(
        drain(&mut router),
        [
            Action::SendAdvert(advert_from(&cfg(A, 150), 0)),
            Action::RemoveVip(VIP),
            notify(State::Master, State::Fault, Reason::Fault),
        ]
    );
    assert!(router.is_faulty());
    assert_eq!(router.poll_timeout(), None);
    assert_eq!(
        router.handle_command(now, Command::TakeOver),
        Err(CommandError::TakeOverRefused {
            state: State::Fault
        })
    );
    router.handle_command(now, Command::Fault(false)).unwrap();
    assert_eq!(
        drain(&mut router),
        [notify(State::Fault, State::Backup, Reason::Recovered)]
    );
    assert_eq!(router.poll_timeout(), Some(now + us(3_414_062)));
}

#[test]
fn fault_before_startup_starts_in_fault_and_owner_recovers_to_master() {
    let mut router = Router::new(cfg(A, 255), T0).unwrap();
    router.handle_command(T0, Command::Fault(true)).unwrap();
    assert_eq!(drain(&mut router), []);
    router.handle_startup(T0);
    assert_eq!(
        drain(&mut router),
        [
            Action::RemoveVip(VIP),
            notify(State::Initialize, State::Fault, Reason::Fault)
        ]
    );
    router.handle_command(T0, Command::Fault(false)).unwrap();
    assert_eq!(router.state(), State::Master);
    assert_eq!(
        drain(&mut router).last(),
        Some(&notify(State::Fault, State::Master, Reason::Recovered))
    );
}

#[test]
fn drain_as_master_leaves_like_a_fault_and_needs_both_health_and_resume_to_return() {
    let mut router = master();
    let now = T0 + us(4_000_000);
    router.handle_command(now, Command::Drain(true)).unwrap();
    assert_eq!(
        drain(&mut router),
        [
            Action::SendAdvert(advert_from(&cfg(A, 150), 0)),
            Action::RemoveVip(VIP),
            notify(State::Master, State::Fault, Reason::Drained),
        ]
    );
    assert!(router.is_drained() && !router.is_eligible());
    assert_eq!(
        router.handle_command(now, Command::TakeOver),
        Err(CommandError::TakeOverRefused {
            state: State::Fault
        })
    );
    // Health going bad and coming back does not end a drain.
    router.handle_command(now, Command::Fault(true)).unwrap();
    router.handle_command(now, Command::Fault(false)).unwrap();
    assert_eq!(drain(&mut router), []);
    assert_eq!(router.state(), State::Fault);
    // Nor does resuming while unhealthy.
    router.handle_command(now, Command::Fault(true)).unwrap();
    router.handle_command(now, Command::Drain(false)).unwrap();
    assert_eq!(drain(&mut router), []);
    assert_eq!(router.state(), State::Fault);
    router.handle_command(now, Command::Fault(false)).unwrap();
    assert_eq!(
        drain(&mut router),
        [notify(State::Fault, State::Backup, Reason::Recovered)]
    );
    assert_eq!(router.poll_timeout(), Some(now + us(3_414_062)));
}

#[test]
fn drained_backup_and_drained_startup_never_take_over_until_resumed() {
    let mut router = backup();
    router.handle_command(T0, Command::Drain(true)).unwrap();
    assert_eq!(
        drain(&mut router),
        [notify(State::Backup, State::Fault, Reason::Drained)]
    );
    assert_eq!(router.poll_timeout(), None);
    router.handle_command(T0, Command::Drain(false)).unwrap();
    assert_eq!(
        drain(&mut router),
        [notify(State::Fault, State::Backup, Reason::Resumed)]
    );

    let mut router = Router::new(cfg(A, 255), T0).unwrap();
    router.handle_command(T0, Command::Drain(true)).unwrap();
    router.handle_startup(T0);
    assert_eq!(
        drain(&mut router),
        [
            Action::RemoveVip(VIP),
            notify(State::Initialize, State::Fault, Reason::Drained)
        ]
    );
    router.handle_command(T0, Command::Drain(false)).unwrap();
    assert_eq!(router.state(), State::Master);
}

#[test]
fn set_priority_is_advertised_at_once_and_zero_is_refused() {
    let mut router = master();
    let now = T0 + us(4_000_000);
    assert_eq!(
        router.handle_command(now, Command::SetPriority(VrrpPriority(0))),
        Err(CommandError::PriorityZero)
    );
    router
        .handle_command(now, Command::SetPriority(VrrpPriority(90)))
        .unwrap();
    assert_eq!(router.priority(), VrrpPriority(90));
    assert_eq!(
        drain(&mut router),
        [Action::SendAdvert(advert_from(&cfg(A, 150), 90))]
    );
    // A Backup's Skew_Time follows its effective priority.
    let mut router = backup();
    router
        .handle_command(now, Command::SetPriority(VrrpPriority(100)))
        .unwrap();
    assert_eq!(router.skew_time(), us(609_375));
    assert_eq!(drain(&mut router), []);
}

#[test]
fn takeover_is_refused_unless_a_healthy_backup() {
    let mut router = Router::new(cfg(A, 150), T0).unwrap();
    assert_eq!(
        router.handle_command(T0, Command::TakeOver),
        Err(CommandError::TakeOverRefused {
            state: State::Initialize
        })
    );
    let mut router = master();
    assert_eq!(
        router.handle_command(T0, Command::TakeOver),
        Err(CommandError::TakeOverRefused {
            state: State::Master
        })
    );
    let mut router = backup();
    router
        .handle_command(T0 + us(7), Command::TakeOver)
        .unwrap();
    assert_eq!(
        drain(&mut router).last(),
        Some(&notify(
            State::Backup,
            State::Master,
            Reason::TakeoverRequested
        ))
    );
}

// === words ===

#[test]
fn display_uses_keepalived_words() {
    let words: Vec<String> = [
        State::Initialize,
        State::Backup,
        State::Master,
        State::Fault,
    ]
    .iter()
    .map(State::to_string)
    .collect();
    assert_eq!(words, ["INIT", "BACKUP", "MASTER", "FAULT"]);
    let transition = Transition {
        from: State::Backup,
        to: State::Master,
        reason: Reason::MasterDown,
    };
    assert_eq!(
        transition.to_string(),
        "Entering MASTER STATE (master-down)"
    );
    let heal = Transition {
        from: State::Master,
        to: State::Master,
        reason: Reason::SplitBrainHeal,
    };
    assert_eq!(
        heal.to_string(),
        "Re-announcing MASTER STATE (split-brain-heal)"
    );
    assert_eq!(Centiseconds(10).to_string(), "100ms");
    assert_eq!(
        RxError::VersionMismatch {
            local: Version::V2,
            received: Version::V3
        }
        .to_string(),
        "wrong version: received 3, expect 2"
    );
}

#[test]
fn election_winner_prefers_priority_then_higher_address() {
    let c: IpAddr = "10.213.0.13".parse().unwrap();
    let p = VrrpPriority;
    assert_eq!(
        election_winner([(A, p(100)), (B, p(150)), (c, p(120))]),
        Some(B)
    );
    assert_eq!(
        election_winner([(A, p(100)), (c, p(100)), (B, p(100))]),
        Some(c)
    );
    assert_eq!(election_winner([(A, p(0))]), None);
    assert_eq!(election_winner(Vec::new()), None);
}

#[test]
fn an_advert_with_other_virtual_addresses_is_counted_and_still_processed() {
    let mut router = backup();
    let mut foreign = advert_from(&cfg(B, 200), 200);
    foreign.addresses = vec![IpAddr::V4(Ipv4Addr::new(10, 213, 0, 200))];
    assert_eq!(router.handle_advert(T0 + us(1_000), B, foreign), Ok(()));
    assert_eq!(router.stats().address_list_errors, 1);
    assert_eq!(router.stats().adverts_received, 1);
    // The same set in another order is ours.
    let mut ours = advert_from(&cfg(B, 200), 200);
    ours.addresses = vec![VIP, VIP];
    assert_eq!(router.handle_advert(T0 + us(2_000), B, ours), Ok(()));
    assert_eq!(router.stats().address_list_errors, 1);
}

#[test]
fn an_advert_from_a_router_that_is_no_member_is_counted_and_still_processed() {
    let mut config = cfg(A, 150);
    config.members = vec![B];
    let mut router = Router::new(config, T0).unwrap();
    router.handle_startup(T0);
    drain(&mut router);
    let member = advert_from(&cfg(B, 100), 100);
    assert_eq!(router.handle_advert(T0 + us(1_000), B, member), Ok(()));
    assert_eq!(router.stats().non_member_adverts, 0);
    let stranger = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 99));
    let theirs = advert_from(&cfg(stranger, 200), 200);
    assert_eq!(
        router.handle_advert(T0 + us(2_000), stranger, theirs),
        Ok(())
    );
    assert_eq!(router.stats().non_member_adverts, 1);
    assert_eq!(
        router.master_address(),
        Some(stranger),
        "processed (RFC 5798)"
    );
    // A member known by its link's address, learnt by its primary (its status named it).
    let link_local: IpAddr = "fe80::2".parse().unwrap();
    let vip6: IpAddr = "fd00::100".parse().unwrap();
    let mut v6_config = RouterConfig::new(
        vrid(51),
        VrrpPriority(150),
        "fe80::1".parse().unwrap(),
        vec![vip6],
    );
    v6_config.members = vec![B];
    let mut v6 = Router::new(v6_config, T0).unwrap();
    v6.handle_startup(T0);
    drain(&mut v6);
    let mut theirs = advert_from(&cfg(B, 100), 100);
    theirs.addresses = vec![vip6];
    assert_eq!(
        v6.handle_advert(T0 + us(1_000), link_local, theirs.clone()),
        Ok(())
    );
    assert_eq!(v6.stats().non_member_adverts, 1, "not learnt yet");
    v6.learn_member(link_local);
    assert_eq!(v6.handle_advert(T0 + us(2_000), link_local, theirs), Ok(()));
    assert_eq!(v6.stats().non_member_adverts, 1, "a member now");
    // Members unknown (no unicast peers, no peer links): nothing is counted.
    let mut router = backup();
    let theirs = advert_from(&cfg(stranger, 200), 200);
    assert_eq!(
        router.handle_advert(T0 + us(3_000), stranger, theirs),
        Ok(())
    );
    assert_eq!(router.stats().non_member_adverts, 0);
}
