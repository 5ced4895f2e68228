//! Multi-host test topologies in Linux network namespaces (after aya's `NetNsGuard`): one
//! namespace holding a bridge, one namespace per host with a single `eth0` veth'd to that
//! bridge, addresses from one private test subnet that exists only inside these namespaces,
//! and no default route (a stray packet to any other address fails with ENETUNREACH).
//!
//! Names are unique per test run (`pal-<pid>-<n>-...`), so parallel tests never clash, and
//! `Drop` always deletes everything it made, also while a test is panicking.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

/// Whether the multi-host tests can run here (root and `ip netns`). Without them a test is
/// skipped with a message, unless `PALISADE_REQUIRE_ALL=1` (set by CI), which makes the
/// skip a failure.
pub fn require_netns(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ip_works = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    if root && ip_works {
        return true;
    }
    let why = if root {
        "`ip netns` does not work"
    } else {
        "not root"
    };
    if std::env::var("PALISADE_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test}: cannot run ({why}) and PALISADE_REQUIRE_ALL=1 forbids skipping");
    }
    eprintln!("skipped: {test}: needs root and network namespaces ({why})");
    false
}

/// Runs `ip` with `args`; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> Output {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run ip: {error}"));
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One host of a [`Lab`].
#[derive(Clone, Debug)]
pub struct LabHost {
    pub name: String,
    /// The namespace's name.
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl LabHost {
    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns, program]);
        command
    }

    /// Runs a command in the namespace and returns its output (not checked).
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("{program} in {}: {error}", self.ns))
    }

    /// The status code `proxy` gives a request for `url` made with curl from this host.
    pub fn status_through(&self, proxy: &str, url: &str) -> String {
        let output = self.run(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "-x",
                proxy,
                url,
            ],
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Addresses configured on `eth0`, as `ip -o addr` prints them.
    pub fn addresses(&self) -> String {
        String::from_utf8_lossy(&ip(&["-n", &self.ns, "-o", "addr", "show", "dev", "eth0"]).stdout)
            .into_owned()
    }

    /// Adds `count` client addresses from `.150` on (`eth0`, /24), for tests that need
    /// clients at many source addresses; returns them.
    pub fn add_client_addresses(&self, lab: &Lab, count: u8) -> Vec<Ipv4Addr> {
        let sources: Vec<Ipv4Addr> = (0..count).map(|i| lab.spare_addr(150 + i)).collect();
        for source in &sources {
            let output = self.run(
                "ip",
                &["addr", "add", &format!("{source}/24"), "dev", "eth0"],
            );
            assert!(output.status.success(), "{output:?}");
        }
        sources
    }

    /// Whether `address` is configured on `eth0` (a VIP held here).
    pub fn has_address(&self, address: Ipv4Addr) -> bool {
        self.addresses().contains(&format!(" {address}/"))
    }

    /// Lets the bridge flood multicast to this host's port, or not: with it off the host
    /// hears no VRRP advert (a multicast partition, as a misconfigured IGMP snooping switch
    /// makes) while unicast, broadcast and ARP still pass.
    pub fn set_multicast(&self, lab: &Lab, on: bool) {
        let port = lab.port_name(self);
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.bridge_ns,
                "bridge",
                "link",
                "set",
                "dev",
            ])
            .arg(&port)
            .args(["mcast_flood", if on { "on" } else { "off" }])
            .output()
            .unwrap_or_else(|error| panic!("cannot run bridge: {error}"));
        assert!(
            output.status.success(),
            "bridge link set {port} mcast_flood: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Cuts this host off from the others (`cut`) or joins it again, while its link keeps
    /// its carrier: a partition further along the network (a switch between), which the node
    /// cannot see on its own interface. nftables on the bridge drops every frame to or from
    /// the host's port.
    pub fn partition(&self, lab: &Lab, cut: bool) {
        let port = lab.port_name(self);
        let table = format!("cut_{port}");
        let rules = if cut {
            format!(
                "add table bridge {table}; add chain bridge {table} forwarding {{ type filter hook forward priority 0; }}; add rule bridge {table} forwarding iifname \"{port}\" drop; add rule bridge {table} forwarding oifname \"{port}\" drop"
            )
        } else {
            format!("delete table bridge {table}")
        };
        let output = ip(&["netns", "exec", &lab.bridge_ns, "nft", &rules]);
        assert!(
            output.status.success(),
            "nft {rules}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Sets the link of this host's bridge port down or up: its cable pulled (the node sees
    /// its carrier go, and a VRRP master goes to FAULT).
    pub fn set_link(&self, lab: &Lab, up: bool) {
        let port = lab.port_name(self);
        ip(&[
            "-n",
            &lab.bridge_ns,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ]);
    }
}

/// A bridge and hosts on `10.213.<subnet>.0/24`.
pub struct Lab {
    pub prefix: String,
    pub bridge_ns: String,
    pub hosts: Vec<LabHost>,
    /// Processes started in the lab, killed on drop.
    children: Vec<Child>,
}

impl Lab {
    /// Creates the bridge namespace and one namespace per name in `hosts`; host `i` gets
    /// address `10.213.<subnet>.<11 + i>`. The subnet octet is derived from the lab's unique
    /// number so that two labs never share addresses either.
    pub fn new(hosts: &[&str]) -> Lab {
        let number = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("pal-{}-{number}", std::process::id());
        let subnet = (std::process::id() as usize * 7 + number) % 250;
        let bridge_ns = format!("{prefix}-br");
        let mut lab = Lab {
            prefix: prefix.clone(),
            bridge_ns: bridge_ns.clone(),
            hosts: Vec::new(),
            children: Vec::new(),
        };
        ip(&["netns", "add", &bridge_ns]);
        ip(&[
            "-n",
            &bridge_ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"]);
        for (index, name) in hosts.iter().enumerate() {
            let ns = format!("{prefix}-{name}");
            let addr = Ipv4Addr::new(10, 213, subnet as u8, 11 + index as u8);
            ip(&["netns", "add", &ns]);
            let host = LabHost {
                name: (*name).to_owned(),
                ns: ns.clone(),
                addr,
            };
            let port = lab.port_name(&host);
            ip(&[
                "-n", &bridge_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&[
                "-n", &bridge_ns, "link", "set", &port, "master", "br0", "up",
            ]);
            // A fixed, locally administered MAC per host keeps captures readable.
            let mac = format!("02:00:0a:d5:{subnet:02x}:{:02x}", 11 + index);
            ip(&["-n", &ns, "link", "set", "eth0", "address", &mac]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // New namespaces inherit some IPv4 defaults from the root namespace: pin them.
            for (key, value) in [
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.eth0.rp_filter", "0"),
                ("net.ipv4.conf.all.arp_ignore", "0"),
                ("net.ipv4.conf.all.arp_announce", "0"),
                ("net.ipv4.conf.all.arp_accept", "1"),
                ("net.ipv4.ip_forward", "0"),
            ] {
                let _ = host.run("sysctl", &["-q", "-w", &format!("{key}={value}")]);
            }
            lab.hosts.push(host);
        }
        lab
    }

    pub fn host(&self, name: &str) -> &LabHost {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .unwrap_or_else(|| panic!("no host {name} in lab {}", self.prefix))
    }

    /// An address in the lab's subnet that no host has (for a VIP).
    pub fn spare_addr(&self, last_octet: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.hosts[0].addr.octets();
        Ipv4Addr::new(a, b, c, last_octet)
    }

    fn port_name(&self, host: &LabHost) -> String {
        let index = self
            .hosts
            .iter()
            .position(|candidate| candidate.ns == host.ns)
            .unwrap_or(self.hosts.len());
        format!("v{index}")
    }

    /// Starts a process in `host`'s namespace; it is killed when the lab is dropped.
    pub fn spawn(
        &mut self,
        host: &str,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> u32 {
        let stderr = std::fs::File::create(log)
            .unwrap_or_else(|error| panic!("log {}: {error}", log.display()));
        let stdout = stderr
            .try_clone()
            .unwrap_or_else(|error| panic!("log {}: {error}", log.display()));
        let child = self
            .host(host)
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything else still running inside a lab namespace would keep it alive.
        for ns in self
            .hosts
            .iter()
            .map(|host| host.ns.clone())
            .chain(std::iter::once(self.bridge_ns.clone()))
        {
            if let Ok(output) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let deleted = Command::new("ip").args(["netns", "del", &ns]).status();
            if !matches!(deleted, Ok(status) if status.success()) {
                // Never panic in drop (maybe already panicking): say so instead.
                eprintln!("warning: could not delete network namespace {ns}");
            }
        }
    }
}

/// Polls `condition` every 5 ms until it holds; panics naming `what` after `timeout`.
/// Returns how long it took.
pub fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    start.elapsed()
}

/// Runs `f` on a thread that has entered namespace `ns`. Sockets created inside `f` stay in
/// that namespace wherever they are used later, so a test can hold a client socket "in" a
/// lab host without a child process.
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|error| panic!("open {path}: {error}"));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|error| panic!("setns {ns}: {error}"));
                f()
            })
            .join()
            .unwrap_or_else(|_| panic!("thread in namespace {ns} panicked"))
    })
}
