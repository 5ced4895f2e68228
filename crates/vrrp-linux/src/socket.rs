//! Raw IP protocol-112 sockets for VRRP adverts (after holo-vrrp's `network.rs`).
//!
//! One socket per address family and interface: bound to the interface, joined to the VRRP
//! group (224.0.0.18 / ff02::12), TTL / hop limit 255 on everything sent (RFC 5798 5.1.1.3,
//! 5.1.2.3), DSCP CS6 like keepalived. On receive the driver needs what the IP layer saw (source,
//! destination, TTL or hop limit) to let the codec check TTL and the v3 pseudo-header checksum:
//! IPv4 raw sockets deliver the IP header with the payload; IPv6 delivers the hop limit and
//! destination as control messages.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// IANA protocol number of VRRP.
pub const IPPROTO_VRRP: i32 = 112;
pub const VRRP_GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
pub const VRRP_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// DSCP CS6 (network control), as keepalived sends.
const TOS_CS6: u32 = 0xc0;

/// A received VRRP packet with what the IP layer said about it.
#[derive(Clone, Debug)]
pub struct Received {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6) as received.
    pub ttl: u8,
    /// The VRRP message (IP header removed).
    pub payload: Vec<u8>,
}

/// Raw VRRP sockets on one interface: one to receive (bound to the interface only: a raw
/// socket bound to an address would see only packets sent to that address, not to the
/// group) and one to send (bound to the source address, which the v3 checksum covers).
pub struct VrrpSocket {
    rx: AsyncFd<Socket>,
    tx: AsyncFd<Socket>,
    ipv6: bool,
}

impl VrrpSocket {
    /// Opens the sockets on `interface` (index `ifindex`), sending from `source` (the
    /// interface's primary address; for IPv6 its link-local address). `join_group` joins the
    /// multicast group (off in unicast-peers mode).
    pub fn open(
        interface: &str,
        ifindex: u32,
        source: IpAddr,
        join_group: bool,
    ) -> io::Result<VrrpSocket> {
        let rx = open_rx(interface, ifindex, source, join_group)?;
        let tx = open_tx(interface, ifindex, source)?;
        Ok(VrrpSocket {
            rx: register(rx)?,
            tx: register(tx)?,
            ipv6: source.is_ipv6(),
        })
    }

    /// Sends one VRRP message (the kernel adds the IP header) to `destination`: the group
    /// address, or a peer in unicast mode.
    pub async fn send(&self, payload: &[u8], destination: IpAddr) -> io::Result<()> {
        let target: SocketAddr = match destination {
            IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, 0)),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, 0)),
        };
        let target = socket2::SockAddr::from(target);
        loop {
            let mut guard = self.tx.writable().await?;
            match guard.try_io(|socket| socket.get_ref().send_to(payload, &target)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives the next VRRP packet. Packets too short to carry an IP header are skipped
    /// here; everything else is the codec's to judge.
    pub async fn recv(&self) -> io::Result<Received> {
        loop {
            let mut guard = self.rx.ready(Interest::READABLE).await?;
            let result = guard.try_io(|socket| {
                if self.ipv6 {
                    recv_v6(socket.get_ref())
                } else {
                    recv_v4(socket.get_ref())
                }
            });
            match result {
                Ok(Ok(Some(received))) => return Ok(received),
                Ok(Ok(None)) => continue,
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
    }
}

fn raw_socket(source: IpAddr, interface: &str) -> io::Result<Socket> {
    let domain = if source.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_VRRP)))?;
    socket.set_nonblocking(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    Ok(socket)
}

fn open_rx(interface: &str, ifindex: u32, source: IpAddr, join_group: bool) -> io::Result<Socket> {
    let socket = raw_socket(source, interface)?;
    match source {
        IpAddr::V4(_) => {
            if join_group {
                socket.join_multicast_v4_n(
                    &VRRP_GROUP_V4,
                    &InterfaceIndexOrAddress::Index(ifindex),
                )?;
            }
        }
        IpAddr::V6(_) => {
            setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
            setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
            if join_group {
                socket.join_multicast_v6(&VRRP_GROUP_V6, ifindex)?;
            }
        }
    }
    Ok(socket)
}

fn open_tx(interface: &str, ifindex: u32, source: IpAddr) -> io::Result<Socket> {
    let socket = raw_socket(source, interface)?;
    // Nothing is read from the sending socket: keep its receive queue from filling up.
    socket.set_recv_buffer_size(0)?;
    match source {
        IpAddr::V4(v4) => {
            socket.bind(&SocketAddr::V4(SocketAddrV4::new(v4, 0)).into())?;
            socket.set_multicast_ttl_v4(255)?;
            socket.set_ttl_v4(255)?;
            socket.set_multicast_loop_v4(false)?;
            socket.set_tos_v4(TOS_CS6)?;
            socket.set_multicast_if_v4(&v4)?;
        }
        IpAddr::V6(v6) => {
            socket.bind(&SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, ifindex)).into())?;
            socket.set_multicast_hops_v6(255)?;
            socket.set_unicast_hops_v6(255)?;
            socket.set_multicast_loop_v6(false)?;
            socket.set_multicast_if_v6(ifindex)?;
            socket.set_tclass_v6(TOS_CS6)?;
        }
    }
    Ok(socket)
}

fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `Socket` owns its descriptor, keeps it open until dropped and always returns
    // the same one from `as_raw_fd`; the AsyncFd owns the Socket.
    unsafe { AsyncFd::register(socket) }.map_err(|error| error.into_parts().1)
}

/// IPv4 raw sockets deliver the IP header: take TTL, addresses and the payload from it.
fn recv_v4(socket: &Socket) -> io::Result<Option<Received>> {
    let mut buf = [0u8; 2048];
    let read = nix::sys::socket::recv(socket.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(io::Error::from)?;
    let packet = &buf[..read];
    let Some(&first) = packet.first() else {
        return Ok(None);
    };
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < 20 || packet.len() < header_len {
        return Ok(None);
    }
    let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let destination = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Ok(Some(Received {
        source: IpAddr::V4(source),
        destination: IpAddr::V4(destination),
        ttl: packet[8],
        payload: packet[header_len..].to_vec(),
    }))
}

/// IPv6: hop limit and destination come as control messages.
fn recv_v6(socket: &Socket) -> io::Result<Option<Received>> {
    let mut buf = [0u8; 2048];
    let mut control = nix::cmsg_space!(libc::c_int, libc::in6_pktinfo);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let Some(source) = message
        .address
        .and_then(|address| address.as_sockaddr_in6().map(|v6| v6.ip()))
    else {
        return Ok(None);
    };
    let mut ttl = 0u8;
    let mut destination = Ipv6Addr::UNSPECIFIED;
    if let Ok(cmsgs) = message.cmsgs() {
        for cmsg in cmsgs {
            match cmsg {
                ControlMessageOwned::Ipv6HopLimit(limit) => ttl = u8::try_from(limit).unwrap_or(0),
                ControlMessageOwned::Ipv6PacketInfo(info) => {
                    destination = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                }
                _ => {}
            }
        }
    }
    let read = message.bytes;
    Ok(Some(Received {
        source: IpAddr::V6(source),
        destination: IpAddr::V6(destination),
        ttl,
        payload: buf[..read].to_vec(),
    }))
}

/// The address adverts go out from when the config names none: the interface's first IPv4
/// address, or its IPv6 link-local address (RFC 5798 section 5.1.1.1 / 5.1.2.1).
pub fn primary_address(interface: &str, ipv6: bool) -> Option<IpAddr> {
    let addresses = nix::ifaddrs::getifaddrs().ok()?;
    for address in addresses {
        if address.interface_name != interface {
            continue;
        }
        let Some(storage) = address.address else {
            continue;
        };
        if !ipv6 {
            if let Some(v4) = storage.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
        } else if let Some(v6) = storage.as_sockaddr_in6()
            && (v6.ip().segments()[0] & 0xffc0) == 0xfe80
        {
            return Some(IpAddr::V6(v6.ip()));
        }
    }
    None
}
