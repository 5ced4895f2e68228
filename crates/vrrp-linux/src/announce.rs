//! Announcing a VIP's new home: gratuitous ARP for IPv4 (RFC 5798 6.4.1 / 6.4.2, "broadcast a
//! gratuitous ARP request"), unsolicited neighbour advertisements for IPv6 (RFC 4861 7.2.6).
//! The frames match keepalived's (research/vrrp-lab.md): ARP request, sender IP = target IP =
//! VIP, target MAC ff:ff:ff:ff:ff:ff, from the interface's real MAC.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

const ETH_P_ARP: u16 = 0x0806;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The hardware address of `interface`.
pub fn interface_mac(interface: &str) -> io::Result<[u8; 6]> {
    let addresses = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for address in addresses {
        if address.interface_name != interface {
            continue;
        }
        if let Some(mac) = address
            .address
            .as_ref()
            .and_then(|storage| storage.as_link_addr())
            .and_then(|link| link.addr())
        {
            return Ok(mac);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no hardware address for interface {interface}"),
    ))
}

/// The ARP request payload announcing `vip` at `mac`.
pub fn garp_payload(vip: Ipv4Addr, mac: [u8; 6]) -> [u8; 28] {
    let mut frame = [0u8; 28];
    frame[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    frame[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    frame[4] = 6; // hardware address length
    frame[5] = 4; // protocol address length
    frame[6..8].copy_from_slice(&1u16.to_be_bytes()); // opcode: request
    frame[8..14].copy_from_slice(&mac);
    frame[14..18].copy_from_slice(&vip.octets());
    frame[18..24].copy_from_slice(&[0xff; 6]);
    frame[24..28].copy_from_slice(&vip.octets());
    frame
}

/// The unsolicited neighbour advertisement for `vip` at `mac` (ICMPv6 message; the kernel
/// fills in the checksum on raw ICMPv6 sockets).
pub fn na_payload(vip: Ipv6Addr, mac: [u8; 6]) -> [u8; 32] {
    let mut message = [0u8; 32];
    message[0] = 136; // neighbour advertisement
    message[4] = 0x20; // Override flag; not Solicited, not Router
    message[8..24].copy_from_slice(&vip.octets());
    message[24] = 2; // option: target link-layer address
    message[25] = 1; // length in units of 8 octets
    message[26..32].copy_from_slice(&mac);
    message
}

/// Sends gratuitous ARPs (IPv4) on one interface.
pub struct ArpSender {
    socket: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
}

impl ArpSender {
    pub fn open(interface: &str, ifindex: u32) -> io::Result<ArpSender> {
        let mac = interface_mac(interface)?;
        // SAFETY: plain socket(2); the result is checked before it is wrapped.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ArpSender {
            socket,
            ifindex,
            mac,
        })
    }

    /// Broadcasts one gratuitous ARP for `vip`.
    pub fn send(&self, vip: Ipv4Addr) -> io::Result<()> {
        let payload = garp_payload(vip, self.mac);
        // SAFETY: sockaddr_ll is plain old data; zeroed is a valid starting value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETH_P_ARP.to_be();
        address.sll_ifindex = self.ifindex as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: the buffer and address pointers are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sends unsolicited neighbour advertisements (IPv6) on one interface.
pub struct NaSender {
    socket: Socket,
    ifindex: u32,
    mac: [u8; 6],
}

impl NaSender {
    pub fn open(interface: &str, ifindex: u32) -> io::Result<NaSender> {
        let mac = interface_mac(interface)?;
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        socket.bind_device(Some(interface.as_bytes()))?;
        // RFC 4861 7.1.2: neighbour discovery messages must carry hop limit 255.
        socket.set_multicast_hops_v6(255)?;
        socket.set_multicast_if_v6(ifindex)?;
        Ok(NaSender {
            socket,
            ifindex,
            mac,
        })
    }

    /// Sends one unsolicited NA for `vip` to all nodes.
    pub fn send(&self, vip: Ipv6Addr) -> io::Result<()> {
        let payload = na_payload(vip, self.mac);
        let target = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex));
        self.socket.send_to(&payload, &target.into()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_matches_keepalived_frame() {
        // research/vrrp-lab.md: keepalived's GARP for 10.213.0.100 from 02:00:0a:d5:00:0b,
        // after the 14-byte Ethernet header.
        let expected: [u8; 28] = [
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x0a, 0xd5, 0x00, 0x0b,
            0x0a, 0xd5, 0x00, 0x64, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0a, 0xd5, 0x00, 0x64,
        ];
        let payload = garp_payload(
            Ipv4Addr::new(10, 213, 0, 100),
            [0x02, 0x00, 0x0a, 0xd5, 0x00, 0x0b],
        );
        assert_eq!(payload, expected);
    }

    #[test]
    fn na_has_override_flag_and_target_option() {
        let vip: Ipv6Addr = "fd00::100".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let payload = na_payload(vip, [2, 0, 0, 0, 0, 1]);
        assert_eq!(payload[0], 136);
        assert_eq!(payload[4], 0x20);
        assert_eq!(&payload[8..24], &vip.octets());
        assert_eq!(&payload[24..26], &[2, 1]);
    }
}
