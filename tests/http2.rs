//! HTTP/2 clients forwarded to HTTP/1.1 workers: the regressions a review found in the
//! translation, each checked at the worker (what it received, whether its connection closed)
//! and at the client (what its stream said), through the real proxy.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use load_balancer::config::{AlgorithmKind, Config, PoolConfig, Protocol};
use tokio::io::AsyncWriteExt;

fn with_pool(db: &TestDb, pool: PoolConfig) -> Config {
    let mut c = config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    c.pools.insert("default".into(), pool);
    c
}

/// A proxy whose one worker is `worker`, with `pool`'s settings.
async fn proxy_to(db: &TestDb, pool: PoolConfig, worker: SocketAddr) -> load_balancer::Running {
    let lb = load_balancer::start(&with_pool(db, pool))
        .await
        .expect("proxy starts");
    change(
        db,
        &lb,
        &format!("INSERT INTO workers(worker_address) VALUES ('{worker}')"),
    )
    .await;
    lb
}

async fn ejected(lb: &load_balancer::Running, worker: SocketAddr) -> bool {
    worker_status(&status(lb).await, &worker.to_string())["ejected"]
        .as_bool()
        .unwrap()
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

/// A POST with no Content-Length (so its body goes to the worker chunked).
fn chunked_post() -> hyper::Request<()> {
    hyper::Request::builder()
        .method("POST")
        .uri("http://a/upload")
        .body(())
        .unwrap()
}

/// 129 trailer fields: one more than the proxy takes in any header section.
fn trailers_129() -> HeaderMap {
    let mut t = HeaderMap::new();
    for i in 0..129 {
        t.insert(
            HeaderName::from_bytes(format!("x-t{i}").as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
    }
    assert_eq!(t.len(), 129);
    t
}

// ---- Request trailers over the field limit ----

/// The worker waits for the end of the chunked body, so nothing has been answered when the
/// trailers come: the client is told 431, the worker's half-sent request is cut off with
/// its connection, and the refusal is not held against the worker.
#[tokio::test]
async fn http2_trailers_with_129_fields_get_431_close_the_worker_connection_and_eject_no_one() {
    let db = TestDb::new().await;
    let worker = Scripted::recorder().await;
    let lb = proxy_to(
        &db,
        eject_on_first_failure(PoolConfig::default()),
        worker.addr,
    )
    .await;

    let (mut client, _conn) = h2_connect(lb.listeners[0]).await;
    let (response, mut stream) = client.send_request(chunked_post(), false).unwrap();
    stream
        .send_data(Bytes::from_static(b"hello"), false)
        .unwrap();
    stream.send_trailers(trailers_129()).unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .unwrap_or_else(|e| panic!("the stream was reset instead of answered: {e}"));
    assert_eq!(response.status(), 431);

    eventually_within(
        "the worker's connection (with half a request on it) is closed",
        Duration::from_secs(2),
        async || worker.open() == 0,
    )
    .await;
    assert_eq!(worker.accepted(), 1);
    assert_eq!(worker.count(), 0, "no complete request reached the worker");
    assert!(
        !ejected(&lb, worker.addr).await,
        "the client's trailers ejected the worker"
    );

    // The same worker still serves the next request.
    let (response, _) = client
        .send_request(
            hyper::Request::builder()
                .uri("http://a/next")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    let body = h2_body(&mut response.into_body()).await;
    assert!(
        matches!(&body, H2End::Complete(b) if b == b"ok"),
        "{body:?}"
    );
    assert!(
        worker.requests()[0].starts_with("GET /next HTTP/1.1\r\n"),
        "{:?}",
        worker.requests()
    );
    assert!(!ejected(&lb, worker.addr).await);
    lb.stop(Duration::from_secs(5)).await;
}

/// The worker answers (head and a chunk) before the body ends; then the trailers break the
/// limit. The client already has its 200: its body must end in a stream error, never in a
/// clean END_STREAM after the one chunk.
#[tokio::test]
async fn http2_trailers_with_129_fields_after_the_answer_began_break_the_response_off() {
    let db = TestDb::new().await;
    let worker = Scripted::start(answer_one_chunk_then_hold).await;
    let lb = proxy_to(
        &db,
        eject_on_first_failure(PoolConfig::default()),
        worker.addr,
    )
    .await;

    let (mut client, _conn) = h2_connect(lb.listeners[0]).await;
    let (response, mut stream) = client.send_request(chunked_post(), false).unwrap();
    stream
        .send_data(Bytes::from_static(b"hello"), false)
        .unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("the worker's head in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(WAIT, body.data())
        .await
        .expect("the first chunk in time")
        .expect("a first chunk")
        .expect("the first chunk");
    assert_eq!(&first[..], b"first");
    let _ = body.flow_control().release_capacity(first.len());

    stream.send_trailers(trailers_129()).unwrap();
    match h2_body(&mut body).await {
        H2End::Broken(rest, _) => assert!(rest.is_empty(), "{rest:?}"),
        H2End::Complete(rest) => panic!(
            "the response ended cleanly (END_STREAM) after {:?}: a short body",
            String::from_utf8_lossy(&rest)
        ),
    }
    eventually_within(
        "the worker's connection is closed",
        Duration::from_secs(2),
        async || worker.open() == 0,
    )
    .await;
    assert!(!ejected(&lb, worker.addr).await);

    // A following request still reaches that worker.
    let (response, _) = client
        .send_request(
            hyper::Request::builder()
                .uri("http://a/next")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("the worker's head in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    assert_eq!(worker.accepted(), 2);
    assert!(
        worker.requests()[1].starts_with("GET /next HTTP/1.1\r\n"),
        "{:?}",
        worker.requests()
    );
    lb.stop(Duration::from_secs(5)).await;
}

// ---- Raw frames: an empty DATA frame ends the stream ----

/// What the server first said about stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    /// HEADERS starting with an indexed `:status` of the static table (RFC 7541 App. A).
    Status(u16),
    /// HEADERS starting otherwise: its block.
    Headers(Vec<u8>),
    Reset(u32),
    GoAway(u32),
    /// The connection ended (EOF or reset) before any answer on stream 1.
    Closed,
}

/// Sends `frames` on stream 1 of a new prior-knowledge connection (after the preface and an
/// empty SETTINGS) and returns the server's first word about it.
async fn raw_h2(proxy: SocketAddr, frames: &[Vec<u8>]) -> Answer {
    let mut out = h2raw::PREFACE.to_vec();
    out.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
    for f in frames {
        out.extend_from_slice(f);
    }
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(&out).await.unwrap();
    let read = async {
        loop {
            let Ok(f) = h2raw::read(&mut s).await else {
                return Answer::Closed;
            };
            let code = |p: &[u8]| u32::from_be_bytes(p[..4].try_into().unwrap());
            match (f.kind, f.stream) {
                (h2raw::HEADERS, 1) => {
                    return match f.payload.first() {
                        Some(0x88) => Answer::Status(200),
                        Some(0x8c) => Answer::Status(400),
                        Some(0x8e) => Answer::Status(500),
                        _ => Answer::Headers(f.payload),
                    };
                }
                (h2raw::RST_STREAM, 1) => return Answer::Reset(code(&f.payload)),
                (h2raw::GOAWAY, _) => return Answer::GoAway(code(&f.payload[4..])),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer on stream 1 in time")
}

fn request_block(method: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = h2raw::literal(":method", method);
    block.extend(h2raw::literal(":scheme", "http"));
    block.extend(h2raw::literal(":authority", "a"));
    block.extend(h2raw::literal(":path", "/"));
    for (n, v) in extra {
        block.extend(h2raw::literal(n, v));
    }
    block
}

#[tokio::test]
async fn http2_get_ended_by_an_empty_data_frame_reaches_the_worker_without_framing_fields_and_a_post_with_content_length_0()
 {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, PoolConfig::default(), worker.addr).await;

    for (method, expected) in [("GET", vec![]), ("POST", vec!["content-length: 0"])] {
        let frames = [
            // HEADERS with END_HEADERS but not END_STREAM, then an empty DATA that ends it.
            h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS,
                1,
                &request_block(method, &[]),
            ),
            h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, &[]),
        ];
        let answer = raw_h2(lb.listeners[0], &frames).await;
        assert_eq!(answer, Answer::Status(200), "{method}");
        let seen = worker.last();
        assert!(
            seen.starts_with(&format!("{method} / HTTP/1.1\r\n")),
            "{seen:?}"
        );
        assert!(
            fields(&seen, "transfer-encoding").is_empty(),
            "{method} went to the worker chunked: {seen:?}"
        );
        let lengths: Vec<String> = fields(&seen, "content-length")
            .iter()
            .map(|l| l.to_lowercase())
            .collect();
        assert_eq!(lengths, expected, "{method}: the worker got {seen:?}");
        assert!(seen.ends_with("\r\n\r\n"), "no body: {seen:?}");
    }
    assert_eq!(worker.count(), 2);
    lb.stop(Duration::from_secs(5)).await;
}

// ---- Raw frames: two equal Content-Length fields ----

/// The HTTP/2 server lets equal duplicates through (RFC 9110 §8.6 allows them); the worker
/// must get the length once, since some HTTP/1 servers refuse two Content-Length lines.
/// Should the server refuse the request instead, nothing may reach the worker.
#[tokio::test]
async fn http2_request_with_two_equal_content_lengths_reaches_the_worker_with_one() {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, PoolConfig::default(), worker.addr).await;

    let block = request_block("POST", &[("content-length", "5"), ("content-length", "5")]);
    let frames = [
        h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &block),
        h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, b"hello"),
    ];
    match raw_h2(lb.listeners[0], &frames).await {
        Answer::Status(200) => {
            let seen = worker.last();
            let lengths: Vec<String> = fields(&seen, "content-length")
                .iter()
                .map(|l| l.to_lowercase())
                .collect();
            assert_eq!(lengths, vec!["content-length: 5"], "{seen:?}");
            assert!(fields(&seen, "transfer-encoding").is_empty(), "{seen:?}");
            assert!(seen.ends_with("\r\n\r\nhello"), "{seen:?}");
        }
        refused @ (Answer::Reset(_) | Answer::Status(400)) => {
            assert_eq!(
                worker.count(),
                0,
                "refused ({refused:?}) but reached the worker: {:?}",
                worker.requests()
            );
            eprintln!(
                "the HTTP/2 server refused equal duplicate Content-Length fields: {refused:?}"
            );
        }
        other => panic!("unexpected answer: {other:?}"),
    }
    lb.stop(Duration::from_secs(5)).await;
}

// ---- The connection's lifecycle, frame by frame ----

/// A new prior-knowledge connection with `frames` sent after the preface and an empty
/// SETTINGS.
async fn h2_open(proxy: SocketAddr, frames: &[Vec<u8>]) -> tokio::net::TcpStream {
    let mut out = h2raw::PREFACE.to_vec();
    out.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
    for f in frames {
        out.extend_from_slice(f);
    }
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(&out).await.unwrap();
    s
}

/// A connection error (HEADERS on an even stream, RFC 9113 §5.1.1) is answered with
/// GOAWAY(PROTOCOL_ERROR), and the connection then ends with a FIN, not a reset: bytes the
/// client sent after the bad frame are read and dropped, so the kernel has no unread data
/// to answer with RST, which could destroy the GOAWAY before the client reads it.
#[tokio::test]
async fn http2_connection_error_gets_goaway_and_then_a_clean_close() {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, PoolConfig::default(), worker.addr).await;

    let bad = h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        2,
        &request_block("GET", &[]),
    );
    // 64 KiB the proxy will not have read when it decides to close.
    let after = h2raw::frame(h2raw::DATA, 0, 3, &[0u8; 16_000]).repeat(4);
    let mut s = h2_open(lb.listeners[0], &[bad, after]).await;
    let ended = async {
        let mut goaway = None;
        loop {
            match h2raw::read(&mut s).await {
                Ok(f) if f.kind == h2raw::GOAWAY => {
                    goaway = Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()));
                }
                Ok(_) => {}
                Err(e) => return (goaway, e.kind()),
            }
        }
    };
    let (goaway, end) = tokio::time::timeout(WAIT, ended)
        .await
        .expect("the connection ends in time");
    assert_eq!(goaway, Some(1), "GOAWAY(PROTOCOL_ERROR)");
    assert_eq!(end, std::io::ErrorKind::UnexpectedEof, "a FIN, not a reset");
    assert_eq!(worker.count(), 0);
    lb.stop(Duration::from_secs(5)).await;
}

/// A worker that answers a POST at once, before its body, then reads until the proxy closes.
async fn answer_before_the_body(mut s: tokio::net::TcpStream, log: Log) {
    if read_request_head(&mut s, &log).await.is_none() {
        return;
    }
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    if s.write_all(answer).await.is_ok() {
        until_eof(&mut s).await;
    }
}

/// The worker answers a POST whose short body (content-length 3) the client has not sent
/// yet. The stream is not reset once the response is whole (RST_STREAM(NO_ERROR) would be
/// allowed, RFC 9113 §8.1, but some clients, curl 7.88 among them, take it for a failed
/// request): the body the client then sends is taken, and the connection goes on.
#[tokio::test]
async fn http2_post_answered_before_its_short_body_is_not_reset() {
    let db = TestDb::new().await;
    let worker = Scripted::start(answer_before_the_body).await;
    let lb = proxy_to(&db, PoolConfig::default(), worker.addr).await;

    let headers = h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS,
        1,
        &request_block("POST", &[("content-length", "3")]),
    );
    let mut s = h2_open(lb.listeners[0], &[headers]).await;
    let mut seen = Vec::new();
    // The response, whole: its last frame carries END_STREAM.
    let answered = async {
        loop {
            let f = h2raw::read(&mut s)
                .await
                .expect("the connection stays open");
            let end = f.stream == 1 && f.flags & h2raw::END_STREAM != 0;
            seen.push((f.kind, f.stream));
            if end {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, answered)
        .await
        .expect("the response in time");
    // The body after the response, then a PING whose ACK says everything before it was read.
    let mut late = h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, b"abc");
    late.extend(h2raw::frame(PING, 0, 0, b"12345678"));
    s.write_all(&late).await.unwrap();
    let acked = async {
        loop {
            let f = h2raw::read(&mut s)
                .await
                .expect("the connection stays open");
            seen.push((f.kind, f.stream));
            if f.kind == PING && f.flags & 0x1 != 0 {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, acked)
        .await
        .expect("the PING's ACK in time");
    assert!(
        !seen
            .iter()
            .any(|&(kind, _)| kind == h2raw::RST_STREAM || kind == h2raw::GOAWAY),
        "no reset, no GOAWAY: {seen:?}"
    );
    assert_eq!(worker.count(), 1);
    lb.stop(Duration::from_secs(5)).await;
}

/// PING's frame type (RFC 9113 §6.7).
const PING: u8 = 0x6;

/// A request whose fields add up to more than `max_header_size` (64 KiB by default, as
/// SETTINGS_MAX_HEADER_LIST_SIZE counts them), in HEADERS and CONTINUATION frames, with a
/// body to come: 431 at once, its body refused with RST_STREAM(NO_ERROR), nothing sent to
/// the worker, and the connection still serves the next request.
#[tokio::test]
async fn http2_request_over_max_header_size_gets_431_and_its_body_is_refused() {
    let db = TestDb::new().await;
    let worker = Recorder::start().await;
    let lb = proxy_to(&db, PoolConfig::default(), worker.addr).await;

    let value = "v".repeat(100);
    let extra: Vec<(String, &str)> = (0..600).map(|i| (format!("x-f{i:03}"), &*value)).collect();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let block = request_block("POST", &extra);
    let mut frames = Vec::new();
    let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let kind = if i == 0 { h2raw::HEADERS } else { CONTINUATION };
        let flags = if last { h2raw::END_HEADERS } else { 0 };
        frames.extend(h2raw::frame(kind, flags, 1, piece));
    }
    let next = h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        3,
        &request_block("GET", &[]),
    );
    let mut s = h2_open(lb.listeners[0], &[frames]).await;
    let mut seen = Vec::new();
    let answered = async {
        loop {
            let f = h2raw::read(&mut s)
                .await
                .expect("the connection stays open");
            seen.push((f.kind, f.stream, f.payload.clone()));
            if f.kind == h2raw::RST_STREAM && f.stream == 1 {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, answered)
        .await
        .expect("the 431 and the reset in time");
    let on_1: Vec<&(u8, u32, Vec<u8>)> = seen.iter().filter(|(_, st, _)| *st == 1).collect();
    assert_eq!(on_1.len(), 2, "a head and a reset on stream 1: {seen:?}");
    // `:status: 431` as a literal of the static name `:status` (index 8), then
    // `content-length: 0`.
    assert_eq!(on_1[0].0, h2raw::HEADERS);
    assert!(on_1[0].2.starts_with(b"\x08\x03431"), "{:?}", on_1[0].2);
    assert_eq!(on_1[1].2, 0u32.to_be_bytes(), "RST_STREAM(NO_ERROR)");

    s.write_all(&next).await.unwrap();
    let served = async {
        loop {
            let f = h2raw::read(&mut s)
                .await
                .expect("the connection stays open");
            if f.kind == h2raw::HEADERS && f.stream == 3 {
                return f.payload;
            }
        }
    };
    let head = tokio::time::timeout(WAIT, served)
        .await
        .expect("the next request answered in time");
    assert_eq!(head.first(), Some(&0x88), ":status 200");
    assert_eq!(
        worker.count(),
        1,
        "only the second request reached the worker"
    );
    lb.stop(Duration::from_secs(5)).await;
}

/// CONTINUATION's frame type (RFC 9113 §6.10).
const CONTINUATION: u8 = 0x9;
