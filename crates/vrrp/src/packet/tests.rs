//! Codec tests: keepalived's real packets, every fault class, round trips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

const NODE1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 11));
const NODE2: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 12));
const GROUP: IpAddr = IpAddr::V4(MULTICAST_V4);
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 100));

fn vrid(value: u8) -> Vrid {
    Vrid::new(value).unwrap()
}

fn ctx(src: IpAddr) -> DecodeContext {
    DecodeContext::new(src, multicast_group(src), REQUIRED_TTL)
}

/// One advert seen in `/work/shared/research/vrrp/keepalived-*.txt` (tshark field tables,
/// every checksum verified by tshark): keepalived 2.2.7, VRID 51, VIP 10.213.0.100.
struct Captured {
    file: &'static str,
    src: IpAddr,
    version: Version,
    priority: u8,
    /// As on the wire: seconds for v2, centiseconds for v3.
    interval_field: u8,
    checksum: u16,
}

const CAPTURED: &[Captured] = &[
    captured("v2-adv1s", NODE1, Version::V2, 150, 1, 0x3d91),
    captured("v2-adv1s", NODE1, Version::V2, 0, 1, 0xd391),
    captured("v2-adv1s", NODE2, Version::V2, 100, 1, 0x6f91),
    captured("v2-adv1s", NODE2, Version::V2, 0, 1, 0xd391),
    captured("v3-adv1s", NODE1, Version::V3, 150, 100, 0x41bf),
    captured("v3-adv1s", NODE1, Version::V3, 0, 100, 0xd7bf),
    captured("v3-adv1s", NODE2, Version::V3, 100, 100, 0x73be),
    captured("v3-adv1s", NODE2, Version::V3, 0, 100, 0xd7be),
    captured("v3-adv100ms", NODE1, Version::V3, 150, 10, 0x4219),
    captured("v3-adv100ms", NODE1, Version::V3, 0, 10, 0xd819),
    captured("v3-adv100ms", NODE2, Version::V3, 100, 10, 0x7418),
    captured("v3-adv100ms", NODE2, Version::V3, 0, 10, 0xd818),
];

const fn captured(
    file: &'static str,
    src: IpAddr,
    version: Version,
    priority: u8,
    interval_field: u8,
    checksum: u16,
) -> Captured {
    Captured {
        file,
        src,
        version,
        priority,
        interval_field,
        checksum,
    }
}

impl Captured {
    /// The wire bytes, laid out by hand from the tshark fields.
    fn bytes(&self) -> Vec<u8> {
        let [c1, c2] = self.checksum.to_be_bytes();
        let (byte0, field4) = match self.version {
            Version::V2 => (0x21, 0),
            Version::V3 => (0x31, 0),
        };
        let mut bytes = vec![
            byte0,
            51,
            self.priority,
            1,
            field4,
            self.interval_field,
            c1,
            c2,
            10,
            213,
            0,
            100,
        ];
        if self.version == Version::V2 {
            bytes.extend_from_slice(&[0; 8]);
        }
        bytes
    }

    fn advert(&self) -> Advert {
        let interval = match self.version {
            Version::V2 => u16::from(self.interval_field) * 100,
            Version::V3 => u16::from(self.interval_field),
        };
        Advert {
            version: self.version,
            vrid: vrid(51),
            priority: VrrpPriority(self.priority),
            max_adver_int: Centiseconds(interval),
            addresses: vec![VIP],
        }
    }
}

#[test]
fn keepalived_captures_decode_and_encode_byte_for_byte() {
    for packet in CAPTURED {
        let what = format!(
            "{} from {} priority {}",
            packet.file, packet.src, packet.priority
        );
        let decoded = Advert::decode(&packet.bytes(), &ctx(packet.src));
        assert_eq!(decoded, Ok(packet.advert()), "{what}");
        let encoded = packet.advert().encode(packet.src, GROUP);
        assert_eq!(encoded, Ok(packet.bytes()), "{what}");
    }
}

/// Splits an Ethernet + IPv4 frame into (context, VRRP message).
fn parse_frame(frame: &[u8]) -> (DecodeContext, &[u8]) {
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(ip[9], IPPROTO_VRRP);
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let ctx = DecodeContext::new(src.into(), dst.into(), ip[8]);
    (ctx, &ip[header_len..total_len])
}

#[test]
fn keepalived_frames_decode() {
    // Frame 3 of keepalived-v3-adv1s.pcap, as printed in vrrp-lab.md and the tshark dump.
    let v3 = [
        0x01, 0x00, 0x5e, 0x00, 0x00, 0x12, 0x02, 0x00, 0x0a, 0xd5, 0x00, 0x0b, 0x08, 0x00, 0x45,
        0xc0, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xcf, 0xba, 0x0a, 0xd5, 0x00, 0x0b,
        0xe0, 0x00, 0x00, 0x12, 0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x41, 0xbf, 0x0a, 0xd5, 0x00,
        0x64,
    ];
    // Frame 3 of keepalived-v2-adv1s.pcap (Ethernet header as in the v3 frame).
    let v2 = [
        0x01, 0x00, 0x5e, 0x00, 0x00, 0x12, 0x02, 0x00, 0x0a, 0xd5, 0x00, 0x0b, 0x08, 0x00, 0x45,
        0xc0, 0x00, 0x28, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xcf, 0xb2, 0x0a, 0xd5, 0x00, 0x0b,
        0xe0, 0x00, 0x00, 0x12, 0x21, 0x33, 0x96, 0x01, 0x00, 0x01, 0x3d, 0x91, 0x0a, 0xd5, 0x00,
        0x64, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    // Frame 41 of keepalived-v3-adv100ms.pcap: the priority-0 advert on SIGTERM.
    let v3_stop = [
        0x01, 0x00, 0x5e, 0x00, 0x00, 0x12, 0x02, 0x00, 0x0a, 0xd5, 0x00, 0x0b, 0x08, 0x00, 0x45,
        0xc0, 0x00, 0x20, 0x00, 0x20, 0x00, 0x00, 0xff, 0x70, 0xcf, 0x9b, 0x0a, 0xd5, 0x00, 0x0b,
        0xe0, 0x00, 0x00, 0x12, 0x31, 0x33, 0x00, 0x01, 0x00, 0x0a, 0xd8, 0x19, 0x0a, 0xd5, 0x00,
        0x64,
    ];
    let expect = |version, priority, interval| Advert {
        version,
        vrid: vrid(51),
        priority: VrrpPriority(priority),
        max_adver_int: Centiseconds(interval),
        addresses: vec![VIP],
    };
    for (frame, advert) in [
        (&v3[..], expect(Version::V3, 150, 100)),
        (&v2[..], expect(Version::V2, 150, 100)),
        (&v3_stop[..], expect(Version::V3, 0, 10)),
    ] {
        let (ctx, message) = parse_frame(frame);
        assert_eq!(ctx.src, NODE1);
        assert_eq!(Advert::decode(message, &ctx), Ok(advert.clone()));
        assert_eq!(advert.encode(ctx.src, ctx.dst).as_deref(), Ok(message));
    }
}

/// A valid v3 advert from NODE1 and its bytes.
fn valid_v3() -> (Advert, Vec<u8>) {
    let advert = CAPTURED[4].advert();
    let bytes = advert.encode(NODE1, GROUP).unwrap();
    (advert, bytes)
}

/// Rewrites the checksum so that only the field under test is wrong.
fn fix_checksum(bytes: &mut [u8], version: Version, src: IpAddr) {
    let sum = checksum(version, src, multicast_group(src), bytes);
    bytes[6..8].copy_from_slice(&sum.to_be_bytes());
}

#[track_caller]
fn check_fault(bytes: &[u8], ctx: DecodeContext, expected: DecodeError) {
    assert_eq!(Advert::decode(bytes, &ctx), Err(expected));
}

#[test]
fn every_fault_class_is_named() {
    let (_, good) = valid_v3();

    let mut ttl = ctx(NODE1);
    ttl.ttl = 254;
    check_fault(&good, ttl, DecodeError::WrongTtl { ttl: 254 });

    let mixed = DecodeContext::new(NODE1, IpAddr::V6(MULTICAST_V6), 255);
    check_fault(
        &good,
        mixed,
        DecodeError::MixedAddressFamilies {
            src: NODE1,
            dst: IpAddr::V6(MULTICAST_V6),
        },
    );

    check_fault(&good[..7], ctx(NODE1), DecodeError::Truncated { len: 7 });

    let mut checksum = good.clone();
    checksum[7] ^= 0x01;
    check_fault(
        &checksum,
        ctx(NODE1),
        DecodeError::BadChecksum {
            received: 0x41be,
            computed: 0x41bf,
        },
    );

    let mut version = good.clone();
    version[0] = 0x41;
    fix_checksum(&mut version, Version::V3, NODE1);
    check_fault(
        &version,
        ctx(NODE1),
        DecodeError::UnsupportedVersion { version: 4 },
    );

    let mut packet_type = good.clone();
    packet_type[0] = 0x32;
    fix_checksum(&mut packet_type, Version::V3, NODE1);
    check_fault(
        &packet_type,
        ctx(NODE1),
        DecodeError::WrongType { packet_type: 2 },
    );

    let mut count = good.clone();
    count[3] = 2;
    check_fault(
        &count,
        ctx(NODE1),
        DecodeError::AddressCountMismatch {
            count: 2,
            len: 12,
            expected: 16,
        },
    );
    let mut longer = good.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    check_fault(
        &longer,
        ctx(NODE1),
        DecodeError::AddressCountMismatch {
            count: 1,
            len: 16,
            expected: 12,
        },
    );

    let mut vrid0 = good.clone();
    vrid0[1] = 0;
    fix_checksum(&mut vrid0, Version::V3, NODE1);
    check_fault(&vrid0, ctx(NODE1), DecodeError::InvalidVrid);

    let mut interval = good.clone();
    interval[4] = 0xf0; // reserved bits set, interval 0
    interval[5] = 0;
    fix_checksum(&mut interval, Version::V3, NODE1);
    check_fault(&interval, ctx(NODE1), DecodeError::InvalidInterval);

    let v2 = CAPTURED[0].bytes();
    let ipv6 = DecodeContext::new(
        "fe80::1".parse().unwrap(),
        IpAddr::V6(MULTICAST_V6),
        REQUIRED_TTL,
    );
    check_fault(&v2, ipv6, DecodeError::Version2OverIpv6);

    let mut auth = v2.clone();
    auth[4] = 1;
    fix_checksum(&mut auth, Version::V2, NODE1);
    check_fault(
        &auth,
        ctx(NODE1),
        DecodeError::UnsupportedAuthType { auth_type: 1 },
    );

    let mut v2_interval = v2;
    v2_interval[5] = 0;
    fix_checksum(&mut v2_interval, Version::V2, NODE1);
    check_fault(&v2_interval, ctx(NODE1), DecodeError::InvalidInterval);
}

#[test]
fn truncation_at_every_length_is_refused() {
    for packet in CAPTURED {
        let bytes = packet.bytes();
        for len in 0..bytes.len() {
            let res = Advert::decode(&bytes[..len], &ctx(packet.src));
            let expected = if len < 8 {
                DecodeError::Truncated { len }
            } else {
                DecodeError::AddressCountMismatch {
                    count: 1,
                    len,
                    expected: bytes.len(),
                }
            };
            assert_eq!(res, Err(expected), "{} cut at {len}", packet.file);
        }
    }
}

#[test]
fn v3_checksum_covers_the_pseudo_header_and_v2_does_not() {
    let (advert, bytes) = valid_v3();
    // The same bytes from another source fail: the source is in the v3 pseudo-header.
    assert!(matches!(
        Advert::decode(&bytes, &ctx(NODE2)),
        Err(DecodeError::BadChecksum { .. })
    ));
    // Unicast mode: another destination, another checksum.
    let unicast = advert.encode(NODE1, NODE2).unwrap();
    assert_ne!(unicast, bytes);
    let unicast_ctx = DecodeContext::new(NODE1, NODE2, REQUIRED_TTL);
    assert_eq!(Advert::decode(&unicast, &unicast_ctx), Ok(advert));
    // v2 keepalived packets from node1 and node2 at priority 0 carry the same checksum.
    assert_eq!(CAPTURED[1].checksum, CAPTURED[3].checksum);
    assert_eq!(
        Advert::decode(&CAPTURED[1].bytes(), &ctx(NODE2)),
        Ok(CAPTURED[1].advert())
    );
}

#[test]
fn reserved_bits_are_ignored_on_receipt_and_zero_on_send() {
    let (advert, mut bytes) = valid_v3();
    bytes[4] |= 0xa0;
    fix_checksum(&mut bytes, Version::V3, NODE1);
    assert_eq!(Advert::decode(&bytes, &ctx(NODE1)), Ok(advert.clone()));
    assert_eq!(advert.encode(NODE1, GROUP).unwrap()[4] & 0xf0, 0);
}

#[test]
fn either_checksum_zero_is_accepted() {
    // v2, VRID 1, priority 0, interval 1 s: the words 0x2101 + 0x0001 + 0x0001 and the
    // address 222.252.0.0 sum to exactly 0xffff, so the checksum is 0x0000; RFC 1071 allows
    // the other zero, 0xffff, too.
    let mut bytes = vec![
        0x21, 1, 0, 1, 0, 1, 0, 0, 222, 252, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(checksum(Version::V2, NODE1, GROUP, &bytes), 0x0000);
    let advert = Advert::decode(&bytes, &ctx(NODE1)).unwrap();
    bytes[6..8].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(Advert::decode(&bytes, &ctx(NODE1)), Ok(advert));
}

#[test]
fn encode_refuses_what_the_wire_cannot_carry() {
    let (advert, _) = valid_v3();
    let v6 = IpAddr::V6(MULTICAST_V6);
    assert_eq!(
        advert.encode(NODE1, v6),
        Err(EncodeError::MixedAddressFamilies {
            src: NODE1,
            dst: v6
        })
    );
    assert_eq!(
        advert.encode("fe80::1".parse().unwrap(), v6),
        Err(EncodeError::AddressFamily { address: VIP })
    );
    let mut v2 = CAPTURED[0].advert();
    assert_eq!(
        v2.encode("fe80::1".parse().unwrap(), v6),
        Err(EncodeError::Version2OverIpv6)
    );
    v2.max_adver_int = Centiseconds(150);
    assert!(matches!(
        v2.encode(NODE1, GROUP),
        Err(EncodeError::IntervalOutOfRange { .. })
    ));
    v2.max_adver_int = Centiseconds(25_600);
    assert!(matches!(
        v2.encode(NODE1, GROUP),
        Err(EncodeError::IntervalOutOfRange { .. })
    ));
    let mut v3 = advert.clone();
    v3.max_adver_int = Centiseconds(4096);
    assert!(matches!(
        v3.encode(NODE1, GROUP),
        Err(EncodeError::IntervalOutOfRange { .. })
    ));
    v3.max_adver_int = Centiseconds(0);
    assert!(matches!(
        v3.encode(NODE1, GROUP),
        Err(EncodeError::IntervalOutOfRange { .. })
    ));
    let mut many = advert;
    many.addresses = vec![VIP; 256];
    assert_eq!(
        many.encode(NODE1, GROUP),
        Err(EncodeError::TooManyAddresses { count: 256 })
    );
}

#[test]
fn peek_vrid_reads_byte_one() {
    let (_, bytes) = valid_v3();
    assert_eq!(peek_vrid(&bytes), Some(vrid(51)));
    assert_eq!(peek_vrid(&bytes[..1]), None);
    assert_eq!(peek_vrid(&[0x31, 0]), None);
}

// === properties ===

fn arb_v4() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>().prop_map(|octets| IpAddr::V4(Ipv4Addr::from(octets)))
}

fn arb_v6() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 16]>().prop_map(|octets| IpAddr::V6(Ipv6Addr::from(octets)))
}

/// (advert, src, dst): v2 over IPv4, v3 over IPv4, v3 over IPv6.
fn arb_sendable() -> impl Strategy<Value = (Advert, IpAddr, IpAddr)> {
    let header = (1u8..=255, any::<u8>());
    prop_oneof![
        (
            header.clone(),
            1u16..=255,
            prop::collection::vec(arb_v4(), 0..12),
            arb_v4(),
            arb_v4()
        )
            .prop_map(|((vrid, priority), seconds, addresses, src, dst)| {
                let advert = Advert {
                    version: Version::V2,
                    vrid: Vrid::new(vrid).unwrap(),
                    priority: VrrpPriority(priority),
                    max_adver_int: Centiseconds(seconds * 100),
                    addresses,
                };
                (advert, src, dst)
            }),
        (
            header.clone(),
            1u16..=4095,
            prop::collection::vec(arb_v4(), 0..12),
            arb_v4(),
            arb_v4()
        )
            .prop_map(|((vrid, priority), interval, addresses, src, dst)| {
                let advert = Advert {
                    version: Version::V3,
                    vrid: Vrid::new(vrid).unwrap(),
                    priority: VrrpPriority(priority),
                    max_adver_int: Centiseconds(interval),
                    addresses,
                };
                (advert, src, dst)
            }),
        (
            header,
            1u16..=4095,
            prop::collection::vec(arb_v6(), 0..6),
            arb_v6(),
            arb_v6()
        )
            .prop_map(|((vrid, priority), interval, addresses, src, dst)| {
                let advert = Advert {
                    version: Version::V3,
                    vrid: Vrid::new(vrid).unwrap(),
                    priority: VrrpPriority(priority),
                    max_adver_int: Centiseconds(interval),
                    addresses,
                };
                (advert, src, dst)
            }),
    ]
}

fn arb_context() -> impl Strategy<Value = DecodeContext> {
    prop_oneof![
        (arb_v4(), arb_v4(), any::<u8>()),
        (arb_v6(), arb_v6(), any::<u8>()),
        (arb_v4(), arb_v6(), any::<u8>()),
        (arb_v4(), arb_v4(), Just(255u8)),
        (arb_v6(), arb_v6(), Just(255u8)),
    ]
    .prop_map(|(src, dst, ttl)| DecodeContext::new(src, dst, ttl))
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips((advert, src, dst) in arb_sendable()) {
        let bytes = advert.encode(src, dst).unwrap();
        let ctx = DecodeContext::new(src, dst, REQUIRED_TTL);
        prop_assert_eq!(Advert::decode(&bytes, &ctx), Ok(advert));
    }

    #[test]
    fn every_single_bit_flip_is_refused((advert, src, dst) in arb_sendable(), bit in any::<prop::sample::Index>()) {
        let mut bytes = advert.encode(src, dst).unwrap();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let ctx = DecodeContext::new(src, dst, REQUIRED_TTL);
        prop_assert!(Advert::decode(&bytes, &ctx).is_err());
    }

    #[test]
    fn decode_never_panics_and_what_decodes_re_encodes(
        bytes in prop::collection::vec(any::<u8>(), 0..80),
        ctx in arb_context(),
    ) {
        if let Ok(advert) = Advert::decode(&bytes, &ctx) {
            let again = advert.encode(ctx.src, ctx.dst).unwrap();
            prop_assert_eq!(Advert::decode(&again, &ctx), Ok(advert));
        }
    }

    /// Random bytes rarely pass the checksum; valid headers with random tails reach the
    /// deeper checks.
    #[test]
    fn decode_never_panics_on_plausible_headers(
        version in prop_oneof![Just(0x21u8), Just(0x31u8), any::<u8>()],
        rest in prop::collection::vec(any::<u8>(), 0..60),
        ctx in arb_context(),
    ) {
        let mut bytes = vec![version];
        bytes.extend_from_slice(&rest);
        if bytes.len() >= 8 {
            let version = if version >> 4 == 2 { Version::V2 } else { Version::V3 };
            let sum = checksum(version, ctx.src, ctx.dst, &bytes);
            bytes[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        if let Ok(advert) = Advert::decode(&bytes, &ctx) {
            let again = advert.encode(ctx.src, ctx.dst).unwrap();
            prop_assert_eq!(Advert::decode(&again, &ctx), Ok(advert));
        }
    }
}
