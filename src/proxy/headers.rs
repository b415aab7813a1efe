//! Header rewriting between client and backend: hop-by-hop stripping (RFC 9110 §7.6.1) and
//! the forwarding headers that tell a backend who the client is.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

/// Fields that describe one connection, never the message: a proxy must not forward them.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop fields, including those the `Connection` field names, and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Runs twice per request. Most messages carry none of these fields: one pass of cheap
    // name comparisons then beats ten hashed removals.
    let any = headers
        .keys()
        .any(|k| *k == header::UPGRADE || HOP_BY_HOP.contains(k));
    if !any {
        return;
    }
    // Fields listed in Connection go too (e.g. `Connection: close, X-Session`).
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Appends the client to `X-Forwarded-For` and `Forwarded`, and sets `X-Forwarded-Proto`.
/// Runs on every request: each value is written once into its own buffer, which the header
/// value then owns (no intermediate strings).
pub fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, proto: &'static str) {
    use std::io::Write;
    let ip = client.ip().to_canonical();

    let prior = headers
        .get(X_FORWARDED_FOR)
        .map(HeaderValue::as_bytes)
        .filter(|p| !p.is_empty());
    let mut xff = Vec::with_capacity(prior.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prior {
        xff.extend_from_slice(p);
        xff.extend_from_slice(b", ");
    }
    let _ = write!(xff, "{ip}");
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));

    let prior = headers
        .get(header::FORWARDED)
        .map(HeaderValue::as_bytes)
        .filter(|p| !p.is_empty());
    let host = headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .filter(|h| {
            h.iter()
                .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
        });
    let mut fwd =
        Vec::with_capacity(prior.map_or(0, |p| p.len() + 2) + host.map_or(0, |h| h.len() + 8) + 64);
    if let Some(p) = prior {
        fwd.extend_from_slice(p);
        fwd.extend_from_slice(b", ");
    }
    // RFC 7239: IPv6 addresses are bracketed and quoted.
    let _ = match ip {
        IpAddr::V4(v4) => write!(fwd, "for={v4};proto={proto}"),
        IpAddr::V6(v6) => write!(fwd, "for=\"[{v6}]\";proto={proto}"),
    };
    if let Some(h) = host {
        fwd.extend_from_slice(b";host=\"");
        fwd.extend_from_slice(h);
        fwd.push(b'"');
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(fwd)) {
        headers.insert(header::FORWARDED, v);
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
            ("host", "example.com"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["host", "x-keep"]);
    }

    #[test]
    fn appends_forwarding_headers() {
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        add_forwarded(&mut h, "10.1.2.3:5555".parse().unwrap(), "http");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9, for=10.1.2.3;proto=http;host=\"example.com\""
        );
    }

    #[test]
    fn ipv6_client_is_quoted_and_mapped_v4_unwrapped() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "[::1]:80".parse().unwrap(), "http");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert_eq!(h["x-forwarded-for"], "::1");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "[::ffff:127.0.0.1]:80".parse().unwrap(), "http");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
}
