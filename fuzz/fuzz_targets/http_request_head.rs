//! Request heads from untrusted clients: never panic, and whatever is accepted has exactly
//! one framing and no control bytes in its fields.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use palisade_proxy::http1::head::{find_head_end, parse_request};
use palisade_proxy::http1::{Framing, HeadLimits};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let mut scanned = 0;
    // Feed in two pieces, as a network would.
    let split = data.len() / 2;
    let _ = find_head_end(&data[..split], &mut scanned, limits.max_head_bytes);
    let Ok(Some(end)) = find_head_end(data, &mut scanned, limits.max_head_bytes) else {
        return;
    };
    let Ok(head) = parse_request(Bytes::copy_from_slice(&data[..end]), limits) else {
        return;
    };
    let content_lengths = head.header_all("content-length").count();
    let transfer_encodings = head.header_all("transfer-encoding").count();
    assert!(
        content_lengths + transfer_encodings <= 1,
        "two framings accepted"
    );
    match head.framing {
        Framing::Chunked => assert_eq!(transfer_encodings, 1),
        Framing::Length(_) => assert_eq!(content_lengths, 1),
        Framing::Empty => assert_eq!(transfer_encodings, 0),
        Framing::UntilClose => panic!("a request cannot be close-delimited"),
    }
    for (name, value) in head.headers() {
        assert!(!name.is_empty());
        assert!(!value.iter().any(|byte| matches!(byte, b'\r' | b'\n' | 0)));
    }
});
