//! Tickle ACKs (issue 12), as CTDB sends them after an IP takeover. A client whose
//! connection went through a director that died does not know: its TCP peer vanished without
//! a word, and it waits until its own timeout (curl's keepalive: 60 s; wget: 900 s). The
//! member that took the VIP over sends the client, from the VIP and port it connected to, an
//! ACK whose sequence number is outside the client's window; the client answers with an ACK
//! of its own (RFC 793 3.9, RFC 5961 challenge ACK), which reaches the new holder of the VIP,
//! whose kernel has no such connection and resets it. The client's connection then fails at
//! once, and a retry (`curl -C -`, a Range request) goes to the new director.
//!
//! Linux answers such ACKs at most once per `tcp_invalid_ratelimit` (500 ms) per socket, so
//! each client is tickled [`REPEAT`] times, [`SPACING`] apart. A NAT or stateful firewall
//! between client and VIP drops the tickle (it belongs to no connection it knows), and the
//! new director's own firewall must let the resulting reset out.
//!
//! Sans-IO: this builds the packets; the binary sends them on a raw socket.

use std::net::SocketAddr;
use std::time::Duration;

use etherparse::PacketBuilder;

/// Tickles per client.
pub const REPEAT: u32 = 3;
/// Between two tickles of one client: more than Linux's per-socket answer rate limit.
pub const SPACING: Duration = Duration::from_millis(510);

/// The IP packet (IPv4 or IPv6 header, then a TCP ACK with no data) that tickles the client
/// `to` of a connection to `from` (the VIP and port it connected to); `None` when the two
/// are of different families.
pub fn packet(from: SocketAddr, to: SocketAddr) -> Option<Vec<u8>> {
    // Sequence and acknowledgement 0, as CTDB's: outside any live window but by a chance of
    // one in 2^32 / window.
    const WINDOW: u16 = 1024;
    let builder = match (from, to) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => {
            PacketBuilder::ipv4(from.ip().octets(), to.ip().octets(), 64)
        }
        (SocketAddr::V6(from), SocketAddr::V6(to)) => {
            PacketBuilder::ipv6(from.ip().octets(), to.ip().octets(), 64)
        }
        _ => return None,
    };
    let builder = builder.tcp(from.port(), to.port(), 0, WINDOW).ack(0);
    let mut packet = Vec::with_capacity(builder.size(0));
    builder.write(&mut packet, &[]).ok()?;
    Some(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn check(from: SocketAddr, to: SocketAddr) {
        let Some(packet) = packet(from, to) else {
            panic!("same family");
        };
        let Ok(sliced) = SlicedPacket::from_ip(&packet) else {
            panic!("parses back");
        };
        let (source, destination) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (
                std::net::IpAddr::from(ip.header().source_addr()),
                std::net::IpAddr::from(ip.header().destination_addr()),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                std::net::IpAddr::from(ip.header().source_addr()),
                std::net::IpAddr::from(ip.header().destination_addr()),
            ),
            _ => panic!("an IP packet"),
        };
        assert_eq!((source, destination), (from.ip(), to.ip()));
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("a TCP segment");
        };
        assert_eq!(
            (tcp.source_port(), tcp.destination_port()),
            (from.port(), to.port())
        );
        assert!(tcp.ack() && !tcp.syn() && !tcp.rst() && !tcp.fin());
        assert!(tcp.payload().is_empty());
        // The checksum over the pseudo-header verifies.
        let expected = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => tcp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), &[])
                .ok(),
            Some(NetSlice::Ipv6(ip)) => tcp
                .to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), &[])
                .ok(),
            _ => None,
        };
        assert_eq!(expected, Some(tcp.checksum()));
    }

    #[test]
    fn a_tickle_is_an_ack_from_the_vip_to_the_client_with_a_valid_checksum() {
        let parse = |text: &str| text.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
        check(parse("10.0.0.100:3128"), parse("10.0.1.7:51234"));
        check(parse("[2001:db8::100]:3128"), parse("[2001:db8::7]:51234"));
        assert!(packet(parse("10.0.0.100:3128"), parse("[2001:db8::7]:1")).is_none());
    }
}
