use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn director() -> NodeId {
    NodeId::from_bytes([1; 16])
}

fn scanner() -> NodeId {
    NodeId::from_bytes([2; 16])
}

fn key() -> PairKey {
    PairKey::from_group_key(b"0123456789abcdef-group-key", director(), scanner())
}

fn relay() -> RelayEnds {
    RelayEnds {
        director: "10.213.0.1:40000"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        scanner: "10.213.0.2:9190".parse().unwrap_or_else(|_| unreachable!()),
    }
}

fn client() -> SocketAddr {
    "192.0.2.7:51000".parse().unwrap_or_else(|_| unreachable!())
}

fn vip() -> SocketAddr {
    "10.213.0.100:9090"
        .parse()
        .unwrap_or_else(|_| unreachable!())
}

const NOW: u64 = 1_800_000_000_000;

fn sealed(nonce: u8) -> Vec<u8> {
    seal(
        client(),
        vip(),
        director(),
        &key(),
        relay(),
        NOW,
        [nonce; 16],
    )
}

fn keys_of(id: NodeId) -> Vec<PairKey> {
    if id == director() {
        vec![key()]
    } else {
        Vec::new()
    }
}

#[test]
fn a_sealed_header_verifies_once_and_says_who_the_client_is() {
    let header = sealed(1);
    assert!(header.len() <= MAX_HEADER);
    assert_eq!(header_length(&header[..PREFIX_LEN]), Ok(Some(header.len())));
    assert_eq!(header_length(&header[..5]), Ok(None));
    let mut verifier = Verifier::new(30_000, 1_000);
    assert_eq!(
        verifier.verify(&header, relay(), NOW + 1_000, keys_of),
        Ok(Verified {
            client: client(),
            destination: vip(),
            director: director(),
        })
    );
    assert_eq!(
        verifier.verify(&header, relay(), NOW + 2_000, keys_of),
        Err(Refusal::Replayed)
    );
}

#[test]
fn ipv6_and_mixed_families_round_trip() {
    let v6_client = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
        5,
    );
    let mut verifier = Verifier::new(30_000, 1_000);
    let header = seal(v6_client, vip(), director(), &key(), relay(), NOW, [9; 16]);
    let verified = verifier.verify(&header, relay(), NOW, keys_of);
    let mapped_vip = SocketAddr::new(
        IpAddr::V6(Ipv4Addr::new(10, 213, 0, 100).to_ipv6_mapped()),
        9090,
    );
    assert_eq!(
        verified.map(|v| (v.client, v.destination)),
        Ok((v6_client, mapped_vip))
    );
}

#[test]
fn another_connection_another_key_a_stale_stamp_or_an_unknown_director_are_refused() {
    let header = sealed(2);
    let mut verifier = Verifier::new(30_000, 1_000);
    // Lifted onto another relay connection (another source port).
    let mut other = relay();
    other.director.set_port(40001);
    assert_eq!(
        verifier.verify(&header, other, NOW, keys_of),
        Err(Refusal::BadMac)
    );
    // Another pair's key.
    let stranger = |_: NodeId| {
        vec![PairKey::from_group_key(
            b"0123456789abcdef-group-key",
            director(),
            NodeId::from_bytes([3; 16]),
        )]
    };
    assert_eq!(
        verifier.verify(&header, relay(), NOW, stranger),
        Err(Refusal::BadMac)
    );
    assert_eq!(
        verifier.verify(&header, relay(), NOW, |_| Vec::new()),
        Err(Refusal::UnknownDirector(director()))
    );
    assert!(matches!(
        verifier.verify(&header, relay(), NOW + 31_000, keys_of),
        Err(Refusal::Stale { .. })
    ));
    // While links re-key, the previous key still verifies.
    let rekeyed = |_: NodeId| vec![PairKey::from_secret(b"new link secret"), key()];
    assert!(verifier.verify(&header, relay(), NOW, rekeyed).is_ok());
}

#[test]
fn plain_and_unauthenticated_headers_and_oversized_ones_are_refused() {
    let plain = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (client(), vip()),
    )
    .build()
    .unwrap_or_default();
    let mut verifier = Verifier::new(30_000, 1_000);
    assert_eq!(
        verifier.verify(&plain, relay(), NOW, keys_of),
        Err(Refusal::Unauthenticated)
    );
    assert_eq!(
        verifier.verify(b"GET / HTTP/1.1\r\n\r\n", relay(), NOW, keys_of),
        Err(Refusal::NotProxyV2)
    );
    assert_eq!(
        header_length(b"GET / HTTP/1.1\r\n"),
        Err(Refusal::NotProxyV2)
    );
    let mut long = sealed(3)[..PREFIX_LEN].to_vec();
    long[14..16].copy_from_slice(&600u16.to_be_bytes());
    assert_eq!(header_length(&long), Err(Refusal::TooLong(616)));
    let local = v2::Builder::new(v2::Version::Two | v2::Command::Local, 0)
        .build()
        .unwrap_or_default();
    assert_eq!(
        verifier.verify(&local, relay(), NOW, keys_of),
        Err(Refusal::NotRelay)
    );
}

#[test]
fn the_nonce_memory_is_bounded_and_forgets_the_oldest() {
    let mut verifier = Verifier::new(30_000, 2);
    assert!(verifier.verify(&sealed(4), relay(), NOW, keys_of).is_ok());
    assert!(verifier.verify(&sealed(5), relay(), NOW, keys_of).is_ok());
    // Full: a genuine header still passes, and the oldest nonce is forgotten.
    assert!(verifier.verify(&sealed(6), relay(), NOW, keys_of).is_ok());
    assert_eq!(
        verifier.verify(&sealed(6), relay(), NOW, keys_of),
        Err(Refusal::Replayed)
    );
    assert!(verifier.verify(&sealed(4), relay(), NOW, keys_of).is_ok());
    // Remembered up to and including the last millisecond of its window.
    let mut verifier = Verifier::new(30_000, 10);
    assert!(verifier.verify(&sealed(7), relay(), NOW, keys_of).is_ok());
    assert_eq!(
        verifier.verify(&sealed(7), relay(), NOW + 30_000, keys_of),
        Err(Refusal::Replayed)
    );
}

proptest! {
    /// Any change to any byte of a sealed header is refused (never a different client).
    #[test]
    fn any_altered_byte_is_refused(at in 0usize..200, flip in 1u8..=255) {
        let header = sealed(7);
        let at = at % header.len();
        let mut altered = header.clone();
        altered[at] ^= flip;
        let mut verifier = Verifier::new(30_000, 1_000);
        prop_assert!(verifier.verify(&altered, relay(), NOW, keys_of).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut verifier = Verifier::new(30_000, 1_000);
        let _ = header_length(&bytes[..bytes.len().min(PREFIX_LEN)]);
        prop_assert!(verifier.verify(&bytes, relay(), NOW, keys_of).is_err());
    }
}
