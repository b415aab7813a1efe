//! HTTP/1.x message heads: parsing, checking and rewriting them for the other side.
//!
//! A request head from a client is parsed (httparse), checked against the rules that keep a
//! proxy from being smuggled through (RFC 9112 §6: one framing, no conflicting lengths, no
//! unknown transfer codings), and written out again for the backend: hop-by-hop fields
//! removed, forwarding fields added, everything else copied byte for byte. A response head
//! from a backend goes the same way back. The bytes are written once, straight into the
//! buffer that goes to the socket: no header map, no per-field allocation.

use std::io::Write;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};

/// Fields per message head at most; more is answered 431 (a request) or 502 (a response).
pub const MAX_HEADERS: usize = 128;

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

/// Why a client's request is refused before it reaches a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400, with the reason for the log.
    BadRequest(&'static str),
    /// 431: the head is larger than the listener's `max_header_size`, or has too many fields.
    TooLarge,
    /// 501: a transfer coding other than chunked.
    NotImplemented,
    /// 405: CONNECT (this is not a forward proxy).
    Connect,
}

impl Reject {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Reject::BadRequest(_) => (400, "Bad Request"),
            Reject::TooLarge => (431, "Request Header Fields Too Large"),
            Reject::NotImplemented => (501, "Not Implemented"),
            Reject::Connect => (405, "Method Not Allowed"),
        }
    }
}

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
    /// `Connection: upgrade` with an `Upgrade` field: the connection may become a tunnel.
    pub upgrade: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before sending the body.
    pub expect_continue: bool,
}

/// The client's address, formatted once per connection for the forwarding fields.
pub struct Client {
    /// `X-Forwarded-For` form: `10.1.2.3` or `::1`.
    xff: String,
    /// `Forwarded` form: `for=10.1.2.3` or `for="[::1]"` (RFC 7239 §6).
    forwarded: String,
}

impl Client {
    pub fn new(peer: SocketAddr) -> Client {
        let ip = peer.ip().to_canonical();
        let forwarded = match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        Client {
            xff: ip.to_string(),
            forwarded,
        }
    }
}

/// The fields the proxy treats specially; everything else is copied as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    Forwarded,
    /// Keep-Alive, Proxy-Connection, TE, Trailer, Proxy-Authenticate, Proxy-Authorization.
    HopByHop,
}

/// Classifies a field name: a length switch first, so most names cost one comparison.
fn classify(name: &str) -> Field {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    match name.len() {
        2 if is("te") => Field::HopByHop,
        4 if is("host") => Field::Host,
        6 if is("expect") => Field::Expect,
        7 if is("upgrade") => Field::Upgrade,
        7 if is("trailer") => Field::HopByHop,
        9 if is("forwarded") => Field::Forwarded,
        10 if is("connection") => Field::Connection,
        10 if is("keep-alive") => Field::HopByHop,
        14 if is("content-length") => Field::ContentLength,
        15 if is("x-forwarded-for") => Field::XForwardedFor,
        16 if is("proxy-connection") => Field::HopByHop,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        17 if is("x-forwarded-proto") => Field::XForwardedProto,
        18 if is("proxy-authenticate") => Field::HopByHop,
        19 if is("proxy-authorization") => Field::HopByHop,
        _ => Field::Other,
    }
}

/// What the `Connection` fields of a message say.
#[derive(Default)]
struct ConnectionTokens<'b> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// Other fields named there, which are hop-by-hop too (RFC 9110 §7.6.1). Rarely any:
    /// the vector allocates only then.
    listed: Vec<&'b [u8]>,
}

impl<'b> ConnectionTokens<'b> {
    fn add(&mut self, value: &'b [u8]) {
        for token in value.split(|&b| b == b',').map(trim) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if !token.is_empty() {
                self.listed.push(token);
            }
        }
    }

    /// Whether the sender keeps the connection open after this message: HTTP/1.1 unless
    /// it says `close`, HTTP/1.0 only if it says `keep-alive`.
    fn keeps_open(&self, http10: bool) -> bool {
        !self.close && (self.keep_alive || !http10)
    }

    fn lists(&self, name: &str) -> bool {
        self.listed
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else { return &[] };
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(start);
    &s[start..=end]
}

/// Adds the value(s) of one `Content-Length` field to `seen`; false if they disagree or are
/// not decimal numbers.
fn merge_length(seen: &mut Option<u64>, value: &[u8]) -> bool {
    for part in value.split(|&b| b == b',').map(trim) {
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

/// Whether a `Transfer-Encoding` value is exactly `chunked` (the one coding a proxy must
/// understand; anything layered on it is refused rather than guessed at).
fn is_chunked(value: &[u8]) -> bool {
    trim(value).eq_ignore_ascii_case(b"chunked")
}

/// Whether the last coding of a `Transfer-Encoding` value is chunked (responses: then the
/// body is chunked, otherwise it runs until the connection closes).
fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
}

/// Parses the request head at the start of `buf` and writes the backend's version of it to
/// `out`. `Ok(None)`: the head is not complete yet.
pub fn rewrite_request(
    buf: &[u8],
    client: &Client,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, Reject> {
    // Left uninitialised: initialising 128 fields (4 KiB) cost more than parsing a head.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(httparse::Error::Version) => return Err(Reject::BadRequest("unsupported version")),
        Err(_) => return Err(Reject::BadRequest("malformed request head")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequest("malformed request line"));
    };
    let http10 = version == 0;
    if method == "CONNECT" {
        return Err(Reject::Connect);
    }

    // First pass: what the fields say about framing, the connection and forwarding.
    let mut hosts = 0;
    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encodings = 0;
    let mut connection = ConnectionTokens::default();
    let mut upgrade: Option<&[u8]> = None;
    let mut expect_continue = false;
    let mut prior_xff = false;
    let mut prior_forwarded = false;
    // Each name is classified once; the second pass reads the kinds back.
    let mut kinds = [Field::Other; MAX_HEADERS];
    for (f, kind) in req.headers.iter().zip(kinds.iter_mut()) {
        *kind = classify(f.name);
        match *kind {
            Field::Host => {
                hosts += 1;
                host = Some(f.value);
            }
            Field::ContentLength if !merge_length(&mut length, f.value) => {
                return Err(Reject::BadRequest("invalid or conflicting Content-Length"));
            }
            Field::TransferEncoding => {
                transfer_encodings += 1;
                chunked = is_chunked(f.value);
            }
            Field::Connection => connection.add(f.value),
            Field::Upgrade => upgrade = Some(f.value),
            Field::Expect => expect_continue = trim(f.value).eq_ignore_ascii_case(b"100-continue"),
            Field::XForwardedFor => prior_xff |= !trim(f.value).is_empty(),
            Field::Forwarded => prior_forwarded |= !trim(f.value).is_empty(),
            _ => {}
        }
    }
    // RFC 9112 §6.1 and §6.3: both framings at once is how requests are smuggled; a
    // transfer coding other than a single chunked cannot be delimited safely.
    let framing = match (transfer_encodings, length) {
        (0, None | Some(0)) => Framing::Empty,
        (0, Some(n)) => Framing::Length(n),
        (_, Some(_)) => {
            return Err(Reject::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (_, None) if http10 => {
            return Err(Reject::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (1, None) if chunked => Framing::Chunked,
        _ => return Err(Reject::NotImplemented),
    };
    if hosts > 1 {
        return Err(Reject::BadRequest("more than one Host"));
    }

    // The target: origin-form as is; absolute-form (`GET http://host/path`) names the host,
    // which replaces the Host field (RFC 9112 §3.2.2).
    let (path, authority) = split_target(target)?;
    let authority = authority.map(str::as_bytes);
    if authority.is_none() && hosts == 0 && !http10 {
        return Err(Reject::BadRequest("HTTP/1.1 request without Host"));
    }
    let host = authority.or(host);
    let upgrade = upgrade.filter(|_| connection.upgrade);

    // Second pass: the backend's head.
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    // `http://host` and `http://host?q` have the path `/`.
    if !path.starts_with('/') && path != "*" {
        out.push(b'/');
    }
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match (authority, hosts) {
        (Some(a), _) => put(out, "Host", a),
        // An HTTP/1.0 request without one: an HTTP/1.1 request must carry Host, empty when
        // the authority is unknown (RFC 9112 §3.2).
        (None, 0) => out.extend_from_slice(b"Host: \r\n"),
        (None, _) => {}
    }
    for (f, kind) in req.headers.iter().zip(kinds) {
        match kind {
            Field::Other if !connection.lists(f.name) => put(out, f.name, f.value),
            Field::Host if authority.is_none() => put(out, f.name, f.value),
            _ => {}
        }
    }
    match framing {
        Framing::Length(n) => {
            put_length(out, n);
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    if let Some(protocol) = upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        put(out, "Upgrade", protocol);
    }
    // Several lines of a list field are one list (RFC 9110 §5.3), but backends often read
    // only the first line: the prior values and the client go on one line.
    out.extend_from_slice(b"X-Forwarded-For: ");
    if prior_xff {
        prior_values(out, req.headers, &kinds, Field::XForwardedFor);
    }
    out.extend_from_slice(client.xff.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\nForwarded: ");
    if prior_forwarded {
        prior_values(out, req.headers, &kinds, Field::Forwarded);
    }
    out.extend_from_slice(client.forwarded.as_bytes());
    out.extend_from_slice(b";proto=http");
    // RFC 7239 §4: a quoted-string; a Host that would need escaping is left out.
    if let Some(h) = host.filter(|h| {
        h.iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
    }) {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(h);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n\r\n");

    Ok(Some(RequestHead {
        len,
        framing,
        http10,
        keep_alive: connection.keeps_open(http10),
        head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        upgrade: upgrade.is_some(),
        expect_continue: expect_continue && !http10,
    }))
}

/// Writes the non-empty values of every `field` line, each followed by `, `.
fn prior_values(out: &mut Vec<u8>, fields: &[httparse::Header<'_>], kinds: &[Field], field: Field) {
    for (f, _) in fields.iter().zip(kinds).filter(|(_, k)| **k == field) {
        let v = trim(f.value);
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
}

/// Splits a request target into the path to send and, for absolute-form, the authority.
/// The path of an absolute-form target may be empty or start with `?`.
fn split_target(target: &str) -> Result<(&str, Option<&str>), Reject> {
    if target.starts_with('/') || target == "*" {
        return Ok((target, None));
    }
    let rest = strip_scheme(target).ok_or(Reject::BadRequest("invalid request target"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(Reject::BadRequest("invalid request target"));
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

fn put_length(out: &mut Vec<u8>, n: u64) {
    put(
        out,
        "Content-Length",
        itoa::Buffer::new().format(n).as_bytes(),
    );
}

fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the proxy needs to know about a backend's response once its head is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head in the backend's buffer.
    pub len: usize,
    pub status: u16,
    /// How the backend delimits the body.
    pub framing: Framing,
    /// The backend keeps the connection open after this response.
    pub reusable: bool,
    /// The client's connection closes after this response.
    pub client_close: bool,
    /// A chunked body to an HTTP/1.0 client: only the data goes out, until the close.
    pub dechunk: bool,
}

impl ResponseHead {
    /// 1xx other than 101: an interim response, followed by the real one.
    pub fn interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Why a backend's response head is unusable (answered 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("malformed response head")]
    Head,
    #[error("invalid or conflicting Content-Length in the response")]
    Length,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade,
}

/// Parses the response head at the start of `buf` and writes the client's version of it to
/// `out` (nothing, for an interim response an HTTP/1.0 client cannot take). `Ok(None)`: the
/// head is not complete yet. `draining`: the client connection closes after this response.
pub fn rewrite_response(
    buf: &[u8],
    request: &RequestHead,
    draining: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, Malformed> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed::Head),
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(Malformed::Head);
    };
    let reason = res.reason.unwrap_or("");

    let mut length: Option<u64> = None;
    let mut transfer: Option<&[u8]> = None;
    let mut connection = ConnectionTokens::default();
    let mut kinds = [Field::Other; MAX_HEADERS];
    for (f, kind) in res.headers.iter().zip(kinds.iter_mut()) {
        *kind = classify(f.name);
        match *kind {
            Field::ContentLength if !merge_length(&mut length, f.value) => {
                return Err(Malformed::Length);
            }
            Field::TransferEncoding => transfer = Some(f.value),
            Field::Connection => connection.add(f.value),
            _ => {}
        }
    }
    let switching = status == 101;
    if switching && !request.upgrade {
        return Err(Malformed::UnaskedUpgrade);
    }
    let interim = (100..200).contains(&status) && !switching;
    // RFC 9112 §6.3, in its order.
    let framing = if request.head || interim || switching || status == 204 || status == 304 {
        Framing::Empty
    } else if let Some(te) = transfer {
        if ends_chunked(te) {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    // Both framings: the body was read as chunked, but the connection is not trusted after.
    let reusable = connection.keeps_open(version == 0)
        && framing != Framing::Close
        && !(transfer.is_some() && length.is_some());
    let dechunk = request.http10 && framing == Framing::Chunked;
    // An interim response never ends the exchange, let alone the connection.
    let client_close =
        !interim && (!request.keep_alive || draining || framing == Framing::Close || dechunk);
    let head = ResponseHead {
        len,
        status,
        framing,
        reusable,
        client_close,
        dechunk,
    };

    out.clear();
    if interim && request.http10 {
        return Ok(Some(head));
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    // The status code is three digits (httparse checked).
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (f, kind) in res.headers.iter().zip(kinds) {
        match kind {
            Field::Other if !connection.lists(f.name) => put(out, f.name, f.value),
            Field::Upgrade if switching => put(out, f.name, f.value),
            Field::TransferEncoding if !dechunk => put(out, f.name, f.value),
            // Everything but Other: the request-only fields have no meaning here, and are
            // passed through; hop-by-hop ones and the framing fields are handled below.
            Field::Host
            | Field::Expect
            | Field::XForwardedFor
            | Field::XForwardedProto
            | Field::Forwarded => put(out, f.name, f.value),
            _ => {}
        }
    }
    if let (None, Some(n)) = (transfer, length) {
        put_length(out, n);
    }
    if interim {
        out.extend_from_slice(b"\r\n");
        return Ok(Some(head));
    }
    if switching {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if client_close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if request.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(head))
}

/// A short response of our own (errors: 400, 431, 502, 503, 504...).
pub fn own_response(out: &mut Vec<u8>, status: u16, reason: &str, text: &str, close: bool) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{text}",
        text.len(),
        if close { "connection: close\r\n" } else { "" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            bad(
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
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

    fn response(head: &str, request: &RequestHead) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let parsed = rewrite_response(head.as_bytes(), request, false, &mut out)
            .unwrap()
            .expect("complete");
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_follows_rfc_9112_order() {
        let (get, _) = request("GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let (head_req, _) = request("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n",
            &get,
        );
        assert_eq!(r.framing, Framing::Length(7));
        assert!(r.reusable && !r.client_close);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n");
        let (r, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", &head_req);
        assert_eq!(r.framing, Framing::Empty);
        assert!(out.contains("Content-Length: 7"));
        let (r, _) = response(
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            &get,
        );
        assert_eq!(r.framing, Framing::Empty);
        let (r, _) = response("HTTP/1.1 200 OK\r\n\r\n", &get);
        assert_eq!(r.framing, Framing::Close);
        assert!(!r.reusable && r.client_close);
        let (r, _) = response("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &get);
        assert!(
            !r.reusable,
            "an HTTP/1.0 backend closes unless it says keep-alive"
        );
        let mut out = Vec::new();
        assert_eq!(
            rewrite_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                &get,
                false,
                &mut out
            ),
            Err(Malformed::Length)
        );
        assert_eq!(
            rewrite_response(
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                &get,
                false,
                &mut out
            ),
            Err(Malformed::UnaskedUpgrade)
        );
    }
}
