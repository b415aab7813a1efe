//! Connection lifecycles: pooled backend connections closed by the pool's `idle_timeout`
//! with no request to notice, connections of a deleted or re-addressed worker closed as
//! soon as their exchange ends, silent TCP sessions cut by the listener's `idle_timeout`
//! (and talkative ones not), and what a client is told before the ring was ever loaded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use load_balancer::config::{AlgorithmKind, Config, PoolConfig, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn start(config: &Config) -> load_balancer::Running {
    load_balancer::start(config).await.expect("proxy starts")
}

fn with_pool(db: &TestDb, pool: PoolConfig) -> Config {
    let mut c = config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    c.pools.insert("default".into(), pool);
    c
}

async fn idle_connections(lb: &load_balancer::Running, address: &str) -> u64 {
    worker_status(&status(lb).await, address)["idle_connections"]
        .as_u64()
        .unwrap()
}

async fn in_flight(lb: &load_balancer::Running, address: &str) -> u64 {
    worker_status(&status(lb).await, address)["in_flight"]
        .as_u64()
        .unwrap()
}

// ---- 6. The pool's idle_timeout closes idle connections without any request ----

#[tokio::test]
async fn pooled_connection_is_closed_after_the_pool_idle_timeout_without_another_request() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let idle_timeout = Duration::from_secs(2);
    let lb = start(&with_pool(
        &db,
        PoolConfig {
            idle_timeout,
            ..PoolConfig::default()
        },
    ))
    .await;
    add(&db, &lb, &[&a]).await;
    let address = a.addr.to_string();

    assert_eq!(
        get(&client(), lb.listeners[0], "/").await,
        (200, "a".into())
    );
    let answered = Instant::now();
    assert_eq!(a.open(), 1, "one connection from the proxy to the worker");
    eventually_within(
        "the connection goes back to the pool",
        Duration::from_secs(1),
        async || idle_connections(&lb, &address).await == 1,
    )
    .await;

    let slack = Duration::from_secs(1);
    eventually_within(
        "the worker sees its pooled connection closed",
        idle_timeout + slack,
        async || a.open() == 0,
    )
    .await;
    let closed_after = answered.elapsed();
    assert!(
        closed_after >= idle_timeout - Duration::from_millis(200),
        "closed after {closed_after:?}: before the idle timeout ({idle_timeout:?}), so not \
         by it"
    );
    assert_eq!(idle_connections(&lb, &address).await, 0);
    assert_eq!(a.accepted(), 1);
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 7. A worker deleted or re-addressed mid-exchange: its connection closes after it ----

/// Parks a request on `a`'s `/hold` over a keep-alive client connection, runs `sql` (which
/// takes `a` out of the ring), releases the request, and checks the client gets its 200 and
/// `a`'s connection closes at once, not kept idle for a worker that is gone.
async fn connection_closes_when_the_exchange_ends(
    db: &TestDb,
    lb: &load_balancer::Running,
    a: &Backend,
    sql: &str,
    c: HttpClient,
) {
    let proxy = lb.listeners[0];
    let held = tokio::spawn({
        let c = c.clone();
        async move { get(&c, proxy, "/hold").await }
    });
    eventually("the request is parked on the worker", || {
        a.holding.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(a.open(), 1);
    change(db, lb, sql).await;
    a.release();
    let reply = tokio::time::timeout(WAIT, held)
        .await
        .expect("the parked request is answered")
        .unwrap();
    assert_eq!(reply, (200, "a".to_string()), "{sql}");
    // The client's connection stays open (keep-alive): only the worker's must close.
    let took = eventually_within(
        &format!("the worker's connection closes after its exchange ({sql})"),
        Duration::from_secs(2),
        async || a.open() == 0,
    )
    .await;
    assert!(took < Duration::from_secs(2), "{took:?}");
}

fn held_pool() -> PoolConfig {
    PoolConfig {
        drain_timeout: Duration::from_secs(30),
        ..PoolConfig::default()
    }
}

#[tokio::test]
async fn connection_of_a_deleted_worker_closes_as_soon_as_its_exchange_ends() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start(&with_pool(&db, held_pool())).await;
    add(&db, &lb, &[&a]).await;
    connection_closes_when_the_exchange_ends(&db, &lb, &a, "DELETE FROM workers", client()).await;
    assert_eq!(a.accepted(), 1);
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn connection_of_a_worker_deleted_under_an_http2_request_closes_when_it_ends() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start(&with_pool(&db, held_pool())).await;
    add(&db, &lb, &[&a]).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    connection_closes_when_the_exchange_ends(&db, &lb, &a, "DELETE FROM workers", h2).await;
    assert_eq!(a.accepted(), 1);
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn connection_of_a_readdressed_worker_closes_as_soon_as_its_exchange_ends() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start(&with_pool(&db, held_pool())).await;
    add(&db, &lb, &[&a]).await;
    let sql = format!(
        "UPDATE workers SET worker_address = '{}' WHERE worker_address = '{}'",
        b.addr, a.addr
    );
    connection_closes_when_the_exchange_ends(&db, &lb, &a, &sql, client()).await;
    // The row now names b: new requests go there, none to a.
    assert_eq!(
        get(&client(), lb.listeners[0], "/").await,
        (200, "b".into())
    );
    assert_eq!(a.accepted(), 1);
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 8. TCP listener idle_timeout ----

/// A TCP echo server on 127.0.0.1:0; returns its address and its open-connection gauge.
async fn tcp_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let gauge = open.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let open = Gauge::up(&gauge);
            tokio::spawn(async move {
                let _open = open;
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, open)
}

async fn tcp_proxy(db: &TestDb, idle_timeout: Duration) -> (load_balancer::Running, String) {
    let (echo, _) = tcp_echo().await;
    let mut cfg = config(db, Protocol::Tcp, AlgorithmKind::RoundRobin);
    cfg.listeners[0].idle_timeout = idle_timeout;
    let lb = start(&cfg).await;
    change(
        db,
        &lb,
        &format!("INSERT INTO workers(worker_address) VALUES ('{echo}')"),
    )
    .await;
    (lb, echo.to_string())
}

async fn echo_round(s: &mut tokio::net::TcpStream, message: &[u8]) {
    s.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("the echo comes back through the proxy")
        .expect("the session is open");
    assert_eq!(back, message);
}

#[tokio::test]
async fn silent_tcp_session_is_closed_after_the_listener_idle_timeout() {
    let db = TestDb::new().await;
    let idle_timeout = Duration::from_secs(1);
    let (lb, echo) = tcp_proxy(&db, idle_timeout).await;
    let mut s = tokio::net::TcpStream::connect(lb.listeners[0])
        .await
        .unwrap();
    echo_round(&mut s, b"hello").await;
    let quiet_since = Instant::now();
    assert_eq!(
        in_flight(&lb, &echo).await,
        1,
        "the session counts as in flight"
    );

    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        idle_timeout + Duration::from_secs(1),
        s.read_to_end(&mut rest),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "a session silent for {:?} is still open (idle_timeout {idle_timeout:?})",
            quiet_since.elapsed()
        )
    });
    let closed_after = quiet_since.elapsed();
    assert!(
        read.is_ok() && rest.is_empty(),
        "expected a clean EOF: {read:?}, {rest:?}"
    );
    assert!(
        closed_after >= idle_timeout - Duration::from_millis(200),
        "closed after {closed_after:?}, before the idle timeout"
    );
    eventually_within(
        "in_flight of the worker returns to 0",
        Duration::from_secs(2),
        async || in_flight(&lb, &echo).await == 0,
    )
    .await;
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn tcp_session_that_keeps_talking_is_not_cut_by_the_idle_timeout() {
    let db = TestDb::new().await;
    let idle_timeout = Duration::from_secs(1);
    let (lb, echo) = tcp_proxy(&db, idle_timeout).await;
    let mut s = tokio::net::TcpStream::connect(lb.listeners[0])
        .await
        .unwrap();
    // A byte every 300 ms for 2.5 s: well past the idle timeout, never idle that long.
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(300));
    while started.elapsed() < Duration::from_millis(2500) {
        pace.tick().await;
        echo_round(&mut s, b"x").await;
    }
    echo_round(&mut s, b"still here").await;
    assert_eq!(in_flight(&lb, &echo).await, 1);
    drop(s);
    eventually_within(
        "in_flight returns to 0 once the client leaves",
        Duration::from_secs(2),
        async || in_flight(&lb, &echo).await == 0,
    )
    .await;
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 9. Hole 13: the 503 before the ring was ever loaded ----

#[tokio::test]
async fn without_database_or_cache_the_503_says_the_ring_is_not_loaded_and_since_when() {
    let db = TestDb::new().await;
    let relay = Relay::to_postgres().await;
    relay.set(Mode::Cut);
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    cfg.database.url = relay.url(&db);
    cfg.database.cache_path = None;
    let lb = start(&cfg).await;
    let (status, body) = get(&client(), lb.listeners[0], "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the ring has not been loaded yet")
            && body.contains("database unreachable since"),
        "the 503 should say why: {body:?}"
    );
    assert!(!body.contains("weight > 0"), "{body:?}");
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 10. Stalled uploads are the client's failure; slow ones are not failures at all ----

/// A pool whose response timeout is 300 ms and whose workers are ejected by their first
/// failure.
fn short_response_timeout() -> PoolConfig {
    eject_on_first_failure(PoolConfig {
        response_timeout: Duration::from_millis(300),
        retries: 0,
        ..PoolConfig::default()
    })
}

async fn ejected(lb: &load_balancer::Running, address: &str) -> bool {
    worker_status(&status(lb).await, address)["ejected"]
        .as_bool()
        .unwrap()
}

/// A client that sends 10 bytes of a 1000-byte body and then nothing gets 408 once the
/// response timeout has passed since its last byte, and the worker (which never answers
/// `/hold`) is not blamed. A worker that gets a whole request and does not answer in time is
/// (504, ejected): the pool's ejection is live, and the 408s were judged, not ignored.
#[tokio::test]
async fn stalled_upload_gets_408_over_both_versions_without_ejecting_the_worker() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start(&with_pool(&db, short_response_timeout())).await;
    add(&db, &lb, &[&a]).await;
    let (proxy, address) = (lb.listeners[0], a.addr.to_string());

    // HTTP/1.
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let reply = exchange(
        &mut s,
        b"POST /hold HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408 "), "HTTP/1: {reply:?}");
    assert!(
        !ejected(&lb, &address).await,
        "HTTP/1 stall ejected the worker"
    );

    // HTTP/2: HEADERS with content-length 1000, one DATA of 10 bytes, then nothing.
    let (mut h2, _conn) = h2_connect(proxy).await;
    let request = hyper::Request::builder()
        .method("POST")
        .uri("http://a/hold")
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let (response, mut stream) = h2.send_request(request, false).unwrap();
    stream
        .send_data(bytes::Bytes::from_static(b"0123456789"), false)
        .unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer to the stalled HTTP/2 upload in time")
        .unwrap_or_else(|e| panic!("the stream was reset instead of answered: {e}"));
    assert_eq!(response.status(), 408, "HTTP/2");
    assert!(
        !ejected(&lb, &address).await,
        "HTTP/2 stall ejected the worker"
    );

    // The worker still gets the next request.
    let hits = a.hits();
    assert_eq!(get(&client(), proxy, "/").await, (200, "a".into()));
    assert_eq!(a.hits(), hits + 1);

    // Control: the whole body sent, no answer in time: the worker's failure.
    let reply = raw_once(
        proxy,
        b"POST /hold HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 504 "), "control: {reply:?}");
    assert!(
        ejected(&lb, &address).await,
        "control: a worker's timeout should eject it"
    );
    a.release();
    lb.stop(Duration::from_secs(5)).await;
}

/// 20 pieces of 50 bytes, `a` to `t`.
fn slow_body() -> Vec<Vec<u8>> {
    (0..20u8).map(|i| vec![b'a' + i; 50]).collect()
}

/// A body that keeps moving (a piece every 100 ms, 2 s in all) to a worker that answers only
/// once it has the whole body: 200 with the body echoed, over HTTP/1 and HTTP/2, though the
/// response timeout (300 ms) passes many times over before the response head.
#[tokio::test]
async fn slow_but_moving_upload_outlasts_the_response_timeout_over_both_versions() {
    let db = TestDb::new().await;
    let worker = Scripted::start(buffering_echo).await;
    let lb = start(&with_pool(&db, short_response_timeout())).await;
    add_addresses(&db, &lb, &[worker.addr]).await;
    let proxy = lb.listeners[0];
    let whole: Vec<u8> = slow_body().concat();
    assert_eq!(whole.len(), 1000);

    let http1 = async {
        let started = Instant::now();
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        let mut pieces = slow_body();
        let last = pieces.pop().unwrap();
        for (i, piece) in pieces.iter().enumerate() {
            pace.tick().await;
            s.write_all(piece).await.unwrap_or_else(|e| {
                panic!("HTTP/1 piece {i}: the proxy closed the connection mid-upload: {e}")
            });
        }
        pace.tick().await;
        let reply = exchange(&mut s, &last).await;
        (reply, started.elapsed())
    };
    let http2 = async {
        let started = Instant::now();
        let (mut h2, _conn) = h2_connect(proxy).await;
        let request = hyper::Request::builder()
            .method("POST")
            .uri("http://a/echo")
            .header("content-length", "1000")
            .body(())
            .unwrap();
        let (response, mut stream) = h2.send_request(request, false).unwrap();
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        let pieces = slow_body();
        let n = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            pace.tick().await;
            stream
                .send_data(bytes::Bytes::from(piece), i + 1 == n)
                .unwrap_or_else(|e| {
                    panic!("HTTP/2 piece {i}: the proxy ended the stream mid-upload: {e}")
                });
        }
        let response = tokio::time::timeout(WAIT, response)
            .await
            .expect("an HTTP/2 answer in time")
            .unwrap_or_else(|e| panic!("the stream was reset instead of answered: {e}"));
        let status = response.status().as_u16();
        let body = h2_body(&mut response.into_body()).await;
        (status, body, started.elapsed())
    };
    let ((reply, took1), (status2, body2, took2)) = tokio::join!(http1, http2);

    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("HTTP/1: no response head: {reply:?}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "HTTP/1: {reply:?}");
    assert_eq!(body.as_bytes(), &whole[..], "HTTP/1 body");
    assert_eq!(status2, 200, "HTTP/2: {body2:?}");
    assert!(
        matches!(&body2, H2End::Complete(b) if b == &whole),
        "HTTP/2 body: {body2:?}"
    );
    for took in [took1, took2] {
        assert!(took >= Duration::from_millis(1800), "{took:?}: not slow");
    }
    assert_eq!(worker.count(), 2, "both uploads reached the worker once");
    assert!(!ejected(&lb, &worker.addr.to_string()).await);
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 11. An HTTP/2 stream reset mid-response frees its worker ----

#[tokio::test]
async fn http2_stream_reset_mid_response_frees_the_worker_and_closes_its_connection() {
    let db = TestDb::new().await;
    let worker = Scripted::start(answer_one_chunk_then_hold).await;
    let lb = start(&with_pool(&db, PoolConfig::default())).await;
    let address = worker.addr.to_string();
    change(
        &db,
        &lb,
        &format!("INSERT INTO workers(worker_address) VALUES ('{address}')"),
    )
    .await;

    let (mut h2, conn) = h2_connect(lb.listeners[0]).await;
    let request = hyper::Request::builder()
        .uri("http://a/stream")
        .body(())
        .unwrap();
    let (response, mut stream) = h2.send_request(request, true).unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("the head in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(WAIT, body.data())
        .await
        .expect("the first chunk in time")
        .expect("a first chunk")
        .expect("the first chunk");
    assert_eq!(&first[..], b"first");
    assert_eq!(in_flight(&lb, &address).await, 1);
    assert_eq!(worker.open(), 1);

    stream.send_reset(h2::Reason::CANCEL);
    eventually_within(
        "in_flight of the worker returns to 0 after the client's RST_STREAM",
        Duration::from_secs(2),
        async || in_flight(&lb, &address).await == 0,
    )
    .await;
    eventually_within(
        "the worker sees its connection closed (EOF)",
        Duration::from_secs(2),
        async || worker.open() == 0,
    )
    .await;
    assert!(
        !conn.is_finished(),
        "the reset was the stream's, the client connection stays"
    );
    drop(h2);
    lb.stop(Duration::from_secs(5)).await;
}

// ---- 12. Idle HTTP/2 connections are closed; busy ones are not ----

fn with_header_read_timeout(db: &TestDb, timeout: Duration) -> Config {
    let mut c = with_pool(db, PoolConfig::default());
    c.listeners[0].header_read_timeout = timeout;
    c
}

#[tokio::test]
async fn idle_http2_connection_is_closed_within_the_header_read_timeout() {
    let db = TestDb::new().await;
    let timeout = Duration::from_secs(1);
    let lb = start(&with_header_read_timeout(&db, timeout)).await;

    let mut s = tokio::net::TcpStream::connect(lb.listeners[0])
        .await
        .unwrap();
    let mut hello = h2raw::PREFACE.to_vec();
    hello.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let quiet_since = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(1);
    let mut kinds = Vec::new();
    let end = loop {
        match tokio::time::timeout_at(deadline, h2raw::read(&mut s)).await {
            Err(_) => panic!(
                "an idle HTTP/2 connection is still open after {:?} (header_read_timeout \
                 {timeout:?}); frames so far: {kinds:?}",
                quiet_since.elapsed()
            ),
            Ok(Ok(frame)) => kinds.push(frame.kind),
            Ok(Err(e)) => break e,
        }
    };
    let closed_after = quiet_since.elapsed();
    assert_eq!(
        kinds.first(),
        Some(&h2raw::SETTINGS),
        "served as HTTP/2: {kinds:?}"
    );
    assert!(
        closed_after >= timeout - Duration::from_millis(200),
        "closed after {closed_after:?}, before the timeout ({end}; frames {kinds:?})"
    );
    lb.stop(Duration::from_secs(5)).await;
}

/// Script: answers the request's head with a chunked 200, then sends each piece of `plan`
/// after its delay, then the last chunk; then waits for the proxy to close.
async fn paced(mut s: tokio::net::TcpStream, log: Log, plan: Vec<(Duration, String)>) {
    if read_request_head(&mut s, &log).await.is_none() {
        return;
    }
    if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    for (delay, piece) in plan {
        tokio::time::sleep(delay).await;
        let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
        if s.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
    }
    if s.write_all(b"0\r\n\r\n").await.is_err() {
        return;
    }
    until_eof(&mut s).await;
}

/// Sends one GET over a new HTTP/2 connection to a worker that answers by `plan`; checks
/// the whole body arrives and ends cleanly, then that the connection, idle at last, is
/// closed within the timeout (and slack).
async fn slow_response_is_not_cut(plan: Vec<(Duration, String)>) {
    let db = TestDb::new().await;
    let timeout = Duration::from_secs(1);
    let expected: String = plan.iter().map(|(_, p)| p.as_str()).collect();
    let total: Duration = plan.iter().map(|(d, _)| *d).sum();
    let worker = Scripted::start(move |s, log| paced(s, log, plan.clone())).await;
    let lb = start(&with_header_read_timeout(&db, timeout)).await;
    add_addresses(&db, &lb, &[worker.addr]).await;

    let started = Instant::now();
    let (mut h2, conn) = h2_connect(lb.listeners[0]).await;
    let request = hyper::Request::builder()
        .uri("http://a/slow")
        .body(())
        .unwrap();
    let (response, _stream) = h2.send_request(request, true).unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("the head in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    let body = h2_body(&mut response.into_body()).await;
    let took = started.elapsed();
    assert!(
        matches!(&body, H2End::Complete(b) if b == expected.as_bytes()),
        "after {took:?}: {body:?}"
    );
    assert!(took >= total, "{took:?}");

    // Idle now: closed by the timeout.
    tokio::time::timeout(timeout + Duration::from_secs(1), conn)
        .await
        .expect("the connection, idle after its response, is closed in time")
        .unwrap()
        .ok();
    drop(h2);
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn http2_connection_streaming_a_slow_response_is_not_closed_by_the_header_read_timeout() {
    // A chunk every 300 ms for 2.7 s.
    let plan = (0..10)
        .map(|i| (Duration::from_millis(300), format!("piece {i}\n")))
        .collect();
    slow_response_is_not_cut(plan).await;
}

#[tokio::test]
async fn http2_connection_with_a_response_silent_but_unfinished_is_not_closed_by_the_header_read_timeout()
 {
    // Nothing moves for 1.6 s (> 1 s) in mid-response: the open stream alone keeps it.
    let plan = vec![
        (Duration::ZERO, "first\n".to_string()),
        (Duration::from_millis(1600), "last\n".to_string()),
    ];
    slow_response_is_not_cut(plan).await;
}

// ---- 13. A full worker beside a down one: 503, never the down one ----

#[derive(Clone, Copy, Debug)]
enum Down {
    /// Ejected after answering 503 once.
    Ejected,
    /// Marked unhealthy by active health checks.
    Unhealthy,
}

async fn full_worker_beside_a_down_one_gives_503(down: Down) {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut pool = PoolConfig {
        max_connections: Some(1),
        ejection: load_balancer::config::EjectionConfig {
            consecutive_failures: 1,
            base_time: Duration::from_secs(60),
            ..Default::default()
        },
        ..PoolConfig::default()
    };
    if let Down::Unhealthy = down {
        pool.health_check = Some(quick_health_check());
    }
    let lb = start(&with_pool(&db, pool)).await;
    add(&db, &lb, &[&a, &b]).await;
    let proxy = lb.listeners[0];
    let b_address = b.addr.to_string();
    let c = client();

    match down {
        Down::Ejected => {
            b.status.store(503, Ordering::SeqCst);
            eventually_within(
                "b is ejected after its 503",
                Duration::from_secs(5),
                async || {
                    // b's 503 is retried on a: the client gets a's answer.
                    assert_eq!(get(&c, proxy, "/").await, (200, "a".into()));
                    worker_status(&status(&lb).await, &b_address)["ejected"] == true
                },
            )
            .await;
        }
        Down::Unhealthy => {
            b.health.store(503, Ordering::SeqCst);
            eventually_within(
                "b is marked unhealthy",
                Duration::from_secs(5),
                async || worker_status(&status(&lb).await, &b_address)["healthy"] == false,
            )
            .await;
        }
    }

    let held = tokio::spawn(async move { get(&client(), proxy, "/hold").await });
    eventually("a request is parked on a", || {
        a.holding.load(Ordering::SeqCst) == 1
    })
    .await;
    let b_hits = b.hits();
    for i in 0..4 {
        let (status, body) = get(&c, proxy, "/").await;
        assert_eq!(status, 503, "HTTP/1 request {i} ({down:?}): {body}");
        assert!(body.contains("max_connections"), "{body}");
        let (mut h2, _conn) = h2_connect(proxy).await;
        let request = hyper::Request::builder().uri("http://a/").body(()).unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        let response = tokio::time::timeout(WAIT, response)
            .await
            .expect("an HTTP/2 answer in time")
            .expect("a response");
        assert_eq!(response.status(), 503, "HTTP/2 request {i} ({down:?})");
    }
    assert_eq!(b.hits(), b_hits, "a request went to the {down:?} worker");

    a.release();
    assert_eq!(held.await.unwrap(), (200, "a".into()));
    assert_eq!(get(&c, proxy, "/").await, (200, "a".into()));
    assert_eq!(b.hits(), b_hits, "a request went to the {down:?} worker");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn full_worker_beside_an_ejected_one_gives_503_and_never_routes_to_the_ejected_one() {
    full_worker_beside_a_down_one_gives_503(Down::Ejected).await;
}

#[tokio::test]
async fn full_worker_beside_an_unhealthy_one_gives_503_and_never_routes_to_the_unhealthy_one() {
    full_worker_beside_a_down_one_gives_503(Down::Unhealthy).await;
}
