//! The stack palisade replaces, in a lab, for the drill's comparison (issue 12 §3): Squid on
//! two nodes behind keepalived (VRRPv3, adverts every second unless told otherwise,
//! priorities 150 and 100, the same VIP and redirect port as the palisade lab), each
//! keepalived tracking its own Squid with a `vrrp_script` as operators set it up (its port
//! answers curl, every second, 2 falls), a client host and an origin on the lab's network
//! (port 8080).
//!
//! Faults are shell commands for `palisade drill --fault-command`, the nearest equivalent of
//! each palisade fault ([`SquidPair::fault_command`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::director_lab::{ORIGIN_PORT, lab_origin};
use crate::netns::{Lab, LabHost, wait_for};
use crate::origin::Origin;

/// The redirect port both stacks listen on, so the drill's command line is the same.
pub const PROXY_PORT: u16 = 9090;

/// ka1 (priority 150, master) and ka2 (100), each running Squid and keepalived.
pub struct SquidPair {
    pub lab: Lab,
    pub dir: crate::node::TempDir,
    pub vip: Ipv4Addr,
    pub client: LabHost,
    pub origin: LabHost,
    pub hosts: [LabHost; 2],
    /// Each node's Squid and keepalived processes.
    pub squid_pids: [u32; 2],
    pub keepalived_pids: [u32; 2],
    _origin: Origin,
    _runtime: tokio::runtime::Runtime,
}

impl SquidPair {
    /// Starts both nodes (VRRP adverts every `advert`) and waits until ka1 holds the VIP
    /// and Squid answers through it.
    pub fn start(advert: Duration) -> SquidPair {
        let mut lab = Lab::new(&["ka1", "ka2", "client", "origin"]);
        let dir = crate::node::TempDir::new("palisade-squid-pair");
        let vip = lab.spare_addr(100);
        let (client, origin_host) = (lab.host("client").clone(), lab.host("origin").clone());
        let (origin, runtime) = lab_origin(&origin_host);
        let hosts = [lab.host("ka1").clone(), lab.host("ka2").clone()];
        let mut squid_pids = [0; 2];
        let mut keepalived_pids = [0; 2];
        for (index, (host, priority)) in hosts.iter().zip([150u8, 100]).enumerate() {
            squid_pids[index] = start_squid(&mut lab, &dir.0, host);
            keepalived_pids[index] =
                start_keepalived(&mut lab, &dir.0, host, priority, vip, advert);
        }
        wait_for("ka1 holds the VIP", Duration::from_secs(20), || {
            hosts[0].has_address(vip)
        });
        let pair = SquidPair {
            lab,
            dir,
            vip,
            client,
            origin: origin_host,
            hosts,
            squid_pids,
            keepalived_pids,
            _origin: origin,
            _runtime: runtime,
        };
        // Squid takes a moment to listen after it starts, and a keepalived whose check ran
        // before its Squid listened is in FAULT until two checks pass: a drill must start
        // with both nodes ready, ka1 MASTER and ka2 BACKUP, as in a deployment.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let ready = || {
            pair.answers(pair.vip)
                && pair.answers(pair.hosts[0].addr)
                && pair.answers(pair.hosts[1].addr)
                && pair.vrrp_state(0).as_deref() == Some("MASTER")
                && pair.vrrp_state(1).as_deref() == Some("BACKUP")
        };
        while !ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "the Squid pair is not ready within 30 s (both Squids answering, ka1 MASTER, ka2 BACKUP):\n{}",
                pair.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pair
    }

    /// The VRRP state node `index`'s keepalived last entered, from its log.
    fn vrrp_state(&self, index: usize) -> Option<String> {
        let log = self
            .dir
            .0
            .join(format!("{}-keepalived.log", self.hosts[index].name));
        let text = std::fs::read_to_string(log).ok()?;
        let line = text.lines().rev().find(|line| line.contains("Entering "))?;
        ["MASTER", "BACKUP", "FAULT"]
            .into_iter()
            .find(|state| line.contains(&format!("Entering {state} STATE")))
            .map(str::to_owned)
    }

    /// Both nodes' Squid and keepalived logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        for host in &self.hosts {
            for file in [
                format!("{}-squid/cache.log", host.name),
                format!("{}-squid/stderr.log", host.name),
                format!("{}-keepalived.log", host.name),
            ] {
                let text = std::fs::read_to_string(self.dir.0.join(&file)).unwrap_or_default();
                logs.push_str(&format!("--- {file}\n{text}\n"));
            }
        }
        logs
    }

    /// Whether palisade's `fault` has an equivalent in this stack: not a scanning node's
    /// (the backup serves nothing until it takes over).
    pub fn applies(fault: &str) -> bool {
        matches!(
            fault,
            "kill-director" | "cut-director-link" | "drain-director"
        )
    }

    /// Whether a GET through the proxy at `through` (the VIP, or one node) comes back 200
    /// (curl in the client's namespace).
    fn answers(&self, through: Ipv4Addr) -> bool {
        let proxy = format!("http://{through}:{PROXY_PORT}");
        self.client.status_through(&proxy, &self.url()) == "200"
    }

    /// What the drill fetches: the same 2 KB body as in the palisade lab.
    pub fn url(&self) -> String {
        format!("http://{}:{ORIGIN_PORT}/big/2000", self.origin.addr)
    }

    /// The shell command that injects palisade's `fault` into this stack, on the master
    /// (ka1), or `None` where the stack has no equivalent (it has no scanning nodes: the
    /// backup serves nothing until it takes over).
    pub fn fault_command(&self, fault: &str) -> Option<String> {
        let master = &self.hosts[0];
        match fault {
            // The proxy process crashes; keepalived's check notices and gives the VIP up.
            "kill-director" => Some(format!("kill -KILL {}", self.squid_pids[0])),
            // The same cut as `palisade fault cut-link --for 10`: the master's link drops
            // everything both ways for 10 s.
            "cut-director-link" => Some(format!(
                "ip netns exec {ns} nft -f - <<'EOF'\ntable netdev drill_cut {{\n  chain in {{ type filter hook ingress device \"eth0\" priority -500; policy drop; }}\n  chain out {{ type filter hook egress device \"eth0\" priority -500; policy drop; }}\n}}\nEOF\n(sleep 10; ip netns exec {ns} nft delete table netdev drill_cut) &",
                ns = master.ns
            )),
            // keepalived's planned handover: stop it on the master (a priority-0 advert
            // moves the VIP at once); Squid keeps running there.
            "drain-director" => Some(format!("kill -TERM {}", self.keepalived_pids[0])),
            _ => None,
        }
    }

    /// Runs `palisade drill` (`binary`) from the client host with `fault`'s command and
    /// `settings` (timing, load). Returns its JSON report, or `None` where the fault does not
    /// apply to this stack.
    pub fn drill(&self, binary: &str, fault: &str, settings: &[&str]) -> Option<serde_json::Value> {
        let command = self.fault_command(fault)?;
        let output = self
            .client
            .command(binary)
            .args(["drill", "--json", "--fault-command", &command])
            .args(["--proxy", &format!("{}:{PROXY_PORT}", self.vip)])
            .args(["--url", &self.url()])
            .args(settings)
            .output()
            .unwrap_or_else(|error| panic!("palisade drill: {error}"));
        let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "drill report ({error}): {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            )
        });
        Some(report)
    }
}

/// Squid in the foreground on `host`, no cache, no access log, allowing the lab's clients
/// to the origin (plain GET and CONNECT to port 8080). Returns its pid.
fn start_squid(lab: &mut Lab, dir: &std::path::Path, host: &LabHost) -> u32 {
    let work = dir.join(format!("{}-squid", host.name));
    std::fs::create_dir_all(&work).unwrap_or_else(|error| panic!("{error}"));
    let config = format!(
        "http_port {PROXY_PORT}\nvisible_hostname {name}\nworkers 1\nacl lab src 10.213.0.0/16\nacl SSL_ports port {ORIGIN_PORT}\nhttp_access deny CONNECT !SSL_ports\nhttp_access allow lab\nhttp_access deny all\ncache deny all\ncache_mem 8 MB\naccess_log none\ncache_store_log none\nlogfile_rotate 0\ndns_nameservers 127.0.0.1\ncache_log {work}/cache.log\npid_filename {work}/squid.pid\ncoredump_dir {work}\nshutdown_lifetime 1 seconds\nclient_persistent_connections on\nserver_persistent_connections on\n",
        name = host.name,
        work = work.display(),
    );
    let path = work.join("squid.conf");
    std::fs::write(&path, config).unwrap_or_else(|error| panic!("{error}"));
    // Squid started as root runs as `proxy` (Debian's build): its files must be writable.
    let _ = std::process::Command::new("chown")
        .args(["-R", "proxy"])
        .arg(&work)
        .status();
    lab.spawn(
        &host.name,
        "squid",
        &["-N", "-f", &path.display().to_string()],
        &work.join("stderr.log"),
    )
}

/// keepalived on `host`, VRRPv3 with adverts every `advert`, tracking its Squid every second with two
/// falls, as operators' guides do for a proxy: curl gets an answer from Squid's port (any
/// HTTP answer will do; a refused connection fails). A check of the process by its pid would
/// not see a crash here: the killed Squid stays a zombie until the lab reaps it.
fn start_keepalived(
    lab: &mut Lab,
    dir: &std::path::Path,
    host: &LabHost,
    priority: u8,
    vip: Ipv4Addr,
    advert: Duration,
) -> u32 {
    let config = format!(
        "global_defs {{\n  router_id {name}\n  vrrp_version 3\n  script_user root\n}}\nvrrp_script chk_squid {{\n  script \"/usr/bin/curl -s -o /dev/null --max-time 1 http://127.0.0.1:{PROXY_PORT}/\"\n  interval 1\n  fall 2\n  rise 2\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {vip}/24 dev eth0\n  }}\n  track_script {{\n    chk_squid\n  }}\n}}\n",
        name = host.name,
        advert = advert.as_secs_f64(),
    );
    let path = dir.join(format!("{}-keepalived.conf", host.name));
    std::fs::write(&path, config).unwrap_or_else(|error| panic!("{error}"));
    crate::ha::spawn_keepalived(
        lab,
        &host.name,
        &path,
        &dir.join(format!("{}-keepalived", host.name)),
    )
}
