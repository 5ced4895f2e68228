//! Two palisade nodes of one HA group with a director in a lab (issue 12's tests and the
//! relay-cost benchmark): node1 (priority 150) directs, node2 (100) scans; a client host with
//! one address served by each node; an origin on the lab's network (port 8080) the nodes'
//! policy lets clients reach, CONNECT included.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::ha::{HaNode, connect_from, heartbeat_section, served_by};
use crate::netns::{Lab, LabHost, in_namespace, wait_for};
use crate::origin::Origin;

/// The origin's port on its lab host.
pub const ORIGIN_PORT: u16 = 8080;

/// node1 (director, priority 150) and node2 (100) of one HA group with a director, a client
/// host with an address whose node is node1 (served in-process) and one whose node is node2
/// (relayed), and an origin on the lab's network.
pub struct DirectorLab {
    pub lab: Lab,
    pub dir: crate::node::TempDir,
    pub vip: Ipv4Addr,
    pub client: LabHost,
    pub origin: LabHost,
    pub hosts: [LabHost; 2],
    pub nodes: [HaNode; 2],
    /// A client address served by node1, one served by node2.
    pub on: [Ipv4Addr; 2],
    _origin: Origin,
    _runtime: tokio::runtime::Runtime,
}

/// Reads an HTTP response head through its blank line, a byte at a time so that nothing
/// after it is consumed.
pub fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "response head: {other:?} after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    head
}

/// An origin on `host`'s lab address, port [`ORIGIN_PORT`], and the runtime serving it.
pub fn lab_origin(host: &LabHost) -> (Origin, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("{error}"));
    let listener = in_namespace(&host.ns, || {
        std::net::TcpListener::bind(("0.0.0.0", ORIGIN_PORT))
    })
    .unwrap_or_else(|error| panic!("origin bind: {error}"));
    let origin = runtime.block_on(Origin::start_listening(listener));
    (origin, runtime)
}

impl DirectorLab {
    /// Starts both nodes (`binary`) and waits until each serves a client address.
    pub fn new(binary: &str) -> DirectorLab {
        DirectorLab::with_proxy_settings(binary, "")
    }

    /// The same, with `proxy` (TOML keys) added to both nodes' `[proxy]` table.
    pub fn with_proxy_settings(binary: &str, proxy: &str) -> DirectorLab {
        DirectorLab::with_settings(binary, "1s", proxy)
    }

    /// The same, with VRRP adverts every `advert_interval` (e.g. "100ms").
    pub fn with_advert_interval(binary: &str, advert_interval: &str) -> DirectorLab {
        DirectorLab::with_settings(binary, advert_interval, "")
    }

    fn with_settings(binary: &str, advert_interval: &str, proxy: &str) -> DirectorLab {
        let mut lab = Lab::new(&["node1", "node2", "client", "origin"]);
        let dir = crate::node::TempDir::new("palisade-nobody-hangs");
        let vip = lab.spare_addr(100);
        let (client, origin_host) = (lab.host("client").clone(), lab.host("origin").clone());
        let (origin, runtime) = lab_origin(&origin_host);
        let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
        let extra = |peer| {
            format!(
                "{}[director]\nslow_start = \"1s\"\n",
                heartbeat_section(peer)
            )
        };
        let mut node1 = HaNode::new(
            &dir.0,
            &host1,
            advert_interval,
            150,
            vip,
            &extra(host2.addr),
        );
        let mut node2 = HaNode::new(
            &dir.0,
            &host2,
            advert_interval,
            100,
            vip,
            &extra(host1.addr),
        );
        for node in [&node1, &node2] {
            let config = std::fs::read_to_string(&node.config).unwrap_or_default();
            let config = config.replacen("[proxy]\n", &format!("[proxy]\n{proxy}"), 1);
            std::fs::write(&node.config, config).unwrap_or_else(|error| panic!("{error}"));
        }
        // The origin is on the lab's network, which the default rules keep clients from.
        for name in ["node1", "node2"] {
            std::fs::write(
                dir.0.join(format!("{name}-policy.toml")),
                "default_action = \"allow\"\n[access]\nclients = [\"127.0.0.0/8\", \"10.213.0.0/16\"]\nallow_destinations = [\"10.213.0.0/16\"]\nconnect_ports = [8080]\n",
            )
            .unwrap_or_else(|error| panic!("{error}"));
        }
        node2.start(&mut lab, binary);
        node1.start(&mut lab, binary);
        wait_for("node1 holds the VIP", Duration::from_secs(15), || {
            host1.has_address(vip)
        });
        // Client addresses: one whose node is node1 (the director serves it in-process), one
        // whose node is node2 (relayed to node2's scan port).
        let sources = client.add_client_addresses(&lab, 16);
        let mut homed = (None, None);
        wait_for("clients of both nodes", Duration::from_secs(20), || {
            for source in &sources {
                match served_by(&client, *source, vip).as_deref() {
                    Some("node1") => homed.0 = Some(*source),
                    Some("node2") => homed.1 = Some(*source),
                    _ => {}
                }
            }
            homed.0.is_some() && homed.1.is_some()
        });
        let (Some(on_node1), Some(on_node2)) = homed else {
            panic!("no clients of both nodes");
        };
        DirectorLab {
            lab,
            dir,
            vip,
            client,
            origin: origin_host,
            hosts: [host1, host2],
            nodes: [node1, node2],
            on: [on_node1, on_node2],
            _origin: origin,
            _runtime: runtime,
        }
    }

    /// A CONNECT tunnel to the origin from `source` through port 9090 of `to` (the VIP, or a
    /// node's own address), established (its 200 read) with a 5 s read timeout.
    pub fn tunnel(&self, source: Ipv4Addr, to: Ipv4Addr) -> TcpStream {
        let mut stream = connect_from(&self.client, source, to)
            .unwrap_or_else(|| panic!("{source} cannot reach {to}:9090"));
        let target = format!("{}:{ORIGIN_PORT}", self.origin.addr);
        stream
            .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .unwrap_or_else(|error| panic!("send CONNECT: {error}"));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let head = read_head(&mut stream);
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "CONNECT refused: {}",
            String::from_utf8_lossy(&head)
        );
        stream
    }

    /// Runs `palisade drill` (`binary`) with `fault` from the client host, its load from
    /// `source`, reaching the nodes through `ip netns exec`; `settings` are further flags
    /// (timing, load). Returns its JSON report.
    pub fn drill(
        &self,
        binary: &str,
        fault: &str,
        source: Ipv4Addr,
        settings: &[&str],
    ) -> serde_json::Value {
        let nodes: Vec<String> = (self.hosts.iter())
            .map(|host| format!("{}=ip netns exec {} {binary}", host.name, host.ns))
            .collect();
        let url = format!("http://{}:{ORIGIN_PORT}/big/2000", self.origin.addr);
        let output = self
            .client
            .command(binary)
            .args(["drill", "--json", "--fault", fault])
            .args(["--proxy", &format!("{}:9090", self.vip), "--url", &url])
            .args(["--source", &source.to_string()])
            .args(settings)
            .args(nodes.iter().flat_map(|node| ["--node", node.as_str()]))
            .output()
            .unwrap_or_else(|error| panic!("palisade drill: {error}"));
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "drill report ({error}): {}\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.logs()
            )
        })
    }

    /// Both nodes' logs, for assertion messages.
    pub fn logs(&self) -> String {
        let read = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
        format!(
            "node1:\n{}\nnode2:\n{}",
            read(&self.nodes[0].log),
            read(&self.nodes[1].log)
        )
    }
}
