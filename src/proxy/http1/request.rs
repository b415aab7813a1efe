//! A client's HTTP/1 request head: parsed in place (httparse), checked with the forwarding
//! policy's rules (`forward::checks`) and written out again for the worker — hop-by-hop
//! fields removed, forwarding fields added, everything else copied byte for byte, straight
//! into the buffer that goes to the socket: no header map, no per-field allocation.

use std::mem::MaybeUninit;

use super::head::{Framing, merge_length, put, put_length};
use crate::proxy::forward::checks::{self, MAX_FIELDS, trim_ows};
use crate::proxy::forward::headers::{self, Client, ConnectionTokens, Field, classify};
use crate::proxy::forward::{Reject, retry};

/// What the proxy needs to know about a request once its head is parsed and rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head in the client's buffer (the body, if any, follows).
    pub len: usize,
    pub framing: Framing,
    /// HTTP/1.0 client (answered without chunked coding, keep-alive only if asked).
    pub http10: bool,
    /// The client wants the connection kept open after this request.
    pub keep_alive: bool,
    /// `HEAD`: the response has no body whatever its fields say.
    pub head: bool,
    /// The method is idempotent (RFC 9110 §9.2.2): safe to send again after a failure.
    pub idempotent: bool,
    /// `Connection: upgrade` with an `Upgrade` field a worker may see: the connection may
    /// become a tunnel.
    pub upgrade: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before sending the body.
    pub expect_continue: bool,
    /// Where the path and query sent to the worker are in the client's buffer (empty for an
    /// absolute-form target without a path): what routes and `hash_key` read.
    pub target: Span,
    /// Where the host is in the client's buffer (the target's authority, else `Host`).
    pub host: Option<Span>,
}

/// Where a part of the head lies in the client's buffer (a head is far below 4 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Nothing: a head that is not from a client's buffer.
    pub const EMPTY: Span = Span { start: 0, end: 0 };

    /// Where `part`, a slice of `buf`, lies in it.
    fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The part in `buf`, the buffer the head was parsed from.
    pub fn of_head(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// Parses the request head at the start of `buf` and writes the worker's version of it to
/// `out`. `Ok(None)`: the head is not complete yet.
pub fn rewrite_request(
    buf: &[u8],
    client: &Client,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, Reject> {
    // Left uninitialised: initialising 128 fields (4 KiB) cost more than parsing a head.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(httparse::Error::Version) => return later_minor_version(buf, client, out),
        Err(_) => return Err(Reject::BadRequest("malformed request head")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequest("malformed request line"));
    };
    checks::method(method.as_bytes())?;
    let http10 = version == 0;
    let (path, authority) = split_target(target)?;
    let mut scan = Scan::new(req.headers);
    scan.read()?;
    let framing = scan.framing(http10)?;
    if let Some(a) = authority {
        checks::host(a.as_bytes())?;
    } else if scan.host.is_none() && !http10 {
        return Err(Reject::BadRequest("HTTP/1.1 request without Host"));
    }
    let upgrade = scan
        .upgrade
        .filter(|p| scan.connection.upgrade && headers::upgrade_allowed(p));

    out.clear();
    write_request_line(out, method.as_bytes(), path.as_bytes());
    let host = authority.map(str::as_bytes).or(scan.host);
    match (authority, scan.host) {
        (Some(a), _) => put(out, b"Host", a.as_bytes()),
        // An HTTP/1.0 request without one: an HTTP/1.1 request must carry Host, empty when
        // the authority is unknown (RFC 9112 §3.2).
        (None, None) => out.extend_from_slice(b"Host: \r\n"),
        (None, Some(_)) => {}
    }
    for (f, kind) in req.headers.iter().zip(scan.kinds) {
        match kind {
            Field::Other | Field::Cookie if !scan.connection.lists(f.name.as_bytes()) => {
                put(out, f.name.as_bytes(), f.value)
            }
            Field::Host if authority.is_none() => put(out, f.name.as_bytes(), f.value),
            _ => {}
        }
    }
    match framing {
        Framing::Length(n) => put_length(out, n),
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    if let Some(protocol) = upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        put(out, b"Upgrade", protocol);
    }
    write_forwarding(out, req.headers, &scan, host, client);
    out.extend_from_slice(b"\r\n");

    Ok(Some(RequestHead {
        len,
        framing,
        http10,
        keep_alive: scan.connection.keeps_open(http10),
        head: method == "HEAD",
        idempotent: retry::idempotent(method.as_bytes()),
        upgrade: upgrade.is_some(),
        expect_continue: scan.expect_continue && !http10,
        target: Span::of(buf, path.as_bytes()),
        host: host.map(|h| Span::of(buf, h)),
    }))
}

/// What the fields of a request head say about framing, the connection and forwarding:
/// one pass, each name classified once (the second pass reads the kinds back).
struct Scan<'b> {
    kinds: [Field; MAX_FIELDS],
    host: Option<&'b [u8]>,
    length: Option<u64>,
    transfer_encodings: usize,
    connection: ConnectionTokens<'b>,
    upgrade: Option<&'b [u8]>,
    expect_continue: bool,
    prior_xff: bool,
    prior_forwarded: bool,
    /// The fields, to read Transfer-Encoding's values again when there are any.
    fields: &'b [httparse::Header<'b>],
}

impl<'b> Scan<'b> {
    /// Nothing read yet. Filled in place by [`Scan::read`]: the struct is large (a kind
    /// per field), and returning it in a `Result` would copy it on every request.
    #[inline(always)]
    fn new(fields: &'b [httparse::Header<'b>]) -> Scan<'b> {
        Scan {
            kinds: [Field::Other; MAX_FIELDS],
            host: None,
            length: None,
            transfer_encodings: 0,
            connection: ConnectionTokens::default(),
            upgrade: None,
            expect_continue: false,
            prior_xff: false,
            prior_forwarded: false,
            fields,
        }
    }

    #[inline(always)]
    fn read(&mut self) -> Result<(), Reject> {
        let fields = self.fields;
        let scan = self;
        for (f, kind) in fields.iter().zip(scan.kinds.iter_mut()) {
            *kind = classify(f.name.as_bytes());
            match *kind {
                Field::Host if scan.host.is_some() => {
                    return Err(Reject::BadRequest("more than one Host"));
                }
                Field::Host => {
                    checks::host(f.value)?;
                    scan.host = Some(f.value);
                }
                Field::ContentLength if !merge_length(&mut scan.length, f.value) => {
                    return Err(Reject::BadRequest("invalid or conflicting Content-Length"));
                }
                Field::TransferEncoding => scan.transfer_encodings += 1,
                Field::Connection => scan.connection.add(f.value),
                Field::Upgrade => scan.upgrade = Some(f.value),
                Field::Expect => {
                    scan.expect_continue = trim_ows(f.value).eq_ignore_ascii_case(b"100-continue")
                }
                Field::XForwardedFor => scan.prior_xff |= !trim_ows(f.value).is_empty(),
                Field::Forwarded => scan.prior_forwarded |= !trim_ows(f.value).is_empty(),
                _ => {}
            }
        }
        Ok(())
    }

    /// RFC 9112 §6.1 and §6.3: both framings at once is how requests are smuggled, and a
    /// transfer coding other than a single chunked cannot be delimited safely.
    fn framing(&self, http10: bool) -> Result<Framing, Reject> {
        if self.transfer_encodings == 0 {
            return Ok(match self.length {
                None | Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
            });
        }
        if self.length.is_some() {
            return Err(Reject::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if http10 {
            return Err(Reject::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let values = self
            .fields
            .iter()
            .zip(&self.kinds)
            .filter(|(_, k)| **k == Field::TransferEncoding)
            .map(|(f, _)| f.value);
        checks::transfer_coding(values)?;
        Ok(Framing::Chunked)
    }
}

/// `METHOD PATH HTTP/1.1`: whatever the client spoke, the worker is spoken to in 1.1.
fn write_request_line(out: &mut Vec<u8>, method: &[u8], path: &[u8]) {
    out.extend_from_slice(method);
    out.push(b' ');
    // `http://host` and `http://host?q` have the path `/`.
    if !path.starts_with(b"/") && path != b"*" {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`. Several lines of a list field are
/// one list (RFC 9110 §5.3), but workers often read only the first line: the prior values
/// and the client go on one line.
fn write_forwarding(
    out: &mut Vec<u8>,
    fields: &[httparse::Header<'_>],
    scan: &Scan<'_>,
    host: Option<&[u8]>,
    client: &Client,
) {
    out.extend_from_slice(b"X-Forwarded-For: ");
    if scan.prior_xff {
        prior_values(out, fields, &scan.kinds, Field::XForwardedFor);
    }
    out.extend_from_slice(client.xff.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(client.proto.as_bytes());
    out.extend_from_slice(b"\r\nForwarded: ");
    if scan.prior_forwarded {
        prior_values(out, fields, &scan.kinds, Field::Forwarded);
    }
    out.extend_from_slice(client.forwarded.as_bytes());
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(client.proto.as_bytes());
    if let Some(h) = host.filter(|h| headers::quotable(h)) {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(h);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the non-empty values of every `field` line, each followed by `, `.
fn prior_values(out: &mut Vec<u8>, fields: &[httparse::Header<'_>], kinds: &[Field], field: Field) {
    for (f, _) in fields.iter().zip(kinds).filter(|(_, k)| **k == field) {
        let v = trim_ows(f.value);
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
}

/// `HTTP/1.2` … `HTTP/1.9`: RFC 9112 §2.6 asks a server to serve a later minor version as
/// the highest it speaks. httparse knows only 1.0 and 1.1, so the head is parsed again from
/// a copy that says 1.1 (a rare path; the copy is the same length, so offsets hold).
fn later_minor_version(
    buf: &[u8],
    client: &Client,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, Reject> {
    const UNSUPPORTED: Reject = Reject::BadRequest("unsupported HTTP version");
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(at) = line.len().checked_sub(b"HTTP/1.x".len()) else {
        return if line_end == buf.len() {
            Ok(None)
        } else {
            Err(UNSUPPORTED)
        };
    };
    let version = &line[at..];
    if !version.starts_with(b"HTTP/1.") || !(b'2'..=b'9').contains(&version[7]) {
        return Err(UNSUPPORTED);
    }
    let mut copy = buf.to_vec();
    copy[at + 7] = b'1';
    rewrite_request(&copy, client, out)
}

/// Splits a request target into the path to send and, for absolute-form, the authority.
/// The path of an absolute-form target may be empty or start with `?`.
fn split_target(target: &str) -> Result<(&str, Option<&str>), Reject> {
    if target.starts_with('/') || target == "*" {
        checks::path(target.as_bytes())?;
        return Ok((target, None));
    }
    let rest = strip_scheme(target).ok_or(Reject::BadRequest("invalid request target"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(Reject::BadRequest("invalid request target"));
    }
    if path.contains('#') {
        return Err(Reject::BadRequest("fragment in the request target"));
    }
    Ok((path, Some(authority)))
}

fn strip_scheme(target: &str) -> Option<&str> {
    let b = target.as_bytes();
    if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        Some(&target[7..])
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        Some(&target[8..])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proxy::forward::checks::MAX_FIELDS as MAX_HEADERS;

    fn client() -> Client {
        Client::new("10.1.2.3:5555".parse().unwrap())
    }

    fn request(head: &str) -> Result<(RequestHead, String), Reject> {
        let mut out = Vec::new();
        let parsed = rewrite_request(head.as_bytes(), &client(), &mut out)?.expect("complete");
        Ok((parsed, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn request_loses_hop_by_hop_fields_and_gains_forwarding_ones() {
        let (head, out) = request(
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Session\r\n\
             Keep-Alive: timeout=5\r\nX-Session: abc\r\nTE: trailers\r\nProxy-Authorization: x\r\n\
             X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.7\r\n\
             X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.9\r\nX-Keep: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\nX-Keep: 1\r\n\
             X-Forwarded-For: 203.0.113.9, 198.51.100.7, 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\
             Forwarded: for=203.0.113.9, for=10.1.2.3;proto=http;host=\"example.com\"\r\n\r\n"
        );
        assert!(head.keep_alive && head.idempotent && !head.http10);
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn request_framing_and_connection() {
        let (head, out) = request(
            "POST /x HTTP/1.1\r\nHost: h\r\ncontent-length: 5, 5\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.framing, Framing::Length(5));
        assert!(!head.keep_alive && !head.idempotent);
        assert!(out.contains("\r\nContent-Length: 5\r\n") && !out.contains("close"));

        let (head, out) = request("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(head.http10 && !head.keep_alive);
        assert!(out.starts_with("GET / HTTP/1.1\r\nHost: \r\n"), "{out}");
        let (head, _) = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(head.http10 && head.keep_alive);

        let (head, out) = request(
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert!(head.upgrade);
        assert!(
            out.contains("Connection: upgrade\r\nUpgrade: websocket\r\n"),
            "{out}"
        );
    }

    #[test]
    fn absolute_form_replaces_host() {
        let (_, out) =
            request("GET http://example.com:8080 HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nHost: example.com:8080\r\n"),
            "{out}"
        );
        assert!(!out.contains("other"), "{out}");
        let (_, out) = request("GET HTTP://h?q=1 HTTP/1.1\r\n\r\n").unwrap();
        assert!(
            out.starts_with("GET /?q=1 HTTP/1.1\r\nHost: h\r\n"),
            "{out}"
        );
    }

    #[test]
    fn ambiguous_requests_are_rejected() {
        let bad = |head: &str| request(head).unwrap_err();
        assert!(matches!(
            bad(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Reject::BadRequest(_)
        ));
        assert!(matches!(
            bad("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Reject::BadRequest(_)
        ));
        assert!(matches!(
            bad(
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Reject::BadRequest(_)
        ));
        assert_eq!(
            bad("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Reject::NotImplemented
        );
        assert_eq!(
            bad("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"),
            Reject::Connect
        );
        assert!(matches!(
            bad("GET / HTTP/1.1\r\n\r\n"),
            Reject::BadRequest(_)
        ));
        assert!(matches!(
            bad("GET nothing HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::BadRequest(_)
        ));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            bad(&format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n")),
            Reject::TooLarge
        );
    }

    /// Hole: h2c upgrade smuggling. The exact request outside testers sent.
    #[test]
    fn h2c_upgrade_is_served_as_plain_http11() {
        let (head, out) = request(
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
        )
        .unwrap();
        assert!(!head.upgrade);
        let lower = out.to_ascii_lowercase();
        assert!(
            !lower.contains("upgrade") && !lower.contains("http2-settings"),
            "{out}"
        );
    }

    /// Hole: status codes for malformed framing, targets, hosts and versions.
    #[test]
    fn malformed_requests_get_400_and_http12_is_served_as_11() {
        let bad = |head: String| request(&head).unwrap_err();
        for te in [
            &b"\xa0chunked"[..],
            b"chunked\xa0",
            b"xchunked",
            b"chunked,chunked",
        ] {
            let mut head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ".to_vec();
            head.extend_from_slice(te);
            head.extend_from_slice(b"\r\n\r\n");
            let got = rewrite_request(&head, &client(), &mut Vec::new());
            assert!(matches!(got, Err(Reject::BadRequest(_))), "{te:?}: {got:?}");
        }
        let (head, _) =
            request("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n").unwrap();
        assert_eq!(
            head.framing,
            Framing::Chunked,
            "an empty list element is legal"
        );
        assert!(matches!(
            bad("GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n".into()),
            Reject::BadRequest(_)
        ));
        for host in ["a b", "a, b", "u@a"] {
            let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(matches!(bad(head), Reject::BadRequest(_)), "{host:?}");
        }
        let (head, out) = request("GET / HTTP/1.2\r\nHost: h\r\n\r\n").unwrap();
        assert!(!head.http10 && head.keep_alive);
        assert!(out.starts_with("GET / HTTP/1.1\r\nHost: h\r\n"), "{out}");
        assert!(matches!(
            bad("GET / HTTP/2.0\r\nHost: h\r\n\r\n".into()),
            Reject::BadRequest(_)
        ));
    }

    /// Cookies, split or not, go on as they came; `Trailer` is end to end (RFC 9110 §6.6.2).
    #[test]
    fn cookies_and_trailer_declarations_pass() {
        let (_, out) = request(
            "POST / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        assert!(out.contains("Cookie: a=1\r\nTrailer: X-Sum\r\n"), "{out}");
    }
}
