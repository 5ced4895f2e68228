//! `palisade drill`: a fault of the operator's choice injected into a test cluster while
//! steady traffic goes through the VIP, and what clients saw: time to detection and to VIP
//! takeover (VRRP adverts seen on the wire; for a scanning node's fault, detection is when
//! the director's view, polled every 100 ms, has it out), to the first success after the
//! first failure, the requests and kept-alive connections lost, and the requests left hanging
//! (neither an answer nor an error within `--hang`: must be 0).
//!
//! The drill runs on a client host on the VIP's network (root, for the raw VRRP socket). It
//! reaches each node by running `palisade` there (`--node NAME=COMMAND`, e.g. `ssh root@node1
//! palisade`): `status --json` finds the director, `fault` / `drain` inject the fault. A
//! `--fault-command` injects anything else (the same drill against keepalived + Squid).
//! The load sends GET requests over kept-alive connections and never retries, so every
//! failure a client would have to handle is counted.

mod report;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::BodyExt;

use report::{Ended, Request, Timeline};

/// What to inject and how to reach the nodes (`palisade drill`'s flags).
#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    /// The proxy through the VIP (VIP:redirect port).
    #[arg(long)]
    pub proxy: std::net::SocketAddr,
    /// What to fetch through it: an absolute http:// URL the policy allows.
    #[arg(long)]
    pub url: String,
    /// kill-director, cut-director-link, stop-scanning-node, drain-director or
    /// drain-scanning-node.
    #[arg(long)]
    pub fault: Option<String>,
    /// Instead of a named fault: a shell command that injects one (e.g. into keepalived
    /// and Squid).
    #[arg(long)]
    pub fault_command: Option<String>,
    /// How to run palisade on a node: NAME=COMMAND (e.g. node1="ssh root@node1 palisade").
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Kept-alive client connections.
    #[arg(long, default_value = "8")]
    pub connections: u32,
    /// Requests a second in all.
    #[arg(long, default_value = "50")]
    pub rate: u32,
    /// Seconds of traffic before the fault, and after it.
    #[arg(long, default_value = "3")]
    pub before: u64,
    #[arg(long, default_value = "15")]
    pub after: u64,
    /// Seconds without an answer or an error after which a request counts as hanging.
    #[arg(long, default_value = "10")]
    pub hang: u64,
    /// The client address to send from.
    #[arg(long)]
    pub source: Option<std::net::IpAddr>,
    #[arg(long)]
    pub json: bool,
}

/// The named faults: (name, which node, the `palisade` arguments run there, what undoes it).
const FAULTS: [(&str, Target, &str, Option<&str>); 5] = [
    ("kill-director", Target::Director, "fault crash", None),
    (
        "cut-director-link",
        Target::Director,
        "fault cut-link --for 10",
        None,
    ),
    ("stop-scanning-node", Target::Scanning, "fault stop", None),
    ("drain-director", Target::Director, "drain", Some("resume")),
    (
        "drain-scanning-node",
        Target::Scanning,
        "drain",
        Some("resume"),
    ),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Director,
    Scanning,
}

/// A node as `--node NAME=COMMAND` names it.
#[derive(Clone)]
struct Node {
    name: String,
    command: String,
}

impl Node {
    fn parse(text: &str) -> anyhow::Result<Node> {
        let (name, command) = text
            .split_once('=')
            .with_context(|| format!("--node {text:?}: expected NAME=COMMAND"))?;
        Ok(Node {
            name: name.to_owned(),
            command: command.to_owned(),
        })
    }

    /// Runs `COMMAND args` through the shell.
    fn run(&self, args: &str) -> std::process::Command {
        let mut command = std::process::Command::new("sh");
        command.args(["-c", &format!("{} {args}", self.command)]);
        command
    }

    /// `status --json`: its groups, and its director's view of the members.
    fn status(&self) -> anyhow::Result<serde_json::Value> {
        let output = self
            .run("status --json")
            .output()
            .with_context(|| format!("{}: cannot run {}", self.name, self.command))?;
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("{}: `status --json` answered no JSON", self.name))
    }
}

/// Whether the node whose `status --json` this is directs a group now.
fn directs(status: &serde_json::Value) -> bool {
    (status["groups"].as_array().into_iter().flatten()).any(|group| group["state"] == "MASTER")
}

/// Whether the director's view in `status` (its `status --json`) has `member` out of its
/// choice (drained, failed, its reports missed), in any group.
fn member_out(status: &serde_json::Value, member: &str) -> bool {
    let groups = status["director"]["groups"]
        .as_array()
        .into_iter()
        .flatten();
    (groups.flat_map(|group| group["members"].as_array().into_iter().flatten())).any(|node| {
        node["name"] == member && node["state"].as_str().is_some_and(|state| state != "in")
    })
}

/// Polls `director`'s view every 100 ms (from a thread) and records when (ms since
/// `started`) it had `member` out of its choice: a scanning node's fault changes no VRRP
/// advert, so its detection is the director taking it out. Stops once `done` is set.
fn watch_member_out(
    director: Node,
    member: String,
    started: Instant,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> Arc<Mutex<Vec<u64>>> {
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            if director
                .status()
                .is_ok_and(|status| member_out(&status, &member))
            {
                // When the answer came: never earlier than the director knew.
                let at = started.elapsed().as_millis() as u64;
                record
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(at);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    seen
}

pub fn drill(args: DrillArgs) -> anyhow::Result<()> {
    let nodes = (args.nodes.iter())
        .map(|text| Node::parse(text))
        .collect::<anyhow::Result<Vec<Node>>>()?;
    // What to run at the fault, what after, and for a scanning node's fault the director
    // whose view tells when it took the node out.
    let (inject, undo, target_name, watch): (
        std::process::Command,
        Option<std::process::Command>,
        String,
        Option<(Node, String)>,
    ) = match (&args.fault, &args.fault_command) {
        (Some(fault), None) => {
            let (_, target, run, undo) = FAULTS
                .iter()
                .find(|(name, ..)| name == fault)
                .with_context(|| {
                    let names: Vec<&str> = FAULTS.iter().map(|(name, ..)| *name).collect();
                    format!("unknown fault {fault:?} (one of {})", names.join(", "))
                })?;
            let mut director = None;
            let mut scanning = None;
            for node in &nodes {
                let status = node.status()?;
                if directs(&status) {
                    director.get_or_insert(node);
                } else {
                    // Its name as the director's view has it.
                    let name = status["node"].as_str().unwrap_or(&node.name).to_owned();
                    scanning.get_or_insert((node, name));
                }
            }
            let (node, watch) = match target {
                Target::Director => (director.context("no --node directs a group now")?, None),
                Target::Scanning => {
                    let (node, name) = scanning.context("no --node is a scanning node only")?;
                    (node, director.map(|director| (director.clone(), name)))
                }
            };
            (
                node.run(run),
                undo.map(|undo| node.run(undo)),
                node.name.clone(),
                watch,
            )
        }
        (None, Some(command)) => {
            let mut shell = std::process::Command::new("sh");
            shell.args(["-c", command]);
            (shell, None, "--fault-command".to_owned(), None)
        }
        _ => anyhow::bail!("name one fault: --fault NAME or --fault-command COMMAND"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    let adverts = watch_adverts(started);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out_seen =
        watch.map(|(director, member)| watch_member_out(director, member, started, done.clone()));
    let load = runtime.block_on(run_load(&args, started, inject));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut timeline = load?;
    if let Some(mut undo) = undo {
        let _ = undo.stdout(to_stderr()).status();
    }
    let seen = adverts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    (timeline.detected_ms, timeline.takeover_ms) = takeover(&seen, timeline.fault_ms);
    if let Some(out_seen) = out_seen {
        // The VIP does not move: detection is the director's.
        let fault_ms = timeline.fault_ms;
        timeline.detected_ms = (out_seen.lock())
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .find(|at| *at >= fault_ms);
    }
    let report = report::summarize(&timeline, args.hang * 1_000);
    let fault = args.fault.clone().unwrap_or_else(|| "command".to_owned());
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["fault"] = fault.into();
        value["target"] = target_name.into();
        println!("{value:#}");
    } else {
        print_report(&fault, &target_name, &report);
    }
    if report.hanging > 0 {
        anyhow::bail!("{} requests were left hanging", report.hanging);
    }
    Ok(())
}

/// A child's stdout that goes to this process's stderr.
fn to_stderr() -> std::process::Stdio {
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => std::process::Stdio::from(fd),
        Err(_) => std::process::Stdio::null(),
    }
}

fn print_report(fault: &str, target: &str, report: &report::Report) {
    let ms = |value: Option<u64>| value.map_or("-".to_owned(), |ms| format!("{ms} ms"));
    println!("fault {fault} on {target}");
    println!("  detection             {}", ms(report.detection_ms));
    println!("  VIP takeover          {}", ms(report.takeover_ms));
    println!(
        "  first success after   {}",
        ms(report.first_success_after_failure_ms)
    );
    println!(
        "  requests              {} after the fault: {} ok, {} failed before any response byte, {} mid-response",
        report.requests_after_fault,
        report.requests_ok,
        report.failed_before_response,
        report.failed_mid_response
    );
    println!("  connections lost      {}", report.connections_lost);
    println!(
        "  longest wait (error)  {}",
        ms(report.longest_wait_for_an_error_ms)
    );
    println!("  hanging               {}", report.hanging);
}

/// One VRRP advert seen: when (ms since the drill started), from whom, its priority.
type Advert = (u64, IpAddr, u8);

/// Records every VRRP advert on the host's networks (IPv4, protocol 112) from a blocking
/// thread. Without the privilege for a raw socket, nothing is recorded (the report then has
/// no detection or takeover time).
fn watch_adverts(started: Instant) -> Arc<Mutex<Vec<Advert>>> {
    let seen: Arc<Mutex<Vec<Advert>>> = Arc::default();
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(112)),
    );
    let socket = match socket {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("cannot watch VRRP adverts ({error}): no detection or takeover times");
            return seen;
        }
    };
    // Adverts go to 224.0.0.18, which a host only receives on interfaces that joined it.
    let group = std::net::Ipv4Addr::new(224, 0, 0, 18);
    for interface in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        if let Some(address) =
            (interface.address.as_ref()).and_then(|address| address.as_sockaddr_in())
        {
            let _ = socket.join_multicast_v4(&group, &address.ip());
        }
    }
    let record = seen.clone();
    std::thread::spawn(move || {
        let socket: std::net::UdpSocket = socket.into();
        let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buffer = [0u8; 1500];
        loop {
            let Ok(read) = socket.recv(&mut buffer) else {
                continue;
            };
            // IPv4 header, then the advert: version/type, VRID, priority.
            let header = usize::from(buffer[0] & 0x0f) * 4;
            if read < header + 3 {
                continue;
            }
            let source = IpAddr::from([buffer[12], buffer[13], buffer[14], buffer[15]]);
            let priority = buffer[header + 2];
            record
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((started.elapsed().as_millis() as u64, source, priority));
        }
    });
    seen
}

/// (detection, takeover) from the adverts around `fault_ms`: the master is the last
/// sender before the fault; detection is the first priority-0 advert or new master after
/// it, takeover the first advert of another sender.
fn takeover(adverts: &[Advert], fault_ms: u64) -> (Option<u64>, Option<u64>) {
    let master = (adverts.iter())
        .filter(|(at, _, priority)| *at < fault_ms && *priority > 0)
        .map(|(_, source, _)| *source)
        .next_back();
    let after = || adverts.iter().filter(|(at, ..)| *at >= fault_ms);
    let takeover = after()
        .find(|(_, source, priority)| *priority > 0 && Some(*source) != master)
        .map(|(at, ..)| *at);
    let goodbye = after()
        .find(|(_, source, priority)| *priority == 0 && Some(*source) == master)
        .map(|(at, ..)| *at);
    let detection = [takeover, goodbye].into_iter().flatten().min();
    (detection, takeover)
}

type Client = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// The load: `connections` workers each on its own kept-alive connection, `rate` requests
/// a second in all; the fault is injected after `before`, the load runs `after` more.
async fn run_load(
    args: &DrillArgs,
    started: Instant,
    mut inject: std::process::Command,
) -> anyhow::Result<Timeline> {
    // What the fault's command prints goes to stderr: stdout is the report's.
    inject.stdout(to_stderr());
    let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
    let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let fault_ms = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let (before, after, hang) = (
        Duration::from_secs(args.before),
        Duration::from_secs(args.after),
        Duration::from_secs(args.hang),
    );
    let end = started + before + after;
    let interval =
        Duration::from_secs_f64(f64::from(args.connections) / f64::from(args.rate.max(1)));
    let uri: hyper::Uri = args.url.parse().context("--url is not a URL")?;
    let mut workers = Vec::new();
    for index in 0..args.connections {
        let (requests, lost, fault_ms, uri) = (
            requests.clone(),
            lost.clone(),
            fault_ms.clone(),
            uri.clone(),
        );
        let (proxy, source) = (args.proxy, args.source);
        let first = tokio::time::Instant::from_std(
            started + interval.mul_f64(f64::from(index) / f64::from(args.connections)),
        );
        workers.push(tokio::spawn(async move {
            let mut client: Option<Client> = None;
            let mut due = first;
            while due.into_std() < end {
                tokio::time::sleep_until(due).await;
                due += interval;
                let at = |instant: Instant| instant.duration_since(started).as_millis() as u64;
                let began = Instant::now();
                let outcome =
                    tokio::time::timeout(hang, exchange(&mut client, proxy, source, &uri)).await;
                let ended = match outcome {
                    Err(_) => {
                        client = None;
                        Ended::Pending
                    }
                    Ok(ended) => ended,
                };
                if ended != Ended::Ok && ended != Ended::Pending {
                    if at(began) >= fault_ms.load(std::sync::atomic::Ordering::Relaxed) {
                        lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    client = None;
                }
                requests
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Request {
                        started_ms: at(began),
                        ended_ms: if ended == Ended::Pending {
                            0
                        } else {
                            at(Instant::now())
                        },
                        ended,
                    });
            }
        }));
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(started + before)).await;
    let fault_at = started.elapsed().as_millis() as u64;
    fault_ms.store(fault_at, std::sync::atomic::Ordering::Relaxed);
    let mut child = inject.spawn().context("cannot run the fault's command")?;
    for worker in workers {
        let _ = worker.await;
    }
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let requests = std::mem::take(
        &mut *requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(Timeline {
        fault_ms: fault_at,
        end_ms: started.elapsed().as_millis() as u64,
        requests,
        connections_lost: lost.load(std::sync::atomic::Ordering::Relaxed),
        ..Timeline::default()
    })
}

/// One GET through the proxy on the worker's connection (a new one when it has none).
async fn exchange(
    client: &mut Option<Client>,
    proxy: SocketAddr,
    source: Option<IpAddr>,
    uri: &hyper::Uri,
) -> Ended {
    if client.as_ref().is_none_or(|client| client.is_closed()) {
        *client = connect(proxy, source).await;
    }
    let Some(sender) = client.as_mut() else {
        return Ended::FailedBeforeResponse;
    };
    if sender.ready().await.is_err() {
        *client = None;
        return Ended::FailedBeforeResponse;
    }
    let request = hyper::Request::get(uri.clone())
        .header(
            hyper::header::HOST,
            uri.authority().map_or("", |authority| authority.as_str()),
        )
        .body(http_body_util::Empty::new());
    let Ok(request) = request else {
        return Ended::FailedBeforeResponse;
    };
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(_) => return Ended::FailedBeforeResponse,
    };
    let ok = response.status() == hyper::StatusCode::OK;
    match response.into_body().collect().await {
        Ok(_) if ok => Ended::Ok,
        Ok(_) => Ended::FailedMidResponse,
        Err(_) => Ended::FailedMidResponse,
    }
}

async fn connect(proxy: SocketAddr, source: Option<IpAddr>) -> Option<Client> {
    let socket = match proxy {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .ok()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).ok()?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(3), socket.connect(proxy))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_is_the_first_advert_of_another_master_after_the_fault() {
        let (a, b): (IpAddr, IpAddr) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let adverts = [
            (100, a, 150),
            (1_100, a, 150),
            (2_000, a, 0),
            (2_050, b, 100),
            (3_000, b, 100),
        ];
        assert_eq!(takeover(&adverts, 1_500), (Some(2_000), Some(2_050)));
        // A crash: no goodbye, detection is the takeover.
        let crash = [(100, a, 150), (1_100, a, 150), (4_600, b, 100)];
        assert_eq!(takeover(&crash, 1_500), (Some(4_600), Some(4_600)));
        // A fault that moves nothing.
        assert_eq!(takeover(&crash[..2], 1_500), (None, None));
    }

    #[test]
    fn a_member_is_out_when_the_directors_view_says_anything_but_in() {
        let status = |state: &str| {
            serde_json::json!({
                "groups": [{ "state": "MASTER" }],
                "director": { "groups": [{ "members": [
                    { "name": "node1", "state": "in" },
                    { "name": "node2", "state": state },
                ] }] },
            })
        };
        assert!(directs(&status("in")));
        assert!(!member_out(&status("in"), "node2"));
        assert!(member_out(&status("out: drained"), "node2"));
        assert!(!member_out(&status("out: drained"), "node1"));
        assert!(!member_out(&status("out: drained"), "node3"));
        // A node without a director view (no `director` key) has nobody out.
        assert!(!member_out(&serde_json::json!({ "groups": [] }), "node2"));
    }

    #[test]
    fn named_faults_parse_and_a_node_needs_its_command() {
        assert!(Node::parse("node1=ssh root@node1 palisade").is_ok());
        assert!(Node::parse("node1").is_err());
        assert!(FAULTS.iter().any(|(name, ..)| *name == "kill-director"));
    }
}
