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
