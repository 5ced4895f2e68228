//! Responses the proxy makes itself: error pages and block pages.
//!
//! Every one names the node that answered (the seeds' System.HostName) and carries the request
//! id that is also in the access log, in the page and in headers, so a user's screenshot or a
//! `curl -v` is enough to find the log line.

use std::fmt::Write as _;

use bytes::BytesMut;

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        _ => "Error",
    }
}

/// Who answered and which request it was.
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    pub node: &'a str,
    pub request_id: crate::RequestId,
}

/// A complete HTML response with `Content-Length`; `close` adds `Connection: close`.
pub fn html_response(
    status: u16,
    body: &str,
    stamp: Stamp<'_>,
    close: bool,
    extra_headers: &str,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(256 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Palisade-Node: {}\r\nX-Palisade-Request-Id: {}\r\n{extra_headers}{}\r\n",
        reason_phrase(status),
        body.len(),
        stamp.node,
        stamp.request_id,
        if close { "Connection: close\r\n" } else { "" },
    );
    out.extend_from_slice(body.as_bytes());
    out
}

/// The proxy's own error page for `status`, with a one-line explanation.
pub fn error_response(status: u16, detail: &str, stamp: Stamp<'_>, close: bool) -> BytesMut {
    let reason = reason_phrase(status);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\n<body>\n<h1>{status} {reason}</h1>\n<p>{}</p>\n<hr>\n<p>Answered by node <b>{}</b>, request id <code>{}</code>.</p>\n</body></html>\n",
        escape(detail),
        escape(stamp.node),
        stamp.request_id,
    );
    let extra = if status == 503 {
        "Retry-After: 5\r\n"
    } else {
        ""
    };
    html_response(status, &body, stamp, close, extra)
}

/// Minimal HTML escaping for text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_page_names_node_and_request() {
        let stamp = Stamp {
            node: "node-<a>",
            request_id: crate::RequestId(0x51),
        };
        let response = error_response(502, "DNS lookup for x.test failed", stamp, true);
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(text.contains("X-Palisade-Request-Id: 0000000000000051\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("node <b>node-&lt;a&gt;</b>"));
        assert!(text.contains("request id <code>0000000000000051</code>"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
