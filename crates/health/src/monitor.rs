//! The port monitor: every redirect port must accept a TCP connection, as a whole (swg-mon:
//! one port down means the node is failed, even if the others still listen).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::{Health, Hysteresis};

#[derive(Clone, Debug)]
pub struct PortMonitorConfig {
    /// Every address that must accept connections (redirect ports; the test port too).
    pub ports: Vec<SocketAddr>,
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

    /// One probe: every port connects within the timeout.
    pub async fn probe(&self) -> bool {
        for port in &self.config.ports {
            let connected =
                tokio::time::timeout(self.config.timeout, TcpStream::connect(port)).await;
            if !matches!(connected, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }

    /// Runs forever, sending every state change (starting from `initial`).
    pub async fn run(self, initial: Health, state: watch::Sender<Health>) {
        let mut hysteresis = Hysteresis::new(self.config.rise, self.config.fall, initial);
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let success = self.probe().await;
            if let Some(changed) = hysteresis.record(success) {
                match changed {
                    Health::Failed => {
                        tracing::warn!(ports = ?self.config.ports, "current state: {changed}")
                    }
                    Health::Healthy => {
                        tracing::info!(ports = ?self.config.ports, "current state: {changed}")
                    }
                }
                let _ = state.send(changed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ports: vec![addr],
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
        });
        assert!(monitor.probe().await);
        let (sender, mut receiver) = watch::channel(Health::Healthy);
        let task = tokio::spawn(monitor.run(Health::Healthy, sender));
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
