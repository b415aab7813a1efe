//! `protocol = "h2"` pools with workers written on the `h2` crate, so the frames a worker
//! sends — REFUSED_STREAM, a graceful GOAWAY, a stream held open — are exactly the ones
//! a test needs. The gRPC behaviour with a real gRPC stack is in `grpc.rs`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use h2::server::SendResponse;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use load_balancer::config::{
    AccessLogTarget, AlgorithmKind, PoolConfig, Protocol, UpstreamProtocol,
};
use tokio::net::TcpListener;

/// How a scripted worker treats the streams of each connection.
#[derive(Clone, Copy)]
enum Script {
    /// Every stream: RST_STREAM(REFUSED_STREAM), before reading anything.
    Refuse,
    /// Serves the first `n` streams of each connection (echoing the body after its name),
    /// then a graceful GOAWAY; streams the GOAWAY leaves in are served too.
    GoAwayAfter(usize),
    /// Answers 200 with `content-type: application/grpc` and one DATA frame, then holds
    /// the stream open until the connection goes.
    Hold,
    /// Reads each stream's body and never answers.
    Silent,
    /// Answers 200 with the request's forwarding fields and `host` in its body, one
    /// `name: value` line each, in the order they came.
    Forwarding,
}

struct H2Worker {
    addr: SocketAddr,
    /// Streams received (refused ones included).
    streams: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
}

impl H2Worker {
    async fn start(name: &'static str, script: Script) -> H2Worker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (streams.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    let mut served = 0;
                    while let Some(Ok((request, respond))) = conn.accept().await {
                        s.fetch_add(1, Ordering::SeqCst);
                        match script {
                            Script::Refuse => {
                                let mut respond = respond;
                                respond.send_reset(h2::Reason::REFUSED_STREAM);
                            }
                            Script::GoAwayAfter(n) => {
                                tokio::spawn(echo(name, request, respond));
                                served += 1;
                                if served == n {
                                    conn.graceful_shutdown();
                                }
                            }
                            Script::Hold => {
                                tokio::spawn(hold(respond));
                            }
                            Script::Silent => {
                                tokio::spawn(silent(request, respond));
                            }
                            Script::Forwarding => {
                                let mut respond = respond;
                                let mut lines = String::new();
                                for (name, value) in request.headers() {
                                    if name.as_str().contains("forwarded") || name == "host" {
                                        let value = value.to_str().unwrap_or("?");
                                        lines.push_str(&format!("{name}: {value}\n"));
                                    }
                                }
                                if let Ok(mut send) =
                                    respond.send_response(Response::new(()), false)
                                {
                                    let _ = send.send_data(Bytes::from(lines), true);
                                }
                            }
                        }
                    }
                });
            }
        });
        H2Worker {
            addr,
            streams,
            connections,
        }
    }
}

async fn echo(name: &str, request: Request<h2::RecvStream>, mut respond: SendResponse<Bytes>) {
    let mut body = request.into_body();
    let mut got = name.as_bytes().to_vec();
    got.push(b':');
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
        got.extend_from_slice(&data);
    }
    let Ok(mut send) = respond.send_response(Response::new(()), false) else {
        return;
    };
    let _ = send.send_data(Bytes::from(got), true);
}

async fn hold(mut respond: SendResponse<Bytes>) {
    let response = Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(response, false) else {
        return;
    };
    let _ = send.send_data(Bytes::from_static(b"\0\0\0\0\x01x"), false);
    // Held until the proxy's side of the stream goes.
    let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
}

async fn silent(request: Request<h2::RecvStream>, mut respond: SendResponse<Bytes>) {
    let mut body = request.into_body();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
    }
    // Held, unanswered, until the proxy's side of the stream goes.
    let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
}

fn h2_config(db: &TestDb, drain_timeout: Duration) -> load_balancer::config::Config {
    let mut cfg = config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    cfg.pools.insert(
        "default".into(),
        PoolConfig {
            protocol: UpstreamProtocol::H2,
            drain_timeout,
            ..PoolConfig::default()
        },
    );
    cfg
}

/// An HTTP/2 (prior knowledge) client to the proxy.
fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn post(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    proxy: SocketAddr,
    body: &'static [u8],
) -> (u16, Bytes) {
    let request = Request::post(format!("http://{proxy}/echo"))
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let response = client.request(request).await.expect("an answer");
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn a_refused_stream_goes_to_another_worker_with_its_whole_body() {
    let db = TestDb::new().await;
    let refuser = H2Worker::start("refuser", Script::Refuse).await;
    let server = H2Worker::start("server", Script::GoAwayAfter(usize::MAX)).await;
    let logs = TempDir::new("h2-refused");
    let log = logs.0.join("access.log");
    let mut cfg = h2_config(&db, Duration::from_secs(30));
    cfg.listeners[0].access_log = AccessLogTarget::File(log.clone());
    let lb = load_balancer::start(&cfg).await.unwrap();
    add_addresses(&db, &lb, &[refuser.addr, server.addr]).await;
    let proxy = lb.listeners[0];
    let client = h2_client();
    let body: &'static [u8] = &[b'b'; 40_000];
    for _ in 0..10 {
        let (status, got) = post(&client, proxy, body).await;
        assert_eq!(status, 200);
        assert_eq!(
            got.len(),
            "server:".len() + body.len(),
            "the body went whole"
        );
        assert!(got.starts_with(b"server:"));
    }
    assert!(
        refuser.streams.load(Ordering::SeqCst) >= 4,
        "round robin sent about half the requests to the refuser first: {}",
        refuser.streams.load(Ordering::SeqCst)
    );
    // An HTTP/1.1 client's body (de-chunked from its connection) is replayed the same way.
    let raw = raw_once(
        proxy,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(
        raw.ends_with("\r\n\r\n12\r\nserver:hello world\r\n0\r\n\r\n"),
        "{raw}"
    );
    // Each request's body counted once, however many workers it went to.
    let lines = log_lines(&log, 11).await;
    for line in &lines[..10] {
        let line = json(line);
        assert_eq!(line["bytes_in"], body.len(), "{line}");
        assert_eq!(line["worker"], server.addr.to_string(), "{line}");
    }
    assert_eq!(json(&lines[10])["bytes_in"], "hello world".len());
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn streams_above_a_graceful_goaway_go_again_and_none_fails() {
    let db = TestDb::new().await;
    let a = H2Worker::start("a", Script::GoAwayAfter(3)).await;
    let b = H2Worker::start("b", Script::GoAwayAfter(3)).await;
    let lb = load_balancer::start(&h2_config(&db, Duration::from_secs(30)))
        .await
        .unwrap();
    add_addresses(&db, &lb, &[a.addr, b.addr]).await;
    let proxy = lb.listeners[0];
    let client = h2_client();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let client = client.clone();
        calls.spawn(async move {
            let mut failed = Vec::new();
            for _ in 0..25 {
                let (status, got) = post(&client, proxy, b"x").await;
                if status != 200 || !got.ends_with(b":x") {
                    failed.push((i, status, got));
                }
            }
            failed
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = calls.join_next().await {
        failed.extend(r.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} of 400 failed: {failed:?}",
        failed.len()
    );
    let connections = a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst);
    // A connection serves its first three streams and those already in flight when its
    // GOAWAY goes: far fewer than 400, far more than the two a pool would keep otherwise.
    assert!(
        connections >= 20,
        "connections were recycled by GOAWAY: {connections} connections"
    );
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_grpc_stream_cut_by_the_drain_deadline_ends_with_unavailable() {
    let db = TestDb::new().await;
    let holder = H2Worker::start("holder", Script::Hold).await;
    let logs = TempDir::new("h2-drain");
    let log = logs.0.join("access.log");
    let mut cfg = h2_config(&db, Duration::from_millis(300));
    cfg.listeners[0].access_log = AccessLogTarget::File(log.clone());
    let lb = load_balancer::start(&cfg).await.unwrap();
    add_addresses(&db, &lb, &[holder.addr]).await;
    let proxy = lb.listeners[0];
    // The h2 crate as the client: it shows the trailers exactly as they come.
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let request = Request::post(format!("http://{proxy}/test.Echo/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.data().await.unwrap().unwrap();
    assert_eq!(&first[..], b"\0\0\0\0\x01x");
    change(&db, &lb, "UPDATE workers SET weight = 0").await;
    let trailers = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(data) = body.data().await {
            data.expect("no reset: the call ends with a status");
        }
        body.trailers().await
    })
    .await
    .expect("the drain deadline ends the stream")
    .expect("trailers, not an error")
    .expect("trailers present");
    assert_eq!(trailers["grpc-status"], "14", "{trailers:?}");
    // The client saw a status, not a broken stream: the log says the drain cut it.
    let line = json(&log_lines(&log, 1).await[0]);
    assert_eq!(line["ended"], "cut", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    lb.stop(Duration::from_secs(1)).await;
}

/// A worker speaking raw frames. Its first connection takes two requests (streams 1 and
/// 3), then says GOAWAY with last-stream-id 1 and an error code (INTERNAL_ERROR), answers
/// stream 1 and waits for the proxy to close; every later connection answers each request
/// 200 once it has ended.
async fn goaway_with_an_error_above_stream_1(mut s: tokio::net::TcpStream, first: bool) {
    use tokio::io::AsyncWriteExt;
    if !h2raw::accept(&mut s, &[]).await {
        return;
    }
    let ok = |stream| {
        h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            stream,
            &[0x88], // :status 200, static index 8
        )
    };
    let mut opened = Vec::new();
    while let Ok(f) = h2raw::read(&mut s).await {
        let reply = match (f.kind, first) {
            (h2raw::SETTINGS, _) if f.flags & 0x1 == 0 => {
                h2raw::frame(h2raw::SETTINGS, 0x1, 0, &[])
            }
            (h2raw::HEADERS, true) => {
                opened.push(f.stream);
                if opened.len() < 2 {
                    continue;
                }
                assert_eq!(opened, [1, 3], "both requests on this one connection");
                let mut goaway = 1u32.to_be_bytes().to_vec();
                goaway.extend(2u32.to_be_bytes()); // INTERNAL_ERROR
                let mut out = h2raw::frame(h2raw::GOAWAY, 0, 0, &goaway);
                out.extend(ok(1));
                out
            }
            (h2raw::HEADERS | h2raw::DATA, false) if f.flags & h2raw::END_STREAM != 0 => {
                ok(f.stream)
            }
            _ => continue,
        };
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// RFC 9113 §6.8: the streams above a GOAWAY's last-stream-id were not processed, whatever
/// its error code. Two POSTs (not replayable once sent: only "not processed" lets one go
/// again) on one connection, the worker's GOAWAY(1, INTERNAL_ERROR) leaves the second
/// above it: it goes again, on a new connection, and both succeed.
#[tokio::test]
async fn a_stream_above_a_goaway_with_an_error_code_goes_again() {
    let db = TestDb::new().await;
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let worker = Scripted::start(move |s, _| {
        let first = first.swap(false, Ordering::SeqCst);
        goaway_with_an_error_above_stream_1(s, first)
    })
    .await;
    let lb = load_balancer::start(&h2_config(&db, Duration::from_secs(30)))
        .await
        .unwrap();
    add_addresses(&db, &lb, &[worker.addr]).await;
    let (client, _connection) = h2_connect(lb.listeners[0]).await;
    let mut calls = Vec::new();
    for _ in 0..2 {
        let mut client = client.clone().ready().await.unwrap();
        let request = Request::post("http://a/upload").body(()).unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"x"), true).unwrap();
        calls.push(response);
    }
    for (i, call) in calls.into_iter().enumerate() {
        let response = tokio::time::timeout(WAIT, call)
            .await
            .expect("an answer in time")
            .expect("a response, not a reset");
        assert_eq!(response.status(), 200, "request {i}");
    }
    assert_eq!(
        worker.accepted(),
        2,
        "the second request went on a new connection"
    );
    lb.stop(Duration::from_secs(1)).await;
}

/// A worker speaking raw frames whose SETTINGS allow no stream at all
/// (SETTINGS_MAX_CONCURRENT_STREAMS 0): every stream opened anyway, before its SETTINGS
/// arrived, is refused with RST_STREAM(REFUSED_STREAM), as RFC 9113 §5.1.2 has it.
async fn allows_no_stream(mut s: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) = 0.
    if !h2raw::accept(&mut s, &[0, 3, 0, 0, 0, 0]).await {
        return;
    }
    while let Ok(f) = h2raw::read(&mut s).await {
        let reply = match f.kind {
            h2raw::SETTINGS if f.flags & 0x1 == 0 => h2raw::frame(h2raw::SETTINGS, 0x1, 0, &[]),
            // REFUSED_STREAM (0x7).
            h2raw::HEADERS => h2raw::frame(h2raw::RST_STREAM, 0, f.stream, &7u32.to_be_bytes()),
            _ => continue,
        };
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// A worker that allows no stream fails its requests at once, as not sent (to another
/// worker when there is one), rather than holding them until the response timeout: with
/// it alone in the pool, the answer is a 502 long before the pool's minute runs out.
#[tokio::test]
async fn a_worker_that_allows_no_stream_fails_requests_at_once() {
    let db = TestDb::new().await;
    let worker = Scripted::start(|s, _| allows_no_stream(s)).await;
    let mut cfg = h2_config(&db, Duration::from_secs(30));
    let pool = cfg.pools.get_mut("default").unwrap();
    pool.response_timeout = Duration::from_secs(60);
    let lb = load_balancer::start(&cfg).await.unwrap();
    add_addresses(&db, &lb, &[worker.addr]).await;
    let client = h2_client();
    let uri: hyper::Uri = format!("http://{}/", lb.listeners[0]).parse().unwrap();
    for i in 0..3 {
        let response = tokio::time::timeout(WAIT, client.get(uri.clone()))
            .await
            .unwrap_or_else(|_| panic!("request {i}: no answer within {WAIT:?}"))
            .expect("a response");
        assert_eq!(response.status(), 502, "request {i}");
    }
    // Each request tried one connection (its stream went before the worker's SETTINGS
    // said 0): no dial storm.
    assert!(worker.accepted() <= 3, "{} connections", worker.accepted());
    lb.stop(Duration::from_secs(1)).await;
}

/// The pool's response timeout on an h2 worker, for streams sharing one worker connection
/// (its driver keeps one timer for them all): three GETs started 150 ms apart to a worker
/// that never answers each get a 504 about 300 ms after it was sent, not sooner and not
/// all at the first one's time.
#[tokio::test]
async fn each_stream_to_a_silent_h2_worker_times_out_on_its_own_clock() {
    let db = TestDb::new().await;
    let worker = H2Worker::start("silent", Script::Silent).await;
    let mut cfg = h2_config(&db, Duration::from_secs(30));
    cfg.pools.get_mut("default").unwrap().response_timeout = Duration::from_millis(300);
    let lb = load_balancer::start(&cfg).await.unwrap();
    add_addresses(&db, &lb, &[worker.addr]).await;
    let client = h2_client();
    let uri: hyper::Uri = format!("http://{}/", lb.listeners[0]).parse().unwrap();
    let mut gets = tokio::task::JoinSet::new();
    for i in 0..3u64 {
        let (client, uri) = (client.clone(), uri.clone());
        gets.spawn(async move {
            tokio::time::sleep(Duration::from_millis(150 * i)).await;
            let started = tokio::time::Instant::now();
            let response = tokio::time::timeout(WAIT, client.get(uri))
                .await
                .unwrap_or_else(|_| panic!("GET {i}: no answer within {WAIT:?}"))
                .expect("a response");
            (i, response.status().as_u16(), started.elapsed())
        });
    }
    while let Some(done) = gets.join_next().await {
        let (i, status, took) = done.unwrap();
        assert_eq!(status, 504, "GET {i}");
        // The proxy's clock is coarse (a few ms): not before the timeout, less that.
        assert!(
            took >= Duration::from_millis(280),
            "GET {i}: 504 after {took:?}"
        );
        assert!(took < Duration::from_secs(3), "GET {i}: 504 after {took:?}");
    }
    assert_eq!(worker.streams.load(Ordering::SeqCst), 3);
    assert_eq!(
        worker.connections.load(Ordering::SeqCst),
        1,
        "the three streams shared one worker connection"
    );
    lb.stop(Duration::from_secs(1)).await;
}

/// On an h2 worker, as on an HTTP/1.1 one, the response timeout runs from the request's
/// last byte: a body that keeps moving (a piece every 100 ms, 1 s in all) to a worker that
/// answers once it has it whole outlasts a 300 ms timeout and gets its 200; one that stops
/// moving gets 408 (the client's doing, not the worker's).
#[tokio::test]
async fn a_moving_upload_to_an_h2_worker_outlasts_the_response_timeout() {
    let db = TestDb::new().await;
    let worker = H2Worker::start("echo", Script::GoAwayAfter(usize::MAX)).await;
    let mut cfg = h2_config(&db, Duration::from_secs(30));
    cfg.pools.get_mut("default").unwrap().response_timeout = Duration::from_millis(300);
    let lb = load_balancer::start(&cfg).await.unwrap();
    add_addresses(&db, &lb, &[worker.addr]).await;
    let (mut h2, _conn) = h2_connect(lb.listeners[0]).await;

    let request = |length: usize| {
        hyper::Request::builder()
            .method("POST")
            .uri("http://a/echo")
            .header("content-length", length.to_string())
            .body(())
            .unwrap()
    };
    let (response, mut stream) = h2.send_request(request(500), false).unwrap();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for i in 0..10u8 {
        pace.tick().await;
        stream
            .send_data(Bytes::from(vec![b'a' + i; 50]), i == 9)
            .unwrap_or_else(|e| panic!("piece {i}: the proxy ended the stream: {e}"));
    }
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .unwrap_or_else(|e| panic!("reset instead of answered: {e}"));
    assert_eq!(response.status(), 200);
    let expected: Vec<u8> = b"echo:"
        .iter()
        .copied()
        .chain((0..10u8).flat_map(|i| vec![b'a' + i; 50]))
        .collect();
    match h2_body(&mut response.into_body()).await {
        H2End::Complete(body) => assert_eq!(body, expected),
        broken => panic!("{broken:?}"),
    }

    // 100 of 500 bytes, then nothing: 408 once the timeout passes without a byte.
    let mut h2 = h2.ready().await.unwrap();
    let (response, mut stream) = h2.send_request(request(500), false).unwrap();
    stream
        .send_data(Bytes::from(vec![b'x'; 100]), false)
        .unwrap();
    let started = tokio::time::Instant::now();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .expect("answered, not reset");
    assert_eq!(response.status(), 408);
    assert!(started.elapsed() >= Duration::from_millis(280));
    drop(stream);
    lb.stop(Duration::from_secs(1)).await;
}

/// A worker speaking raw frames that answers every GET with the fields below, in this
/// order; a request whose path holds `/bad` also gets `x-(bad)`, a name HTTP/2 allows and
/// HTTP/1.1 does not (`(` is no token character). The path's bytes appear in the block as
/// they are: the proxy sends literals without Huffman coding.
async fn answers_with_fields(mut s: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    if !h2raw::accept(&mut s, &[]).await {
        return;
    }
    while let Ok(f) = h2raw::read(&mut s).await {
        let reply = match f.kind {
            h2raw::SETTINGS if f.flags & 0x1 == 0 => h2raw::frame(h2raw::SETTINGS, 0x1, 0, &[]),
            h2raw::HEADERS => {
                let mut block = vec![0x88]; // :status 200, static index 8
                for (name, value) in [
                    ("x-multi", "first"),
                    ("server", "raw"),
                    ("x-multi", "second"),
                    ("content-length", "2"),
                ] {
                    block.extend(h2raw::literal(name, value));
                }
                if f.payload.windows(4).any(|w| w == b"/bad") {
                    block.extend(h2raw::literal("x-(bad)", "v"));
                }
                let mut out = h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, f.stream, &block);
                out.extend(h2raw::frame(
                    h2raw::DATA,
                    h2raw::END_STREAM,
                    f.stream,
                    b"ok",
                ));
                out
            }
            _ => continue,
        };
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// An h2 worker's response head reaches clients of both versions as the worker sent it
/// (repeated fields in their order), with the pool's sticky cookie added; a field only
/// HTTP/2 allows fails the stream as the worker's error, a 502 to either client, as it
/// could not be given to an HTTP/1.1 one.
#[tokio::test]
async fn an_h2_workers_fields_reach_both_client_versions_with_the_sticky_cookie() {
    let db = TestDb::new().await;
    let worker = Scripted::start(|s, _| answers_with_fields(s)).await;
    let mut cfg = h2_config(&db, Duration::from_secs(30));
    cfg.pools.get_mut("default").unwrap().sticky = Some(load_balancer::config::StickyConfig {
        cookie: "lb_sticky".into(),
        max_age: None,
        secure: false,
        http_only: true,
        same_site: None,
        secret: load_balancer::config::StickySecret {
            bytes: Arc::from(&b"a test secret of enough length"[..]),
            source: load_balancer::config::SecretSource::File,
        },
    });
    let lb = load_balancer::start(&cfg).await.unwrap();
    add_addresses(&db, &lb, &[worker.addr]).await;
    let proxy = lb.listeners[0];
    let (h2, h1) = (h2_client(), client());
    for (version, client) in [("HTTP/2", &h2), ("HTTP/1.1", &h1)] {
        let uri: hyper::Uri = format!("http://{proxy}/fine").parse().unwrap();
        let response = tokio::time::timeout(WAIT, client.get(uri))
            .await
            .unwrap_or_else(|_| panic!("{version}: no answer within {WAIT:?}"))
            .expect("a response");
        assert_eq!(response.status(), 200, "{version}");
        let fields = response.headers();
        let multi: Vec<_> = fields.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["first", "second"], "{version}: {fields:?}");
        assert_eq!(fields["server"], "raw", "{version}");
        assert_eq!(fields["content-length"], "2", "{version}");
        let cookie = fields["set-cookie"].to_str().unwrap();
        assert!(cookie.starts_with("lb_sticky="), "{version}: {cookie}");
        assert!(cookie.contains("; HttpOnly"), "{version}: {cookie}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok", "{version}");

        let uri: hyper::Uri = format!("http://{proxy}/bad").parse().unwrap();
        let response = tokio::time::timeout(WAIT, client.get(uri))
            .await
            .unwrap_or_else(|_| panic!("{version}: no answer within {WAIT:?}"))
            .expect("a response");
        assert_eq!(response.status(), 502, "{version}");
    }
    lb.stop(Duration::from_secs(1)).await;
}

/// The forwarding fields an h2 worker gets, from clients of either version: the client's
/// `X-Forwarded-For` first and this hop's last, in one field; the proxy's own
/// `X-Forwarded-Proto` in place of the client's; no `Host` (`:authority` says it).
#[tokio::test]
async fn an_h2_worker_gets_the_forwarding_fields_with_the_clients_first() {
    let db = TestDb::new().await;
    let worker = H2Worker::start("fields", Script::Forwarding).await;
    let lb = load_balancer::start(&h2_config(&db, Duration::from_secs(30)))
        .await
        .unwrap();
    add_addresses(&db, &lb, &[worker.addr]).await;
    let proxy = lb.listeners[0];
    let (h2, h1) = (h2_client(), client());
    for (version, client) in [("HTTP/2", &h2), ("HTTP/1.1", &h1)] {
        let request = Request::get(format!("http://{proxy}/"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "gopher")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(WAIT, client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{version}: no answer within {WAIT:?}"))
            .expect("a response");
        assert_eq!(response.status(), 200, "{version}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let lines: Vec<&str> = std::str::from_utf8(&body).unwrap().lines().collect();
        let of = |name: &str| -> Vec<&str> {
            let prefix = format!("{name}: ");
            lines
                .iter()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .collect()
        };
        assert_eq!(
            of("x-forwarded-for"),
            ["203.0.113.9, 127.0.0.1"],
            "{version}: {lines:?}"
        );
        assert_eq!(of("x-forwarded-proto"), ["http"], "{version}: {lines:?}");
        let forwarded = of("forwarded");
        assert_eq!(forwarded.len(), 1, "{version}: {lines:?}");
        assert!(
            forwarded[0].starts_with("for=127.0.0.1"),
            "{version}: {lines:?}"
        );
        // (An HTTP/1.1 client's request also says `host=`: its head is written as the
        // HTTP/1 path writes them, then sent as a stream.)
        assert!(forwarded[0].contains(";proto=http"), "{version}: {lines:?}");
        assert!(of("host").is_empty(), "{version}: {lines:?}");
    }
    lb.stop(Duration::from_secs(1)).await;
}
