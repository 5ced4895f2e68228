//! Response heads from untrusted origins: never panic; accepted heads have a valid status.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use palisade_proxy::http1::HeadLimits;
use palisade_proxy::http1::head::{find_head_end, parse_response};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let mut scanned = 0;
    let Ok(Some(end)) = find_head_end(data, &mut scanned, limits.max_head_bytes) else {
        return;
    };
    let method = if data.len() % 2 == 0 { "GET" } else { "HEAD" };
    if let Ok(head) = parse_response(Bytes::copy_from_slice(&data[..end]), limits, method) {
        assert!((100..=599).contains(&head.status()));
    }
});
