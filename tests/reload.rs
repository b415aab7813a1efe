//! Reload (what SIGHUP does), in process: under continuous load, a new configuration
//! changes what new connections get (pool settings, algorithm, listeners added and
//! removed) without failing a request, an in-flight request finishes with the settings it
//! started with, and a configuration that cannot apply changes nothing and is counted.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{Backend, TestDb, WAIT, change, client, finish, get, load, tally};
use load_balancer::config::{AlgorithmKind, Config, ListenerConfig, PoolConfig, Protocol};
use load_balancer::reload::ReloadError;

const GRACE: Duration = Duration::from_secs(10);

fn http(bind: SocketAddr, pool: &str, algorithm: AlgorithmKind) -> ListenerConfig {
    ListenerConfig::new(bind, Protocol::Http, pool, algorithm)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An address no one listens on now. (A listener configured on port 0 would be matched
/// with an old one on port 0, as the same entry of a file reloaded unchanged must be.)
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// `base` with `listeners` instead of its own.
fn with_listeners(base: &Config, listeners: Vec<ListenerConfig>) -> Config {
    Config {
        listeners,
        ..base.clone()
    }
}

/// Waits until `n` requests are parked on the backends' `/hold`.
async fn holding(backends: &[&Backend], n: usize) {
    let parked = || {
        backends
            .iter()
            .map(|b| b.holding.load(std::sync::atomic::Ordering::SeqCst))
            .sum::<usize>()
    };
    common::eventually(&format!("{n} request(s) parked on /hold"), || parked() == n).await;
}

/// Two listeners on pool default (a weight 1, b weight 3): the first takes the load, the
/// second (round robin) is measured alone. A reload makes the second weighted and gives the
/// pool a short response_timeout: new connections get both at once, a request in flight
/// keeps the old timeout and completes, and the load never sees a failure.
#[tokio::test]
async fn a_reload_applies_new_pool_settings_and_algorithm_to_new_connections() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut base = common::config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    base.listeners
        .push(http(any_port(), "default", AlgorithmKind::RoundRobin));
    let mut running = load_balancer::start(&base).await.expect("proxy starts");
    let sql = format!(
        "INSERT INTO workers(worker_address, weight) VALUES ('{}', 1), ('{}', 3)",
        a.addr, b.addr
    );
    change(&db, &running, &sql).await;
    let (loaded, measured) = (running.listeners[0], running.listeners[1]);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(loaded, stop.clone());
    let before = tally(&client(), measured, 40).await;
    assert_eq!(
        (before["a"], before["b"]),
        (20, 20),
        "round robin: {before:?}"
    );
    let held = tokio::spawn(async move { get(&client(), loaded, "/hold").await });
    holding(&[&a, &b], 1).await;

    let mut next = with_listeners(
        &base,
        vec![
            http(loaded, "default", AlgorithmKind::RoundRobin),
            http(measured, "default", AlgorithmKind::Weighted),
        ],
    );
    let short = PoolConfig {
        response_timeout: Duration::from_millis(300),
        ..PoolConfig::default()
    };
    next.pools.insert("default".into(), short);
    let summary = running.reload(next, GRACE).await.expect("reloads");
    assert_eq!(summary.kept, 2, "{summary}");
    assert!(
        summary.added.is_empty() && summary.removed.is_empty(),
        "{summary}"
    );
    assert_eq!(summary.pools_restarted, ["default"], "{summary}");
    assert_eq!(running.listeners, [loaded, measured]);

    let after = tally(&client(), measured, 40).await;
    assert_eq!((after["a"], after["b"]), (10, 30), "weighted: {after:?}");
    let started = tokio::time::Instant::now();
    let timed_out = get(&client(), loaded, "/hold").await;
    assert_eq!(timed_out.0, 504, "the new response_timeout applies");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The request in flight across the reload kept its 30 s timeout and now completes.
    a.release();
    b.release();
    let (status, _) = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(
        status, 200,
        "a request in flight across the reload is not cut"
    );

    let (ok, failed) = finish(&stop, clients).await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert_eq!(running.metrics.reloads(), (1, 0));
    running.stop(GRACE).await;
}

/// A reload removes a listener (its port closes at once; a request in flight on it still
/// completes) and adds one for a pool the ring did not serve (it answers at once, from the
/// workers the table already has), while a kept listener serves its load without a failure.
#[tokio::test]
async fn a_reload_adds_and_removes_listeners_under_load() {
    let db = TestDb::new().await;
    let (a, c) = (Backend::start("a").await, Backend::start("c").await);
    let mut base = common::config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    base.listeners
        .push(http(any_port(), "default", AlgorithmKind::RoundRobin));
    let mut running = load_balancer::start(&base).await.expect("proxy starts");
    let sql = format!(
        "INSERT INTO workers(worker_address, pool) VALUES ('{}', 'default'), ('{}', 'other')",
        a.addr, c.addr
    );
    change(&db, &running, &sql).await;
    let (kept, removed) = (running.listeners[0], running.listeners[1]);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(kept, stop.clone());
    let held = tokio::spawn(async move { get(&client(), removed, "/hold").await });
    holding(&[&a], 1).await;

    let next = with_listeners(
        &base,
        vec![
            http(kept, "default", AlgorithmKind::RoundRobin),
            http(free_port(), "other", AlgorithmKind::RoundRobin),
        ],
    );
    let summary = running.reload(next, GRACE).await.expect("reloads");
    assert_eq!(
        (summary.kept, &summary.removed[..]),
        (1, &[removed][..]),
        "{summary}"
    );
    let added = summary.added[0];
    assert_eq!(running.listeners, [kept, added]);

    assert_eq!(get(&client(), added, "/").await, (200, "c".to_string()));
    common::eventually_within(
        "the removed listener's port refuses connections",
        WAIT,
        async || tokio::net::TcpStream::connect(removed).await.is_err(),
    )
    .await;

    a.release();
    let (status, body) = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "a"),
        "in flight on the removed listener"
    );

    let (ok, failed) = finish(&stop, clients).await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    running.stop(GRACE).await;
}

/// A configuration that cannot apply (a listener to add whose address is taken) changes
/// nothing: no listener added or removed, the old algorithm still picks; the error is
/// counted, and a good reload afterwards applies.
#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing_and_is_counted() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut base = common::config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    base.listeners
        .push(http(any_port(), "default", AlgorithmKind::RoundRobin));
    let mut running = load_balancer::start(&base).await.expect("proxy starts");
    let sql = format!(
        "INSERT INTO workers(worker_address, weight) VALUES ('{}', 1), ('{}', 3)",
        a.addr, b.addr
    );
    change(&db, &running, &sql).await;
    let (loaded, measured) = (running.listeners[0], running.listeners[1]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(loaded, stop.clone());

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let weighted = vec![
        http(loaded, "default", AlgorithmKind::RoundRobin),
        http(measured, "default", AlgorithmKind::Weighted),
    ];
    let mut bad = weighted.clone();
    bad.push(http(taken_addr, "default", AlgorithmKind::RoundRobin));
    let err = running
        .reload(with_listeners(&base, bad), GRACE)
        .await
        .expect_err("a taken address fails the reload");
    assert!(matches!(err, ReloadError::Bind(_)), "{err:?}");
    assert!(err.to_string().contains(&taken_addr.to_string()), "{err}");
    assert_eq!(running.metrics.reloads(), (0, 1));
    assert_eq!(running.listeners, [loaded, measured], "nothing added");
    let still = tally(&client(), measured, 40).await;
    assert_eq!(
        (still["a"], still["b"]),
        (20, 20),
        "still round robin: {still:?}"
    );

    drop(taken);
    let summary = running
        .reload(with_listeners(&base, weighted), GRACE)
        .await
        .expect("the good configuration reloads");
    assert_eq!(summary.kept, 2, "{summary}");
    assert_eq!(
        summary.pools_restarted,
        Vec::<String>::new(),
        "pool settings unchanged"
    );
    let after = tally(&client(), measured, 40).await;
    assert_eq!((after["a"], after["b"]), (10, 30), "weighted: {after:?}");
    assert_eq!(running.metrics.reloads(), (1, 1));

    let (ok, failed) = finish(&stop, clients).await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    running.stop(GRACE).await;
}

/// A kept listener whose protocol changes keeps its socket: connections accepted after the
/// reload are relayed as TCP (the request reaches the worker untouched, without the HTTP
/// proxy's forwarding headers), while a client connection open since before it is still
/// served over HTTP.
#[tokio::test]
async fn a_protocol_change_applies_to_new_connections_on_the_same_socket() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let base = common::config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    let mut running = load_balancer::start(&base).await.expect("proxy starts");
    common::add(&db, &running, &[&a]).await;
    let listener = running.listeners[0];
    let before = client();
    let (_, headers) = get(&before, listener, "/headers").await;
    assert!(headers.contains("x-forwarded-for"), "{headers}");

    let tcp = ListenerConfig::new(
        listener,
        Protocol::Tcp,
        "default",
        AlgorithmKind::RoundRobin,
    );
    running
        .reload(with_listeners(&base, vec![tcp]), GRACE)
        .await
        .expect("reloads");
    assert_eq!(running.listeners, [listener], "the same socket");

    let (status, relayed) = get(&client(), listener, "/headers").await;
    assert_eq!(status, 200);
    assert!(
        !relayed.contains("x-forwarded-for"),
        "relayed as TCP: {relayed}"
    );
    let (_, kept) = get(&before, listener, "/headers").await;
    assert!(
        kept.contains("x-forwarded-for"),
        "the open connection stays HTTP: {kept}"
    );
    running.stop(GRACE).await;
}
