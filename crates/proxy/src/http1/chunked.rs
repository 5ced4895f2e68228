//! A strict, incremental decoder for the chunked transfer coding (RFC 9112 section 7.1).
//!
//! Sans-IO: bytes go in through a `BytesMut`, decoded data comes out as `Bytes` split off the
//! same buffer (no copy). Line endings must be CRLF, sizes are hex without sign or spaces and
//! must fit in 64 bits, extensions are bounded and trailers are read and dropped.

use bytes::{Buf, Bytes, BytesMut};

use super::ChunkError;

/// Longest chunk-size line (size plus extensions) we accept.
const MAX_LINE: usize = 4096;
/// Largest trailer section we are willing to read (and drop).
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting `chunk-size [ chunk-ext ] CRLF`.
    Size,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the CRLF that ends chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailers {
        seen: usize,
    },
    Done,
}

/// What one call to [`ChunkedDecoder::decode`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body data (never empty).
    Data(Bytes),
    /// The buffer holds no complete unit; read more bytes.
    NeedMore,
    /// The body is complete; bytes after it stay in the buffer.
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder { state: State::Size }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `buf` as possible, consuming framing bytes and returning data.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Size => {
                    let Some(line_end) = find_crlf(buf, MAX_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size_line(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    self.state = if size == 0 {
                        State::Trailers { seen: 0 }
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = remaining.min(buf.len() as u64) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|byte| *byte != b'\r') {
                            return Err(ChunkError::MissingDataCrlf);
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::MissingDataCrlf);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers { seen } => {
                    // `seen + line + CRLF` never exceeds MAX_TRAILERS, so this cannot wrap.
                    let budget = MAX_TRAILERS.saturating_sub(seen + 2);
                    let Some(line_end) = find_crlf(buf, budget)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line_end == 0 {
                        buf.advance(2);
                        self.state = State::Done;
                        continue;
                    }
                    // A trailer field line: the same rules as a header line, then dropped.
                    check_trailer_line(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    self.state = State::Trailers {
                        seen: seen + line_end + 2,
                    };
                }
            }
        }
    }
}

/// Position of the CR of the first CRLF within `limit` bytes of line content; bare CR, bare
/// LF and NUL are errors, and so is a line longer than `limit`.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, ChunkError> {
    for (index, byte) in buf.iter().enumerate() {
        if index > limit {
            return Err(ChunkError::LineTooLong);
        }
        match byte {
            b'\r' => match buf.get(index + 1) {
                Some(b'\n') => return Ok(Some(index)),
                Some(_) => return Err(ChunkError::BareCr),
                None => return Ok(None),
            },
            b'\n' => return Err(ChunkError::BareLf),
            0 => return Err(ChunkError::InvalidLine),
            _ => {}
        }
    }
    if buf.len() > limit {
        return Err(ChunkError::LineTooLong);
    }
    Ok(None)
}

/// `chunk-size = 1*HEXDIG`, then optional `;ext` parts made of visible characters and spaces.
fn parse_size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let digits_end = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_end == 0 {
        return Err(ChunkError::InvalidSize);
    }
    // More than 16 hex digits cannot fit in u64 even with leading zeros trimmed... unless
    // they are zeros; refuse them anyway, nobody legitimate sends them.
    if digits_end > 16 {
        return Err(ChunkError::SizeOverflow);
    }
    let mut size: u64 = 0;
    for digit in &line[..digits_end] {
        let value = (*digit as char)
            .to_digit(16)
            .ok_or(ChunkError::InvalidSize)?;
        size = size
            .checked_mul(16)
            .and_then(|size| size.checked_add(u64::from(value)))
            .ok_or(ChunkError::SizeOverflow)?;
    }
    let rest = &line[digits_end..];
    // RFC 9112 7.1.1: BWS ";" chunk-ext; anything else after the digits is malformed.
    let trimmed = super::head::trim_ows(rest);
    if !trimmed.is_empty() {
        if trimmed[0] != b';' {
            return Err(ChunkError::InvalidSize);
        }
        if !trimmed
            .iter()
            .all(|byte| *byte == b'\t' || (0x20..0x7f).contains(byte) || *byte >= 0x80)
        {
            return Err(ChunkError::InvalidExtension);
        }
    } else if !rest.is_empty() {
        // Whitespace after the size without an extension: ambiguous between parsers.
        return Err(ChunkError::InvalidSize);
    }
    Ok(size)
}

fn check_trailer_line(line: &[u8]) -> Result<(), ChunkError> {
    let Some(colon) = line.iter().position(|byte| *byte == b':') else {
        return Err(ChunkError::InvalidTrailer);
    };
    let name = &line[..colon];
    let is_tchar = |byte: &u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(byte);
    if name.is_empty() || !name.iter().all(is_tchar) {
        return Err(ChunkError::InvalidTrailer);
    }
    if !line[colon + 1..]
        .iter()
        .all(|byte| *byte == b'\t' || (0x20..0x7f).contains(byte) || *byte >= 0x80)
    {
        return Err(ChunkError::InvalidTrailer);
    }
    Ok(())
}

/// Writes the chunk header for `len` bytes of data into `out`.
pub fn encode_chunk_header(len: usize, out: &mut BytesMut) {
    use std::fmt::Write;
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(input);
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::NeedMore => return Err(ChunkError::Truncated),
                Decoded::Done => return Ok((body, buf.len())),
            }
        }
    }

    #[track_caller]
    fn check(input: &str, expected: Result<&str, ChunkError>) {
        let got = decode_all(input.as_bytes());
        match expected {
            Ok(body) => match got {
                Ok((decoded, _)) => assert_eq!(decoded, body.as_bytes(), "{input:?}"),
                Err(error) => panic!("{input:?}: {error}"),
            },
            Err(expected) => assert_eq!(got.err(), Some(expected), "{input:?}"),
        }
    }

    #[test]
    fn decodes() {
        check("5\r\nhello\r\n0\r\n\r\n", Ok("hello"));
        check("5;ext=1\r\nhello\r\n0\r\n\r\n", Ok("hello"));
        check("5 ;ext\r\nhello\r\n0\r\n\r\n", Ok("hello"));
        check("A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n", Ok("0123456789"));
        check("000\r\n\r\n", Ok(""));
    }

    #[test]
    fn refuses_malformed() {
        use ChunkError::*;
        check("5\nhello\r\n0\r\n\r\n", Err(BareLf));
        check("5\r\nhello\n0\r\n\r\n", Err(MissingDataCrlf));
        check("5\r\nhelloXX0\r\n\r\n", Err(MissingDataCrlf));
        check("5\rx\nhello\r\n0\r\n\r\n", Err(BareCr));
        check("fffffffffffffffff\r\n", Err(SizeOverflow));
        check("-5\r\nhello\r\n0\r\n\r\n", Err(InvalidSize));
        check("+5\r\nhello\r\n0\r\n\r\n", Err(InvalidSize));
        check("0x5\r\nhello\r\n0\r\n\r\n", Err(InvalidSize));
        check("5 \r\nhello\r\n0\r\n\r\n", Err(InvalidSize));
        check("\r\nhello\r\n0\r\n\r\n", Err(InvalidSize));
        check("5;a\x01\r\nhello\r\n0\r\n\r\n", Err(InvalidExtension));
        check("0\r\nbad trailer\r\n\r\n", Err(InvalidTrailer));
        check("0\r\nX: 1\n\r\n", Err(BareLf));
    }

    /// Found in review: a trailer line of exactly the remaining budget made the next budget
    /// wrap (a panic in debug, an unbounded buffer in release).
    #[test]
    fn trailer_budget_is_enforced_without_wrapping() {
        for line_len in [
            MAX_TRAILERS - 4,
            MAX_TRAILERS - 3,
            MAX_TRAILERS - 2,
            MAX_TRAILERS,
        ] {
            let mut input = b"0\r\nX:".to_vec();
            input.extend(std::iter::repeat_n(b'a', line_len.saturating_sub(2)));
            input.extend_from_slice(b"\r\n");
            input.extend(std::iter::repeat_n(b'a', 2 * MAX_TRAILERS));
            let mut decoder = ChunkedDecoder::new();
            let mut buf = BytesMut::from(&input[..]);
            let mut result = decoder.decode(&mut buf);
            // Feed more junk: the decoder must refuse, not ask for more forever.
            for _ in 0..4 {
                if !matches!(result, Ok(Decoded::NeedMore)) {
                    break;
                }
                buf.extend(std::iter::repeat_n(b'a', MAX_TRAILERS));
                result = decoder.decode(&mut buf);
            }
            assert_eq!(result, Err(ChunkError::LineTooLong), "line of {line_len}");
        }
    }

    #[test]
    fn leaves_following_bytes() {
        let got = decode_all(b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1");
        assert_eq!(got, Ok((b"a".to_vec(), 14)));
    }

    proptest! {
        /// Any body encoded in any chunk sizes and delivered in any read sizes decodes back.
        #[test]
        fn roundtrip(body in proptest::collection::vec(any::<u8>(), 0..2000),
                     chunk in 1usize..300, read in 1usize..64) {
            let mut encoded = BytesMut::new();
            for part in body.chunks(chunk) {
                encode_chunk_header(part.len(), &mut encoded);
                encoded.extend_from_slice(part);
                encoded.extend_from_slice(b"\r\n");
            }
            encoded.extend_from_slice(LAST_CHUNK);
            let mut decoder = ChunkedDecoder::new();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut fed = 0;
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(data)) => out.extend_from_slice(&data),
                    Ok(Decoded::Done) => break,
                    Ok(Decoded::NeedMore) => {
                        prop_assert!(fed < encoded.len());
                        let next = (fed + read).min(encoded.len());
                        buf.extend_from_slice(&encoded[fed..next]);
                        fed = next;
                    }
                    Err(error) => prop_assert!(false, "error {error}"),
                }
            }
            prop_assert_eq!(out, body);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn no_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&input);
        }
    }
}
