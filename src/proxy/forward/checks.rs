//! What is refused before a worker sees it, and with which status. Both HTTP versions ask
//! these functions, so a request HTTP/1 refuses is refused over HTTP/2 the same way.
//!
//! Strict where leniency lets requests be smuggled or misrouted (RFC 9112 §6 framing, RFC
//! 9110 §7.2 Host, RFC 3986 targets); lenient only where the RFCs ask it (`HTTP/1.2` is
//! served as 1.1, an empty element in a list is ignored).

use super::Canned;

/// Fields per request at most (head or trailers, HTTP/1 or HTTP/2); more is answered 431.
pub const MAX_FIELDS: usize = 128;

/// Why a client's request is refused before it reaches a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400, with the reason for the log.
    BadRequest(&'static str),
    /// 405: CONNECT (this is not a forward proxy).
    Connect,
    /// 414: the request line alone is over the head's size limit.
    UriTooLong,
    /// 431: the head (or the trailers) is larger than the limit, or has too many fields.
    TooLarge,
    /// 501: a transfer coding the proxy does not implement (anything but chunked).
    NotImplemented,
}

impl Reject {
    pub fn canned(self) -> Canned {
        match self {
            Reject::BadRequest(_) => Canned::BAD_REQUEST,
            Reject::Connect => Canned::METHOD_NOT_ALLOWED,
            Reject::UriTooLong => Canned::URI_TOO_LONG,
            Reject::TooLarge => Canned::FIELDS_TOO_LARGE,
            Reject::NotImplemented => Canned::NOT_IMPLEMENTED,
        }
    }
}

/// CONNECT asks for a tunnel to an arbitrary host: a reverse proxy has none to offer.
pub fn method(method: &[u8]) -> Result<(), Reject> {
    if method.eq_ignore_ascii_case(b"CONNECT") {
        return Err(Reject::Connect);
    }
    Ok(())
}

/// A request target's path and query as sent to a worker: origin-form (`/…`) or `*`, with
/// no fragment (RFC 9112 §3.2: a fragment is never sent, so one in a request is an attack
/// or a broken client) and only the characters RFC 3986 allows.
pub fn path(path: &[u8]) -> Result<(), Reject> {
    if path == b"*" {
        return Ok(());
    }
    if !path.starts_with(b"/") {
        return Err(Reject::BadRequest("invalid request target"));
    }
    if path.contains(&b'#') {
        return Err(Reject::BadRequest("fragment in the request target"));
    }
    Ok(())
}

/// A Host field or `:authority`: `uri-host [ ":" port ]` without userinfo (RFC 9110 §7.2),
/// or empty. A comma is refused too: Host is a singleton, and a list in it is two hosts.
/// Runs on every request: one table lookup per byte in the usual case (a reg-name).
#[inline]
pub fn host(value: &[u8]) -> Result<(), Reject> {
    const BAD: Reject = Reject::BadRequest("invalid Host");
    if value.first() == Some(&b'[') {
        return ip_literal_host(value).ok_or(BAD);
    }
    // Reg-name bytes, then at most one colon and up to five digits.
    let mut port = None;
    for (i, &b) in value.iter().enumerate() {
        if !REG_NAME[b as usize] {
            port = Some(i);
            break;
        }
    }
    match port {
        None => Ok(()),
        Some(i) if value[i] == b':' && port_ok(&value[i + 1..]) => Ok(()),
        Some(_) => Err(BAD),
    }
}

/// `[v6 address]` with an optional port.
fn ip_literal_host(value: &[u8]) -> Option<()> {
    let end = value.iter().position(|&b| b == b']')?;
    let literal = &value[1..end];
    let ok = !literal.is_empty()
        && literal
            .iter()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'));
    let port = &value[end + 1..];
    let port_ok = port.is_empty() || (port[0] == b':' && port_ok(&port[1..]));
    (ok && port_ok).then_some(())
}

fn port_ok(digits: &[u8]) -> bool {
    digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
}

/// RFC 3986 reg-name bytes (unreserved, pct-encoded's `%`, sub-delims but `,`).
const REG_NAME: [bool; 256] = alphanumeric_and(b"-._~%!$&'()*+;=");

/// A byte table: ASCII letters and digits, and `extra`. Built at compile time, so a check
/// on the hot path is one load.
const fn alphanumeric_and(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// The `Transfer-Encoding` values of a request, as one list (RFC 9110 §5.3): `Ok(true)`
/// when the body is chunked. Only a single `chunked`, last, is accepted; empty list elements
/// are ignored (`chunked,` is legal). Anything that is not a list of tokens, or names chunked
/// twice, or does not end in chunked, is malformed (400); a real coding before chunked
/// (`gzip, chunked`) is not implemented (501).
pub fn transfer_coding<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<bool, Reject> {
    const BAD: Reject = Reject::BadRequest("invalid Transfer-Encoding");
    let mut chunked = false;
    let mut other = false;
    for value in values {
        for element in value.split(|&b| b == b',') {
            let coding = trim_ows(element);
            if coding.is_empty() {
                continue;
            }
            // Parameters (`;q=…`) are not allowed in a request's coding list either.
            if !coding.iter().all(|&b| is_tchar(b)) || chunked {
                // Not a token, or anything after chunked (chunked twice included).
                return Err(BAD);
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else if KNOWN_CODINGS.iter().any(|k| coding.eq_ignore_ascii_case(k)) {
                other = true;
            } else {
                return Err(BAD);
            }
        }
    }
    match (chunked, other) {
        (true, false) => Ok(true),
        (true, true) => Err(Reject::NotImplemented),
        // RFC 9112 §6.3: without chunked last, a request's length cannot be known.
        (false, _) => Err(BAD),
    }
}

/// Registered transfer codings other than chunked (IANA HTTP Transfer Coding Registry): a
/// proxy could decode them, this one does not (501). Any other name is a malformed field.
const KNOWN_CODINGS: [&[u8]; 6] = [
    b"compress",
    b"deflate",
    b"gzip",
    b"identity",
    b"x-compress",
    b"x-gzip",
];

/// Which status a head that outgrew the limit before it was complete gets: 414 while the
/// request line itself is not complete, 431 once it is (the fields are too large).
pub fn head_over_limit(buf: &[u8]) -> Reject {
    if buf.contains(&b'\n') {
        Reject::TooLarge
    } else {
        Reject::UriTooLong
    }
}

/// Fields one request may carry (head or trailers).
pub fn field_count(n: usize) -> Result<(), Reject> {
    if n > MAX_FIELDS {
        Err(Reject::TooLarge)
    } else {
        Ok(())
    }
}

/// RFC 9110 §5.6.2 token characters: a table, since chunk extensions and trailer names are
/// checked byte by byte on the body's path.
#[inline]
pub fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

const TCHAR: [bool; 256] = alphanumeric_and(b"!#$%&'*+-.^_`|~");

/// Without optional whitespace (SP and HTAB only: RFC 9110 §5.6.3; a no-break space is not
/// whitespace).
pub fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else { return &[] };
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(start);
    &s[start..=end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn te(values: &[&[u8]]) -> Result<bool, Reject> {
        transfer_coding(values.iter().copied())
    }

    #[test]
    fn transfer_encoding_is_one_chunked_or_refused() {
        assert_eq!(te(&[b"chunked"]), Ok(true));
        assert_eq!(te(&[b"Chunked"]), Ok(true));
        assert_eq!(
            te(&[b"chunked,"]),
            Ok(true),
            "an empty list element is legal"
        );
        assert_eq!(te(&[b" , chunked"]), Ok(true));
        for bad in [
            &[&b"\xa0chunked"[..]][..],
            &[b"chunked\xa0"],
            &[b"xchunked"],
            &[b"chunked", b"chunked"],
            &[b"chunked,chunked"],
            &[b"chunked, gzip"],
            &[b"chunked;q=1"],
            &[b""],
        ] {
            assert!(matches!(te(bad), Err(Reject::BadRequest(_))), "{bad:?}");
        }
        assert_eq!(te(&[b"gzip, chunked"]), Err(Reject::NotImplemented));
        assert!(
            matches!(te(&[b"gzip"]), Err(Reject::BadRequest(_))),
            "not chunked last"
        );
    }

    #[test]
    fn host_is_a_host_and_port() {
        for good in [
            &b"a"[..],
            b"example.com",
            b"example.com:8080",
            b"127.0.0.1:1",
            b"[::1]",
            b"[::1]:80",
            b"",
            b"a:",
        ] {
            assert_eq!(host(good), Ok(()), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"a b"[..],
            b"a, b",
            b"a,b",
            b"u@a",
            b"a:b",
            b"[::1",
            b"[zz]",
            b"a:123456",
            b"a/b",
            b"a\tb",
        ] {
            assert!(host(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn targets_without_fragments() {
        assert_eq!(path(b"/a?b"), Ok(()));
        assert_eq!(path(b"*"), Ok(()));
        assert!(path(b"/a#frag").is_err());
        assert!(path(b"a").is_err());
    }

    #[test]
    fn over_limit_heads_are_414_until_the_request_line_ends() {
        assert_eq!(head_over_limit(b"GET /aaaaaaaa"), Reject::UriTooLong);
        assert_eq!(
            head_over_limit(b"GET / HTTP/1.1\r\nX: aaaa"),
            Reject::TooLarge
        );
        assert_eq!(method(b"CONNECT"), Err(Reject::Connect));
        assert_eq!(field_count(129), Err(Reject::TooLarge));
        assert_eq!(field_count(128), Ok(()));
    }
}
