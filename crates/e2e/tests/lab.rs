//! The network-namespace lab itself: hosts reach each other on the lab subnet, multicast to
//! the VRRP group reaches every host, nothing leaks into the root namespace, and everything
//! is removed afterwards.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use palisade_e2e::netns::{Lab, in_namespace, require_netns};

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|output| output.stdout)
            .unwrap_or_default(),
    )
    .into_owned()
}

#[test]
fn lab_hosts_reach_each_other_and_are_removed() {
    if !require_netns("lab_hosts_reach_each_other_and_are_removed") {
        return;
    }
    let prefix;
    {
        let lab = Lab::new(&["node1", "node2", "client"]);
        prefix = lab.prefix.clone();
        assert_eq!(namespaces().matches(&prefix).count(), 4);
        let node2 = lab.host("node2").clone();
        // Unicast: a UDP datagram from node1 reaches node2 over the bridge.
        let receiver = in_namespace(&node2.ns, || {
            UdpSocket::bind(SocketAddrV4::new(node2.addr, 4000))
                .unwrap_or_else(|error| panic!("bind: {error}"))
        });
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap_or_else(|error| panic!("{error}"));
        let node1 = lab.host("node1").clone();
        in_namespace(&node1.ns, || {
            let sender = UdpSocket::bind(SocketAddrV4::new(node1.addr, 0))
                .unwrap_or_else(|error| panic!("bind: {error}"));
            sender
                .send_to(b"hello", SocketAddrV4::new(node2.addr, 4000))
                .unwrap_or_else(|error| panic!("send: {error}"));
        });
        let mut buf = [0u8; 16];
        let (len, from) = receiver
            .recv_from(&mut buf)
            .unwrap_or_else(|error| panic!("nothing received: {error}"));
        assert_eq!(&buf[..len], b"hello");
        assert_eq!(from.ip(), std::net::IpAddr::V4(node1.addr));
        // Multicast to the VRRP group (224.0.0.18) reaches the other hosts.
        let client = lab.host("client").clone();
        let group = Ipv4Addr::new(224, 0, 0, 18);
        let listener = in_namespace(&client.ns, || {
            let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4001))
                .unwrap_or_else(|error| panic!("bind: {error}"));
            socket
                .join_multicast_v4(&group, &client.addr)
                .unwrap_or_else(|error| panic!("join: {error}"));
            socket
        });
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap_or_else(|error| panic!("{error}"));
        in_namespace(&node1.ns, || {
            let sender = UdpSocket::bind(SocketAddrV4::new(node1.addr, 0))
                .unwrap_or_else(|error| panic!("bind: {error}"));
            sender
                .set_multicast_ttl_v4(255)
                .unwrap_or_else(|error| panic!("{error}"));
            sender
                .send_to(b"advert", SocketAddrV4::new(group, 4001))
                .unwrap_or_else(|error| panic!("send: {error}"));
        });
        let (len, _) = listener
            .recv_from(&mut buf)
            .unwrap_or_else(|error| panic!("multicast not received: {error}"));
        assert_eq!(&buf[..len], b"advert");
        // No route out of the lab: any other address is unreachable from inside.
        let stray = in_namespace(&node1.ns, || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|error| panic!("{error}"));
            socket.send_to(b"x", "192.0.2.1:9").map(|_| ())
        });
        assert!(stray.is_err(), "a packet could leave the lab subnet");
    }
    assert_eq!(namespaces().matches(&prefix).count(), 0, "lab not removed");
}
