//! Whatever HTTP/1 refuses, HTTP/2 refuses the same way, and what is forwarded reaches the
//! worker as the forwarding policy says: the holes outside testers found, each with the
//! exact bytes they sent. Backends record what they received, so "never reached a worker"
//! and "reached it as ..." are checked where it matters, at the worker.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use load_balancer::config::{AlgorithmKind, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy with one listener (`max_header_size` 8192) whose one worker is `worker`.
async fn proxy_to(db: &TestDb, worker: SocketAddr) -> load_balancer::Running {
    let mut cfg = config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    cfg.listeners[0].max_header_size = 8192;
    let lb = load_balancer::start(&cfg).await.expect("proxy starts");
    change(
        db,
        &lb,
        &format!("INSERT INTO workers(worker_address) VALUES ('{worker}')"),
    )
    .await;
    lb
}

/// What an HTTP/2 client got for one request.
#[derive(Debug)]
struct H2Reply {
    status: u16,
    body: String,
}

/// Sends `request` over a new HTTP/2 (prior knowledge) connection with the h2 crate, which
/// sends what it is given: `body` as DATA, then `trailers` if any. A reset stream or a
/// broken connection panics with the error.
async fn h2_send(
    proxy: SocketAddr,
    request: hyper::Request<()>,
    body: &[u8],
    trailers: Option<HeaderMap>,
) -> H2Reply {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("h2 connection ready");
    let ends_now = body.is_empty() && trailers.is_none();
    let (response, mut stream) = client
        .send_request(request, ends_now)
        .expect("the h2 crate sends the request");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), trailers.is_none())
            .expect("send DATA");
    }
    if let Some(t) = trailers {
        stream.send_trailers(t).expect("send trailers");
    }
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an HTTP/2 response in time")
        .unwrap_or_else(|e| panic!("the proxy reset the stream instead of answering: {e}"));
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.data())
        .await
        .expect("the HTTP/2 body in time")
    {
        let chunk = chunk.expect("body data");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    H2Reply {
        status,
        body: String::from_utf8_lossy(&text).into_owned(),
    }
}

fn h2_get(uri: &str) -> hyper::Request<()> {
    hyper::Request::builder().uri(uri).body(()).unwrap()
}

/// Lines of a recorded request whose field name is `name` (case-insensitive), as sent.
fn fields<'a>(request: &'a str, name: &str) -> Vec<&'a str> {
    request
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .collect()
}

// ---- 1. h2c upgrade smuggling (HTTP/1) ----

#[tokio::test]
async fn h2c_upgrade_never_reaches_a_worker_that_would_accept_it_but_websocket_does() {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, worker.addr).await;

    let reply = raw_once(
        lb.listeners[0],
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    )
    .await;
    let seen = worker.last();
    let lower = seen.to_lowercase();
    assert!(
        !lower.contains("upgrade") && !lower.contains("http2-settings"),
        "the worker was offered the h2c upgrade: {seen:?}"
    );
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the client should get the plain 200: {reply:?}"
    );
    assert!(!reply.contains(" 101 "), "{reply:?}");

    // A WebSocket-style upgrade still goes through, with its Connection token.
    let reply = raw_once(
        lb.listeners[0],
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let seen = worker.last().to_lowercase();
    assert!(
        seen.contains("\r\nupgrade: websocket\r\n") && seen.contains("\r\nconnection: upgrade\r\n"),
        "the worker should see the WebSocket upgrade: {seen:?}"
    );
    assert!(reply.starts_with("HTTP/1.1 101"), "{reply:?}");
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 2. Cookies (HTTP/2) ----

#[tokio::test]
async fn http2_cookie_fields_reach_the_http1_worker_as_one_line() {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, worker.addr).await;
    let mut request = h2_get("http://a/");
    request
        .headers_mut()
        .append("cookie", HeaderValue::from_static("a=1"));
    request
        .headers_mut()
        .append("cookie", HeaderValue::from_static("b=2"));
    let reply = h2_send(lb.listeners[0], request, b"", None).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    let seen = worker.last();
    assert_eq!(
        fields(&seen, "cookie"),
        vec!["cookie: a=1; b=2"],
        "the worker got: {seen:?}"
    );
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 3. CONNECT ----

#[tokio::test]
async fn connect_gets_405_over_both_versions_and_never_reaches_a_worker() {
    let db = TestDb::new().await;
    let worker = Backend::start("a").await;
    let lb = proxy_to(&db, worker.addr).await;

    let connect = hyper::Request::builder()
        .method("CONNECT")
        .uri("a:80")
        .body(())
        .unwrap();
    let reply = h2_send(lb.listeners[0], connect, b"", None).await;
    assert_eq!(reply.status, 405, "HTTP/2 CONNECT: {reply:?}");

    let reply = raw(
        lb.listeners[0],
        b"CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 405"),
        "HTTP/1 CONNECT: {reply:?}"
    );
    assert_eq!(worker.hits(), 0, "a CONNECT reached the worker");
    assert_eq!(
        worker.accepted(),
        0,
        "the proxy dialled the worker for a CONNECT"
    );
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 4. Status codes ----

/// Sends `request` on a new connection and reads what comes back until the proxy closes,
/// keeping what arrived if the close is a reset (a proxy that closes with unread input
/// resets the connection).
async fn refused(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    // The proxy may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => panic!(
                "the proxy neither answered nor closed within {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&reply)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => reply.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn malformed_http1_requests_get_their_status_and_never_reach_a_worker() {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, worker.addr).await;
    let proxy = lb.listeners[0];

    let te = |value: &[u8]| {
        let mut r = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ".to_vec();
        r.extend_from_slice(value);
        r.extend_from_slice(b"\r\n\r\n0\r\n\r\n");
        r
    };
    let many_fields = {
        let mut r = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..200 {
            r.extend_from_slice(format!("X-F{i}: v\r\n").as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r
    };
    let long_target = format!("GET /{}", "a".repeat(9000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("TE no-break space before", te(b"\xa0chunked"), "400"),
        ("TE no-break space after", te(b"chunked\xa0"), "400"),
        ("TE xchunked", te(b"xchunked"), "400"),
        (
            "two TE fields",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        ("TE chunked,chunked", te(b"chunked,chunked"), "400"),
        (
            "fragment",
            b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            "400",
        ),
        ("Host a b", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), "400"),
        ("Host a, b", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n".to_vec(), "400"),
        ("Host u@a", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n".to_vec(), "400"),
        (
            "CONNECT",
            b"CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n".to_vec(),
            "405",
        ),
        (
            "request target over max_header_size, no CRLF yet",
            long_target.clone().into_bytes(),
            "414",
        ),
        (
            "request target over max_header_size, complete head",
            format!("{long_target} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes(),
            "414",
        ),
        (
            "header block over max_header_size",
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
                "y".repeat(9000)
            )
            .into_bytes(),
            "431",
        ),
        ("200 fields", many_fields, "431"),
    ];
    let mut wrong = Vec::new();
    for (what, request, status) in &cases {
        let reply = refused(proxy, request).await;
        if !reply.starts_with(&format!("HTTP/1.1 {status} ")) {
            wrong.push(format!(
                "{what}: expected {status}, got {:?}",
                reply
                    .lines()
                    .next()
                    .unwrap_or("(nothing, connection closed)")
            ));
        }
    }
    let reached: Vec<String> = worker
        .requests()
        .iter()
        .map(|r| r.chars().take(120).collect())
        .collect();
    assert!(
        wrong.is_empty() && reached.is_empty(),
        "wrong statuses: {wrong:#?}\nrequests that reached the worker (first 120 chars): {reached:#?}"
    );

    // `chunked,` is legal: an empty list element is ignored; the body goes through.
    let reply = raw_once(
        proxy,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "chunked,: {reply:?}");
    let seen = worker.last();
    assert!(
        seen.contains("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "the worker should get the chunked body: {seen:?}"
    );

    // HTTP/1.2 is served as HTTP/1.1 (RFC 9112 §2.6).
    let reply = raw_once(
        proxy,
        b"GET / HTTP/1.2\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "HTTP/1.2: {reply:?}");
    let seen = worker.last();
    assert!(
        seen.starts_with("GET / HTTP/1.1\r\n"),
        "the worker should get HTTP/1.1: {seen:?}"
    );
    assert_eq!(worker.count(), 2);
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn malformed_http2_requests_are_refused_like_http1_and_never_reach_a_worker() {
    let db = TestDb::new().await;
    let worker = Backend::start("a").await;
    let lb = proxy_to(&db, worker.addr).await;
    let proxy = lb.listeners[0];

    // A relative URI: the h2 crate sends :scheme and :path, no :authority.
    let with_host = |host: &'static str| {
        let mut r = h2_get("/");
        r.headers_mut()
            .insert("host", HeaderValue::from_static(host));
        r
    };
    let many_fields = {
        let mut r = h2_get("http://a/");
        for i in 0..200 {
            r.headers_mut().insert(
                HeaderName::from_bytes(format!("x-f{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        r
    };
    let cases: Vec<(&str, hyper::Request<()>, u16)> = vec![
        ("neither :authority nor host", h2_get("/"), 400),
        ("host a b", with_host("a b"), 400),
        ("host a, b", with_host("a, b"), 400),
        ("host u@a", with_host("u@a"), 400),
        (":authority u@a", h2_get("http://u@a/"), 400),
        ("200 fields", many_fields, 431),
    ];
    let mut wrong = Vec::new();
    for (what, request, status) in cases {
        let reply = h2_send(proxy, request, b"", None).await;
        if reply.status != status {
            wrong.push(format!("{what}: expected {status}, got {reply:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        worker.hits(),
        0,
        "a refused HTTP/2 request reached the worker"
    );

    // The same client with a good request is served: the refusals were about the requests.
    let reply = h2_send(proxy, h2_get("http://a/"), b"", None).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "a"));
    lb.stop(Duration::from_secs(5)).await;
}

// A fragment in :path: the h2 crate cannot send one (the `http` crate drops the fragment of
// any URI it parses), so this client writes the frames itself.

/// An HPACK literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2); names
/// and values under 127 bytes.
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What the server sent first about stream 1.
#[derive(Debug, PartialEq)]
enum RawH2 {
    /// A HEADERS frame whose first field is `:status` from the static table (RFC 7541
    /// Appendix A: 200, 204, 206, 304, 400, 404, 500), as hyper encodes those.
    Status(u16),
    /// A HEADERS frame starting otherwise: its header block.
    Headers(Vec<u8>),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
}

/// Sends one GET on stream 1 of a new prior-knowledge connection with `path` as `:path`,
/// byte for byte, and returns the server's first word on it.
async fn raw_h2_get(proxy: SocketAddr, path: &str) -> RawH2 {
    let mut block = hpack_literal(":method", "GET");
    block.extend(hpack_literal(":scheme", "http"));
    block.extend(hpack_literal(":authority", "a"));
    block.extend(hpack_literal(":path", path));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(h2_frame(0x1, 0x4 | 0x1, 1, &block)); // HEADERS, END_HEADERS | END_STREAM
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(&out).await.unwrap();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head)
                .await
                .expect("the connection closed before any answer on stream 1");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, stream) = (head[3], u32::from_be_bytes(head[5..9].try_into().unwrap()));
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            let code = |p: &[u8]| u32::from_be_bytes(p[..4].try_into().unwrap());
            match (kind, stream & 0x7fff_ffff) {
                (0x1, 1) => {
                    let status = match payload.first() {
                        Some(0x88) => 200,
                        Some(0x89) => 204,
                        Some(0x8a) => 206,
                        Some(0x8b) => 304,
                        Some(0x8c) => 400,
                        Some(0x8d) => 404,
                        Some(0x8e) => 500,
                        _ => return RawH2::Headers(payload),
                    };
                    return RawH2::Status(status);
                }
                (0x3, 1) => return RawH2::Reset(code(&payload)),
                (0x7, _) => return RawH2::GoAway(code(&payload[4..])),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer on stream 1 in time")
}

/// A deviation, pinned down: HTTP/1 answers `GET /a#frag` with 400, but over HTTP/2 the
/// `h2` crate parses `:path` with the `http` crate, which cuts the fragment before the
/// proxy sees the request (no raw `:path` is exposed). The request is served as `/a`, and
/// the fragment never reaches the worker. Should the library ever pass it on, the proxy's
/// own check (`checks::path`) refuses it like HTTP/1 does, and this test says so.
#[tokio::test]
async fn http2_path_fragment_never_reaches_a_worker() {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, worker.addr).await;
    // The hand-written client works: a plain path is served.
    assert_eq!(raw_h2_get(lb.listeners[0], "/a").await, RawH2::Status(200));
    assert_eq!(worker.count(), 1);

    let got = raw_h2_get(lb.listeners[0], "/a#frag").await;
    match got {
        RawH2::Status(400) => assert_eq!(worker.count(), 1, "refused, like HTTP/1"),
        RawH2::Status(200) => {
            let seen = worker.requests()[1].clone();
            assert!(seen.starts_with("GET /a HTTP/1.1\r\n"), "{seen:?}");
            assert!(!seen.contains('#') && !seen.contains("frag"), "{seen:?}");
        }
        other => panic!("unexpected answer to `:path /a#frag`: {other:?}"),
    }
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 5. Request trailers (HTTP/2 → HTTP/1.1) ----

#[tokio::test]
async fn http2_request_trailers_reach_the_http1_worker_in_the_chunked_trailer_section() {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, worker.addr).await;
    let request = hyper::Request::builder()
        .method("POST")
        .uri("http://a/upload")
        .body(())
        .unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let reply = h2_send(lb.listeners[0], request, b"hello", Some(trailers)).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

    let seen = worker.last();
    let head_end = seen.find("\r\n\r\n").expect("a head") + 4;
    let (head, body) = seen.split_at(head_end);
    assert!(
        fields(head, "transfer-encoding")
            .iter()
            .any(|f| f.to_lowercase().contains("chunked")),
        "the body should go chunked: {seen:?}"
    );
    // After the last chunk (`0\r\n`) comes the trailer section, up to an empty line.
    let trailer_section = body.rfind("\r\n0\r\n").map(|i| &body[i + 5..]);
    assert!(
        body.starts_with("5\r\nhello\r\n"),
        "the body should be the client's: {body:?}"
    );
    assert_eq!(
        trailer_section,
        Some("x-checksum: abc\r\n\r\n"),
        "the trailers should follow the last chunk; the worker got: {seen:?}"
    );
    lb.stop(Duration::from_secs(5)).await;
}
