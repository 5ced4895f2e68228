//! Replication messages from peers: no bytes panic the decoder, the hello gate or a replica
//! fed with the result; whatever decodes encodes to a message that decodes the same.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_identity::{NodeId, NodePriority};
use palisade_replication::coordinator::{Gate, VersionMatch};
use palisade_replication::{History, HlcTime, Replica, SyncMessage};

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
        let _ = gate.peers()[&peer].refused.as_ref().map(ToString::to_string);
    }
    replica.peer_up(peer);
    replica.handle(peer, message, 1_800_000_000_000);
    while replica.poll_transmit().is_some() {}
    while replica.poll_event().is_some() {}
});
