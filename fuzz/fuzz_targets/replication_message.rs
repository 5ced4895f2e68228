//! Replication messages from peers: no bytes panic the decoder, the hello gate or a replica
//! fed with the result; whatever decodes encodes to a message that decodes the same.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_identity::{NodeId, NodePriority};
use palisade_replication::coordinator::{Gate, VersionMatch};
use palisade_replication::{History, HlcTime, Replica, SyncMessage};

/// One CA for the whole run (making one per input would dominate the run).
fn trust_ca() -> &'static palisade_cluster_trust::ClusterCa {
    static CA: std::sync::OnceLock<palisade_cluster_trust::ClusterCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        palisade_cluster_trust::ClusterCa::create(
            palisade_cluster_trust::ClusterId::random(),
            time::OffsetDateTime::now_utc(),
            Duration::from_secs(86_400),
        )
        .unwrap_or_else(|error| panic!("{error}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = SyncMessage::decode(data) else {
        return;
    };
    assert_eq!(SyncMessage::decode(&message.encode()), Ok(message.clone()));
    let mut replica = Replica::new(
        NodeId::from_bytes([1; 16]),
        NodePriority::default(),
        History::new(),
        HlcTime::default(),
        Duration::from_secs(120),
    );
    let peer = NodeId::from_bytes([2; 16]);
    if let SyncMessage::Hello(hello) = &message {
        let mut gate = Gate::new("0.1.0", Duration::from_secs(120), VersionMatch::Minor);
        let _ = gate.receive(peer, "peer", hello, 1_800_000_000_000);
        let _ = gate.peers()[&peer]
            .refused
            .as_ref()
            .map(ToString::to_string);
    }
    if let SyncMessage::Trust(bytes) = &message {
        // Whatever a peer sends as a trust bundle, only a genuine signature gets through.
        let ca = trust_ca();
        assert!(
            palisade_cluster_trust::trust_bundle::SignedTrustBundle::verify(
                bytes,
                std::slice::from_ref(&ca.cert_pem)
            )
            .is_err(),
            "a fuzzed trust bundle verified"
        );
    }
    replica.peer_up(peer);
    replica.handle(peer, message, 1_800_000_000_000);
    while replica.poll_transmit().is_some() {}
    while replica.poll_event().is_some() {}
});
