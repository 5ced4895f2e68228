//! The deep health check (seed 004) with the real binary on loopback: 200 while a request
//! through the node's own proxy reaches its canary (whatever the policy's client allowlist
//! says), 503 with the reason while the proxy accepts TCP but does not proxy (here: at its
//! connection limit), and healthy again when it recovers; `palisade healthcheck` agrees.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palisade_e2e::node::NodeProcess;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// Only 127.0.0.1 may use the proxy: the canary's loopback source is another address.
const POLICY: &str = "default_action = \"allow\"\n[access]\nclients = [\"127.0.0.1/32\"]\n";

fn ask(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

fn wait_answer(addr: SocketAddr, wanted: &str, node: &NodeProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = ask(addr);
        if response.starts_with(wanted) {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "no {wanted:?} from {addr}: last {response:?}\n{}",
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_deep_check_fails_while_the_proxy_accepts_but_does_not_proxy() {
    let node = NodeProcess::start(
        BIN,
        "max_connections = 2\n[health]\ndeep_check_listen = \"127.0.0.1:0\"\ndeep_check_interval = \"100ms\"\ndeep_check_timeout = \"500ms\"\n",
        POLICY,
    );
    node.wait_stderr("Deep health check listening", Duration::from_secs(10));
    let addr: SocketAddr = node
        .logged_addr(&["Deep health check listening"])
        .unwrap_or_else(|| panic!("no deep check address:\n{}", node.stderr()));
    let healthy = wait_answer(addr, "HTTP/1.1 200", &node);
    assert!(healthy.ends_with("ok test-node\n"), "{healthy}");
    let cli = std::process::Command::new(BIN)
        .args(["healthcheck", "--addr", &addr.to_string()])
        .output()
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(cli.status.success(), "{cli:?}");

    // Two idle clients take both connection slots: the port still accepts, nothing proxies.
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(node.proxy).unwrap_or_else(|error| panic!("{error}")))
        .collect();
    let failing = wait_answer(addr, "HTTP/1.1 503", &node);
    assert!(
        failing.contains("failure test-node: the proxy on") && failing.contains("503"),
        "{failing}"
    );
    assert!(
        node.stderr()
            .contains("current state: failure (deep check:")
    );
    let cli = std::process::Command::new(BIN)
        .args(["healthcheck", "--addr", &addr.to_string()])
        .output()
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(!cli.status.success(), "{cli:?}");

    drop(held);
    wait_answer(addr, "HTTP/1.1 200", &node);
    // The canary's requests are neither logged nor counted as clients' requests.
    assert!(node.access_log().is_empty(), "{:?}", node.access_log());
}
