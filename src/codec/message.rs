//! HTTP/2 message heads (RFC 9113 §8.1–8.3): a decoded field block checked and held as a
//! request head, a response head or trailers. What makes a message malformed in HTTP/2
//! itself is refused here (pseudo-fields, connection-specific fields, bytes a field may not
//! hold); what the proxy's policy refuses (methods, paths, hosts) is `proxy::forward`'s.
//!
//! A head keeps its names and values in one shared buffer with spans into it, so a
//! request costs two allocations however many fields it has, and its `http` form
//! (`header_map`, `share`) refers to that buffer rather than copying each value.

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::hpack::{DecodeError, Decoder, Field};

/// Where a name or a value is in a head's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: u32,
    end: u32,
}

/// One regular field of a head.
#[derive(Debug, Clone, Copy)]
struct Entry {
    name: Span,
    value: Span,
    sensitive: bool,
}

/// Why a field block is not a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The block could not be decoded: the connection's HPACK state is lost
    /// (COMPRESSION_ERROR on the connection).
    #[error(transparent)]
    Compression(#[from] DecodeError),
    /// A malformed message (§8.1.1): the stream's error (PROTOCOL_ERROR).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The fields add up to more than the limit (names, values and 32 bytes each, as
    /// SETTINGS_MAX_HEADER_LIST_SIZE counts them): answered 431 by a server.
    #[error("the field section is larger than the limit")]
    TooLarge,
}

/// What kind of head a block must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
    Trailers,
}

/// A checked head: the pseudo-fields its kind has, then its regular fields in order.
#[derive(Debug, Clone, Default)]
pub struct Head {
    buf: Bytes,
    fields: Vec<Entry>,
    method: Option<Span>,
    scheme: Option<Span>,
    authority: Option<Span>,
    path: Option<Span>,
    /// `:protocol`, extended CONNECT's (RFC 8441).
    protocol: Option<Span>,
    status: Option<u16>,
    /// Some regular field is one `http` refuses though HTTP/2 allows it: a name that is
    /// not a token, a value with a control byte (see `fits_http`).
    beyond_http: bool,
}

impl Head {
    /// Decodes and checks a request's field block (§8.3.1).
    pub fn request(d: &mut Decoder, block: &[u8], max_list: usize) -> Result<Head, HeadError> {
        let head = read(d, block, max_list, Kind::Request)?;
        let Some(method) = head.method else {
            return Err(HeadError::Malformed("no :method"));
        };
        let connect = head.bytes(method) == b"CONNECT";
        if connect && head.protocol.is_none() {
            // Plain CONNECT: only :method and :authority (§8.5).
            if head.authority.is_none() || head.scheme.is_some() || head.path.is_some() {
                return Err(HeadError::Malformed(
                    "CONNECT with :scheme or :path, or no :authority",
                ));
            }
            return Ok(head);
        }
        if head.protocol.is_some() && !connect {
            return Err(HeadError::Malformed(
                ":protocol on a method other than CONNECT",
            ));
        }
        match (head.scheme, head.path) {
            (Some(_), Some(path)) if path.start < path.end => Ok(head),
            (Some(_), Some(_)) => Err(HeadError::Malformed("an empty :path")),
            _ => Err(HeadError::Malformed("no :scheme or no :path")),
        }
    }

    /// Decodes and checks a response's field block (§8.3.2); an interim (1xx) response
    /// too.
    pub fn response(d: &mut Decoder, block: &[u8], max_list: usize) -> Result<Head, HeadError> {
        let head = read(d, block, max_list, Kind::Response)?;
        if head.status.is_none() {
            return Err(HeadError::Malformed("no :status"));
        }
        Ok(head)
    }

    /// Decodes and checks a trailer section (§8.1: no pseudo-field).
    pub fn trailers(d: &mut Decoder, block: &[u8], max_list: usize) -> Result<Head, HeadError> {
        read(d, block, max_list, Kind::Trailers)
    }

    pub fn method(&self) -> Option<&[u8]> {
        self.method.map(|s| self.bytes(s))
    }

    pub fn scheme(&self) -> Option<&[u8]> {
        self.scheme.map(|s| self.bytes(s))
    }

    pub fn authority(&self) -> Option<&[u8]> {
        self.authority.map(|s| self.bytes(s))
    }

    pub fn path(&self) -> Option<&[u8]> {
        self.path.map(|s| self.bytes(s))
    }

    pub fn protocol(&self) -> Option<&[u8]> {
        self.protocol.map(|s| self.bytes(s))
    }

    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The regular fields, in the order they came.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = Field<'_>> {
        self.fields.iter().map(|e| Field {
            name: self.bytes(e.name),
            value: self.bytes(e.value),
            sensitive: e.sensitive,
        })
    }

    /// The values of the fields named `name` (lowercase).
    pub fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.fields()
            .filter(move |f| f.name == name)
            .map(|f| f.value)
    }

    /// The body's length as `content-length` declares it: `Ok(None)` without one; the
    /// same value repeated counts once (RFC 9110 §8.6); anything else is malformed.
    pub fn content_length(&self) -> Result<Option<u64>, HeadError> {
        let mut length = None;
        for v in self.values(b"content-length") {
            let n = std::str::from_utf8(v)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(HeadError::Malformed("an invalid content-length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(HeadError::Malformed("conflicting content-length"));
            }
            length = Some(n);
        }
        Ok(length)
    }

    /// Whether `http` holds every regular field (`header_map` is `Some`), and so an
    /// HTTP/1.1 message could carry them: names are tokens, values have no control byte
    /// but tab. Known from the decoding, not by building the map.
    pub fn fits_http(&self) -> bool {
        !self.beyond_http
    }

    /// The regular fields as `http` holds them, with room for `room` more; `None` for a
    /// name or value `http` refuses (`fits_http`). Never-indexed fields stay sensitive. The values share
    /// the head's buffer.
    pub fn header_map(&self, room: usize) -> Option<HeaderMap> {
        let mut map = HeaderMap::with_capacity(self.fields.len() + room);
        for e in &self.fields {
            let name = HeaderName::from_bytes(self.bytes(e.name)).ok()?;
            let mut value = HeaderValue::from_maybe_shared(self.slice(e.value)).ok()?;
            value.set_sensitive(e.sensitive);
            map.append(name, value);
        }
        Some(map)
    }

    /// `part` (a pseudo-field's value, say) as bytes sharing the head's buffer, not a copy.
    /// `part` must come from this head.
    pub fn share(&self, part: &[u8]) -> Bytes {
        self.buf.slice_ref(part)
    }

    fn bytes(&self, s: Span) -> &[u8] {
        &self.buf[s.start as usize..s.end as usize]
    }

    fn slice(&self, s: Span) -> Bytes {
        self.buf.slice(s.start as usize..s.end as usize)
    }
}

/// Appends `bytes` to a head's buffer being filled; where they are.
fn keep(buf: &mut Vec<u8>, bytes: &[u8]) -> Span {
    let start = buf.len() as u32;
    buf.extend_from_slice(bytes);
    Span {
        start,
        end: buf.len() as u32,
    }
}

/// Decodes the whole block (HPACK state must stay in step whatever it holds), then says
/// what was wrong with it, the first fault found.
fn read(d: &mut Decoder, block: &[u8], max_list: usize, kind: Kind) -> Result<Head, HeadError> {
    // Indexed fields decode to far more than their block's bytes: room for a typical
    // head at once, rather than growing it field by field.
    let mut buf = Vec::with_capacity(block.len() * 4 + 256);
    let mut head = Head {
        fields: Vec::with_capacity(16),
        ..Head::default()
    };
    let mut size = 0usize;
    let mut fault: Option<HeadError> = None;
    d.decode(block, |f| {
        size += f.name.len() + f.value.len() + 32;
        if fault.is_some() {
            return;
        }
        if size > max_list {
            fault = Some(HeadError::TooLarge);
            return;
        }
        if let Err(e) = take(&mut head, &mut buf, f, kind) {
            fault = Some(e);
        }
    })?;
    match fault {
        Some(e) => Err(e),
        None => {
            head.buf = Bytes::from(buf);
            Ok(head)
        }
    }
}

/// Adds one decoded field to `head` (its bytes to `buf`), or says why the message is
/// malformed.
fn take(head: &mut Head, buf: &mut Vec<u8>, f: Field<'_>, kind: Kind) -> Result<(), HeadError> {
    let malformed = |why| Err(HeadError::Malformed(why));
    let value_seen = seen(f.value);
    if !value_ok(f.value, value_seen) {
        return malformed("a field value with NUL, CR or LF, or edged with white space");
    }
    if let Some(pseudo) = f.name.strip_prefix(b":") {
        if !head.fields.is_empty() {
            return malformed("a pseudo-field after a regular field");
        }
        if (kind, pseudo) == (Kind::Response, b"status") {
            if head.status.is_some() {
                return malformed("a second :status");
            }
            let code = status(f.value).ok_or(HeadError::Malformed("a :status not 3 digits"))?;
            head.status = Some(code);
            return Ok(());
        }
        // Kept before it is known to be wanted: a refused head is dropped whole anyway.
        let span = keep(buf, f.value);
        let slot = match (kind, pseudo) {
            (Kind::Request, b"method") => &mut head.method,
            (Kind::Request, b"scheme") => &mut head.scheme,
            (Kind::Request, b"authority") => &mut head.authority,
            (Kind::Request, b"path") => &mut head.path,
            (Kind::Request, b"protocol") => &mut head.protocol,
            _ => return malformed("a pseudo-field this message may not have"),
        };
        if slot.replace(span).is_some() {
            return malformed("a pseudo-field twice");
        }
        return Ok(());
    }
    let name_seen = seen(f.name);
    if f.name.is_empty() || name_seen & NAME_BAD != 0 {
        return malformed("a field name with uppercase, a colon, white space or control bytes");
    }
    head.beyond_http |= (name_seen & NOT_TOKEN) | (value_seen & NOT_HTTP_VALUE) != 0
        || f.name.len() > MAX_HTTP_NAME;
    // Connection-specific fields have no place in HTTP/2 (§8.2.2); `te` only as trailers.
    match f.name {
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade" => {
            return malformed("a connection-specific field");
        }
        b"te" if f.value != b"trailers" => return malformed("te other than trailers"),
        _ => {}
    }
    let name = keep(buf, f.name);
    let value = keep(buf, f.value);
    head.fields.push(Entry {
        name,
        value,
        sensitive: f.sensitive,
    });
    Ok(())
}

/// What the bytes of `v` are, or-ed together (see `BYTES`): one pass over a name or a
/// value answers every check on it. Or-ed over the whole rather than stopping at the first
/// bad byte: fields are short, and a loop without an exit per byte runs faster.
fn seen(v: &[u8]) -> u8 {
    v.iter().fold(0, |seen, &b| seen | BYTES[b as usize])
}

/// RFC 9113 §8.2.1: no NUL, CR or LF in a value (`seen`: its bytes' kinds), nor white
/// space at either end.
fn value_ok(v: &[u8], seen: u8) -> bool {
    let edge = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    seen & VALUE_BAD == 0 && !edge(v.first()) && !edge(v.last())
}

/// The longest name `http` holds.
const MAX_HTTP_NAME: usize = (1 << 16) - 1;

/// What each byte is, looked up rather than compared: names and values are most of what a
/// head's checks read. The bits say what a byte may not be part of.
/// RFC 9113 §8.2.1: no bytes 0x00–0x20, 0x41–0x5a (uppercase) or 0x7f–0xff in a name,
/// and no colon but a pseudo-field's first.
const NAME_BAD: u8 = 1;
/// RFC 9113 §8.2.1: no NUL, CR or LF in a value.
const VALUE_BAD: u8 = 2;
/// Not a token character (RFC 9110 §5.6.2), which `http`'s names must be.
const NOT_TOKEN: u8 = 4;
/// A control byte other than tab, or DEL: `http`'s values refuse them.
const NOT_HTTP_VALUE: u8 = 8;
static BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c <= 0x20 || c.is_ascii_uppercase() || c >= 0x7f || c == b':' {
            t[b] |= NAME_BAD;
        }
        if matches!(c, 0 | b'\r' | b'\n') {
            t[b] |= VALUE_BAD;
        }
        let token = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        if !token {
            t[b] |= NOT_TOKEN;
        }
        if (c < 0x20 && c != b'\t') || c == 0x7f {
            t[b] |= NOT_HTTP_VALUE;
        }
        b += 1;
    }
    t
};

fn status(v: &[u8]) -> Option<u16> {
    match v {
        [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Some((a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::hpack;
    use super::*;

    /// A field block of raw literals (and `:status` indexed when it is 200).
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            hpack::field(n.as_bytes(), v.as_bytes(), false, &mut b);
        }
        b
    }

    fn request(fields: &[(&str, &str)]) -> Result<Head, HeadError> {
        Head::request(&mut Decoder::new(4096), &block(fields), 16 * 1024)
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", "/a?b"),
    ];

    #[test]
    fn a_request_keeps_its_pseudo_fields_and_fields_in_order() {
        let mut fields = GET.to_vec();
        fields.extend([
            ("cookie", "a=1"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
            ("te", "trailers"),
        ]);
        let head = request(&fields).unwrap();
        assert_eq!(head.method(), Some(&b"GET"[..]));
        assert_eq!(head.scheme(), Some(&b"https"[..]));
        assert_eq!(head.authority(), Some(&b"example.com"[..]));
        assert_eq!(head.path(), Some(&b"/a?b"[..]));
        let names: Vec<&[u8]> = head.fields().map(|f| f.name).collect();
        assert_eq!(names, [&b"cookie"[..], b"accept", b"cookie", b"te"]);
        let cookies: Vec<&[u8]> = head.values(b"cookie").collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        assert_eq!(head.content_length(), Ok(None));
    }

    #[test]
    fn malformed_requests_are_refused() {
        let cases: &[&[(&str, &str)]] = &[
            &[(":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), (":path", "/")],
            &[(":method", "GET"), (":scheme", "http"), (":path", "")],
            &[
                (":method", "GET"),
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                ("a", "1"),
                (":path", "/"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":status", "200"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":x", "1"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("Accept", "1"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("a b", "1"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("", "1"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("a:b", "1"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("connection", "close"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("transfer-encoding", "chunked"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("upgrade", "h2c"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("keep-alive", "5"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("te", "gzip"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("a", "x\r\ny: 1"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("a", " x"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("a", "x\t"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("a", "x\0"),
            ],
            &[
                (":method", "CONNECT"),
                (":authority", "h:443"),
                (":path", "/"),
            ],
            &[(":method", "CONNECT")],
            &[
                (":method", "GET"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", "/"),
            ],
        ];
        for fields in cases {
            assert!(
                matches!(request(fields), Err(HeadError::Malformed(_))),
                "{fields:?} accepted"
            );
        }
    }

    #[test]
    fn connect_and_extended_connect() {
        let head = request(&[(":method", "CONNECT"), (":authority", "h:443")]).unwrap();
        assert_eq!((head.authority(), head.path()), (Some(&b"h:443"[..]), None));
        let ws = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "h"),
            (":path", "/chat"),
        ];
        assert_eq!(request(&ws).unwrap().protocol(), Some(&b"websocket"[..]));
    }

    #[test]
    fn content_length_is_one_number() {
        let with = |values: &[&str]| {
            let mut fields = GET.to_vec();
            fields.extend(values.iter().map(|v| ("content-length", *v)));
            request(&fields).unwrap().content_length()
        };
        assert_eq!(with(&["12"]), Ok(Some(12)));
        assert_eq!(with(&["12", "12"]), Ok(Some(12)));
        assert!(with(&["12", "13"]).is_err());
        assert!(with(&["+12"]).is_err());
        assert!(with(&["1 2"]).is_err());
        assert!(with(&["99999999999999999999999"]).is_err());
    }

    #[test]
    fn the_list_limit_counts_as_settings_do_and_keeps_the_table_in_step() {
        let mut d = Decoder::new(4096);
        // Four pseudo-fields: 7+3, 7+5, 10+11, 5+4 bytes, plus 32 each = 180.
        assert!(Head::request(&mut d, &block(&GET), 180).is_ok());
        assert_eq!(
            Head::request(&mut d, &block(&GET), 179).unwrap_err(),
            HeadError::TooLarge
        );
        // A refused block is still decoded whole: an entry it adds is there for the next.
        let mut b = block(&GET);
        b.extend_from_slice(&[0x40, 1, b'x', 100]);
        b.extend_from_slice(&[b'v'; 100]);
        assert_eq!(
            Head::request(&mut d, &b, 200).unwrap_err(),
            HeadError::TooLarge
        );
        let mut b = block(&GET);
        b.push(0x80 | 62);
        let head = Head::request(&mut d, &b, 16 * 1024).unwrap();
        assert_eq!(head.values(b"x").next().map(<[u8]>::len), Some(100));
    }

    #[test]
    fn responses_and_trailers() {
        let mut d = Decoder::new(4096);
        let b = block(&[(":status", "200"), ("content-type", "text/plain")]);
        let head = Head::response(&mut d, &b, 1024).unwrap();
        assert_eq!((head.status(), head.fields().len()), (Some(200), 1));
        let b = block(&[(":status", "103"), ("link", "</a>")]);
        assert_eq!(
            Head::response(&mut d, &b, 1024).unwrap().status(),
            Some(103)
        );
        for bad in [
            &[("content-type", "text/plain")][..],
            &[(":status", "200"), (":status", "200")],
            &[(":status", "20")],
            &[(":status", "099")],
            &[(":status", "200"), (":path", "/")],
        ] {
            let e = Head::response(&mut d, &block(bad), 1024).unwrap_err();
            assert!(matches!(e, HeadError::Malformed(_)), "{bad:?}");
        }
        let b = block(&[("grpc-status", "0"), ("grpc-message", "ok")]);
        assert_eq!(Head::trailers(&mut d, &b, 1024).unwrap().fields().len(), 2);
        let b = block(&[(":status", "200")]);
        assert!(matches!(
            Head::trailers(&mut d, &b, 1024),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(
            Head::response(&mut d, &[0x80], 1024).unwrap_err(),
            HeadError::Compression(DecodeError::Index)
        );
    }

    /// HTTP/2 allows fields `http` (and HTTP/1.1) do not: `fits_http` says so without
    /// building the map, and agrees with it byte for byte.
    #[test]
    fn fields_beyond_http_are_known_from_the_decoding() {
        let mut d = Decoder::new(4096);
        let cases: [(&[u8], &[u8], bool); 10] = [
            (b"x-a", b"plain value", true),
            (b"x-a", b"tab\there, and \x80\xff obs-text", true),
            (b"x-!#$%&'*+-.^_`|~09az", b"v", true),
            (b"x-a", b"\x01", false),
            (b"x-a", b"a\x7fb", false),
            (b"x-a", b"a\x1fb", false),
            (b"x-\"q\"", b"v", false),
            (b"x-(a)", b"v", false),
            (b"x-a/b", b"v", false),
            (b"x-{}", b"v", false),
        ];
        for (name, value, fits) in cases {
            let mut b = Vec::new();
            hpack::field(b":status", b"200", false, &mut b);
            hpack::field(b"server", b"s", false, &mut b);
            hpack::field(name, value, false, &mut b);
            let head = Head::response(&mut d, &b, 1 << 20).unwrap();
            let what = (
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value),
            );
            assert_eq!(head.fits_http(), fits, "{what:?}");
            assert_eq!(head.header_map(0).is_some(), fits, "{what:?}");
        }
        let mut b = Vec::new();
        hpack::field(b":status", b"200", false, &mut b);
        hpack::field(&[b'x'; 1 << 16], b"v", false, &mut b);
        let head = Head::response(&mut d, &b, 1 << 20).unwrap();
        assert!(
            !head.fits_http() && head.header_map(0).is_none(),
            "a 64 KiB name"
        );
    }
}
