//! Director messages (members' load reports, connection lists): no input panics the decoder, and whatever
//! decodes encodes to the same bytes; a decoded report fed to a director never panics it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use palisade_director::{Director, DirectorMessage, Member, Settings};
use palisade_identity::NodeId;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = DirectorMessage::decode(data) else {
        return;
    };
    assert_eq!(message.encode(), data);
    let DirectorMessage::Load(report) = message else {
        // A connection list: every pair makes a tickle or is refused, never a panic.
        if let DirectorMessage::Connections(list) = message {
            for (client, vip) in list.added.iter().chain(&list.removed) {
                let _ = palisade_director::tickle::packet(*vip, *client);
            }
        }
        return;
    };
    let node = NodeId::from_bytes([2; 16]);
    let mut director = Director::new(
        Settings::default(),
        [Member {
            id: node,
            name: "node2".to_owned(),
            weight: report.weight,
            max_connections: report.max_connections,
        }],
    );
    director.report(node, report.load, 1_000);
    let _ = director.choose(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), node, 1_000);
});
