//! The deep health check (seed 004): a node is healthy only if a request sent *through its own
//! proxy*, on its own redirect listener, succeeds end to end (accept, parser, policy, upstream
//! dial, response). A proxy that still accepts TCP but does not proxy (wedged, at its
//! connection limit, its policy engine stuck) fails this check while the port monitor still
//! sees a listening port.
//!
//! The request goes to a canary origin inside the node (loopback, an ephemeral port), from a
//! loopback source address chosen at random at start (`::1` through an IPv6 listener), with a
//! token made at start: the proxy admits that source even if the policy's allowlist does not,
//! serves it the canary request only, and the canary answers only the token. No
//! client can reach the canary (its port is one of the node's own: a self-connection), and
//! the check is never relayed (the redirect listener is reached on the node's own address).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{Health, Hysteresis};

/// Connections the endpoint serves at once.
const ENDPOINT_CONNECTIONS: usize = 64;

/// The path the canary answers.
pub const CANARY_PATH: &str = "/palisade-canary";
/// The header that carries the token.
pub const CANARY_HEADER: &str = "x-palisade-canary";
const CANARY_BODY: &str = "palisade canary ok\n";
/// Bytes of a request or response read at most.
const MAX_READ: usize = 4096;

/// The secret and addresses of this node's canary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    /// Made at start; never logged or shown.
    pub token: String,
    /// The loopback address the check connects from (the proxy admits it for the canary
    /// only).
    pub source: IpAddr,
    /// Where the canary origin listens.
    pub origin: SocketAddr,
}

impl Canary {
    /// A new token and source for a canary origin at `origin`, checked through an IPv6
    /// listener if `ipv6` (IPv6 has one loopback address, `::1`; its requests without the
    /// token are ordinary clients' requests).
    pub fn new(origin: SocketAddr, ipv6: bool) -> std::io::Result<Canary> {
        let mut random = [0u8; 19];
        SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| std::io::Error::other("no randomness for the canary token"))?;
        let token: String = random[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        // 127.x.y.z, never 127.0.0.1 (what local clients use) nor a .0 or .255.
        let source = Ipv4Addr::new(127, random[16].max(1), random[17], random[18].clamp(1, 254));
        Ok(Canary {
            token,
            source: if ipv6 {
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            } else {
                IpAddr::V4(source)
            },
            origin,
        })
    }
}

/// Answers the canary request (with the token) with 200, anything else with 404, then closes.
pub async fn serve_canary(listener: TcpListener, token: String) {
    let token = std::sync::Arc::new(token);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let token = token.clone();
        tokio::spawn(async move {
            let head = read_head(&mut stream, Duration::from_secs(2)).await;
            let authentic = head
                .as_deref()
                .is_some_and(|head| carries_token(head, &token));
            let response = if authentic {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{CANARY_BODY}",
                    CANARY_BODY.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Whether a request head asks for the canary path with this token.
fn carries_token(head: &str, token: &str) -> bool {
    let mut lines = head.split("\r\n");
    let path_ok = lines
        .next()
        .is_some_and(|line| line.split(' ').nth(1) == Some(CANARY_PATH));
    let token_ok = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case(CANARY_HEADER) && value.trim() == token
        })
    });
    path_ok && token_ok
}

/// A head (up to the blank line, at most [`MAX_READ`] bytes) within `timeout`.
async fn read_head(stream: &mut TcpStream, timeout: Duration) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|window| window == b"\r\n\r\n") && buf.len() < MAX_READ {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(count) => buf.extend_from_slice(&chunk[..count]),
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok()?;
    String::from_utf8(buf).ok()
}

#[derive(Clone, Debug)]
pub struct DeepCheckConfig {
    /// The node's own redirect listener (on one of its own addresses, never a VIP).
    pub target: SocketAddr,
    pub canary: Canary,
    pub interval: Duration,
    /// The whole exchange must finish within this.
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Sends the canary request through the proxy and publishes the node's health with why.
pub struct DeepCheck {
    config: DeepCheckConfig,
}

/// The deep check's verdict: healthy, or why not.
pub type DeepState = (Health, Option<String>);

impl DeepCheck {
    pub fn new(config: DeepCheckConfig) -> DeepCheck {
        DeepCheck { config }
    }

    /// One check: `Err(why)` unless the proxy fetched the canary within the timeout.
    pub async fn probe(&self) -> Result<(), String> {
        let config = &self.config;
        let exchange = async {
            let socket = match config.target {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .map_err(|error| format!("cannot make a socket: {error}"))?;
            if config.target.is_ipv4() == config.canary.source.is_ipv4() {
                socket
                    .bind(SocketAddr::new(config.canary.source, 0))
                    .map_err(|error| format!("cannot bind the canary source: {error}"))?;
            }
            let mut stream = socket
                .connect(config.target)
                .await
                .map_err(|error| format!("redirect listener {} refused: {error}", config.target))?;
            let request = format!(
                "GET http://{origin}{CANARY_PATH} HTTP/1.1\r\nHost: {origin}\r\nX-Palisade-Canary: {token}\r\nConnection: close\r\n\r\n",
                origin = config.canary.origin,
                token = config.canary.token,
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|error| format!("cannot send the canary request: {error}"))?;
            let mut response = Vec::with_capacity(512);
            let _ = (&mut stream)
                .take(MAX_READ as u64)
                .read_to_end(&mut response)
                .await;
            let text = String::from_utf8_lossy(&response);
            let status = text.lines().next().unwrap_or("").to_owned();
            if status.starts_with("HTTP/1.1 200") && text.ends_with(CANARY_BODY) {
                Ok(())
            } else if status.is_empty() {
                Err(format!("the proxy on {} answered nothing", config.target))
            } else {
                Err(format!(
                    "the proxy on {} answered {status:?}",
                    config.target
                ))
            }
        };
        match tokio::time::timeout(config.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer through the proxy on {} within {:?}",
                config.target, config.timeout
            )),
        }
    }

    /// Checks every interval forever, publishing every change of verdict.
    pub async fn run(self, initial: Health, state: watch::Sender<DeepState>) {
        let mut hysteresis = Hysteresis::new(self.config.rise, self.config.fall, initial);
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_failure = None;
        loop {
            tick.tick().await;
            let result = self.probe().await;
            if let Err(why) = &result {
                last_failure = Some(why.clone());
            }
            if let Some(changed) = hysteresis.record(result.is_ok()) {
                match changed {
                    Health::Failed => tracing::warn!(
                        "current state: failure (deep check: {})",
                        last_failure.as_deref().unwrap_or("?")
                    ),
                    Health::Healthy => {
                        tracing::info!(
                            "current state: healthy (deep check: the canary answers through the proxy)"
                        )
                    }
                }
                let why = (changed == Health::Failed)
                    .then(|| last_failure.clone())
                    .flatten();
                state.send_replace((changed, why));
            }
        }
    }
}

/// The deep check's HTTP endpoint: 200 while healthy, 503 with the reason otherwise, for
/// load balancers and monitors in front of the node (any request, then close).
pub async fn serve_endpoint(
    listener: TcpListener,
    node: String,
    state: watch::Receiver<DeepState>,
) {
    // Anyone who can reach the port must not be able to spend the node's descriptors: at
    // most this many at once, the rest closed at accept.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(ENDPOINT_CONNECTIONS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (health, why) = state.borrow().clone();
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = read_head(&mut stream, Duration::from_millis(500)).await;
            let (status, body) = match health {
                Health::Healthy => ("200 OK", format!("ok {node}\n")),
                Health::Failed => (
                    "503 Service Unavailable",
                    format!(
                        "failure {node}: {}\n",
                        why.as_deref().unwrap_or("deep check failing")
                    ),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_answers_its_path_with_its_token_only() {
        let head = "GET /palisade-canary HTTP/1.1\r\nHost: x\r\nX-Palisade-Canary: abc\r\n\r\n";
        assert!(carries_token(head, "abc"));
        assert!(!carries_token(head, "abd"));
        assert!(!carries_token(
            "GET /other HTTP/1.1\r\nX-Palisade-Canary: abc\r\n\r\n",
            "abc"
        ));
        assert!(!carries_token(
            "GET /palisade-canary HTTP/1.1\r\n\r\n",
            "abc"
        ));
    }

    #[test]
    fn a_canary_has_a_fresh_token_and_a_loopback_source_other_than_127_0_0_1() {
        let origin = SocketAddr::from(([127, 0, 0, 1], 1));
        let (Ok(a), Ok(b)) = (Canary::new(origin, false), Canary::new(origin, false)) else {
            panic!("no canary");
        };
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 32);
        assert!(a.source.is_loopback() && a.source != IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
