//! Interoperation with keepalived (Debian's, the real one) in the same VRID: whichever holds
//! the higher priority is elected, and each fails over to the other.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use palisade_e2e::ha::{HaNode, SCHEDULING_MARGIN, master_down_interval, never_holds};
use std::time::Duration;

use palisade_e2e::netns::{Lab, LabHost, require_netns, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn keepalived_config(dir: &Path, host: &LabHost, priority: u8, vip: Ipv4Addr) -> PathBuf {
    let config = format!(
        r#"
global_defs {{
    router_id {name}
    vrrp_version 3
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    version 3
    virtual_ipaddress {{
        {vip}/24 dev eth0
    }}
}}
"#,
        name = host.name,
    );
    let path = dir.join(format!("ka-{}.conf", host.name));
    std::fs::write(&path, config).unwrap_or_else(|error| panic!("{error}"));
    path
}

fn start_keepalived(lab: &mut Lab, dir: &Path, host: &LabHost, config: &Path) -> u32 {
    let files = dir.join(format!("ka-{}", host.name));
    palisade_e2e::ha::spawn_keepalived(lab, &host.name, config, &files)
}

fn signal_namespace(host: &LabHost, signal: &str, process: &str) {
    let pids = palisade_e2e::netns::ip(&["netns", "pids", &host.ns]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == process {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{signal}"), pid])
                .status();
        }
    }
}

fn keepalived_available(test: &str) -> bool {
    if std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    if std::env::var("PALISADE_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test}: keepalived is not installed and PALISADE_REQUIRE_ALL=1 forbids skipping");
    }
    eprintln!("skipped: {test}: keepalived is not installed");
    false
}

/// keepalived on host `ka` and palisade on host `pal` (100 ms adverts) in one VRID, started;
/// and a closure that reads both logs for assertion messages.
fn start_mixed_pair(
    lab: &mut Lab,
    dir: &std::path::Path,
    vip: Ipv4Addr,
    ka_priority: u8,
    pal_priority: u8,
) -> (HaNode, impl Fn() -> String + use<>) {
    let (ka, pal) = (lab.host("ka").clone(), lab.host("pal").clone());
    let ka_config = keepalived_config(dir, &ka, ka_priority, vip);
    start_keepalived(lab, dir, &ka, &ka_config);
    let mut pal_node = HaNode::new(dir, &pal, "100ms", pal_priority, vip, "");
    pal_node.start(lab, BIN);
    let (pal_log, ka_log) = (pal_node.log.clone(), dir.join("ka-ka.log"));
    let logs = move || {
        format!(
            "palisade:\n{}\nkeepalived:\n{}",
            std::fs::read_to_string(&pal_log).unwrap_or_default(),
            std::fs::read_to_string(&ka_log).unwrap_or_default()
        )
    };
    (pal_node, logs)
}

#[test]
fn keepalived_master_hands_over_to_palisade_on_stop() {
    let test = "keepalived_master_hands_over_to_palisade_on_stop";
    if !require_netns(test) || !keepalived_available(test) {
        return;
    }
    let mut lab = Lab::new(&["ka", "pal"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-ka");
    let vip = lab.spare_addr(100);
    let ka = lab.host("ka").clone();
    let pal = lab.host("pal").clone();
    let (_pal_node, logs) = start_mixed_pair(&mut lab, &dir.0, vip, 150, 100);
    wait_for("keepalived master", Duration::from_secs(10), || {
        ka.has_address(vip)
    });
    // keepalived advertises every 100 ms: a palisade backup that did not hear it would take
    // over within its Master_Down_Interval.
    let window = master_down_interval(Duration::from_millis(100), 100) + SCHEDULING_MARGIN;
    if let Err(after) = never_holds(&pal, vip, window) {
        panic!(
            "palisade took the VIP from a higher-priority keepalived after {after:?}\n{}",
            logs()
        );
    }
    // keepalived stops gracefully (priority 0): palisade takes over after Skew_Time.
    signal_namespace(&ka, "TERM", "keepalived");
    let took = wait_for("palisade master", Duration::from_secs(5), || {
        pal.has_address(vip)
    });
    assert!(took < Duration::from_secs(2), "{took:?}\n{}", logs());
    wait_for("keepalived released", Duration::from_secs(5), || {
        !ka.has_address(vip)
    });
}

#[test]
fn palisade_master_fails_over_to_keepalived_and_preempts_back() {
    let test = "palisade_master_fails_over_to_keepalived_and_preempts_back";
    if !require_netns(test) || !keepalived_available(test) {
        return;
    }
    let mut lab = Lab::new(&["pal", "ka"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-ka");
    let vip = lab.spare_addr(100);
    let ka = lab.host("ka").clone();
    let pal = lab.host("pal").clone();
    let (mut pal_node, logs) = start_mixed_pair(&mut lab, &dir.0, vip, 100, 150);
    wait_for("palisade master", Duration::from_secs(10), || {
        pal.has_address(vip) && !ka.has_address(vip)
    });
    // kill -9 of palisade: keepalived takes over after its Master_Down_Interval.
    signal_namespace(&pal, "KILL", "palisade");
    let took = wait_for("keepalived master", Duration::from_secs(5), || {
        ka.has_address(vip)
    });
    assert!(took < Duration::from_millis(1500), "{took:?}\n{}", logs());
    // palisade returns and preempts keepalived.
    pal_node.start(&mut lab, BIN);
    wait_for("keepalived steps down", Duration::from_secs(10), || {
        !ka.has_address(vip)
    });
    wait_for("palisade master again", Duration::from_secs(5), || {
        pal.has_address(vip)
    });
    let ka_log = std::fs::read_to_string(dir.0.join("ka-ka.log")).unwrap_or_default();
    assert!(ka_log.contains("Entering BACKUP STATE"), "{}", logs());
}

/// The seeds' warning: another device on the segment uses VRID 51. A keepalived that is no
/// member of the palisade group (palisade's peer links name another node) advertises VRID 51
/// with another virtual address: palisade says so in its log and counts it in its metrics.
#[test]
fn another_device_using_the_vrid_is_reported() {
    if !require_netns("another_device_using_the_vrid_is_reported")
        || !keepalived_available("another_device_using_the_vrid_is_reported")
    {
        return;
    }
    let mut lab = Lab::new(&["ka", "pal", "member"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-vrid-clash");
    let (ka, pal, member) = (
        lab.host("ka").clone(),
        lab.host("pal").clone(),
        lab.host("member").clone(),
    );
    // palisade's group: itself and "member" (never started), known from its peer links.
    let extra = palisade_e2e::ha::heartbeat_section(member.addr);
    let mut node = HaNode::new(&dir.0, &pal, "100ms", 100, lab.spare_addr(100), &extra);
    node.start(&mut lab, BIN);
    // keepalived, with a higher priority and another VIP, in VRID 51.
    let ka_config = keepalived_config(&dir.0, &ka, 200, lab.spare_addr(101));
    start_keepalived(&mut lab, &dir.0, &ka, &ka_config);
    let metric = |name: &str| -> f64 {
        let output = pal.run("curl", &["-s", "http://127.0.0.1:4711/metrics"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    wait_for(
        "palisade counts the stranger's adverts",
        Duration::from_secs(15),
        || {
            metric("palisade_vrrp_non_member_adverts_total{instance=\"VI_1\"}") >= 1.0
                && metric("palisade_vrrp_address_list_errors_total{instance=\"VI_1\"}") >= 1.0
        },
    );
    let log = node.log_text();
    assert!(
        log.contains(&format!(
            "received an advert for VRID 51 from {}, which is not a member of this group: another device using this VRID on the segment?",
            ka.addr
        )),
        "{log}"
    );
}
