//! palisade nodes of an HA group inside a [`Lab`]: their config, start, crash, and what a
//! client on the lab sees on the VIP. Shared by the HA tests, the keepalived interoperation
//! tests and the failover benchmark.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{Lab, LabHost, in_namespace, wait_for};

/// One palisade node of VRRP group `VI_1` (VRID 51 on `eth0`), proxy ports 9090 and 9091.
pub struct HaNode {
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub pid: Option<u32>,
}

impl HaNode {
    /// Writes `<dir>/<host>.toml` with `priority`, `advert_interval` and one VIP `/24`;
    /// `extra` is appended after the group's keys (more keys for it, or further tables).
    pub fn new(
        dir: &Path,
        host: &LabHost,
        interval: &str,
        priority: u8,
        vip: Ipv4Addr,
        extra: &str,
    ) -> HaNode {
        let policy = lab_policy(dir, &host.name);
        let config = format!(
            r#"
[node]
hostname = "{name}"
data_dir = "{data}"
[policy]
file = "{policy}"
[proxy]
listen = ["0.0.0.0:9090"]
test_listen = ["0.0.0.0:9091"]
[admin]
listen = "127.0.0.1:4711"
[health]
interval = "50ms"
[[vrrp]]
name = "VI_1"
vrid = 51
interface = "eth0"
priority = {priority}
advert_interval = "{interval}"
vips = ["{vip}/24"]
{extra}
"#,
            name = host.name,
            data = dir.join(format!("{}-data", host.name)).display(),
            policy = policy.display(),
        );
        let path = dir.join(format!("{}.toml", host.name));
        std::fs::write(&path, config).unwrap_or_else(|error| panic!("{error}"));
        HaNode {
            name: host.name.clone(),
            config: path,
            log: dir.join(format!("{}.log", host.name)),
            pid: None,
        }
    }

    /// Starts `binary run` in the node's namespace (stopped with the lab).
    pub fn start(&mut self, lab: &mut Lab, binary: &str) {
        let config = self.config.display().to_string();
        let pid = lab.spawn(&self.name, binary, &["run", "--config", &config], &self.log);
        self.pid = Some(pid);
    }

    /// kill -9, then waits until the process is dead so a restart can bind its ports.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            wait_for("killed process exits", Duration::from_secs(5), || {
                is_dead(pid)
            });
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// keepalived in the foreground on `host`, VRRP only, with `config`: its log is `FILES.log`
/// and its pid files `FILES.{main,vrrp,chk}.pid` (`files`: a path prefix in the test's
/// directory). Returns its pid.
pub fn spawn_keepalived(lab: &mut Lab, host: &str, config: &Path, files: &Path) -> u32 {
    let file = |suffix: &str| format!("{}.{suffix}", files.display());
    let config = config.display().to_string();
    lab.spawn(
        host,
        "keepalived",
        &[
            "-n",
            "-l",
            "-D",
            "-G",
            "-P",
            "-f",
            &config,
            "-p",
            &file("main.pid"),
            "-r",
            &file("vrrp.pid"),
            "-c",
            &file("chk.pid"),
        ],
        Path::new(&file("log")),
    )
}

/// Writes `<dir>/<name>-policy.toml`: clients on the lab's networks (IPv4 and the ULA
/// prefixes the IPv6 tests use) may use the proxy. The built-in policy serves loopback only
/// and resets everyone else at accept, so [`probe`] would see nothing.
pub fn lab_policy(dir: &Path, name: &str) -> PathBuf {
    let policy = dir.join(format!("{name}-policy.toml"));
    std::fs::write(
        &policy,
        "default_action = \"allow\"\n[access]\nclients = [\"127.0.0.0/8\", \"10.213.0.0/16\", \"fd00::/8\"]\n",
    )
    .unwrap_or_else(|error| panic!("{error}"));
    policy
}

/// Gone, or a zombie whose threads have all exited. A zombie leader with live threads
/// still holds its sockets.
pub fn is_dead(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.is_empty() || (status.contains("State:\tZ") && status.contains("Threads:\t1\n"))
}

/// Which node answers on `vip`'s test port (9091) from inside the current namespace: the
/// proxy's error page for a non-proxy request carries `X-Palisade-Node`.
pub fn probe(
    vip: impl Into<IpAddr>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Option<String> {
    let address = SocketAddr::new(vip.into(), 9091);
    let stream = TcpStream::connect_timeout(&address, connect_timeout).ok()?;
    answering_node(stream, read_timeout)
}

/// Sends a non-proxy request on `stream` and returns the node the error page names
/// (`X-Palisade-Node`), if any.
pub fn answering_node(mut stream: TcpStream, read_timeout: Duration) -> Option<String> {
    stream.set_read_timeout(Some(read_timeout)).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .lines()
        .find_map(|line| line.strip_prefix("X-Palisade-Node: "))
        .map(|node| node.trim().to_owned())
}

/// [`probe`] from the `client` host, with generous timeouts.
pub fn who_answers(client: &LabHost, vip: impl Into<IpAddr>) -> Option<String> {
    let vip = vip.into();
    in_namespace(&client.ns, || {
        probe(vip, Duration::from_millis(300), Duration::from_millis(500))
    })
}

/// RFC 5798 6.1 (VRRPv3): how long a backup at `priority` waits beyond three adverts.
pub fn skew_time(advert_interval: Duration, priority: u8) -> Duration {
    advert_interval * (256 - u32::from(priority)) / 256
}

/// RFC 5798 6.1: how long a backup at `priority` hears nothing before it takes over.
pub fn master_down_interval(advert_interval: Duration, priority: u8) -> Duration {
    3 * advert_interval + skew_time(advert_interval, priority)
}

/// Slack for process scheduling in a loaded namespace, added to protocol bounds so a test
/// asserts the mechanism, not the machine's load.
pub const SCHEDULING_MARGIN: Duration = Duration::from_millis(500);

/// Checks, for `window`, that `host` never holds `vip`; `Err` with the time it first did.
/// For "did not happen" assertions: the window is a protocol bound (a backup that hears no
/// adverts takes over after its Master_Down_Interval), never a bare number.
pub fn never_holds(host: &LabHost, vip: Ipv4Addr, window: Duration) -> Result<(), Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < window {
        if host.has_address(vip) {
            return Err(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until the node in `host` reports `field` of its first group as `value` (e.g. its
/// `master` is another node's address: it has heard that node's adverts).
pub fn wait_status(host: &LabHost, binary: &str, field: &str, value: &str, timeout: Duration) {
    wait_for(
        &format!("{} reports {field} = {value}", host.name),
        timeout,
        || {
            let output = host.run(binary, &["status", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&output.stdout)
                .is_ok_and(|status| status["groups"][0][field] == value)
        },
    );
}

/// The peer-link group key every lab node shares.
pub const HEARTBEAT_KEY: &str = "0123456789abcdef-group-key";
/// The port lab nodes link on.
pub const HEARTBEAT_PORT: u16 = 9192;

/// A `[heartbeat]` section linking a lab node to `peer`.
pub fn heartbeat_section(peer: Ipv4Addr) -> String {
    format!(
        "[heartbeat]\nlisten = \"0.0.0.0:{HEARTBEAT_PORT}\"\npeers = [\"{peer}:{HEARTBEAT_PORT}\"]\nkey = \"{HEARTBEAT_KEY}\"\n"
    )
}

/// node1 (priority 150) and node2 (100) of `VI_1` at `interval` in hosts "node1" and
/// "node2", each with `extra(the other's address)` in its config, started (node2 first); and
/// a closure that reads both logs for assertion messages.
pub fn start_pair(
    lab: &mut Lab,
    dir: &Path,
    vip: Ipv4Addr,
    interval: &str,
    extra: &dyn Fn(Ipv4Addr) -> String,
    binary: &str,
) -> (HaNode, HaNode, impl Fn() -> String + use<>) {
    let (host1, host2) = (lab.host("node1").clone(), lab.host("node2").clone());
    let mut node1 = HaNode::new(dir, &host1, interval, 150, vip, &extra(host2.addr));
    let mut node2 = HaNode::new(dir, &host2, interval, 100, vip, &extra(host1.addr));
    node2.start(lab, binary);
    node1.start(lab, binary);
    let (log1, log2) = (node1.log.clone(), node2.log.clone());
    let logs = move || {
        format!(
            "node1:\n{}\nnode2:\n{}",
            std::fs::read_to_string(&log1).unwrap_or_default(),
            std::fs::read_to_string(&log2).unwrap_or_default()
        )
    };
    (node1, node2, logs)
}

/// A connection from `source` (an address of `client`'s) to port 9090 of `vip`.
pub fn connect_from(client: &LabHost, source: Ipv4Addr, vip: Ipv4Addr) -> Option<TcpStream> {
    in_namespace(&client.ns, || {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        socket
            .bind(&SocketAddr::new(IpAddr::V4(source), 0).into())
            .ok()?;
        socket
            .connect_timeout(
                &SocketAddr::new(IpAddr::V4(vip), 9090).into(),
                Duration::from_secs(2),
            )
            .ok()?;
        Some(socket.into())
    })
}

/// The node that answers a non-proxy request on the VIP's redirect port from `source`
/// (the error page names it), or `None`.
pub fn served_by(client: &LabHost, source: Ipv4Addr, vip: Ipv4Addr) -> Option<String> {
    answering_node(connect_from(client, source, vip)?, Duration::from_secs(3))
}
