//! What of a request pins it to a worker: the listener's `hash_key` for `consistent_hash`,
//! and the pool's sticky cookie. Both HTTP transports ask here, each through its own view of
//! the request's fields ([`Fields`]), so a key means the same over HTTP/1 and HTTP/2.

use std::net::IpAddr;

use hyper::http;

use crate::balance::{Affinity, Balancer, CookieValue};
use crate::config::HashKey;
use crate::ring::maglev::key_hash;

/// A request's fields as a transport holds them.
pub trait Fields {
    /// The value of the first field called `name` (lower-case), if any.
    fn first(&self, name: &str) -> Option<&[u8]>;
    /// Calls `each` with the value of every `Cookie` field, in order, until it returns
    /// `Some`.
    fn find_cookie<'a>(
        &'a self,
        each: &mut dyn FnMut(&'a [u8]) -> Option<&'a [u8]>,
    ) -> Option<&'a [u8]>;
}

/// A request's affinity on `balancer`'s pool: the hash of `key` when the balancer hashes,
/// the sticky cookie's value when the pool has one. `client`: the client's address (from
/// its PROXY header, when the listener takes them); `target`: the request-target's path
/// and query, as sent.
pub fn of(
    balancer: &Balancer,
    key: &HashKey,
    client: IpAddr,
    target: &[u8],
    fields: &(impl Fields + ?Sized),
) -> Affinity {
    let hash = if balancer.hashes() {
        hash(key, client, target, fields)
    } else {
        None
    };
    let sticky = balancer
        .sticky_cookie()
        .and_then(|name| cookie_in(fields, name.as_bytes()))
        .and_then(CookieValue::new);
    Affinity { hash, sticky }
}

/// The hash of the request's `key`, or `None` when it lacks one (no such field, cookie or
/// parameter): such a request is balanced by weight instead.
pub fn hash(
    key: &HashKey,
    client: IpAddr,
    target: &[u8],
    fields: &(impl Fields + ?Sized),
) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(client_hash(client)),
        HashKey::Header(name) => fields.first(name).map(key_hash),
        HashKey::Cookie(name) => cookie_in(fields, name.as_bytes()).map(key_hash),
        HashKey::Path => Some(key_hash(split_target(target).0)),
        HashKey::Query(name) => split_target(target)
            .1
            .and_then(|q| query_parameter(q, name.as_bytes()))
            .map(key_hash),
    }
}

/// The hash of a client's address: its bytes (4 for IPv4, 16 for IPv6; an IPv4-mapped IPv6
/// address as its IPv4 one), so the same client hashes alike on both kinds of listeners.
pub fn client_hash(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(v4) => key_hash(&v4.octets()),
        IpAddr::V6(v6) => key_hash(&v6.octets()),
    }
}

/// The path and the query (after the first `?`, if any) of a request-target. An empty
/// path (an absolute-form target without one, `http://host?q`) and `*` (`OPTIONS *`) are
/// `/`, as the worker is sent, and as HTTP/2 says: routes and `hash_key = "path"` see the
/// same path over both versions.
pub fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    match path {
        b"" | b"*" => (b"/", query),
        path => (path, query),
    }
}

/// The value of the first cookie called `name` in the request's `Cookie` fields.
fn cookie_in<'a>(fields: &'a (impl Fields + ?Sized), name: &[u8]) -> Option<&'a [u8]> {
    fields.find_cookie(&mut |field| cookie(field, name))
}

/// The value of cookie `name` in one `Cookie` field (`a=1; b=2`, RFC 6265 §4.2.1), with
/// surrounding double quotes removed.
pub fn cookie<'a>(field: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    field.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (n, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        if n.trim_ascii() != name {
            return None;
        }
        let v = v[1..].trim_ascii();
        Some(match v {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        })
    })
}

/// The value of the first parameter `name` of a query (`a=1&b=2`), as sent (not decoded).
/// A parameter without `=` has the empty value.
pub fn query_parameter<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query
        .split(|&b| b == b'&')
        .find_map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) if &pair[..i] == name => Some(&pair[i + 1..]),
            None if pair == name => Some(&pair[pair.len()..]),
            _ => None,
        })
}

/// HTTP/1 fields, as httparse read them.
impl Fields for [httparse::Header<'_>] {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }

    fn find_cookie<'a>(
        &'a self,
        each: &mut dyn FnMut(&'a [u8]) -> Option<&'a [u8]>,
    ) -> Option<&'a [u8]> {
        self.iter()
            .filter(|f| f.name.eq_ignore_ascii_case("cookie"))
            .find_map(|f| each(f.value))
    }
}

/// HTTP/2 fields, as hyper read them (names are lower-case; a client may split its cookies
/// over several `cookie` fields, RFC 9113 §8.2.3).
impl Fields for http::HeaderMap {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }

    fn find_cookie<'a>(
        &'a self,
        each: &mut dyn FnMut(&'a [u8]) -> Option<&'a [u8]>,
    ) -> Option<&'a [u8]> {
        self.get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| each(v.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name_and_unquoted() {
        let field = b"a=1; lb_sticky=\"AbC\"; lb_sticky_x=2;lb=3";
        assert_eq!(cookie(field, b"lb_sticky"), Some(&b"AbC"[..]));
        assert_eq!(cookie(field, b"lb"), Some(&b"3"[..]));
        assert_eq!(cookie(field, b"a"), Some(&b"1"[..]));
        assert_eq!(cookie(field, b"lb_stick"), None);
        assert_eq!(cookie(b"novalue; x", b"x"), None, "a pair needs '='");
        assert_eq!(cookie(b"x=", b"x"), Some(&b""[..]));
        assert_eq!(cookie(b"", b"x"), None);
    }

    #[test]
    fn query_parameters_are_matched_whole_and_kept_raw() {
        let q = b"user=42&tenant=a%20b&flag&user=7";
        assert_eq!(query_parameter(q, b"user"), Some(&b"42"[..]), "the first");
        assert_eq!(query_parameter(q, b"tenant"), Some(&b"a%20b"[..]));
        assert_eq!(query_parameter(q, b"flag"), Some(&b""[..]));
        assert_eq!(query_parameter(q, b"use"), None);
        assert_eq!(query_parameter(b"", b"user"), None);
    }

    #[test]
    fn target_splits_at_the_first_question_mark() {
        assert_eq!(
            split_target(b"/a/b?x=1?y"),
            (&b"/a/b"[..], Some(&b"x=1?y"[..]))
        );
        assert_eq!(split_target(b"/a"), (&b"/a"[..], None));
        assert_eq!(split_target(b""), (&b"/"[..], None));
        assert_eq!(split_target(b"?x=1"), (&b"/"[..], Some(&b"x=1"[..])));
        assert_eq!(split_target(b"*"), (&b"/"[..], None));
    }

    fn h1<'h>(fields: &'h [(&'h str, &'h [u8])]) -> Vec<httparse::Header<'h>> {
        fields
            .iter()
            .map(|(name, value)| httparse::Header { name, value })
            .collect()
    }

    #[test]
    fn each_key_kind_hashes_what_it_names_and_nothing_else() {
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let fields = h1(&[
            ("X-Tenant", b"acme"),
            ("Cookie", b"a=1"),
            ("cookie", b"session=s1; b=2"),
        ]);
        let fields = &fields[..];
        let target = b"/cart/items?user=42&x=1";
        let key = |k: HashKey| hash(&k, client, target, fields);
        assert_eq!(
            key(HashKey::Header("x-tenant".into())),
            Some(key_hash(b"acme"))
        );
        assert_eq!(key(HashKey::Header("x-other".into())), None);
        assert_eq!(
            key(HashKey::Cookie("session".into())),
            Some(key_hash(b"s1"))
        );
        assert_eq!(key(HashKey::Cookie("nope".into())), None);
        assert_eq!(key(HashKey::Path), Some(key_hash(b"/cart/items")));
        assert_eq!(key(HashKey::Query("user".into())), Some(key_hash(b"42")));
        assert_eq!(key(HashKey::Query("nope".into())), None);
        assert_eq!(key(HashKey::ClientIp), Some(key_hash(&[192, 0, 2, 7])));
    }

    #[test]
    fn both_transports_read_the_same_keys() {
        let mut map = http::HeaderMap::new();
        map.insert("x-tenant", "acme".parse().unwrap());
        map.append("cookie", "a=1".parse().unwrap());
        map.append("cookie", "session=s1".parse().unwrap());
        let fields = h1(&[("X-Tenant", b"acme"), ("Cookie", b"a=1; session=s1")]);
        let client: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        for key in [
            HashKey::Header("x-tenant".into()),
            HashKey::Cookie("session".into()),
            HashKey::ClientIp,
        ] {
            let h2 = hash(&key, client, b"/", &map);
            assert!(h2.is_some(), "{key:?}");
            assert_eq!(h2, hash(&key, client, b"/", &fields[..]), "{key:?}");
        }
        assert_eq!(
            client_hash(client),
            client_hash("192.0.2.7".parse().unwrap()),
            "an IPv4-mapped address is its IPv4 one"
        );
    }
}
