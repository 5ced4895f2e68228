//! The HA plane's Prometheus metrics, read from every group's published status at scrape
//! time (no counters of our own to keep in step): state, priority, drain, and the router's
//! RFC 6527-style counters.

use palisade_vrrp::{State, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

use crate::driver::GroupStatus;

const STATES: [State; 4] = [
    State::Initialize,
    State::Backup,
    State::Master,
    State::Fault,
];

/// Register with `registry.register_collector(Box::new(HaMetrics::new(...)))`.
#[derive(Debug)]
pub struct HaMetrics {
    groups: Vec<watch::Receiver<GroupStatus>>,
}

impl HaMetrics {
    pub fn new(groups: Vec<watch::Receiver<GroupStatus>>) -> HaMetrics {
        HaMetrics { groups }
    }

    fn snapshot(&self) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|group| group.borrow().clone())
            .collect()
    }
}

/// Reads one counter out of the router's stats.
type Read = fn(&Stats) -> u64;

/// The counters, each with its metric name (without `_total`) and help.
const COUNTERS: [(&str, &str, Read); 9] = [
    (
        "palisade_vrrp_address_list_errors",
        "Adverts for this group's VRID carrying other virtual addresses (another device using the VRID?)",
        |stats| stats.address_list_errors,
    ),
    (
        "palisade_vrrp_adverts_received",
        "VRRP adverts that reached the state machine",
        |stats| stats.adverts_received,
    ),
    ("palisade_vrrp_adverts_sent", "VRRP adverts sent", |stats| {
        stats.adverts_sent
    }),
    (
        "palisade_vrrp_priority_zero_received",
        "Priority-0 adverts received (a master leaving)",
        |stats| stats.priority_zero_received,
    ),
    (
        "palisade_vrrp_priority_zero_sent",
        "Priority-0 adverts sent (this master leaving)",
        |stats| stats.priority_zero_sent,
    ),
    (
        "palisade_vrrp_master_transitions",
        "Times this node became master",
        |stats| stats.master_transitions,
    ),
    (
        "palisade_vrrp_split_brain_heals",
        "Times this master heard a lower-priority master and re-announced",
        |stats| stats.split_brain_heals,
    ),
    (
        "palisade_vrrp_split_brain_stepdowns",
        "Times this master stepped down because the peer links named a better master whose adverts did not arrive (a split VRRP network)",
        |stats| stats.split_brain_stepdowns,
    ),
    (
        "palisade_vrrp_non_member_adverts",
        "Adverts for this group's VRID from a router that is not a member (another device using the VRID?)",
        |stats| stats.non_member_adverts,
    ),
];

/// Discarded packets by reason: every discarded packet counts once.
const DISCARDS: [(&str, Read); 9] = [
    ("ttl", |stats| stats.ttl_errors),
    ("checksum", |stats| stats.checksum_errors),
    ("version", |stats| stats.version_errors),
    ("type", |stats| stats.type_errors),
    ("length", |stats| stats.pkt_length_errors),
    ("vrid", |stats| stats.vrid_errors),
    ("interval", |stats| stats.interval_errors),
    ("auth_type", |stats| stats.auth_type_errors),
    ("address_family", |stats| stats.address_family_errors),
];

impl Collector for HaMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let groups = self.snapshot();
        if groups.is_empty() {
            return Ok(());
        }
        {
            let mut family = encoder.encode_descriptor(
                "palisade_vrrp_state",
                "1 for the HA group's current state (INIT, BACKUP, MASTER, FAULT), 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for group in &groups {
                for state in STATES {
                    let labels = [
                        ("instance", group.name.clone()),
                        ("state", state.to_string()),
                    ];
                    ConstGauge::new(i64::from(group.state == state))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, value) in [
            (
                "palisade_vrrp_priority",
                "Effective VRRP priority of this node in the group",
                (|group: &GroupStatus| i64::from(group.priority)) as fn(&GroupStatus) -> i64,
            ),
            (
                "palisade_vrrp_drained",
                "1 while `palisade drain` keeps this node out of the group",
                |group| i64::from(group.drained),
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for group in &groups {
                let labels = [("instance", group.name.clone())];
                ConstGauge::new(value(group)).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for group in &groups {
                let labels = [("instance", group.name.clone())];
                ConstCounter::new(value(&group.stats)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "palisade_vrrp_discarded_packets",
            "VRRP packets discarded, by reason (vrid: adverts of other groups, normal on a shared segment)",
            None,
            MetricType::Counter,
        )?;
        for group in &groups {
            for (reason, value) in DISCARDS {
                let labels = [
                    ("instance", group.name.clone()),
                    ("reason", reason.to_owned()),
                ];
                ConstCounter::new(value(&group.stats)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn every_group_state_and_counter_is_exported() {
        let mut stats = Stats::default();
        stats.adverts_sent = 7;
        stats.ttl_errors = 2;
        let status = GroupStatus {
            name: "VI_1".to_owned(),
            vrid: 51,
            interface: "eth0".to_owned(),
            primary: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            state: State::Master,
            priority: 150,
            master: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            master_priority: Some(150),
            advert_interval_cs: 100,
            vips: Vec::new(),
            drained: false,
            heartbeat: false,
            successor: None,
            stats,
        };
        let (_sender, receiver) = watch::channel(status);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(HaMetrics::new(vec![receiver])));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|error| panic!("{error}"));
        for line in [
            "palisade_vrrp_state{instance=\"VI_1\",state=\"MASTER\"} 1",
            "palisade_vrrp_state{instance=\"VI_1\",state=\"BACKUP\"} 0",
            "palisade_vrrp_priority{instance=\"VI_1\"} 150",
            "palisade_vrrp_drained{instance=\"VI_1\"} 0",
            "palisade_vrrp_adverts_sent_total{instance=\"VI_1\"} 7",
            "palisade_vrrp_discarded_packets_total{instance=\"VI_1\",reason=\"ttl\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }
}
