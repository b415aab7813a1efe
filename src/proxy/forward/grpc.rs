//! gRPC as the proxy sees it: which requests are gRPC calls, the deadline a call carries
//! (`grpc-timeout`), and how the proxy's own answers and cuts are said to a gRPC client.
//!
//! A gRPC client reads its call's outcome from `grpc-status`, not from the HTTP status: a
//! bare 502 or 503 becomes `UNKNOWN` or `UNAVAILABLE` by guesswork, and a reset stream
//! says nothing at all. So an answer the proxy makes itself is HTTP 200 with `grpc-status`
//! and `grpc-message` in a headers-only response ("Trailers-Only" in the gRPC over HTTP/2
//! spec), and a call cut mid-stream ends with those two as trailers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use super::Canned;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The gRPC status codes the proxy itself says (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// Whether `headers` are those of a gRPC call: a content type of `application/grpc`,
/// alone or with a `+format` or `;params` suffix (gRPC-Web's `application/grpc-web` too:
/// it reads `grpc-status` from headers the same way).
pub fn is_call(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The call's deadline from `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n).
/// `None` when absent or malformed (gRPC servers ignore a malformed one too).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC code a client should read for one of the proxy's own HTTP answers, by the
/// mapping gRPC itself applies to HTTP statuses (grpc/doc/http-grpc-status-mapping.md),
/// except that timeouts are `DEADLINE_EXCEEDED`, which is what they are.
pub fn code_of(status: u16) -> Code {
    match status {
        408 | 504 => Code::DeadlineExceeded,
        413 | 414 | 431 => Code::ResourceExhausted,
        405 | 501 => Code::Unimplemented,
        502 | 503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// `answer` as a gRPC client reads it: HTTP 200, `application/grpc`, and the code and
/// the answer's text in `grpc-status` and `grpc-message`, with no body.
pub fn answer(answer: &Canned) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let text = answer.text.trim_end();
    put_status(headers, code_of(answer.status), text);
    response
}

/// The trailers that end a call the proxy cut: `code`, and `why` as its message.
pub fn trailers(code: Code, why: &str) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    put_status(&mut trailers, code, why);
    trailers
}

fn put_status(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert(GRPC_STATUS, HeaderValue::from(code as u16));
    if let Ok(message) = HeaderValue::from_maybe_shared(percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn percent_encode(text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn grpc_content_types_and_others() {
        for t in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
            "application/grpc-web+proto",
        ] {
            assert!(is_call(&with("content-type", t)), "{t}");
        }
        for t in ["application/json", "text/grpc", "application/gr"] {
            assert!(!is_call(&with("content-type", t)), "{t}");
        }
        assert!(!is_call(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        let t = |v: &'static str| timeout(&with("grpc-timeout", v));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("10S"), Some(Duration::from_secs(10)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "10s", "1.5S", "-1S", "10", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn own_answers_map_to_grpc_codes() {
        assert_eq!(code_of(503), Code::Unavailable);
        assert_eq!(code_of(502), Code::Unavailable);
        assert_eq!(code_of(504), Code::DeadlineExceeded);
        assert_eq!(code_of(408), Code::DeadlineExceeded);
        assert_eq!(code_of(431), Code::ResourceExhausted);
        assert_eq!(code_of(405), Code::Unimplemented);
        assert_eq!(code_of(400), Code::Internal);
    }

    #[test]
    fn an_answer_is_200_with_status_and_encoded_message_and_no_body() {
        let response = answer(&Canned::unavailable(
            "no worker with weight > 0 in pool \"g\"",
        ));
        assert_eq!(response.status(), 200);
        let h = response.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(
            h["grpc-message"],
            "503 Service Unavailable: no worker with weight > 0 in pool \"g\""
        );
        use hyper::body::Body;
        assert!(response.body().is_end_stream());
        let t = trailers(Code::DeadlineExceeded, "50% done\n\u{e9}");
        assert_eq!(t["grpc-status"], "4");
        assert_eq!(t["grpc-message"], "50%25 done%0A%C3%A9");
    }
}
