//! VRRP advertisements: no input panics the codec or a router fed with it, and whatever
//! decodes encodes again and decodes to the same advert.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use palisade_vrrp::packet::peek_vrid;
use palisade_vrrp::{Advert, DecodeContext, Instant, Router, RouterConfig, Vrid, VrrpPriority};

fuzz_target!(|data: &[u8]| {
    let Some((ctx, message)) = split(data) else {
        return;
    };
    let _ = peek_vrid(message);
    if let Ok(advert) = Advert::decode(message, &ctx) {
        let again = advert
            .encode(ctx.src, ctx.dst)
            .expect("a decoded advert encodes");
        assert_eq!(again.len(), message.len());
        assert_eq!(Advert::decode(&again, &ctx), Ok(advert));
    }
    // A router in each state a packet can meet: Backup, then Master.
    let vip = match ctx.dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(10, 213, 0, 100)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100)),
    };
    let primary = match ctx.dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(10, 213, 0, 12)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x12)),
    };
    let vrid = Vrid::new(51).expect("51 is a valid VRID");
    let cfg = RouterConfig::new(vrid, VrrpPriority(100), primary, vec![vip]);
    let mut router = Router::new(cfg, Instant::ZERO).expect("the fuzz config is valid");
    router.handle_startup(Instant::ZERO);
    let _ = router.handle_packet(Instant::from_millis(1), &ctx, message);
    let _ = router.handle_command(Instant::from_millis(2), palisade_vrrp::Command::TakeOver);
    let _ = router.handle_packet(Instant::from_millis(3), &ctx, message);
    while router.poll_action().is_some() {}
});

/// Input layout: `[flags][ttl][src][dst][VRRP message ...]`. Flags bit 0: IPv6 (16-byte
/// addresses, else 4); bit 1: the destination is of the other family.
fn split(data: &[u8]) -> Option<(DecodeContext, &[u8])> {
    let (&[flags, ttl], rest) = data.split_first_chunk::<2>()?;
    let ipv6 = flags & 1 != 0;
    let (src, rest) = address(rest, ipv6)?;
    let (dst, rest) = address(rest, ipv6 != (flags & 2 != 0))?;
    Some((DecodeContext::new(src, dst, ttl), rest))
}

fn address(data: &[u8], ipv6: bool) -> Option<(IpAddr, &[u8])> {
    if ipv6 {
        let (octets, rest) = data.split_first_chunk::<16>()?;
        Some((IpAddr::V6(Ipv6Addr::from(*octets)), rest))
    } else {
        let (octets, rest) = data.split_first_chunk::<4>()?;
        Some((IpAddr::V4(Ipv4Addr::from(*octets)), rest))
    }
}
