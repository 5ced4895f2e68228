//! The scan port's PROXY v2 header: no input panics the length check or the verifier, no
//! input without the pair key passes, and an input that is a sealed header verifies exactly
//! once.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use palisade_identity::NodeId;
use palisade_scan_header::{PREFIX_LEN, PairKey, RelayEnds, Verifier, header_length, seal};

fuzz_target!(|data: &[u8]| {
    let director = NodeId::from_bytes([1; 16]);
    let key = PairKey::from_group_key(b"fuzz group key", director, NodeId::from_bytes([2; 16]));
    let relay = RelayEnds {
        director: SocketAddr::from(([10, 213, 0, 1], 40000)),
        scanner: SocketAddr::from(([10, 213, 0, 2], 9190)),
    };
    let now = 1_800_000_000_000;
    let keys = |id: NodeId| {
        if id == director {
            vec![key.clone()]
        } else {
            Vec::new()
        }
    };
    let _ = header_length(&data[..data.len().min(PREFIX_LEN)]);
    let mut verifier = Verifier::new(30_000, 64);
    // Arbitrary bytes carry no valid MAC (the key is not in them).
    assert!(verifier.verify(data, relay, now, keys).is_err());
    // Bytes as addresses and nonce of a sealed header: it verifies once.
    if data.len() >= 28 {
        let client = SocketAddr::from((
            [data[0], data[1], data[2], data[3]],
            u16::from_be_bytes([data[4], data[5]]),
        ));
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&data[6..22]);
        let vip = SocketAddr::from(([data[22], data[23], data[24], data[25]], 9090));
        let header = seal(client, vip, director, &key, relay, now, nonce);
        assert_eq!(header_length(&header[..PREFIX_LEN]), Ok(Some(header.len())));
        let verified = verifier.verify(&header, relay, now, keys);
        assert_eq!(verified.map(|v| v.client), Ok(client));
        assert!(verifier.verify(&header, relay, now, keys).is_err());
    }
});
