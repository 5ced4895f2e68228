//! The director for real (issue 11): three palisade nodes of one HA group in network
//! namespaces, linked with the group key; clients from many source addresses on the VIP are
//! spread over all three (each answer names the node that served it), each client keeps its
//! node (also across a director failover), a loaded node gets no new clients until its load
//! is gone, and when a scanning node is killed its clients move to the others at once (a
//! refused relay connect is retried on the next node) and no new connection goes to it.

use std::net::Ipv4Addr;
use std::time::Duration;

use palisade_e2e::ha::{HEARTBEAT_KEY, HEARTBEAT_PORT, HaNode, connect_from, served_by};
use palisade_e2e::netns::{Lab, LabHost, require_netns, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const CLIENTS: u8 = 48;

/// A connection from `source` to the VIP's redirect port, held open without a request (the
/// director relays it at once and counts it until it closes).
fn idle_connection(client: &LabHost, source: Ipv4Addr, vip: Ipv4Addr) -> std::net::TcpStream {
    connect_from(client, source, vip).unwrap_or_else(|| panic!("{source} cannot reach {vip}"))
}

fn heartbeat_to(peers: &[Ipv4Addr]) -> String {
    let peers: Vec<String> = peers
        .iter()
        .map(|peer| format!("\"{peer}:{HEARTBEAT_PORT}\""))
        .collect();
    format!(
        "[heartbeat]\nlisten = \"0.0.0.0:{HEARTBEAT_PORT}\"\npeers = [{}]\nkey = \"{HEARTBEAT_KEY}\"\n",
        peers.join(", ")
    )
}

#[test]
fn the_director_spreads_sticky_clients_over_every_node_and_routes_around_a_dead_one() {
    if !require_netns(
        "the_director_spreads_sticky_clients_over_every_node_and_routes_around_a_dead_one",
    ) {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3", "client"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-director");
    let vip = lab.spare_addr(100);
    let hosts: Vec<LabHost> = ["node1", "node2", "node3"]
        .iter()
        .map(|name| lab.host(name).clone())
        .collect();
    let client = lab.host("client").clone();
    let mut nodes: Vec<HaNode> = hosts
        .iter()
        .zip([150u8, 100, 50])
        .map(|(host, priority)| {
            let others: Vec<Ipv4Addr> = hosts
                .iter()
                .filter(|other| other.name != host.name)
                .map(|other| other.addr)
                .collect();
            // A short slow start: a member that flaps while the group forms is back at its
            // full weight within a second.
            let extra = format!("{}[director]\nslow_start = \"1s\"\n", heartbeat_to(&others));
            HaNode::new(&dir.0, host, "100ms", priority, vip, &extra)
        })
        .collect();
    // node3 also listens on 3128: the group's settings differ, which is reported.
    let config3 = std::fs::read_to_string(&nodes[2].config)
        .unwrap_or_default()
        .replace(
            "listen = [\"0.0.0.0:9090\"]",
            "listen = [\"0.0.0.0:9090\", \"0.0.0.0:3128\"]",
        );
    std::fs::write(&nodes[2].config, config3).unwrap_or_else(|error| panic!("{error}"));
    for node in &mut nodes {
        node.start(&mut lab, BIN);
    }
    let log_files: Vec<(String, std::path::PathBuf)> = nodes
        .iter()
        .map(|node| (node.name.clone(), node.log.clone()))
        .collect();
    let logs = || {
        log_files
            .iter()
            .map(|(name, log)| {
                format!(
                    "--- {name}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect::<String>()
    };
    wait_for("node1 holds the VIP", Duration::from_secs(15), || {
        hosts[0].has_address(vip)
    });
    let sources = client.add_client_addresses(&lab, CLIENTS);
    // Every member reported: all three serve clients.
    wait_for(
        "all three nodes serve clients",
        Duration::from_secs(15),
        || {
            let served: std::collections::HashSet<String> = sources
                .iter()
                .filter_map(|source| served_by(&client, *source, vip))
                .collect();
            served.len() == 3
        },
    );
    // Settled: two rounds in a row give every client the same node.
    let round = || -> Vec<Option<String>> {
        sources
            .iter()
            .map(|source| served_by(&client, *source, vip))
            .collect()
    };
    // Settled: on the director every member is in at its full weight (no slow start left
    // from members flapping while the group formed), and two rounds agree.
    let settled = || {
        let output = hosts[0].run(
            "curl",
            &[
                "-s",
                &format!("http://127.0.0.1:4711/director/{}", sources[0]),
            ],
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let candidates = value["groups"][0]["client"]["candidates"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        candidates.len() == 3
            && candidates.iter().all(|candidate| {
                candidate["out"].is_null() && candidate["effective_weight"].as_f64() == Some(100.0)
            })
    };
    let mut first = round();
    wait_for("the choice settles", Duration::from_secs(15), || {
        let next = round();
        settled() && std::mem::replace(&mut first, next) == first
    });
    let mut counts = std::collections::HashMap::new();
    for node in first.iter().flatten() {
        *counts.entry(node.clone()).or_insert(0) += 1;
    }
    // 48 clients, equal weights: 16 each expected; a binomial spread stays well above 6.
    for name in ["node1", "node2", "node3"] {
        let count = counts.get(name).copied().unwrap_or(0);
        assert!(count >= 6, "{name} served {count}: {counts:?}\n{}", logs());
    }
    // The scanning nodes' access logs name the real clients (the PROXY header's), never
    // the director's address.
    for name in ["node2", "node3"] {
        let access_log = dir.0.join(format!("{name}-data/access.log"));
        let text = std::fs::read_to_string(&access_log).unwrap_or_default();
        let clients: std::collections::HashSet<String> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|record| {
                let client = record["client"].as_str()?.to_owned();
                Some(
                    client
                        .rsplit_once(':')
                        .map_or(client.clone(), |(ip, _)| ip.to_owned()),
                )
            })
            .collect();
        let theirs: Vec<String> = sources
            .iter()
            .zip(&first)
            .filter(|(_, node)| node.as_deref() == Some(name))
            .map(|(source, _)| source.to_string())
            .collect();
        assert!(
            theirs.iter().all(|source| clients.contains(source)),
            "{name}'s access log lacks some of its clients {theirs:?}: {clients:?}"
        );
        assert!(
            !clients.contains(&hosts[0].addr.to_string()),
            "{name} logged the director as a client: {clients:?}"
        );
    }
    // Sticky: the same client, the same node.
    for (source, node) in sources.iter().zip(&first) {
        assert_eq!(
            &served_by(&client, *source, vip),
            node,
            "{source} moved\n{}",
            logs()
        );
    }
    // No client reaches another member's internal ports through a node: through node2's own
    // address, node1's scan port and admin port, and the VIP's scan port, are a forwarding
    // loop (508), not a proxied request.
    for target in [
        format!("http://{}:9190/", hosts[0].addr),
        format!("http://{}:4711/metrics", hosts[0].addr),
        format!("http://{vip}:9190/"),
    ] {
        let proxy = format!("http://{}:9090", hosts[1].addr);
        assert_eq!(client.status_through(&proxy, &target), "508", "{target}");
    }

    // `palisade status --client` on the director names the node each client gets, and why.
    for (source, node) in sources.iter().zip(&first).take(6) {
        let output = hosts[0].run(BIN, &["status", "--client", &source.to_string()]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let expected = format!(
            "client {source} is served by {}: its own node",
            node.as_deref().unwrap_or("?")
        );
        assert!(text.contains(&expected), "{text}");
    }
    assert!(
        logs().contains(
            "HA group settings differ from node3's: redirect ports [9090] here, [3128, 9090] there"
        ),
        "{}",
        logs()
    );
    // A scanning node names the director.
    let output = hosts[2].run(BIN, &["status"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        text.contains("director of VRID 51 (node1 directs)"),
        "{text}"
    );
    // ... and lists the director and itself only, as `mfend-lb -s` on a scanning node.
    let listed = |name: &str| text.lines().any(|line| line.trim_start().starts_with(name));
    assert!(
        listed("node1") && listed("node3") && !listed("node2"),
        "{text}"
    );
    let output = hosts[0].run(BIN, &["status"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        text.contains("director of VRID 51 (this node directs)"),
        "{text}"
    );
    for name in ["node1", "node2", "node3"] {
        assert!(
            text.lines()
                .any(|line| line.trim_start().starts_with(name) && line.ends_with("in")),
            "{text}"
        );
    }

    // The sticky table (`mfend-lb -s`): each node's clients, as the last round gave them.
    let output = hosts[0].run("curl", &["-s", "http://127.0.0.1:4711/director"]);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    for member in value["groups"][0]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = member["name"].as_str().unwrap_or("?").to_owned();
        assert_eq!(
            member["sticky_clients"].as_u64(),
            Some(counts.get(&name).copied().unwrap_or(0)),
            "{name}: {value:#}"
        );
        // Each member reports the policy revision it runs (the same lab policy on all).
        assert_eq!(
            member["policy_revision"].as_str().map(str::len),
            Some(64),
            "{name}: {value:#}"
        );
    }

    // A loaded node gets no more than its bound: two connections held open per client of
    // node2, all homed on node2; once node2 holds 1.25 times its share of the director's
    // live connections, the next ones go to each client's next node.
    let node2_sources: Vec<Ipv4Addr> = sources
        .iter()
        .zip(&first)
        .filter(|(_, node)| node.as_deref() == Some("node2"))
        .map(|(source, _)| *source)
        .collect();
    let held: Vec<std::net::TcpStream> = node2_sources
        .iter()
        .flat_map(|source| [*source, *source])
        .map(|source| idle_connection(&client, source, vip))
        .collect();
    let relayed = || -> std::collections::HashMap<String, u64> {
        let output = hosts[0].run("curl", &["-s", "http://127.0.0.1:4711/director"]);
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        value["groups"][0]["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .map(|member| {
                        (
                            member["name"].as_str().unwrap_or("?").to_owned(),
                            member["relayed_connections"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut counts = relayed();
    wait_for(
        "the director counts the held connections",
        Duration::from_secs(10),
        || {
            counts = relayed();
            counts.values().sum::<u64>() >= held.len() as u64
        },
    );
    let total = counts.values().sum::<u64>();
    let bound = (1.25 * total as f64 / 3.0).ceil() as u64 + 1;
    let on_node2 = counts.get("node2").copied().unwrap_or(0);
    assert!(
        on_node2 <= bound && on_node2 < held.len() as u64,
        "node2 holds {on_node2} of {total} (bound {bound}): {counts:?}"
    );
    drop(held);
    wait_for(
        "the held connections close",
        Duration::from_secs(10),
        || relayed().values().sum::<u64>() == 0,
    );

    // The director stops (a graceful stop hands its VIP to node2): every client of node2 and
    // node3 keeps its node, node1's clients move to the others.
    let node1_pid = nodes[0].pid.unwrap_or_else(|| panic!("node1 not started"));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &node1_pid.to_string()])
        .status();
    wait_for("node2 holds the VIP", Duration::from_secs(10), || {
        hosts[1].has_address(vip) && palisade_e2e::ha::is_dead(node1_pid)
    });
    for (source, node) in sources.iter().zip(&first) {
        let now = served_by(&client, *source, vip);
        if node.as_deref() == Some("node1") {
            assert!(
                matches!(now.as_deref(), Some("node2" | "node3")),
                "{source} got {now:?}\n{}",
                logs()
            );
        } else {
            assert_eq!(&now, node, "{source} moved across the failover\n{}", logs());
        }
    }

    // The scanning node3 dies: its clients go to node2 at once, nobody fails.
    nodes[2].kill9();
    for (source, node) in sources.iter().zip(&first) {
        let now = served_by(&client, *source, vip);
        assert_eq!(
            now.as_deref(),
            Some("node2"),
            "{source} (was {node:?})\n{}",
            logs()
        );
    }
    // node2, now the director, says so in the seeds' words and in its metrics.
    wait_for(
        "node2 reports node3 failed",
        Duration::from_secs(10),
        || {
            let metrics = hosts[1].run("curl", &["-s", "http://127.0.0.1:4711/metrics"]);
            logs().contains("Scanning partner has failed: node3 gets no new clients")
                && String::from_utf8_lossy(&metrics.stdout)
                    .contains("palisade_director_member_in{vrid=\"51\",node=\"node3\"} 0")
        },
    );
    // Either the director heard node3's link close first (its kernel closed it with the
    // process) and sent nobody there, or a client reached it first: that refused relay was
    // retried on the next node.
    let text = logs();
    assert!(
        text.contains("gets no new clients (its peer link is down)")
            || text.contains("relay connect failed"),
        "node3 was taken out for its link, or a refused relay was retried\n{text}"
    );
}

/// Health and the choice: a scanning node whose redirect port stops listening is out of the
/// choice (its clients go to the director); when every member fails, the best-priority node
/// keeps the VIP and serves (fail-open), and as soon as another member is healthy again the
/// failing director faults and hands the VIP over.
#[test]
fn a_port_failure_takes_its_node_out_and_when_every_member_fails_one_serves() {
    if !require_netns("a_port_failure_takes_its_node_out_and_when_every_member_fails_one_serves") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "client"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-fail-open");
    let vip = lab.spare_addr(100);
    let hosts = [lab.host("node1").clone(), lab.host("node2").clone()];
    let client = lab.host("client").clone();
    // Each node has a second redirect port on a service address of its own, which the test
    // takes away to fail the node's port monitor.
    let services = [lab.spare_addr(60), lab.spare_addr(61)];
    let set_service = |index: usize, present: bool| {
        let cidr = format!("{}/24", services[index]);
        let verb = if present { "add" } else { "del" };
        let output = hosts[index].run("ip", &["addr", verb, &cidr, "dev", "eth0"]);
        assert!(output.status.success(), "{output:?}");
    };
    let mut nodes: Vec<HaNode> = [(0, 150u8), (1, 100)]
        .iter()
        .map(|&(index, priority)| {
            set_service(index, true);
            let extra = format!(
                "{}[director]\nslow_start = \"1s\"\n",
                heartbeat_to(&[hosts[1 - index].addr])
            );
            let node = HaNode::new(&dir.0, &hosts[index], "100ms", priority, vip, &extra);
            let config = std::fs::read_to_string(&node.config)
                .unwrap_or_default()
                .replace(
                    "listen = [\"0.0.0.0:9090\"]",
                    &format!("listen = [\"0.0.0.0:9090\", \"{}:9092\"]", services[index]),
                );
            std::fs::write(&node.config, config).unwrap_or_else(|error| panic!("{error}"));
            node
        })
        .collect();
    for node in &mut nodes {
        node.start(&mut lab, BIN);
    }
    let log_files: Vec<std::path::PathBuf> = nodes.iter().map(|node| node.log.clone()).collect();
    let log_of = |index: usize| std::fs::read_to_string(&log_files[index]).unwrap_or_default();
    let logs = || format!("--- node1\n{}--- node2\n{}", log_of(0), log_of(1));
    let sources = client.add_client_addresses(&lab, 16);
    let served = || -> std::collections::HashSet<String> {
        sources
            .iter()
            .filter_map(|source| served_by(&client, *source, vip))
            .collect()
    };
    wait_for("both nodes serve clients", Duration::from_secs(15), || {
        hosts[0].has_address(vip) && served().len() == 2
    });

    // node2's redirect port on its service address goes: node2 fails (node1 is healthy, so
    // node2 faults), and the director gives its clients to node1.
    set_service(1, false);
    wait_for(
        "node2 is out and node1 serves every client",
        Duration::from_secs(10),
        || {
            log_of(0).contains("Scanning partner has failed: node2 gets no new clients (current state: failure (redirect port")
                && served() == std::collections::HashSet::from(["node1".to_owned()])
        },
    );
    assert!(
        log_of(1).contains("VRRP_Instance(VI_1) Entering FAULT STATE"),
        "{}",
        logs()
    );

    // node1's goes too: every member fails. node1, the best priority, keeps the VIP and
    // serves (fail-open) instead of faulting with nobody to take over.
    set_service(0, false);
    wait_for("node1 fails open", Duration::from_secs(10), || {
        log_of(0).contains("VRRP_Instance(VI_1) current state: failure (fail-open): no other member of the group is healthy")
    });
    assert!(
        hosts[0].has_address(vip) && !log_of(0).contains("Entering FAULT STATE"),
        "{}",
        logs()
    );
    for source in &sources {
        assert_eq!(
            served_by(&client, *source, vip).as_deref(),
            Some("node1"),
            "{source}\n{}",
            logs()
        );
    }
    let output = hosts[0].run(BIN, &["status"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        text.contains(
            "current state: failure (fail-open): no other member is healthy (redirect port"
        ),
        "{text}"
    );

    // node2 is healthy again: node1 faults and node2 takes the VIP and every client.
    set_service(1, true);
    wait_for("node2 takes over", Duration::from_secs(10), || {
        hosts[1].has_address(vip)
            && !hosts[0].has_address(vip)
            && served() == std::collections::HashSet::from(["node2".to_owned()])
    });
    assert!(
        log_of(0).contains("VRRP_Instance(VI_1) fail-open over: another member is healthy"),
        "{}",
        logs()
    );
}
