//! HTTP/1.x wire format: strict head parsing, body framing and the chunked coding.
//!
//! Everything here is sans-IO (bytes in, values out) so it can be unit-tested, property-tested
//! and fuzzed without sockets; `crate::conn` drives it.

pub mod chunked;
pub mod head;

pub use chunked::{ChunkedDecoder, Decoded};
pub use head::{ConnectionFlags, Framing, Head, HeadLimits, Version};

/// Why a message head was refused. Each variant is one shape of malformed or ambiguous input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than the configured limit")]
    TooLarge,
    #[error("more header fields than the configured limit")]
    TooManyHeaders,
    #[error("request line longer than the configured limit")]
    RequestLineTooLong,
    #[error("bare LF in message head")]
    BareLf,
    #[error("bare CR in message head")]
    BareCr,
    #[error("NUL byte in message head")]
    Nul,
    #[error("malformed request line")]
    InvalidRequestLine,
    #[error("malformed status line")]
    InvalidStatusLine,
    #[error("invalid request target")]
    InvalidTarget,
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("invalid header field name (whitespace before colon, obs-fold or control byte)")]
    InvalidHeaderName,
    #[error("invalid header field value (control byte)")]
    InvalidHeaderValue,
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("duplicate Content-Length")]
    DuplicateContentLength,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("Transfer-Encoding other than a single chunked")]
    UnsupportedTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
    #[error("HTTP/1.0 request body without Content-Length")]
    CloseDelimitedRequestBody,
    #[error("missing Host header")]
    MissingHost,
    #[error("duplicate Host header")]
    DuplicateHost,
}

impl HeadError {
    /// The status a client gets for this error.
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::RequestLineTooLong => 414,
            HeadError::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    InvalidSize,
    #[error("chunk size overflows")]
    SizeOverflow,
    #[error("invalid chunk extension")]
    InvalidExtension,
    #[error("chunk data not followed by CRLF")]
    MissingDataCrlf,
    #[error("bare CR in chunked framing")]
    BareCr,
    #[error("bare LF in chunked framing")]
    BareLf,
    #[error("NUL in chunked framing")]
    InvalidLine,
    #[error("chunk line too long")]
    LineTooLong,
    #[error("invalid trailer field")]
    InvalidTrailer,
    #[error("chunked body truncated")]
    Truncated,
}
