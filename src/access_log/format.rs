//! An [`Entry`] as one line of text, in either format. Runs on the writer thread, appending
//! to a buffer it reuses, so the request path never formats anything.
//!
//! `json`, one object per line, keys always present and always in this order (absent values
//! are `null`; durations are milliseconds with 3 decimals, as numbers):
//!
//! ```text
//! {"time":"2000-10-10T13:55:36.789Z","client":"203.0.113.7:51234","method":"GET",
//!  "authority":"example.com","path":"/a?b=1","protocol":"HTTP/1.1","status":200,
//!  "bytes_in":0,"bytes_out":2326,"worker":"10.0.0.1:8000","pool":"default","total_ms":12.345,
//!  "connect_ms":0.512,"ttfb_ms":10.001,"retries":0,"ended":"complete",
//!  "listener":"127.0.0.1:8080","referer":null,"user_agent":"curl/8.5.0"}
//! ```
//!
//! `combined`, Apache/nginx's combined format first, so standard parsers read it, then this
//! proxy's fields (nginx users add theirs the same way):
//!
//! ```text
//! 203.0.113.7 - - [10/Oct/2000:13:55:36 +0000] "GET /a?b=1 HTTP/1.1" 200 2326 "-" "curl/8.5.0"
//!     "example.com" 10.0.0.1:8000 0 12.345 0.512 10.001 0 complete default
//! ```
//!
//! (one line) — after the user agent: authority, worker, bytes_in, total_ms, connect_ms,
//! ttfb_ms, retries, ended, pool; `-` for an absent value. Strings are escaped as nginx does: `"`,
//! `\`, control bytes and non-ASCII bytes become `\xHH` (spaces too in the unquoted worker
//! field), so a line is always one line of ASCII with its fields where parsers expect them.

use std::io::Write;
use std::time::Duration;

use crate::config::AccessLogFormat;

use super::entry::{Entry, Kind};
use super::time::Utc;

/// Appends `entry` as one line, newline included, to `out`. `listener` names the listener
/// that served it (the JSON `listener` key).
pub(super) fn write_line(
    format: AccessLogFormat,
    listener: &str,
    entry: &Entry,
    out: &mut Vec<u8>,
) {
    match format {
        AccessLogFormat::Json => json(listener, entry, out),
        AccessLogFormat::Combined => combined(entry, out),
    }
    out.push(b'\n');
}

fn json(listener: &str, e: &Entry, out: &mut Vec<u8>) {
    let http = match &e.kind {
        Kind::Http(http) => Some(http),
        Kind::Tcp => None,
    };
    out.extend_from_slice(b"{\"time\":\"");
    Utc::of(e.time).write_rfc3339(out);
    // Writing into a Vec cannot fail: the results below are ignored for that reason.
    let _ = write!(out, "\",\"client\":\"{}\",\"method\":", e.client);
    json_string(out, http.map(|h| &*h.method));
    out.extend_from_slice(b",\"authority\":");
    json_string(out, http.and_then(|h| h.authority.as_deref()));
    out.extend_from_slice(b",\"path\":");
    json_string(out, http.map(|h| &*h.path));
    let _ = write!(out, ",\"protocol\":\"{}\",\"status\":", e.protocol());
    match e.status {
        0 => out.extend_from_slice(b"null"),
        status => {
            let _ = write!(out, "{status}");
        }
    }
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{},\"worker\":",
        e.bytes_in, e.bytes_out
    );
    json_string(out, e.worker.as_deref());
    out.extend_from_slice(b",\"pool\":");
    json_string(out, Some(&e.pool));
    out.extend_from_slice(b",\"total_ms\":");
    millis(out, Some(e.total), b"null");
    out.extend_from_slice(b",\"connect_ms\":");
    millis(out, e.connect, b"null");
    out.extend_from_slice(b",\"ttfb_ms\":");
    millis(out, e.ttfb, b"null");
    let _ = write!(
        out,
        ",\"retries\":{},\"ended\":\"{}\",\"listener\":",
        e.retries,
        e.ended.name()
    );
    json_string(out, Some(listener));
    out.extend_from_slice(b",\"referer\":");
    json_string(out, http.and_then(|h| h.referer.as_deref()));
    out.extend_from_slice(b",\"user_agent\":");
    json_string(out, http.and_then(|h| h.user_agent.as_deref()));
    out.push(b'}');
}

/// A JSON string, escaped by serde_json (quotes, backslashes, control characters), or null.
fn json_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        // Serializing a str into a Vec cannot fail.
        Some(s) => {
            let _ = serde_json::to_writer(&mut *out, s);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// A duration in milliseconds with 3 decimals (`12.345`), or `absent`. Written by hand: a
/// float would print `12.3` or `12.345000000000001`.
fn millis(out: &mut Vec<u8>, value: Option<Duration>, absent: &[u8]) {
    match value {
        Some(d) => {
            let micros = d.as_micros();
            let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
        }
        None => out.extend_from_slice(absent),
    }
}

fn combined(e: &Entry, out: &mut Vec<u8>) {
    // `::ffff:1.2.3.4` from a dual-stack socket is the IPv4 client it stands for.
    let _ = write!(out, "{} - - [", e.client.ip().to_canonical());
    Utc::of(e.time).write_common_log(out);
    out.extend_from_slice(b"] \"");
    let http = match &e.kind {
        Kind::Http(http) => {
            escaped(out, &http.method, false);
            out.push(b' ');
            escaped(out, &http.path, false);
            let _ = write!(out, " {}", http.version.name());
            Some(http)
        }
        // The format is refused on TCP listeners; should a TCP entry come anyway, its line
        // stays well formed, with no request.
        Kind::Tcp => {
            out.push(b'-');
            None
        }
    };
    let _ = write!(out, "\" {} {} ", e.status, e.bytes_out);
    quoted(out, http.and_then(|h| h.referer.as_deref()));
    out.push(b' ');
    quoted(out, http.and_then(|h| h.user_agent.as_deref()));
    out.push(b' ');
    quoted(out, http.and_then(|h| h.authority.as_deref()));
    out.push(b' ');
    match e.worker.as_deref() {
        Some(w) => escaped(out, w, true),
        None => out.push(b'-'),
    }
    let _ = write!(out, " {} ", e.bytes_in);
    millis(out, Some(e.total), b"-");
    out.push(b' ');
    millis(out, e.connect, b"-");
    out.push(b' ');
    millis(out, e.ttfb, b"-");
    let _ = write!(out, " {} {} ", e.retries, e.ended.name());
    escaped(out, &e.pool, true);
}

/// `"value"`, escaped, or `"-"` when absent (as nginx writes an empty header).
fn quoted(out: &mut Vec<u8>, value: Option<&str>) {
    out.push(b'"');
    match value {
        Some(v) if !v.is_empty() => escaped(out, v, false),
        _ => out.push(b'-'),
    }
    out.push(b'"');
}

/// `value` with `"`, `\`, control and non-ASCII bytes as `\xHH`, as nginx escapes variables
/// in its access log; in an unquoted field (`unquoted`), spaces too, since they separate
/// fields there.
fn escaped(out: &mut Vec<u8>, value: &str, unquoted: bool) {
    for &b in value.as_bytes() {
        let escape =
            b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) || (unquoted && b == b' ');
        if escape {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use super::super::entry::{Ended, Http, HttpVersion};
    use super::*;

    fn line(format: AccessLogFormat, entry: &Entry) -> String {
        let mut out = Vec::new();
        write_line(format, "127.0.0.1:8080", entry, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn http_entry() -> Entry {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(971_186_136_789),
            client: "203.0.113.7:51234".parse().unwrap(),
            kind: Kind::Http(Http {
                method: "GET".into(),
                authority: Some("example.com".into()),
                path: "/a?b=1".into(),
                version: HttpVersion::Http11,
                referer: None,
                user_agent: Some("curl/8.5.0".into()),
            }),
            status: 200,
            bytes_in: 0,
            bytes_out: 2326,
            worker: Some(Arc::from("10.0.0.1:8000")),
            pool: Arc::from("default"),
            total: Duration::from_micros(12_345),
            connect: Some(Duration::from_micros(512)),
            ttfb: Some(Duration::from_nanos(10_001_999)),
            retries: 0,
            ended: Ended::Complete,
        }
    }

    fn tcp_entry() -> Entry {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(971_186_136_000),
            client: "[2001:db8::1]:40000".parse().unwrap(),
            kind: Kind::Tcp,
            status: 0,
            bytes_in: 517,
            bytes_out: 4096,
            worker: Some(Arc::from("10.0.0.2:5432")),
            pool: Arc::from("default"),
            total: Duration::from_secs(61),
            connect: Some(Duration::from_millis(2)),
            ttfb: None,
            retries: 1,
            ended: Ended::ClientClosed,
        }
    }

    #[test]
    fn json_http_line() {
        assert_eq!(
            line(AccessLogFormat::Json, &http_entry()),
            concat!(
                r#"{"time":"2000-10-10T13:55:36.789Z","client":"203.0.113.7:51234","#,
                r#""method":"GET","authority":"example.com","path":"/a?b=1","#,
                r#""protocol":"HTTP/1.1","status":200,"bytes_in":0,"bytes_out":2326,"#,
                r#""worker":"10.0.0.1:8000","pool":"default","total_ms":12.345,"connect_ms":0.512,"#,
                r#""ttfb_ms":10.001,"retries":0,"ended":"complete","#,
                r#""listener":"127.0.0.1:8080","referer":null,"user_agent":"curl/8.5.0"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn json_tcp_line() {
        assert_eq!(
            line(AccessLogFormat::Json, &tcp_entry()),
            concat!(
                r#"{"time":"2000-10-10T13:55:36.000Z","client":"[2001:db8::1]:40000","#,
                r#""method":null,"authority":null,"path":null,"protocol":"TCP","status":null,"#,
                r#""bytes_in":517,"bytes_out":4096,"worker":"10.0.0.2:5432","pool":"default","#,
                r#""total_ms":61000.000,"connect_ms":2.000,"ttfb_ms":null,"retries":1,"#,
                r#""ended":"client_closed","listener":"127.0.0.1:8080","referer":null,"#,
                r#""user_agent":null}"#,
                "\n"
            )
        );
    }

    #[test]
    fn json_escapes_and_parses_back() {
        let mut entry = http_entry();
        let Kind::Http(http) = &mut entry.kind else {
            unreachable!()
        };
        http.path = "/q\"uote\u{1}\\é".into();
        entry.worker = None;
        entry.connect = None;
        entry.status = 0;
        entry.ended = Ended::Refused;
        let text = line(AccessLogFormat::Json, &entry);
        assert!(text.contains(r#""path":"/q\"uote\u0001\\é","#), "{text}");
        assert!(text.contains(r#""worker":null,"#), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["path"], "/q\"uote\u{1}\\é");
        assert_eq!(value["status"], serde_json::Value::Null);
        assert_eq!(value["connect_ms"], serde_json::Value::Null);
        assert_eq!(value["ttfb_ms"].as_f64(), Some(10.001));
        assert_eq!(value["ended"], "refused");
    }

    #[test]
    fn combined_http_line() {
        assert_eq!(
            line(AccessLogFormat::Combined, &http_entry()),
            "203.0.113.7 - - [10/Oct/2000:13:55:36 +0000] \"GET /a?b=1 HTTP/1.1\" 200 2326 \
             \"-\" \"curl/8.5.0\" \"example.com\" 10.0.0.1:8000 0 12.345 0.512 10.001 0 complete default\n"
        );
    }

    #[test]
    fn combined_escapes_like_nginx() {
        let mut entry = http_entry();
        let Kind::Http(http) = &mut entry.kind else {
            unreachable!()
        };
        http.path = "/q\"uote\u{1}\\é".into();
        http.version = HttpVersion::Http2;
        http.authority = None;
        http.referer = Some("https://a.example/\"x\"".into());
        http.user_agent = Some(String::new().into());
        entry.worker = Some(Arc::from("bad host:1"));
        entry.ttfb = None;
        assert_eq!(
            line(AccessLogFormat::Combined, &entry),
            "203.0.113.7 - - [10/Oct/2000:13:55:36 +0000] \
             \"GET /q\\x22uote\\x01\\x5C\\xC3\\xA9 HTTP/2\" 200 2326 \
             \"https://a.example/\\x22x\\x22\" \"-\" \"-\" bad\\x20host:1 0 12.345 0.512 - 0 complete default\n"
        );
    }

    #[test]
    fn combined_tcp_line_stays_well_formed() {
        assert_eq!(
            line(AccessLogFormat::Combined, &tcp_entry()),
            "2001:db8::1 - - [10/Oct/2000:13:55:36 +0000] \"-\" 0 4096 \"-\" \"-\" \"-\" \
             10.0.0.2:5432 517 61000.000 2.000 - 1 client_closed default\n"
        );
    }

    #[test]
    fn an_ipv4_mapped_client_shows_as_ipv4() {
        let mut entry = http_entry();
        entry.client = "[::ffff:192.0.2.9]:1234".parse().unwrap();
        assert!(line(AccessLogFormat::Combined, &entry).starts_with("192.0.2.9 - - ["));
    }

    #[test]
    fn every_ended_has_a_distinct_name() {
        let names: std::collections::HashSet<_> = Ended::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(names.len(), Ended::ALL.len());
    }
}
