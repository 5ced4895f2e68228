//! Node health for the HA plane: is this node's proxy really serving?
//!
//! The seeds' rule: "if the proxy goes down for any reason, failover is triggered", and the
//! `swg-mon` monitor that watches every redirect port as a whole ("current state: failure").
//! Checks run in-process (no forked scripts, unlike keepalived's track_script) several times a
//! second; a [`Hysteresis`] turns raw probe results into a state that changes only after
//! `fall` failures in a row or `rise` successes in a row, so one lost probe does not move a
//! VIP and one lucky probe does not bring a broken node back.

pub mod deep;
mod hysteresis;
mod monitor;

pub use hysteresis::{Health, Hysteresis};
pub use monitor::{MonitoredPort, PortMonitor, PortMonitorConfig, PortState};
