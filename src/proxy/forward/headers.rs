//! Header rewriting between client and worker, for both HTTP versions: which fields are
//! hop-by-hop (RFC 9110 §7.6.1) and never forwarded, and the forwarding fields that tell a
//! worker who the client is (`X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded`, RFC 7239).
//! The HTTP/1 path applies it to bytes as it copies a head (`http1::request`, `http1::response`); the HTTP/2
//! path writes an HTTP/1.1 worker's head from the client's fields ([`write_h2_request`]),
//! and rewrites the header map for an HTTP/2 worker ([`rewrite_for_h2_worker`], which
//! gives the forwarding fields to send after it, [`Forwarding`]).

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

use super::checks::trim_ows;

/// The fields the proxy treats specially; everything else is copied as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    Cookie,
    XForwardedFor,
    XForwardedProto,
    Forwarded,
    /// Keep-Alive, Proxy-Connection, TE, Proxy-Authenticate, Proxy-Authorization,
    /// HTTP2-Settings: about one connection, never forwarded.
    HopByHop,
}

/// Classifies a field name: a length switch first, so most names cost one comparison.
pub fn classify(name: &[u8]) -> Field {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match name.len() {
        2 if is(b"te") => Field::HopByHop,
        4 if is(b"host") => Field::Host,
        6 if is(b"expect") => Field::Expect,
        6 if is(b"cookie") => Field::Cookie,
        7 if is(b"upgrade") => Field::Upgrade,
        9 if is(b"forwarded") => Field::Forwarded,
        10 if is(b"connection") => Field::Connection,
        10 if is(b"keep-alive") => Field::HopByHop,
        14 if is(b"content-length") => Field::ContentLength,
        // Only meaningful in an h2c upgrade, which is never offered to a worker.
        14 if is(b"http2-settings") => Field::HopByHop,
        15 if is(b"x-forwarded-for") => Field::XForwardedFor,
        16 if is(b"proxy-connection") => Field::HopByHop,
        17 if is(b"transfer-encoding") => Field::TransferEncoding,
        17 if is(b"x-forwarded-proto") => Field::XForwardedProto,
        18 if is(b"proxy-authenticate") => Field::HopByHop,
        19 if is(b"proxy-authorization") => Field::HopByHop,
        _ => Field::Other,
    }
}

/// What the `Connection` fields of a message say.
#[derive(Default)]
pub struct ConnectionTokens<'b> {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Other fields named there, which are hop-by-hop too (RFC 9110 §7.6.1). Rarely any:
    /// the vector allocates only then.
    listed: Vec<&'b [u8]>,
}

impl<'b> ConnectionTokens<'b> {
    pub fn add(&mut self, value: &'b [u8]) {
        for token in value.split(|&b| b == b',').map(trim_ows) {
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
    pub fn keeps_open(&self, http10: bool) -> bool {
        !self.close && (self.keep_alive || !http10)
    }

    /// Whether `name` is listed (and so hop-by-hop).
    pub fn lists(&self, name: &[u8]) -> bool {
        self.listed.iter().any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// Whether a trailer field may be forwarded. RFC 9110 §6.5.1: framing, routing and
/// connection fields cannot be processed after the content, and a recipient that merges
/// trailers into the header section (many frameworks do) would let them override what the
/// proxy checked or set in the head (framing, Host, the forwarding fields). Such fields are
/// dropped, not refused: the message itself is sound, and §6.5.1 lets a recipient discard
/// them.
pub fn trailer_allowed(name: &[u8]) -> bool {
    matches!(classify(name), Field::Other | Field::Cookie) && !name.eq_ignore_ascii_case(b"trailer")
}

/// Whether an `Upgrade` request may go to a worker. h2c never does: a worker that accepted
/// it would turn the connection into an HTTP/2 tunnel whose requests skip every check,
/// timeout and balancing decision; such a request is served as plain HTTP/1.1.
pub fn upgrade_allowed(protocols: &[u8]) -> bool {
    let mut any = false;
    for p in protocols.split(|&b| b == b',').map(trim_ows) {
        let name = p.split(|&b| b == b'/').next().unwrap_or(p);
        if name.eq_ignore_ascii_case(b"h2c") || name.eq_ignore_ascii_case(b"h2") {
            return false;
        }
        any |= !p.is_empty();
    }
    any
}

/// The client's address, formatted once per connection for the forwarding fields.
#[derive(Debug, Clone)]
pub struct Client {
    /// As the connection (or its PROXY header) gave it.
    pub address: SocketAddr,
    /// `X-Forwarded-For` form: `10.1.2.3` or `::1`; a field value, so the HTTP/2 path
    /// inserts it without copying.
    pub xff: HeaderValue,
    /// `Forwarded` form: `for=10.1.2.3` or `for="[::1]"` (RFC 7239 §6).
    pub forwarded: String,
    /// The scheme the client spoke, for `X-Forwarded-Proto` and `Forwarded: proto=`:
    /// `https` when the listener terminated TLS for it, `http` otherwise.
    pub proto: &'static str,
    /// The whole `Forwarded` value of a request that came without one
    /// (`for=10.1.2.3;proto=http`), made once per connection for the HTTP/2 path.
    forwarded_value: HeaderValue,
}

impl Client {
    pub fn new(peer: SocketAddr) -> Client {
        let ip = peer.ip().to_canonical();
        let forwarded = match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        Client {
            address: peer,
            xff: HeaderValue::from_str(&ip.to_string()).expect("an address is a valid value"),
            forwarded_value: forwarded_value(&forwarded, "http"),
            forwarded,
            proto: "http",
        }
    }

    /// The same client, over TLS when `tls` (the scheme workers are told becomes `https`).
    pub fn with_tls(mut self, tls: bool) -> Client {
        if tls {
            self.proto = "https";
            self.forwarded_value = forwarded_value(&self.forwarded, self.proto);
        }
        self
    }
}

fn forwarded_value(forwarded: &str, proto: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{forwarded};proto={proto}"))
        .expect("an address and a scheme are a valid value")
}

/// Whether a Host value can go into `Forwarded: host="…"` (RFC 7239 §4: a quoted-string; a
/// value that would need escaping is left out).
pub fn quotable(host: &[u8]) -> bool {
    host.iter()
        .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
}

/// Writes an HTTP/2 request's fields as an HTTP/1.1 worker gets them, between the request
/// line and the framing fields (the caller's): `host` (its `:authority`, else its Host)
/// first, every other field as it came, the `cookie` fields an HTTP/2 client splits joined
/// into one (RFC 9113 §8.2.3), then the forwarding fields. Framing and hop-by-hop fields
/// stay behind; HTTP/2 allows none of `Connection`, `Upgrade`, `Transfer-Encoding` or
/// `Keep-Alive` (the HTTP/2 codec refuses a request with one), so no field is named by
/// another.
/// `Expect` stays behind too: a worker must not wait for a second `100 Continue`.
/// Written straight as bytes, the header map left as it came: rewriting the map first cost
/// a hashed insert or lookup per field touched, on every request.
pub fn write_h2_request(
    out: &mut Vec<u8>,
    fields: &HeaderMap,
    host: Option<&[u8]>,
    client: &Client,
) {
    if let Some(host) = host {
        put(out, b"Host", host);
    }
    let (mut cookies, mut prior_xff, mut prior_forwarded) = (0, false, false);
    for (name, value) in fields {
        match classify(name.as_str().as_bytes()) {
            Field::Other => put(out, name.as_str().as_bytes(), value.as_bytes()),
            Field::Cookie => cookies += 1,
            Field::XForwardedFor => prior_xff |= !trim_ows(value.as_bytes()).is_empty(),
            Field::Forwarded => prior_forwarded |= !trim_ows(value.as_bytes()).is_empty(),
            _ => {}
        }
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, v) in fields.get_all(header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if prior_xff {
        prior_values(out, fields, &X_FORWARDED_FOR);
    }
    out.extend_from_slice(client.xff.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(client.proto.as_bytes());
    out.extend_from_slice(b"\r\nForwarded: ");
    if prior_forwarded {
        prior_values(out, fields, &header::FORWARDED);
    }
    out.extend_from_slice(client.forwarded.as_bytes());
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(client.proto.as_bytes());
    if let Some(h) = host.filter(|h| quotable(h)) {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(h);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
}

/// `name: value` and its line end: one field of an HTTP/1.1 head.
#[inline]
pub fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the non-empty values of every `name` field, each followed by `, `: several lines
/// of a list are one list (RFC 9110 §5.3), and workers often read only the first line.
fn prior_values(out: &mut Vec<u8>, fields: &HeaderMap, name: &HeaderName) {
    for v in fields.get_all(name) {
        let v = trim_ows(v.as_bytes());
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
}

/// The forwarding fields an HTTP/2 worker's request carries after the client's own fields:
/// the values the HTTP/1 path writes, but `Forwarded`'s `host=` (an HTTP/2 worker's request
/// names its host in `:authority`). A list the client sent in several fields becomes one,
/// its values first and this hop's last: workers often read only the first field. Sent as
/// the request is encoded ([`Forwarding::fields`]) rather than inserted into its map,
/// where each insert would hash and probe only for the map to be read once more, by the
/// encoder.
pub struct Forwarding {
    xff: HeaderValue,
    proto: &'static str,
    forwarded: HeaderValue,
}

impl Forwarding {
    /// Names lowercase, as HTTP/2 sends them.
    pub fn fields(&self) -> [(&[u8], &[u8]); 3] {
        [
            (b"x-forwarded-for", self.xff.as_bytes()),
            (b"x-forwarded-proto", self.proto.as_bytes()),
            (b"forwarded", self.forwarded.as_bytes()),
        ]
    }
}

/// Rewrites a request's fields for an HTTP/2 worker: hop-by-hop fields removed except
/// `te: trailers` (the one value HTTP/2 allows, and one gRPC servers require), `Host`
/// dropped (the request's `:authority` carries it), and the client's forwarding fields
/// taken out, their values kept at the front of the proxy's ([`Forwarding`], which goes
/// after the rest). Cookies stay as they came: HTTP/2 allows them split.
pub fn rewrite_for_h2_worker(headers: &mut HeaderMap, client: &Client) -> Forwarding {
    // One pass of cheap name comparisons says which fields are there: most requests carry
    // none of those removed here, and each hashed lookup or removal costs even when the
    // field is absent.
    let (mut hop, mut host, mut expect) = (false, false, false);
    let (mut prior_xff, mut prior_proto, mut prior_forwarded) = (false, false, false);
    for name in headers.keys() {
        match classify(name.as_str().as_bytes()) {
            Field::HopByHop | Field::Connection | Field::Upgrade | Field::TransferEncoding => {
                hop = true
            }
            Field::Host => host = true,
            Field::Expect => expect = true,
            Field::XForwardedFor => prior_xff = true,
            Field::XForwardedProto => prior_proto = true,
            Field::Forwarded => prior_forwarded = true,
            _ => {}
        }
    }
    if hop {
        let trailers = headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(headers);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if host {
        headers.remove(header::HOST);
    }
    if expect {
        headers.remove(header::EXPECT);
    }
    if prior_proto {
        // The proxy says which scheme its client spoke; the client's word is dropped.
        headers.remove(X_FORWARDED_PROTO);
    }
    Forwarding {
        xff: forwarded_after(headers, &X_FORWARDED_FOR, prior_xff, &client.xff, |v| {
            v.extend_from_slice(client.xff.as_bytes())
        }),
        proto: client.proto,
        forwarded: forwarded_after(
            headers,
            &header::FORWARDED,
            prior_forwarded,
            &client.forwarded_value,
            |v| {
                v.extend_from_slice(client.forwarded.as_bytes());
                v.extend_from_slice(b";proto=");
                v.extend_from_slice(client.proto.as_bytes());
            },
        ),
    }
}

/// A forwarding field's value: `own` (the client's, made once per connection) when the
/// request carries no `name` (`prior`: it does, as most do not); else the request's values
/// (taken out of `headers`), then this hop's, as `append` writes it.
fn forwarded_after(
    headers: &mut HeaderMap,
    name: &HeaderName,
    prior: bool,
    own: &HeaderValue,
    append: impl FnOnce(&mut Vec<u8>),
) -> HeaderValue {
    if !prior {
        return own.clone();
    }
    let mut value = Vec::with_capacity(96);
    prior_values(&mut value, headers, name);
    headers.remove(name);
    append(&mut value);
    // Valid values joined by ", " and an address: always a valid value.
    HeaderValue::from_maybe_shared(Bytes::from(value)).unwrap_or_else(|_| own.clone())
}

/// Removes hop-by-hop fields, including those the `Connection` field names, and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Runs twice per request. Most messages carry none of these fields: one pass of cheap
    // name comparisons then beats ten hashed removals.
    let hop = |k: &HeaderName| {
        matches!(
            classify(k.as_str().as_bytes()),
            Field::HopByHop | Field::Connection | Field::Upgrade | Field::TransferEncoding
        )
    };
    if !headers.keys().any(hop) {
        return;
    }
    // Fields listed in Connection go too (e.g. `Connection: close, X-Session`).
    let mut tokens = ConnectionTokens::default();
    let values: Vec<HeaderValue> = headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    for v in &values {
        tokens.add(v.as_bytes());
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| hop(k) || tokens.lists(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn client(addr: &str) -> Client {
        Client::new(addr.parse().unwrap())
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Session"),
            ("keep-alive", "timeout=5"),
            ("x-session", "abc"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("host", "example.com"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["host", "x-keep"]);
    }

    /// What `write_h2_request` writes for `fields`.
    fn h1_fields(fields: &[(&str, &str)], host: Option<&str>, client: &Client) -> String {
        let mut out = Vec::new();
        write_h2_request(&mut out, &map(fields), host.map(str::as_bytes), client);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn h2_request_gets_host_joined_cookies_and_forwarding_fields() {
        let written = h1_fields(
            &[
                ("cookie", "a=1"),
                ("x-keep", "1"),
                ("cookie", "b=2"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=203.0.113.9"),
                ("te", "trailers"),
                ("expect", "100-continue"),
                ("content-length", "3"),
                ("host", "example.com"),
            ],
            Some("example.com"),
            &client("10.1.2.3:5555"),
        );
        assert_eq!(
            written,
            "Host: example.com\r\nx-keep: 1\r\ncookie: a=1; b=2\r\n\
             X-Forwarded-For: 203.0.113.9, 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\
             Forwarded: for=203.0.113.9, for=10.1.2.3;proto=http;host=\"example.com\"\r\n"
        );
    }

    #[test]
    fn tls_client_is_forwarded_as_https() {
        let written = h1_fields(&[], None, &client("10.1.2.3:5555").with_tls(true));
        assert_eq!(
            written,
            "X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: https\r\n\
             Forwarded: for=10.1.2.3;proto=https\r\n"
        );
        assert_eq!(client("10.1.2.3:5555").with_tls(false).proto, "http");
    }

    #[test]
    fn an_h2_workers_request_gets_the_forwarding_fields_with_earlier_values_first() {
        let fields = |h: &HeaderMap, name: &str| -> Vec<String> {
            let all = h.get_all(name).iter();
            all.map(|v| v.to_str().unwrap().to_owned()).collect()
        };
        let added = |f: &Forwarding| -> Vec<(String, String)> {
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
            f.fields().iter().map(|(n, v)| (text(n), text(v))).collect()
        };
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let mut h = map(&[("host", "example.com"), ("x-keep", "1")]);
        let forwarding = rewrite_for_h2_worker(&mut h, &client("10.1.2.3:5555"));
        assert_eq!(
            added(&forwarding),
            pairs(&[
                ("x-forwarded-for", "10.1.2.3"),
                ("x-forwarded-proto", "http"),
                ("forwarded", "for=10.1.2.3;proto=http"),
            ])
        );
        assert_eq!(h.len(), 1, "only x-keep stays in the map: {h:?}");
        assert_eq!(fields(&h, "x-keep"), ["1"]);

        // The client's own forwarding fields leave the map: theirs lead the proxy's, and
        // its X-Forwarded-Proto is the proxy's word, not the client's.
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "gopher"),
            ("forwarded", "for=203.0.113.9"),
            ("forwarded", "for=198.51.100.7"),
            ("x-keep", "1"),
        ]);
        let forwarding = rewrite_for_h2_worker(&mut h, &client("[::1]:80").with_tls(true));
        assert_eq!(
            added(&forwarding),
            pairs(&[
                ("x-forwarded-for", "203.0.113.9, ::1"),
                ("x-forwarded-proto", "https"),
                (
                    "forwarded",
                    "for=203.0.113.9, for=198.51.100.7, for=\"[::1]\";proto=https"
                ),
            ])
        );
        assert_eq!(h.len(), 1, "only x-keep stays in the map: {h:?}");
    }

    #[test]
    fn ipv6_client_is_quoted_and_mapped_v4_unwrapped() {
        let c = client("[::1]:80");
        assert_eq!(
            (c.xff.to_str().unwrap(), c.forwarded.as_str()),
            ("::1", "for=\"[::1]\"")
        );
        assert_eq!(client("[::ffff:127.0.0.1]:80").xff, "127.0.0.1");
    }

    #[test]
    fn framing_routing_and_connection_fields_are_not_trailers() {
        for name in [
            "connection",
            "content-length",
            "expect",
            "forwarded",
            "host",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "x-forwarded-for",
            "X-Forwarded-Proto",
        ] {
            assert!(!trailer_allowed(name.as_bytes()), "{name}");
        }
        assert!(trailer_allowed(b"x-checksum"));
        assert!(trailer_allowed(b"grpc-status"));
    }

    #[test]
    fn h2c_is_never_an_upgrade_a_worker_sees() {
        assert!(upgrade_allowed(b"websocket"));
        assert!(!upgrade_allowed(b"h2c"));
        assert!(!upgrade_allowed(b"H2C"));
        assert!(!upgrade_allowed(b"websocket, h2c"));
        assert!(!upgrade_allowed(b""));
    }
}
