//! Chunked bodies from clients and origins: never panic, never loop, decoded data never
//! exceeds the input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use palisade_proxy::http1::{ChunkedDecoder, Decoded};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut decoder = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut decoded = 0;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(bytes)) => {
                assert!(!bytes.is_empty());
                decoded += bytes.len();
                assert!(decoded <= data.len());
            }
            Ok(Decoded::Done) | Err(_) => return,
            Ok(Decoded::NeedMore) => {
                if fed == data.len() {
                    return;
                }
                let next = (fed + step).min(data.len());
                buf.extend_from_slice(&data[fed..next]);
                fed = next;
            }
        }
    }
});
