//! The port monitor: every redirect port (and the scan port) must accept a TCP connection, as
//! a whole (swg-mon: one port down means the node is failed, even if the others still
//! listen). The test port is watched and reported but never fails the node.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::{Health, Hysteresis};

/// One watched port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitoredPort {
    pub addr: SocketAddr,
    /// What it is ("redirect port", "scan port", "test port").
    pub kind: String,
    /// Whether the node fails when it does not accept connections.
    pub required: bool,
}

/// A port's state at the last probe (`palisade monitor -v`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortState {
    pub port: MonitoredPort,
    pub listening: bool,
    /// Why not, when not (the connect's error, or a timeout).
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PortMonitorConfig {
    /// Every address to watch.
    pub ports: Vec<MonitoredPort>,
    pub interval: Duration,
    /// A connect attempt slower than this counts as a failure.
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Default for PortMonitorConfig {
    fn default() -> Self {
        PortMonitorConfig {
            ports: Vec::new(),
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
        }
    }
}

/// Probes the ports and publishes the node's health on a watch channel.
pub struct PortMonitor {
    config: PortMonitorConfig,
}

impl PortMonitor {
    pub fn new(config: PortMonitorConfig) -> PortMonitor {
        PortMonitor { config }
    }

    /// One probe of every port (each within the timeout).
    pub async fn probe(&self) -> Vec<PortState> {
        let mut states = Vec::with_capacity(self.config.ports.len());
        for port in &self.config.ports {
            let connected =
                tokio::time::timeout(self.config.timeout, TcpStream::connect(port.addr)).await;
            let error = match connected {
                Ok(Ok(_)) => None,
                // Accepted, then reset (the scan port resets a non-member at once, and the
                // reset can beat the connect's completion): something listens.
                Ok(Err(error))
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    None
                }
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!("no answer within {:?}", self.config.timeout)),
            };
            states.push(PortState {
                port: port.clone(),
                listening: error.is_none(),
                error,
            });
        }
        states
    }

    /// Whether a probe's result leaves the node healthy: every required port listens.
    pub fn healthy(states: &[PortState]) -> bool {
        states
            .iter()
            .all(|state| state.listening || !state.port.required)
    }

    /// Runs forever, sending every state change (starting from `initial`) and every probe's
    /// per-port result.
    pub async fn run(
        self,
        initial: Health,
        state: watch::Sender<Health>,
        ports: watch::Sender<Vec<PortState>>,
    ) {
        let mut hysteresis = Hysteresis::new(self.config.rise, self.config.fall, initial);
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let states = self.probe().await;
            let success = PortMonitor::healthy(&states);
            if let Some(changed) = hysteresis.record(success) {
                let down: Vec<String> = states
                    .iter()
                    .filter(|state| !state.listening && state.port.required)
                    .map(|state| {
                        format!(
                            "{} {} not listening: {}",
                            state.port.kind,
                            state.port.addr,
                            state.error.as_deref().unwrap_or("?")
                        )
                    })
                    .collect();
                match changed {
                    Health::Failed => {
                        tracing::warn!("current state: {changed} ({})", down.join(", "))
                    }
                    Health::Healthy => tracing::info!(
                        ports = states.len(),
                        "current state: {changed} (every monitored port listening)"
                    ),
                }
                let _ = state.send(changed);
            }
            ports.send_replace(states);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port that accepts and resets at once (the scan port does so to non-members)
    /// listens: the reset may beat the connect's completion, and must not fail the node.
    #[tokio::test]
    async fn a_port_that_resets_at_accept_still_listens() {
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            panic!("bind failed");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("no local addr");
        };
        let resetter = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
            }
        });
        let monitor = PortMonitor::new(PortMonitorConfig {
            ports: vec![MonitoredPort {
                addr,
                kind: "scan port".to_owned(),
                required: true,
            }],
            ..PortMonitorConfig::default()
        });
        for _ in 0..50 {
            let states = monitor.probe().await;
            assert!(PortMonitor::healthy(&states), "{states:?}");
        }
        resetter.abort();
    }

    #[tokio::test]
    async fn a_closed_port_fails_the_node_and_reopening_recovers_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let Ok(listener) = listener else {
            panic!("bind failed");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("no local addr");
        };
        let monitor = PortMonitor::new(PortMonitorConfig {
            ports: vec![
                MonitoredPort {
                    addr,
                    kind: "redirect port".to_owned(),
                    required: true,
                },
                // A test port that does not listen is reported, never a failure.
                MonitoredPort {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                    kind: "test port".to_owned(),
                    required: false,
                },
            ],
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
        });
        let states = monitor.probe().await;
        assert!(PortMonitor::healthy(&states));
        assert_eq!(
            states
                .iter()
                .map(|state| state.listening)
                .collect::<Vec<_>>(),
            vec![true, false]
        );
        let (sender, mut receiver) = watch::channel(Health::Healthy);
        let (ports, _) = watch::channel(Vec::new());
        let task = tokio::spawn(monitor.run(Health::Healthy, sender, ports));
        drop(listener);
        let failed = tokio::time::timeout(
            Duration::from_secs(5),
            receiver.wait_for(|state| *state == Health::Failed),
        )
        .await
        .map(|result| result.map(|state| *state));
        assert!(
            matches!(failed, Ok(Ok(Health::Failed))),
            "never reported failure"
        );
        let _again = tokio::net::TcpListener::bind(addr).await;
        let healthy = tokio::time::timeout(
            Duration::from_secs(5),
            receiver.wait_for(|state| *state == Health::Healthy),
        )
        .await
        .map(|result| result.map(|state| *state));
        assert!(
            matches!(healthy, Ok(Ok(Health::Healthy))),
            "never recovered"
        );
        task.abort();
    }
}
