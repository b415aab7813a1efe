//! The data plane when backends misbehave: health checks, ejection, retries, timeouts,
//! drains under load, slow start, limits, and HTTP hygiene — through the real proxy, with
//! real backends that fail, hang or flap.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use load_balancer::config::AlgorithmKind;
use load_balancer::config::{
    Config, EjectOn, EjectionConfig, HealthCheckConfig, HealthCheckKind, PoolConfig, Protocol,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_pool(db: &TestDb, algorithm: AlgorithmKind, pool: PoolConfig) -> Config {
    let mut c = config(db, Protocol::Http, algorithm);
    c.pools.insert("default".into(), pool);
    c
}

async fn start(config: &Config) -> load_balancer::Running {
    load_balancer::start(config).await.expect("proxy starts")
}

fn worker_flag(status: &serde_json::Value, address: &str, flag: &str) -> bool {
    status["pools"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["address"] == address)
        .unwrap_or_else(|| panic!("{address} not in {status}"))[flag]
        .as_bool()
        .unwrap()
}

#[tokio::test]
async fn active_health_checks_skip_unhealthy_workers_and_fail_open() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let check = HealthCheckConfig {
        kind: HealthCheckKind::Http {
            method: hyper::Method::GET,
            path: "/health".into(),
            expect_status: 200,
        },
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 2,
    };
    let pool = PoolConfig {
        health_check: Some(check),
        ..PoolConfig::default()
    };
    let lb = start(&with_pool(&db, AlgorithmKind::RoundRobin, pool)).await;
    add(&db, &lb, &[&a, &b]).await;
    let c = client();
    let b_addr = b.addr.to_string();

    b.health.store(503, Ordering::SeqCst);
    let snapshot_has = |healthy: bool| {
        let lb = &lb;
        let addr = b_addr.clone();
        move || {
            lb.ring
                .load()
                .pool(0)
                .workers
                .iter()
                .any(|w| *w.address.text == *addr && w.state.health.is_healthy() == healthy)
        }
    };
    eventually("b is marked unhealthy", snapshot_has(false)).await;
    assert!(!worker_flag(&status(&lb).await, &b_addr, "healthy"));
    assert_eq!(
        tally(&c, lb.listeners[0], 10).await,
        HashMap::from([("a".into(), 10)])
    );

    // A reweight does not reset health: b stays out.
    change(&db, &lb, "UPDATE workers SET weight = 5").await;
    assert_eq!(
        tally(&c, lb.listeners[0], 10).await,
        HashMap::from([("a".into(), 10)])
    );

    // Every worker unhealthy: fail open rather than refuse everything.
    a.health.store(500, Ordering::SeqCst);
    let a_addr = a.addr.to_string();
    eventually("a is marked unhealthy", || {
        lb.ring
            .load()
            .pool(0)
            .workers
            .iter()
            .any(|w| *w.address.text == *a_addr && !w.state.health.is_healthy())
    })
    .await;
    let got = tally(&c, lb.listeners[0], 10).await;
    assert_eq!(got.values().sum::<usize>(), 10);
    assert!(!got.contains_key("503"), "fail open: {got:?}");
    assert_eq!(
        got.len(),
        2,
        "failing open spreads over all workers: {got:?}"
    );

    // b recovers after `rise` passing checks and gets traffic again.
    b.health.store(200, Ordering::SeqCst);
    a.health.store(200, Ordering::SeqCst);
    eventually("b is healthy again", snapshot_has(true)).await;
    let got = tally(&c, lb.listeners[0], 10).await;
    assert!(got.get("b").is_some_and(|n| *n > 0), "{got:?}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn tcp_health_check_marks_a_dead_worker() {
    let db = TestDb::new().await;
    let (a, dead) = (Backend::start("a").await, Backend::start("dead").await);
    let pool = PoolConfig {
        health_check: Some(HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        }),
        ..PoolConfig::default()
    };
    let lb = start(&with_pool(&db, AlgorithmKind::RoundRobin, pool)).await;
    add(&db, &lb, &[&a, &dead]).await;
    dead.stop();
    let dead_addr = dead.addr.to_string();
    eventually("the dead worker is marked unhealthy", || {
        lb.ring
            .load()
            .pool(0)
            .workers
            .iter()
            .any(|w| *w.address.text == *dead_addr && !w.state.health.is_healthy())
    })
    .await;
    assert_eq!(
        tally(&client(), lb.listeners[0], 6).await,
        HashMap::from([("a".into(), 6)])
    );
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn consecutive_5xx_eject_a_worker_but_never_most_of_the_pool() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let pool = PoolConfig {
        ejection: EjectionConfig {
            consecutive_failures: 3,
            max_percent: 50,
            // Every 5xx counts, not only gateway failures.
            on: EjectOn::ServerError,
            ..EjectionConfig::default()
        },
        ..PoolConfig::default()
    };
    let lb = start(&with_pool(&db, AlgorithmKind::RoundRobin, pool)).await;
    add(&db, &lb, &[&a, &b]).await;
    let c = client();

    b.status.store(500, Ordering::SeqCst);
    // Round robin: b sees every other request; three 500s in a row eject it.
    let got = tally(&c, lb.listeners[0], 6).await;
    assert_eq!(got, HashMap::from([("a".into(), 3), ("500".into(), 3)]));
    assert!(worker_flag(
        &status(&lb).await,
        &b.addr.to_string(),
        "ejected"
    ));
    assert_eq!(
        tally(&c, lb.listeners[0], 10).await,
        HashMap::from([("a".into(), 10)])
    );

    // a fails too, but ejecting it would leave nothing: it stays in (max_percent 50).
    a.status.store(500, Ordering::SeqCst);
    tally(&c, lb.listeners[0], 6).await;
    assert!(!worker_flag(
        &status(&lb).await,
        &a.addr.to_string(),
        "ejected"
    ));
    lb.stop(Duration::from_secs(5)).await;
}

/// Hole: a client that makes a worker answer 501 (or 500) must not be able to eject it. By
/// default only gateway failures count (`[ejection] on = "gateway"`).
#[tokio::test]
async fn a_client_provoking_501_cannot_eject_a_healthy_worker() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let pool = PoolConfig {
        ejection: EjectionConfig {
            consecutive_failures: 2,
            ..EjectionConfig::default()
        },
        ..PoolConfig::default()
    };
    let lb = start(&with_pool(&db, AlgorithmKind::RoundRobin, pool)).await;
    add(&db, &lb, &[&a, &b]).await;
    let c = client();
    for code in [501, 500] {
        b.status.store(code, Ordering::SeqCst);
        let got = tally(&c, lb.listeners[0], 10).await;
        assert_eq!(
            got,
            HashMap::from([("a".into(), 5), (code.to_string(), 5)]),
            "b keeps its share while it answers {code}"
        );
        assert!(!worker_flag(
            &status(&lb).await,
            &b.addr.to_string(),
            "ejected"
        ));
    }
    // A gateway failure does count: 503 twice in a row ejects it.
    b.status.store(503, Ordering::SeqCst);
    tally(&c, lb.listeners[0], 4).await;
    assert!(worker_flag(
        &status(&lb).await,
        &b.addr.to_string(),
        "ejected"
    ));
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn retries_go_elsewhere_only_when_safe() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    // Ejection off: this test is about retries alone.
    let pool = PoolConfig {
        ejection: EjectionConfig {
            consecutive_failures: 0,
            ..EjectionConfig::default()
        },
        ..PoolConfig::default()
    };
    let lb = start(&with_pool(&db, AlgorithmKind::RoundRobin, pool)).await;
    add(&db, &lb, &[&a, &b]).await;
    let c = client();

    // GET is idempotent and bodiless: a 503 from b is retried on a.
    b.status.store(503, Ordering::SeqCst);
    assert_eq!(
        tally(&c, lb.listeners[0], 10).await,
        HashMap::from([("a".into(), 10)])
    );

    // POST is not: b's 503 reaches the client.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = hyper::Request::post(format!("http://{}/", lb.listeners[0]))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        statuses.push(c.request(req).await.unwrap().status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503]);

    // A connect failure is retried for every method: nothing was sent.
    b.status.store(200, Ordering::SeqCst);
    b.stop();
    for _ in 0..4 {
        let req = hyper::Request::post(format!("http://{}/echo", lb.listeners[0]))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"payload",
            )))
            .unwrap();
        let res = c.request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"payload");
    }
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_backend_that_hangs_gets_a_504() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let pool = PoolConfig {
        response_timeout: Duration::from_millis(200),
        retries: 0,
        ..PoolConfig::default()
    };
    let lb = start(&with_pool(&db, AlgorithmKind::Weighted, pool)).await;
    add(&db, &lb, &[&a]).await;
    let (status, body) = get(&client(), lb.listeners[0], "/hold").await;
    assert_eq!(status, 504, "{body}");
    a.release();
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn drain_under_load_fails_no_request() {
    let db = TestDb::new().await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let lb = start(&with_pool(
        &db,
        AlgorithmKind::Weighted,
        PoolConfig::default(),
    ))
    .await;
    add(&db, &lb, &[&a, &b, &c]).await;
    let proxy = lb.listeners[0];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(proxy, stop.clone());
    // Drain a, delete b, bring a back, under load.
    for sql in [
        format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}'",
            a.addr
        ),
        format!("DELETE FROM workers WHERE worker_address = '{}'", b.addr),
        format!(
            "UPDATE workers SET weight = 1 WHERE worker_address = '{}'",
            a.addr
        ),
        format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}'",
            c.addr
        ),
    ] {
        let served = c.hits() + a.hits();
        change(&db, &lb, &sql).await;
        // Let traffic run on the new ring before the next change.
        eventually("traffic flows after the change", || {
            c.hits() + a.hits() > served + 50
        })
        .await;
    }
    let (ok, failed) = finish(&stop, clients).await;
    assert!(ok > 200, "load ran: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the drains",
        ok + failed
    );
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn backend_killed_under_load_fails_no_idempotent_request() {
    let db = TestDb::new().await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let lb = start(&with_pool(
        &db,
        AlgorithmKind::RoundRobin,
        PoolConfig::default(),
    ))
    .await;
    add(&db, &lb, &[&a, &b, &c]).await;
    let proxy = lb.listeners[0];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(proxy, stop.clone());
    eventually("load reaches b", || b.hits() > 50).await;
    b.kill();
    // Keep the load on for a while after the kill, on the two survivors.
    let served = a.hits() + c.hits();
    eventually("traffic continues after the kill", || {
        a.hits() + c.hits() > served + 300
    })
    .await;
    let (ok, failed) = finish(&stop, clients).await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed around the kill",
        ok + failed
    );
    assert!(
        worker_flag(&status(&lb).await, &b.addr.to_string(), "ejected"),
        "b was ejected"
    );
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn drain_deadline_cuts_what_is_still_running() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let pool = PoolConfig {
        drain_timeout: Duration::from_millis(200),
        ..PoolConfig::default()
    };
    let lb = start(&with_pool(&db, AlgorithmKind::Weighted, pool)).await;
    add(&db, &lb, &[&a]).await;
    let proxy = lb.listeners[0];
    // A POST is not retried, so the cut shows as a 502.
    let held = tokio::spawn(async move {
        let req = hyper::Request::post(format!("http://{proxy}/hold"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        client().request(req).await.map(|r| r.status().as_u16())
    });
    eventually("the request reaches a", || {
        a.holding.load(Ordering::SeqCst) == 1
    })
    .await;
    change(&db, &lb, "UPDATE workers SET weight = 0").await;
    let status = tokio::time::timeout(WAIT, held)
        .await
        .expect("cut within the wait")
        .unwrap();
    assert_eq!(status.unwrap(), 502);
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn slow_start_ramps_a_new_worker_up() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let pool = PoolConfig {
        slow_start: Duration::from_secs(30),
        ..PoolConfig::default()
    };
    let cfg = with_pool(&db, AlgorithmKind::RoundRobin, pool);
    // a is known at startup (no ramp: a process's first sync is not news).
    let lb = start(&cfg).await;
    add(&db, &lb, &[&a]).await;
    lb.stop(Duration::from_secs(5)).await;
    let lb = start(&cfg).await;
    add(&db, &lb, &[&b]).await;
    // Seconds into a 30 s ramp, b takes a small share, not the half round robin would give.
    let got = tally(&client(), lb.listeners[0], 200).await;
    let b_share = got.get("b").copied().unwrap_or(0);
    assert!(b_share < 40, "{got:?}");
    assert_eq!(got.values().sum::<usize>(), 200);
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn worker_connection_limit_gives_503_beyond_it() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let pool = PoolConfig {
        max_connections: Some(1),
        ..PoolConfig::default()
    };
    let lb = start(&with_pool(&db, AlgorithmKind::Weighted, pool)).await;
    add(&db, &lb, &[&a]).await;
    let proxy = lb.listeners[0];
    let held = tokio::spawn(async move { get(&client(), proxy, "/hold").await });
    eventually("one request in flight", || {
        a.holding.load(Ordering::SeqCst) == 1
    })
    .await;
    let (status, body) = get(&client(), proxy, "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("max_connections"), "{body}");
    a.release();
    assert_eq!(held.await.unwrap().0, 200);
    assert_eq!(get(&client(), proxy, "/").await.0, 200);
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn client_connection_limit_makes_new_clients_wait() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::Weighted);
    cfg.listeners[0].max_connections = Some(1);
    let lb = start(&cfg).await;
    add(&db, &lb, &[&a]).await;
    let proxy = lb.listeners[0];

    let mut first = tokio::net::TcpStream::connect(proxy).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The second client is not served while the first holds the only slot...
    let second = tokio::spawn(raw(
        proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while !second.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(early.is_err(), "served beyond max_connections");
    // ...and is once the first leaves.
    drop(first);
    let reply = second.await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn request_hygiene() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::Weighted);
    cfg.listeners[0].max_header_size = 8192;
    let lb = start(&cfg).await;
    add(&db, &lb, &[&a]).await;
    let proxy = lb.listeners[0];
    let hits = a.hits();

    // Smuggling attempts (RFC 9112 §6): ambiguous framing is refused with 400 (or 501 for
    // a coding we cannot delimit) and the connection closed, so a request hidden in the
    // body is never served, and nothing reaches the backend.
    for (request, status) in [
        // Both framings, a second request hidden behind the first's Content-Length.
        (&b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"[..], "400"),
        // Two lengths.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd", "400"),
        // A length that is not a number.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd", "400"),
        // A coding layered on chunked: known but not implemented.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "501"),
        // An obfuscated one is malformed, not an unknown coding.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", "400"),
        // Chunked in HTTP/1.0.
        (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        // A chunk-size line ended by a bare LF.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n", "400"),
        // Two Hosts; no Host at all.
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        // This is not a forward proxy.
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "405"),
    ] {
        let reply = raw(proxy, request).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{}: {reply}",
            String::from_utf8_lossy(request)
        );
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
        assert!(reply.to_lowercase().contains("connection: close"), "{reply}");
    }
    assert_eq!(a.hits(), hits, "no smuggling attempt reached the backend");

    // Malformed: 400.
    let reply = raw(proxy, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    // Oversized head: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(20_000)
    );
    let reply = raw(proxy, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(a.hits(), hits, "no bad request reached the backend");

    // Expect: 100-continue: the body goes through, like curl sends it: after a 100, or
    // after a short wait for one (RFC 9110 §10.1.1 lets a server answer without a 100).
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut first = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(500), s.read(&mut first))
        .await
        .map_or(0, |r| r.unwrap());
    first.truncate(n);
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    first.extend(rest);
    let reply = String::from_utf8_lossy(&first);
    let final_at = reply.find("HTTP/1.1 200 OK").expect("a 200");
    assert!(
        reply.find("100 Continue").is_none_or(|i| i < final_at),
        "{reply}"
    );
    assert!(reply.ends_with("hello"), "{reply}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn slow_clients_are_disconnected() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::Weighted);
    cfg.listeners[0].header_read_timeout = Duration::from_millis(200);
    let lb = start(&cfg).await;
    add(&db, &lb, &[&a]).await;
    // Slowloris: a head that never ends. The proxy closes the connection.
    let mut s = tokio::net::TcpStream::connect(lb.listeners[0])
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the proxy closes a slow client")
        .ok();
    // An idle keep-alive connection is closed the same way.
    let mut s = tokio::net::TcpStream::connect(lb.listeners[0])
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the proxy closes an idle keep-alive connection")
        .unwrap();
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert_eq!(a.hits(), 1, "the slow request never reached the backend");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn websocket_style_upgrade_passes_through_after_101() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start(&config(&db, Protocol::Http, AlgorithmKind::Weighted)).await;
    add(&db, &lb, &[&a]).await;
    let mut s = tokio::net::TcpStream::connect(lb.listeners[0])
        .await
        .unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in [&b"hello"[..], b"second frame"] {
        s.write_all(message).await.unwrap();
        let mut echo = vec![0u8; message.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, message);
    }
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn http2_clients_are_balanced_per_request() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start(&config(&db, Protocol::Http, AlgorithmKind::RoundRobin)).await;
    add(&db, &lb, &[&a, &b]).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    // One HTTP/2 connection, several streams: each picks its own worker.
    let got = tally(&h2, lb.listeners[0], 10).await;
    assert_eq!(got, HashMap::from([("a".into(), 5), ("b".into(), 5)]));
    lb.stop(Duration::from_secs(5)).await;
}
