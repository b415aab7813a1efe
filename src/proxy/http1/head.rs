//! What request and response heads share on the HTTP/1 path: body framing, the
//! Content-Length rules, and writing a field line.

use crate::proxy::forward::checks::trim_ows;
pub use crate::proxy::forward::headers::put;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

/// Adds the value(s) of one `Content-Length` field to `seen`; false if they disagree or are
/// not decimal numbers.
pub fn merge_length(seen: &mut Option<u64>, value: &[u8]) -> bool {
    for part in value.split(|&b| b == b',').map(trim_ows) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match *seen {
            Some(m) if m != n => return false,
            _ => *seen = Some(n),
        }
    }
    true
}

#[inline]
pub fn put_length(out: &mut Vec<u8>, n: u64) {
    put(
        out,
        b"Content-Length",
        itoa::Buffer::new().format(n).as_bytes(),
    );
}
