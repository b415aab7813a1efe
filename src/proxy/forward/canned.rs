//! The proxy's own answers: a status, its reason phrase and a one-line plain-text body,
//! written once here for both HTTP versions. Details (addresses, errors) go to the log, not
//! to clients.

use std::borrow::Cow;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::access_log::Utc;
use crate::balance::{Balancer, NoWorker};
use crate::db::SyncStatus;

/// One of the proxy's own answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canned {
    pub status: u16,
    pub reason: &'static str,
    /// The body: one line, ending in a newline.
    pub text: Cow<'static, str>,
}

macro_rules! canned {
    ($name:ident, $status:literal, $reason:literal, $text:literal) => {
        pub const $name: Canned = Canned {
            status: $status,
            reason: $reason,
            text: Cow::Borrowed(concat!(stringify!($status), " ", $reason, $text, "\n")),
        };
    };
}

impl Canned {
    canned!(BAD_REQUEST, 400, "Bad Request", "");
    canned!(
        METHOD_NOT_ALLOWED,
        405,
        "Method Not Allowed",
        ": this is not a forward proxy"
    );
    canned!(
        REQUEST_TIMEOUT,
        408,
        "Request Timeout",
        ": the request head did not arrive in time"
    );
    canned!(PAYLOAD_TOO_LARGE, 413, "Content Too Large", "");
    canned!(URI_TOO_LONG, 414, "URI Too Long", "");
    canned!(FIELDS_TOO_LARGE, 431, "Request Header Fields Too Large", "");
    canned!(NOT_IMPLEMENTED, 501, "Not Implemented", "");
    canned!(BAD_GATEWAY, 502, "Bad Gateway", ": the backend failed");
    canned!(
        GATEWAY_TIMEOUT,
        504,
        "Gateway Timeout",
        ": the backend did not answer in time"
    );

    /// 503: no worker could take the request, for `why`.
    pub fn unavailable(why: &str) -> Canned {
        Canned {
            status: 503,
            reason: "Service Unavailable",
            text: Cow::Owned(format!("503 Service Unavailable: {why}\n")),
        }
    }

    /// 503 for a request no worker could take. Before the ring was ever loaded it says so,
    /// and since when the database is unreachable: "no worker with weight > 0" would send
    /// an operator to the table when the table is not the problem.
    pub fn no_worker(why: NoWorker, balancer: &Balancer, sync: &SyncStatus) -> Canned {
        if balancer.ring_loaded() {
            let pool = balancer.pool_name();
            return Canned::unavailable(&format!("{} in pool {pool:?}", why.reason()));
        }
        let state = sync.get();
        let why = if state.state == "reconnecting" {
            format!(
                "the ring has not been loaded yet (database unreachable since {})",
                utc(state.since_unix_ms)
            )
        } else {
            "the ring has not been loaded yet (waiting for the database)".to_string()
        };
        Canned::unavailable(&why)
    }

    /// The whole HTTP/1.1 response into `out` (cleared first); `close` adds
    /// `connection: close`.
    pub fn write_h1(&self, out: &mut Vec<u8>, close: bool) {
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{}",
            self.status,
            self.reason,
            self.text.len(),
            if close { "connection: close\r\n" } else { "" },
            self.text,
        );
    }

    /// The same answer as a response for hyper (the HTTP/2 path).
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = Full::new(Bytes::from(self.text.clone().into_owned()));
        let mut response = Response::new(body);
        *response.status_mut() =
            StatusCode::from_u16(self.status).expect("canned statuses are valid");
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// Unix milliseconds as an RFC 3339 UTC time to the second, with the access log's
/// calendar arithmetic (so the 503 needs no date crate either).
fn utc(unix_ms: u64) -> String {
    let t = Utc::of(UNIX_EPOCH + Duration::from_millis(unix_ms));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_unix_time() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_766_400_000), "2026-11-27T08:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn bodies_name_their_status() {
        assert_eq!(
            Canned::BAD_GATEWAY.text,
            "502 Bad Gateway: the backend failed\n"
        );
        assert_eq!(Canned::URI_TOO_LONG.text, "414 URI Too Long\n");
        let mut out = Vec::new();
        Canned::unavailable("no worker with weight > 0 in pool \"a\"").write_h1(&mut out, true);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(
            text.ends_with(
                "\r\n\r\n503 Service Unavailable: no worker with weight > 0 in pool \"a\"\n"
            ),
            "{text}"
        );
    }
}
