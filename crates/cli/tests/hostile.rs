//! Hostile clients against the real binary: one regression test per finding of the security
//! review (`../shared/research/security-review-2.md`), named for it, each failing on the
//! code the review read (commit fe4121b) and passing since its fix.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use palisade_e2e::node::NodeProcess;
use palisade_e2e::origin::Origin;
use palisade_e2e::status_of;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// Only 127.0.0.1 may use the proxy (other loopback addresses play outsiders); test origins
/// on 127.0.0.1 are exempt from SSRF protection; one host is blocked.
const POLICY: &str = r#"
default_action = "allow"
[access]
clients = ["127.0.0.1/32"]
allow_destinations = ["127.0.0.1/32"]

[[ruleset]]
name = "test"
  [[ruleset.rule]]
  name = "blocked-host"
  action = "block"
  host = ["127.0.0.2"]
"#;

/// The same, with every loopback address a client.
fn policy_all_loopback() -> String {
    POLICY.replace(
        "clients = [\"127.0.0.1/32\"]",
        "clients = [\"127.0.0.0/8\"]",
    )
}

fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|error| panic!("socket: {error}"));
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .unwrap_or_else(|error| panic!("bind {source:?}: {error}"));
    socket
        .connect(&to.into())
        .unwrap_or_else(|error| panic!("connect {to}: {error}"));
    socket.into()
}

/// Sends one request and reads the response until the proxy closes.
fn exchange(stream: &mut TcpStream, request: &str) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(response)
}

fn get(origin: &Origin, path: &str) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        origin.url(path)
    )
}

/// Whether the peer has closed `stream` (EOF or reset), waiting at most `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut scratch = [0u8; 4096];
    while Instant::now() < deadline {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        match stream.read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

// === F1: outsiders cannot take connection slots ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_clients_outside_the_allowlist_cannot_fill_max_connections() {
    let origin = Origin::start().await;
    let node = NodeProcess::start(BIN, "max_connections = 20", POLICY);
    // More outsiders than there are slots, all silent.
    let mut outsiders: Vec<TcpStream> = (0..40)
        .map(|_| connect_from([127, 0, 0, 9], node.proxy))
        .collect();
    node.wait_metric(
        "palisade_refused_connections_total{reason=\"client_not_allowed\"}",
        |refused| refused >= 40.0,
        Duration::from_secs(10),
    );
    // Each was reset at accept: none holds a slot.
    for outsider in &mut outsiders {
        assert!(closed_within(outsider, Duration::from_secs(5)));
    }
    assert_eq!(node.metric("palisade_active_connections"), 0.0);
    let mut allowed = connect_from([127, 0, 0, 1], node.proxy);
    let response = exchange(&mut allowed, &get(&origin, "/small"))
        .unwrap_or_else(|error| panic!("allowed client: {error}"));
    assert_eq!(status_of(&response), 200);
    // Forty refusals, one log line (rate-limited).
    let lines = node
        .stderr()
        .matches("client connection refused at accept")
        .count();
    assert_eq!(lines, 1, "{}", node.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_cap_resets_the_excess_and_spares_other_sources() {
    let origin = Origin::start().await;
    let node = NodeProcess::start(
        BIN,
        "max_connections_per_source = 3\nfirst_byte_timeout = \"30s\"",
        &policy_all_loopback(),
    );
    let held: Vec<TcpStream> = (0..3)
        .map(|_| connect_from([127, 0, 0, 3], node.proxy))
        .collect();
    node.wait_metric(
        "palisade_active_connections",
        |active| active >= 3.0,
        Duration::from_secs(10),
    );
    let mut excess = connect_from([127, 0, 0, 3], node.proxy);
    assert!(closed_within(&mut excess, Duration::from_secs(5)));
    assert_eq!(
        node.metric("palisade_refused_connections_total{reason=\"per_source_limit\"}"),
        1.0
    );
    let mut other = connect_from([127, 0, 0, 1], node.proxy);
    let response = exchange(&mut other, &get(&origin, "/small"))
        .unwrap_or_else(|error| panic!("other source: {error}"));
    assert_eq!(status_of(&response), 200);
    // A slot given back is usable again.
    drop(held);
    node.wait_metric(
        "palisade_active_connections",
        |active| active == 0.0,
        Duration::from_secs(10),
    );
    let mut again = connect_from([127, 0, 0, 3], node.proxy);
    let response = exchange(&mut again, &get(&origin, "/small"))
        .unwrap_or_else(|error| panic!("source after release: {error}"));
    assert_eq!(status_of(&response), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_new_connection_is_closed_after_first_byte_timeout() {
    let node = NodeProcess::start(
        BIN,
        "first_byte_timeout = \"1s\"\nclient_idle_timeout = \"60s\"",
        POLICY,
    );
    let mut silent = connect_from([127, 0, 0, 1], node.proxy);
    let opened = Instant::now();
    // Well under client_idle_timeout: the first-byte timeout is what closes it.
    assert!(closed_within(&mut silent, Duration::from_secs(20)));
    assert!(opened.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_limit_is_raised_and_an_unservable_max_connections_is_warned() {
    let node = NodeProcess::start(BIN, "max_connections = 1000000", POLICY);
    node.wait_stderr("file descriptor limit", Duration::from_secs(10));
    let (limit, _) = max_open_files(&node.pid().to_string());
    let (_, hard) = max_open_files("self");
    assert_eq!(limit, hard, "the soft limit is raised to the hard one");
    if hard < 6_000_256 {
        node.wait_stderr(
            "proxy.max_connections = 1000000 needs up to 6000256 file descriptors",
            Duration::from_secs(10),
        );
    }
}

/// `Max open files` (soft, hard) of a process, from `/proc/<pid>/limits` (or `self`).
fn max_open_files(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|error| panic!("/proc/{pid}/limits: {error}"));
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no Max open files in {limits}"));
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    match fields[..] {
        [soft, hard] => (soft, hard),
        _ => panic!("cannot read {line:?}"),
    }
}

// === F2: a client that never reads is dropped after write_timeout ===

/// Pipelines `request` many times on a connection with a tiny receive buffer that is never
/// read, then checks the node drops the connection although the client keeps it open.
fn never_reading_client_is_dropped(node: &NodeProcess, request: &str) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|error| panic!("socket: {error}"));
    socket
        .set_recv_buffer_size(4096)
        .unwrap_or_else(|error| panic!("SO_RCVBUF: {error}"));
    socket
        .connect(&node.proxy.into())
        .unwrap_or_else(|error| panic!("connect: {error}"));
    let mut stream: TcpStream = socket.into();
    node.wait_metric(
        "palisade_active_connections",
        |active| active == 1.0,
        Duration::from_secs(10),
    );
    // The proxy stops reading once its writes block; our writes then block too.
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap_or_else(|error| panic!("SO_SNDTIMEO: {error}"));
    for _ in 0..300 {
        if stream.write_all(request.as_bytes()).is_err() {
            break;
        }
    }
    // write_timeout is 2 s; read and idle timeouts are 60 s and cannot be what fires.
    node.wait_metric(
        "palisade_active_connections",
        |active| active == 0.0,
        Duration::from_secs(20),
    );
    drop(stream);
}

const NEVER_READS_CONFIG: &str =
    "write_timeout = \"2s\"\nread_timeout = \"60s\"\nclient_idle_timeout = \"60s\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_trace_answers_to_a_client_that_never_reads_are_bounded() {
    let node = NodeProcess::start(BIN, NEVER_READS_CONFIG, POLICY);
    let pad = "A".repeat(60_000);
    let request = format!(
        "TRACE http://127.0.0.1:9/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nX-Pad: {pad}\r\n\r\n"
    );
    never_reading_client_is_dropped(&node, &request);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_block_pages_to_a_client_that_never_reads_are_bounded() {
    let node = NodeProcess::start(BIN, NEVER_READS_CONFIG, POLICY);
    let long = "B".repeat(16_000);
    let request = format!("GET http://127.0.0.2:9/{long} HTTP/1.1\r\nHost: a\r\n\r\n");
    never_reading_client_is_dropped(&node, &request);
}

// === F11: request bodies have a minimum rate ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_a_body_trickling_under_the_minimum_rate_gets_408() {
    let origin = Origin::start().await;
    let node = NodeProcess::start(
        BIN,
        "read_timeout = \"5s\"\nmin_body_rate = 500\nbody_rate_window = \"2s\"",
        POLICY,
    );
    let mut stream = connect_from([127, 0, 0, 1], node.proxy);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        origin.url("/echo")
    );
    stream
        .write_all(head.as_bytes())
        .unwrap_or_else(|error| panic!("{error}"));
    // One byte a second: every gap is far below read_timeout, the rate far below 500 B/s.
    let started = Instant::now();
    let mut response = Vec::new();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1000)));
    while started.elapsed() < Duration::from_secs(30) {
        if stream.write_all(b"x").is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(read) => response.extend_from_slice(&buf[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if status_of(&response) != 0 {
            break;
        }
    }
    assert_eq!(
        status_of(&response),
        408,
        "{}",
        String::from_utf8_lossy(&response)
    );
    let record = node.wait_access_log(|record| record["status"] == 408, Duration::from_secs(10));
    assert!(
        record["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("slower than 500 B/s")),
        "{record}"
    );
}

// === F13: the shed 503 reaches the client ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f13_shed_503_is_delivered_not_reset() {
    let origin = Origin::start().await;
    let node = NodeProcess::start(
        BIN,
        "max_connections = 1\nfirst_byte_timeout = \"60s\"",
        POLICY,
    );
    // Nothing else may hold the only slot when ours takes it.
    node.wait_metric(
        "palisade_active_connections",
        |active| active == 0.0,
        Duration::from_secs(10),
    );
    let _held = connect_from([127, 0, 0, 1], node.proxy);
    node.wait_metric(
        "palisade_active_connections",
        |active| active == 1.0,
        Duration::from_secs(10),
    );
    // Clients that send their request at once, as every client does: the shed connection
    // has unread input when the proxy is done with it, which a plain close turns into a
    // reset that can destroy the 503 before the client reads it.
    for attempt in 0..30 {
        let mut stream = connect_from([127, 0, 0, 1], node.proxy);
        let request = get(&origin, "/small");
        let response = exchange(&mut stream, &request)
            .unwrap_or_else(|error| panic!("attempt {attempt}: {error}"));
        assert_eq!(status_of(&response), 503, "attempt {attempt}");
    }
}

// === F7: the admin listener is bounded ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_admin_connections_that_send_nothing_or_half_a_head_are_closed() {
    let node = NodeProcess::start_with_admin(BIN, "", "header_read_timeout = \"1s\"", POLICY);
    let mut silent = connect_from([127, 0, 0, 1], node.admin);
    let mut partial = connect_from([127, 0, 0, 1], node.admin);
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap_or_else(|error| panic!("{error}"));
    // Kept alive after a whole exchange, then idle.
    let mut idle = connect_from([127, 0, 0, 1], node.admin);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap_or_else(|error| panic!("{error}"));
    let mut response = [0u8; 512];
    let _ = idle.set_read_timeout(Some(Duration::from_secs(5)));
    let read = idle.read(&mut response).unwrap_or(0);
    assert_eq!(status_of(&response[..read]), 200);
    // The timeout is 1 s; before the fix none of them was ever closed.
    for (what, stream) in [
        ("silent", &mut silent),
        ("partial head", &mut partial),
        ("idle keep-alive", &mut idle),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(15)),
            "{what} admin connection still open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_admin_connection_cap_keeps_descriptors_for_the_proxy() {
    let origin = Origin::start().await;
    let node = NodeProcess::start_with_admin(
        BIN,
        "",
        "max_connections = 4\nheader_read_timeout = \"60s\"",
        POLICY,
    );
    let held: Vec<TcpStream> = (0..4)
        .map(|_| connect_from([127, 0, 0, 1], node.admin))
        .collect();
    let mut over = connect_from([127, 0, 0, 1], node.admin);
    assert!(
        closed_within(&mut over, Duration::from_secs(10)),
        "a fifth admin connection was served"
    );
    let mut client = connect_from([127, 0, 0, 1], node.proxy);
    let response = exchange(&mut client, &get(&origin, "/small"))
        .unwrap_or_else(|error| panic!("proxy client: {error}"));
    assert_eq!(status_of(&response), 200);
    drop(held);
    // Slots given back: the admin API answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = connect_from([127, 0, 0, 1], node.admin);
        let answered = exchange(
            &mut stream,
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .map(|response| status_of(&response) == 200)
        .unwrap_or(false);
        if answered {
            break;
        }
        assert!(Instant::now() < deadline, "admin never answered again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === one self-connection guard ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_destinations_never_opens_the_nodes_own_ports() {
    // Something listens where the heartbeat port is configured, as the mesh would.
    let heartbeat = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|error| panic!("bind heartbeat stand-in: {error}"));
    heartbeat
        .set_nonblocking(true)
        .unwrap_or_else(|error| panic!("{error}"));
    let heartbeat_addr = heartbeat
        .local_addr()
        .unwrap_or_else(|error| panic!("{error}"));
    // The whole of loopback is exempt from SSRF protection: only the guard can refuse.
    let policy = policy_all_loopback().replace(
        "allow_destinations = [\"127.0.0.1/32\"]",
        "allow_destinations = [\"127.0.0.0/8\"]",
    );
    let config = format!(
        "\n[heartbeat]\nlisten = \"{heartbeat_addr}\"\npeers = [\"127.0.0.2:{}\"]\nkey = \"a shared secret of some length\"\n",
        heartbeat_addr.port()
    );
    let node = NodeProcess::start(BIN, &config, &policy);
    for target in [
        format!("127.0.0.1:{}", heartbeat_addr.port()),
        format!("127.0.0.5:{}", heartbeat_addr.port()),
        node.admin.to_string(),
        format!("127.0.0.7:{}", node.admin.port()),
        node.test_port.to_string(),
    ] {
        let mut client = connect_from([127, 0, 0, 1], node.proxy);
        let request =
            format!("GET http://{target}/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let response =
            exchange(&mut client, &request).unwrap_or_else(|error| panic!("{target}: {error}"));
        assert_eq!(
            status_of(&response),
            508,
            "{target}: {}",
            String::from_utf8_lossy(&response)
        );
    }
    assert!(
        matches!(heartbeat.accept(), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "a proxied request reached the heartbeat port"
    );
}

// === request ids say nothing about the node ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reveal_neither_start_time_nor_request_count() {
    let node = NodeProcess::start(BIN, "", POLICY);
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let mut client = connect_from([127, 0, 0, 1], node.proxy);
            // A blocked host: answered by the proxy itself, with the id in a header.
            let response = exchange(
                &mut client,
                "GET http://127.0.0.2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .unwrap_or_else(|error| panic!("{error}"));
            String::from_utf8_lossy(&response)
                .lines()
                .find_map(|line| line.strip_prefix("X-Palisade-Request-Id: "))
                .map(|id| id.trim().to_owned())
                .unwrap_or_else(|| panic!("no request id"))
        })
        .collect();
    for id in &ids {
        assert!(
            id.len() == 16 && id.bytes().all(|byte| byte.is_ascii_hexdigit()),
            "{id}"
        );
    }
    // Before: "<start time in hex>-<counter>", so consecutive ids shared a prefix and
    // counted up.
    assert_ne!(ids[0][..8], ids[1][..8], "{ids:?}");
    assert_ne!(ids[1][..8], ids[2][..8], "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostic_log_to_a_file_has_no_colour_codes() {
    let node = NodeProcess::start(BIN, "", POLICY);
    node.wait_stderr("palisade node started", Duration::from_secs(10));
    assert!(!node.stderr().contains('\u{1b}'), "{:?}", node.stderr());
}

// === F8: list files are watched like the policy file ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_an_entry_added_to_a_list_file_is_blocked_without_sighup() {
    let dns = palisade_e2e::dns::DnsServer::start().await;
    let origin = Origin::start().await;
    dns.set("newbad.test", &[std::net::IpAddr::from([127, 0, 0, 1])]);
    let policy = POLICY.replace(
        "[[ruleset]]",
        "[lists]\nextra = { file = \"extra.txt\" }\n\n[[ruleset]]",
    ) + "  [[ruleset.rule]]\n  name = \"extra-list\"\n  action = \"block\"\n  host_list = [\"extra\"]\n";
    // The list file sits beside the policy file, which the node is started with.
    let dir = palisade_e2e::node::TempDir::new("palisade-lists");
    let list = dir.0.join("extra.txt");
    std::fs::write(&list, "oldbad.test\n").unwrap_or_else(|error| panic!("{error}"));
    let policy = policy.replace("file = \"extra.txt\"", &format!("file = {list:?}"));
    let node = NodeProcess::start(
        BIN,
        &format!("\n[dns]\nservers = [\"{}\"]\n", dns.addr),
        &policy,
    );
    let url = format!("http://newbad.test:{}/small", origin.port());
    let fetch = || {
        let mut client = connect_from([127, 0, 0, 1], node.proxy);
        let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        status_of(&exchange(&mut client, &request).unwrap_or_else(|error| panic!("{error}")))
    };
    assert_eq!(fetch(), 200);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&list)
        .unwrap_or_else(|error| panic!("{error}"));
    file.write_all(b"newbad.test\n")
        .unwrap_or_else(|error| panic!("{error}"));
    drop(file);
    // The node polls every 100 ms (the test config); before the fix it never reloaded.
    let deadline = Instant::now() + Duration::from_secs(15);
    while fetch() != 403 {
        assert!(
            Instant::now() < deadline,
            "the new list entry is still allowed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.wait_stderr("policy reloaded", Duration::from_secs(5));
}

// === F6: path rules match what origins make of the path ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_path_rule_bypass_shapes_are_blocked_and_the_origin_sees_rfc3986_form() {
    let origin = Origin::start().await;
    let policy = POLICY.to_owned()
        + r#"  [[ruleset.rule]]
  name = "admin"
  action = "block"
  path_prefix = ["/admin"]
  [[ruleset.rule]]
  name = "manage-any-case"
  action = "block"
  path_prefix = ["/manage"]
  path_ignore_case = true
"#;
    let node = NodeProcess::start(BIN, "", &policy);
    let fetch = |path: &str| {
        let mut client = connect_from([127, 0, 0, 1], node.proxy);
        let request = format!(
            "GET http://{}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.addr
        );
        let response = exchange(&mut client, &request).unwrap_or_else(|error| panic!("{error}"));
        (
            status_of(&response),
            String::from_utf8_lossy(&response).into_owned(),
        )
    };
    // Each of these reached the origin as /admin-equivalent before the fix.
    for path in [
        "//admin",
        "/x/..;/admin",
        "/;/admin",
        "/%2Fadmin",
        "/%2fadmin",
        "/\\admin",
        "/%5Cadmin",
        "/admin;jsessionid=x",
        "/MANAGE",
        "/Manage/users",
    ] {
        let (status, response) = fetch(path);
        assert_eq!(status, 403, "{path}: {response}");
    }
    assert_eq!(
        origin.connections(),
        0,
        "a blocked shape reached the origin"
    );
    // The access log keeps the target as received and the form the rules saw.
    let record = node.wait_access_log(
        |record| {
            record["url"]
                .as_str()
                .is_some_and(|url| url.ends_with("//admin"))
        },
        Duration::from_secs(10),
    );
    assert_eq!(record["rule_path"], "/admin", "{record}");
    // Allowed paths reach the origin with RFC 3986 normalisation only: escaped slashes stay
    // (OCSP GETs carry base64 with %2F), merged slashes are not merged, case is kept.
    for (sent, seen) in [
        (
            "/ocsp/MFEwTzBNMEswSTAJ%2Fa%2bb%3D",
            "/ocsp/MFEwTzBNMEswSTAJ%2Fa%2Bb%3D",
        ),
        ("//static/x", "//static/x"),
        ("/ADMIN", "/ADMIN"),
        ("/x/../%73mall", "/small"),
    ] {
        let (status, response) = fetch(sent);
        assert_ne!(status, 403, "{sent}: {response}");
        assert!(
            origin.requests().iter().any(|request| request.uri == seen),
            "{sent}: origin never saw {seen}: {:?}",
            origin
                .requests()
                .iter()
                .map(|request| &request.uri)
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_slashes_can_be_refused_by_setting() {
    let origin = Origin::start().await;
    let node = NodeProcess::start(BIN, "refuse_escaped_slashes = true", POLICY);
    for path in ["/a%2Fb", "/a%5cb"] {
        let mut client = connect_from([127, 0, 0, 1], node.proxy);
        let request = format!(
            "GET http://{}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.addr
        );
        let response = exchange(&mut client, &request).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(status_of(&response), 400, "{path}");
    }
    assert_eq!(origin.connections(), 0);
}

// === F10: block-page placeholders cannot break out of a script ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f10_a_url_cannot_break_out_of_a_script_in_the_block_page() {
    let template = "block_page = '''\n<script>var t = `{{url}}`; var s = \"{{url_js}}\";</script><a href=\"{{url_attr}}\">x</a>\n'''\n";
    let node = NodeProcess::start(BIN, "", &format!("{template}{POLICY}"));
    let mut client = connect_from([127, 0, 0, 1], node.proxy);
    // The reviewer's URL: a template-literal substitution, then a backslash to eat the
    // closing quote of a JS string.
    let response = exchange(
        &mut client,
        "GET http://127.0.0.2/${alert(document.domain)}`;//\\ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let page = String::from_utf8_lossy(&response).into_owned();
    assert_eq!(status_of(&response), 403, "{page}");
    let script = page
        .split("<script>")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .unwrap_or_else(|| panic!("no script in {page}"));
    // Inside the script, none of the characters that end or escape a literal survive.
    for dangerous in ["${", "\\`", "\\\""] {
        assert!(!script.contains(dangerous), "{dangerous:?} in {script}");
    }
    assert_eq!(
        script.matches('`').count(),
        2,
        "only the template's own backticks: {script}"
    );
    assert_eq!(
        script.matches('"').count(),
        2,
        "only the template's own quotes: {script}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_above_the_minimum_rate_is_never_cut_however_long_it_takes() {
    let origin = Origin::start().await;
    let node = NodeProcess::start(
        BIN,
        "read_timeout = \"2s\"\nmin_body_rate = 500\nbody_rate_window = \"1s\"",
        POLICY,
    );
    let mut stream = connect_from([127, 0, 0, 1], node.proxy);
    // 20 KiB at ~4 KiB/s: five windows long, far longer than read_timeout in total, every
    // window well above 500 B/s.
    let chunk = [b'u'; 1024];
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        origin.url("/echo"),
        20 * chunk.len()
    );
    stream
        .write_all(head.as_bytes())
        .unwrap_or_else(|error| panic!("{error}"));
    let started = Instant::now();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        stream
            .write_all(&chunk)
            .unwrap_or_else(|error| panic!("cut after {:?}: {error}", started.elapsed()));
    }
    let mut response = Vec::new();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.read_to_end(&mut response);
    assert_eq!(
        status_of(&response),
        200,
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(started.elapsed() > Duration::from_secs(4));
}
