//! The Linux pieces of the HA plane, for real, in network namespaces: raw VRRP sockets carry
//! adverts with TTL 255 over the lab bridge, VIPs are added and removed idempotently over
//! netlink, and a gratuitous ARP moves a neighbour's entry for the VIP.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use palisade_e2e::netns::{Lab, in_namespace, require_netns};
use palisade_vrrp_linux::announce::{ArpSender, interface_mac};
use palisade_vrrp_linux::netlink::Addresses;
use palisade_vrrp_linux::socket::{VRRP_GROUP_V4, VrrpSocket};

/// Runs an async block on a current-thread runtime inside namespace `ns`.
fn block_on_in<T: Send>(ns: &str, future: impl std::future::Future<Output = T> + Send) -> T {
    in_namespace(ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("runtime: {error}"))
            .block_on(future)
    })
}

/// The index of `eth0` in the calling thread's namespace.
fn eth0_index() -> u32 {
    nix::net::if_::if_nametoindex("eth0").unwrap_or_else(|error| panic!("eth0: {error}"))
}

#[test]
fn raw_vrrp_socket_carries_adverts_with_ttl_255() {
    if !require_netns("raw_vrrp_socket_carries_adverts_with_ttl_255") {
        return;
    }
    let lab = Lab::new(&["node1", "node2"]);
    let node1 = lab.host("node1").clone();
    let node2 = lab.host("node2").clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        block_on_in(&node2.ns.clone(), async move {
            let socket = VrrpSocket::open("eth0", eth0_index(), IpAddr::V4(node2.addr), true)
                .unwrap_or_else(|error| panic!("open: {error}"));
            let _ = ready_tx.send(());
            tokio::time::timeout(Duration::from_secs(5), socket.recv())
                .await
                .unwrap_or_else(|_| panic!("no advert received"))
                .unwrap_or_else(|error| panic!("recv: {error}"))
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|error| panic!("receiver not ready: {error}"));
    let payload = [0x31, 51, 150, 1, 0x00, 0x64, 0, 0, 10, 213, 0, 100];
    block_on_in(&node1.ns, async {
        let socket = VrrpSocket::open("eth0", eth0_index(), IpAddr::V4(node1.addr), true)
            .unwrap_or_else(|error| panic!("open: {error}"));
        socket
            .send(&payload, IpAddr::V4(VRRP_GROUP_V4))
            .await
            .unwrap_or_else(|error| panic!("send: {error}"));
    });
    let received = receiver
        .join()
        .unwrap_or_else(|_| panic!("receiver panicked"));
    assert_eq!(received.ttl, 255);
    assert_eq!(received.source, IpAddr::V4(node1.addr));
    assert_eq!(received.destination, IpAddr::V4(VRRP_GROUP_V4));
    assert_eq!(received.payload, payload);
}

#[test]
fn vip_add_remove_is_idempotent_and_garp_updates_neighbours() {
    if !require_netns("vip_add_remove_is_idempotent_and_garp_updates_neighbours") {
        return;
    }
    let lab = Lab::new(&["node1", "client"]);
    let node1 = lab.host("node1").clone();
    let client = lab.host("client").clone();
    let vip = lab.spare_addr(100);
    // The client knows the VIP at a stale MAC (as after a crashed master).
    palisade_e2e::netns::ip(&[
        "-n",
        &client.ns,
        "neigh",
        "replace",
        &vip.to_string(),
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let mac = in_namespace(&node1.ns, || interface_mac("eth0"))
        .unwrap_or_else(|error| panic!("mac: {error}"));
    block_on_in(&node1.ns, async move {
        let addresses = Addresses::open(&tokio_util::task::TaskTracker::new())
            .unwrap_or_else(|error| panic!("netlink: {error}"));
        let index = addresses
            .interface_index("eth0")
            .await
            .unwrap_or_else(|error| panic!("index: {error}"));
        let vip = IpAddr::V4(vip);
        for _ in 0..2 {
            addresses
                .add(index, "eth0", vip, 24)
                .await
                .unwrap_or_else(|error| panic!("add: {error}"));
        }
        assert!(addresses.contains(index, vip).await.unwrap_or(false));
        let sender = ArpSender::open("eth0", index).unwrap_or_else(|error| panic!("arp: {error}"));
        if let IpAddr::V4(v4) = vip {
            sender
                .send(v4)
                .unwrap_or_else(|error| panic!("send garp: {error}"));
        }
        assert!(
            addresses.interface_index("nope0").await.is_err(),
            "unknown interface must be an error"
        );
    });
    assert!(
        node1.addresses().contains(&format!("{vip}/24")),
        "{}",
        node1.addresses()
    );
    // The client's entry now points at node1's MAC.
    let expected = mac
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let neigh = String::from_utf8_lossy(
            &palisade_e2e::netns::ip(&["-n", &client.ns, "neigh", "show", &vip.to_string()]).stdout,
        )
        .into_owned();
        if neigh.contains(&expected) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GARP did not update: {neigh}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    block_on_in(&node1.ns, async move {
        let addresses = Addresses::open(&tokio_util::task::TaskTracker::new())
            .unwrap_or_else(|error| panic!("netlink: {error}"));
        let index = addresses
            .interface_index("eth0")
            .await
            .unwrap_or_else(|error| panic!("index: {error}"));
        for _ in 0..2 {
            addresses
                .remove(index, "eth0", IpAddr::V4(vip))
                .await
                .unwrap_or_else(|error| panic!("remove: {error}"));
        }
    });
    assert!(
        !node1.addresses().contains(&format!("{vip}/")),
        "{}",
        node1.addresses()
    );
    let _ = Ipv4Addr::UNSPECIFIED;
}
