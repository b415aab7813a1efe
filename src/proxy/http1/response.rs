//! A worker's HTTP/1 response head: parsed in place, checked (a worker can be broken too:
//! conflicting lengths, an upgrade nobody asked for) and written out for the client, with
//! hop-by-hop fields removed and the client connection's own `Connection` field.

use std::mem::MaybeUninit;

use hyper::StatusCode;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::head::{Framing, merge_length, put, put_length};
use super::request::{RequestHead, Span};
use crate::proxy::forward::checks::{MAX_FIELDS, trim_ows};
use crate::proxy::forward::headers::{ConnectionTokens, Field, classify};

/// Whether the last coding of a `Transfer-Encoding` value is chunked (responses: then the
/// body is chunked, otherwise it runs until the connection closes).
fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| trim_ows(last).eq_ignore_ascii_case(b"chunked"))
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

/// What one pass over a response head's fields says.
struct Scan<'b> {
    kinds: [Field; MAX_FIELDS],
    length: Option<u64>,
    transfer: Option<&'b [u8]>,
    connection: ConnectionTokens<'b>,
}

impl<'b> Scan<'b> {
    /// Nothing read yet. Filled in place by [`Scan::read`]: the struct is large (a kind
    /// per field), and returning it in a `Result` would copy it on every request.
    #[inline(always)]
    fn new() -> Scan<'b> {
        Scan {
            kinds: [Field::Other; MAX_FIELDS],
            length: None,
            transfer: None,
            connection: ConnectionTokens::default(),
        }
    }

    #[inline(always)]
    fn read(&mut self, fields: &'b [httparse::Header<'b>]) -> Result<(), Malformed> {
        for (f, kind) in fields.iter().zip(self.kinds.iter_mut()) {
            *kind = classify(f.name.as_bytes());
            match *kind {
                Field::ContentLength if !merge_length(&mut self.length, f.value) => {
                    return Err(Malformed::Length);
                }
                Field::TransferEncoding => self.transfer = Some(f.value),
                Field::Connection => self.connection.add(f.value),
                _ => {}
            }
        }
        Ok(())
    }

    /// The response's framing (RFC 9112 §6.3, in its order) and whether the worker's
    /// connection can carry another request after it.
    fn framing(&self, status: u16, version: u8, request: &RequestHead) -> (Framing, bool) {
        let switching = status == 101;
        let interim = (100..200).contains(&status) && !switching;
        let framing = if request.head || interim || switching || status == 204 || status == 304 {
            Framing::Empty
        } else if let Some(te) = self.transfer {
            if ends_chunked(te) {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else {
            match self.length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        // Both framings: the body was read as chunked, but the connection is not trusted
        // after.
        let reusable = self.connection.keeps_open(version == 0)
            && framing != Framing::Close
            && !(self.transfer.is_some() && self.length.is_some());
        (framing, reusable)
    }
}

/// A parsed response head: its length, minor version, status, reason and fields.
type Parsed<'b> = (usize, u8, u16, &'b str, &'b [httparse::Header<'b>]);

/// Parses a response head at the start of `buf`: `Ok(None)` while incomplete.
fn parse<'b>(
    buf: &'b [u8],
    fields: &'b mut [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS],
) -> Result<Option<Parsed<'b>>, Malformed> {
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, fields)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed::Head),
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(Malformed::Head);
    };
    Ok(Some((
        len,
        version,
        status,
        res.reason.unwrap_or(""),
        res.headers,
    )))
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
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let Some((len, version, status, reason, headers)) = parse(buf, &mut fields)? else {
        return Ok(None);
    };
    let mut scan = Scan::new();
    scan.read(headers)?;
    let switching = status == 101;
    if switching && !request.upgrade {
        return Err(Malformed::UnaskedUpgrade);
    }
    let interim = (100..200).contains(&status) && !switching;
    let (framing, reusable) = scan.framing(status, version, request);
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
    let (transfer, length, connection, kinds, res_headers) = (
        scan.transfer,
        scan.length,
        scan.connection,
        scan.kinds,
        headers,
    );

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
    for (f, kind) in res_headers.iter().zip(kinds) {
        match kind {
            Field::Other | Field::Cookie if !connection.lists(f.name.as_bytes()) => {
                put(out, f.name.as_bytes(), f.value)
            }
            Field::Upgrade if switching => put(out, f.name.as_bytes(), f.value),
            Field::TransferEncoding if !dechunk => put(out, f.name.as_bytes(), f.value),
            // Everything but Other: the request-only fields have no meaning here, and are
            // passed through; hop-by-hop ones and the framing fields are handled below.
            Field::Host
            | Field::Expect
            | Field::XForwardedFor
            | Field::XForwardedProto
            | Field::Forwarded => put(out, f.name.as_bytes(), f.value),
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

/// The same parse and checks for a response that goes to an HTTP/2 client: its status and
/// fields for hyper, hop-by-hop and framing fields left out (HTTP/2 frames the body
/// itself; a Content-Length stays, as the size the body will have). `head_request`: the
/// request was HEAD. The caller skips interim responses ([`ResponseHead::interim`]).
pub fn response_for_h2(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<(ResponseHead, StatusCode, HeaderMap)>, Malformed> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let Some((len, version, status, _reason, headers)) = parse(buf, &mut fields)? else {
        return Ok(None);
    };
    let mut scan = Scan::new();
    scan.read(headers)?;
    if status == 101 {
        // No upgrade is ever asked of a worker on behalf of an HTTP/2 client.
        return Err(Malformed::UnaskedUpgrade);
    }
    let request = RequestHead {
        len: 0,
        framing: Framing::Empty,
        http10: false,
        keep_alive: true,
        head: head_request,
        idempotent: false,
        upgrade: false,
        expect_continue: false,
        target: Span::EMPTY,
        host: None,
    };
    let (framing, reusable) = scan.framing(status, version, &request);
    let head = ResponseHead {
        len,
        status,
        framing,
        reusable,
        client_close: false,
        dechunk: framing == Framing::Chunked,
    };
    let code = StatusCode::from_u16(status).map_err(|_| Malformed::Head)?;
    let mut map = HeaderMap::with_capacity(headers.len());
    for (f, kind) in headers.iter().zip(scan.kinds) {
        let keep = match kind {
            Field::Other | Field::Cookie => !scan.connection.lists(f.name.as_bytes()),
            Field::ContentLength => scan.transfer.is_none(),
            Field::Host
            | Field::Expect
            | Field::XForwardedFor
            | Field::XForwardedProto
            | Field::Forwarded => true,
            _ => false,
        };
        if keep {
            let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Malformed::Head)?;
            let value = HeaderValue::from_bytes(f.value).map_err(|_| Malformed::Head)?;
            map.append(name, value);
        }
    }
    Ok(Some((head, code, map)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::forward::headers::Client;
    use crate::proxy::http1::request::rewrite_request;

    fn request(head: &str) -> Result<(RequestHead, String), crate::proxy::forward::Reject> {
        let mut out = Vec::new();
        let client = Client::new("10.1.2.3:5555".parse().unwrap());
        let parsed = rewrite_request(head.as_bytes(), &client, &mut out)?.expect("complete");
        Ok((parsed, String::from_utf8(out).unwrap()))
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

    #[test]
    fn responses_for_http2_clients_lose_connection_fields() {
        let (head, status, map) = response_for_h2(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (status.as_u16(), head.framing, head.reusable),
            (200, Framing::Length(2), true)
        );
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["content-length", "set-cookie"]);
        assert_eq!(map.get_all("set-cookie").iter().count(), 2);
        let (head, _, map) = response_for_h2(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(map.is_empty());
        assert_eq!(
            response_for_h2(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Err(Malformed::UnaskedUpgrade)
        );
    }
}
