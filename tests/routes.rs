//! The `routes` table against a real PostgreSQL: rows changed with plain SQL reach every
//! proxy's ring (`ring.load().routes`) through the same NOTIFY channel as workers, one
//! transaction touching both tables is one publish, TRUNCATE resyncs, anti-entropy covers
//! routes, the CHECK constraints refuse bad rows, V4 applies on a database at V3, `/status`
//! lists each listener's routes. An ignored test measures commit → publish latency.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use load_balancer::config::{AlgorithmKind, Protocol};
use load_balancer::ring::{RouteRow, Snapshot};

/// Waits, on the ring's publish watch, until the current snapshot satisfies `holds`.
async fn until(
    lb: &load_balancer::Running,
    what: &str,
    holds: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let mut published = lb.ring.subscribe();
    tokio::time::timeout(WAIT, async {
        loop {
            let snapshot = lb.ring.load_full();
            if holds(&snapshot) {
                return snapshot;
            }
            published.changed().await.expect("the ring lives");
        }
    })
    .await
    .unwrap_or_else(|_| {
        let rows = lb.ring.load().routes.rows().to_vec();
        panic!("not published within {WAIT:?}: {what}; routes now: {rows:?}")
    })
}

fn route(snapshot: &Snapshot, id: i64) -> Option<&RouteRow> {
    snapshot.routes.rows().iter().find(|r| r.id == id)
}

/// The table's fingerprints equal the ring's (what anti-entropy compares).
async fn assert_fingerprints_match(db: &TestDb, lb: &load_balancer::Running, after: &str) {
    let table = load_balancer::db::Db::fingerprints(&db.client().await)
        .await
        .unwrap();
    assert_eq!(table, lb.ring.load().fingerprints(), "after {after}");
}

#[tokio::test]
async fn route_inserts_updates_and_deletes_reach_the_ring() {
    let db = TestDb::new().await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    let c = db.client().await;

    let id: i64 = c
        .query_one(
            "INSERT INTO routes (host, path_prefix, pool) VALUES ('api.example.com', '/v1', 'api')
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let snap = until(&lb, "the inserted route", |s| route(s, id).is_some()).await;
    let r = snap
        .routes
        .lookup(None, Some(b"API.example.com:443"), b"/v1/users")
        .expect("the route matches");
    assert_eq!((r.id, &*r.pool_name), (id, "api"));
    assert_eq!(
        snap.pool(r.pool).name.as_ref(),
        "api",
        "its pool at its index"
    );
    assert_eq!(lb.ring.pool_index("api"), Some(r.pool));
    assert_fingerprints_match(&db, &lb, "insert").await;

    c.batch_execute(&format!(
        "UPDATE routes SET host = NULL, path_prefix = '/v2', priority = -3, listener = 'web'
         WHERE id = {id}"
    ))
    .await
    .unwrap();
    let snap = until(&lb, "the updated route", |s| {
        route(s, id).is_some_and(|r| r.path_prefix == "/v2")
    })
    .await;
    let r = route(&snap, id).unwrap();
    assert_eq!(
        (r.host.as_deref(), r.priority, r.listener.as_deref()),
        (None, -3, Some("web"))
    );
    assert!(snap.routes.lookup(Some("web"), None, b"/v2/x").is_some());
    assert!(snap.routes.lookup(Some("api"), None, b"/v2/x").is_none());
    assert_fingerprints_match(&db, &lb, "update").await;

    c.batch_execute(&format!("DELETE FROM routes WHERE id = {id}"))
        .await
        .unwrap();
    until(&lb, "the route deleted", |s| s.routes.is_empty()).await;
    assert_fingerprints_match(&db, &lb, "delete").await;
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_worker_and_its_route_in_one_transaction_are_one_publish() {
    let db = TestDb::new().await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    let before = lb.ring.load().generation;
    db.exec(
        "BEGIN;
         INSERT INTO workers (worker_address, pool) VALUES ('127.0.0.1:8001', 'fresh');
         INSERT INTO routes (path_prefix, pool) VALUES ('/fresh', 'fresh');
         COMMIT;",
    )
    .await;
    let snap = until(&lb, "the route", |s| !s.routes.is_empty()).await;
    assert_eq!(
        snap.generation,
        before + 1,
        "the worker and the route were published together"
    );
    let r = snap.routes.lookup(None, None, b"/fresh/x").unwrap();
    let pool = snap.pool(r.pool);
    assert_eq!(pool.name.as_ref(), "fresh");
    assert_eq!(
        pool.workers
            .iter()
            .map(|w| &*w.address.text)
            .collect::<Vec<_>>(),
        ["127.0.0.1:8001"],
        "the pool the route names has its worker in the same snapshot"
    );
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn truncating_routes_resyncs_the_ring() {
    let db = TestDb::new().await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    db.exec(
        "INSERT INTO routes (host, pool) VALUES ('a.example.com', 'a'), (NULL, 'b');
         INSERT INTO workers (worker_address) VALUES ('127.0.0.1:8001');",
    )
    .await;
    until(&lb, "two routes", |s| s.routes.rows().len() == 2).await;
    let resyncs = lb.sync.get().resyncs;
    db.exec("TRUNCATE routes").await;
    let snap = until(&lb, "no route", |s| s.routes.is_empty()).await;
    let sync = lb.sync.get();
    assert_eq!(sync.resyncs, resyncs + 1);
    assert_eq!(sync.last_resync_reason.as_deref(), Some("truncate"));
    assert_eq!(
        snap.pool(0).workers.len(),
        1,
        "the workers are reread with them"
    );
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn anti_entropy_heals_a_route_change_no_event_announced() {
    let db = TestDb::new().await;
    let mut config = config(&db, Protocol::Http, AlgorithmKind::Weighted);
    config.database.anti_entropy_interval = Duration::from_millis(200);
    let lb = load_balancer::start(&config).await.expect("proxy starts");
    db.exec("INSERT INTO routes (path_prefix, pool) VALUES ('/a', 'a')")
        .await;
    until(&lb, "the route", |s| !s.routes.is_empty()).await;

    // Triggers skipped (replica mode): no event is ever sent for this change, and the
    // version stays: only the fingerprint over every column can see it.
    db.exec(
        "SET session_replication_role = replica;
         UPDATE routes SET path_prefix = '/b';",
    )
    .await;
    until(&lb, "the change anti-entropy found", |s| {
        s.routes
            .rows()
            .first()
            .is_some_and(|r| r.path_prefix == "/b")
    })
    .await;
    assert_eq!(
        lb.sync.get().last_resync_reason.as_deref(),
        Some("anti-entropy")
    );
    assert_fingerprints_match(&db, &lb, "the heal").await;
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn check_constraints_refuse_bad_routes() {
    let db = TestDb::new().await;
    load_balancer::db::Db::new(&db.url)
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let c = db.client().await;
    for (sql, constraint) in [
        (
            "INSERT INTO routes (host, pool) VALUES ('Example.com', 'web')",
            "routes_host_dns_name",
        ),
        (
            "INSERT INTO routes (host, pool) VALUES ('*.', 'web')",
            "routes_host_dns_name",
        ),
        (
            "INSERT INTO routes (path_prefix, pool) VALUES ('api', 'web')",
            "routes_path_prefix_path",
        ),
        (
            "INSERT INTO routes (path_prefix, pool) VALUES ('/a?b=1', 'web')",
            "routes_path_prefix_path",
        ),
        (
            "INSERT INTO routes (pool) VALUES ('')",
            "routes_pool_not_empty",
        ),
        (
            "INSERT INTO routes (pool, listener) VALUES ('web', 'bad name')",
            "routes_listener_name",
        ),
    ] {
        let e = c.batch_execute(sql).await.expect_err(sql);
        let db_error = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db_error.constraint(), Some(constraint), "{sql}");
        assert!(db_error.message().contains(constraint), "{sql}: {db_error}");
    }
    // What the constraints allow.
    c.batch_execute(
        "INSERT INTO routes (host, path_prefix, pool, priority, listener) VALUES
             ('*.example.com', '/api/v1', 'web', 5, 'edge-1.a_b'),
             ('10.0.0.1', '/', 'web', -1, NULL),
             (NULL, '/é;x=1', 'web', 0, NULL)",
    )
    .await
    .unwrap();
}

/// V4 applies on a database already at V3, with workers in it; its routes then follow.
#[tokio::test]
async fn the_routes_migration_applies_to_a_database_at_v3() {
    let db = TestDb::new().await;
    let database = load_balancer::db::Db::new(&db.url).unwrap();
    database.migrate().await.unwrap();
    db.exec("INSERT INTO workers (worker_address) VALUES ('127.0.0.1:8000')")
        .await;
    // Back to V3: what V4 adds is gone, and its history row too.
    db.exec(UNDO_V4).await;
    let c = db.client().await;
    let version = "SELECT max(version) FROM refinery_schema_history";
    assert_eq!(c.query_one(version, &[]).await.unwrap().get::<_, i32>(0), 3);

    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    assert_eq!(c.query_one(version, &[]).await.unwrap().get::<_, i32>(0), 4);
    assert_eq!(lb.ring.load().pool(0).workers.len(), 1, "workers kept");
    db.exec("INSERT INTO routes (pool) VALUES ('default')")
        .await;
    until(&lb, "a route after the migration", |s| !s.routes.is_empty()).await;
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn status_lists_each_listeners_routes() {
    let db = TestDb::new().await;
    let mut config = config(&db, Protocol::Http, AlgorithmKind::Weighted);
    config.listeners[0].name = Some("web".into());
    let mut lb = load_balancer::start(&config).await.expect("proxy starts");
    db.exec(
        "INSERT INTO routes (host, path_prefix, pool, listener) VALUES
             (NULL, '/', 'default', NULL),
             ('a.example.com', '/x', 'default', 'web'),
             (NULL, '/', 'default', 'other')",
    )
    .await;
    until(&lb, "three routes", |s| s.routes.rows().len() == 3).await;
    let status = status(&lb).await;
    let listeners = status["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["name"], "web");
    assert_eq!(listeners[0]["address"], lb.listeners[0].to_string());
    let routes: Vec<(&str, &str)> = listeners[0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap_or("*"),
                r["path_prefix"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(routes, [("a.example.com", "/x"), ("*", "/")]);

    // A reload that renames the listener: /status follows, with the other name's routes.
    config.listeners[0].name = Some("other".into());
    lb.reload(config, Duration::from_secs(1))
        .await
        .expect("reloads");
    let status = common::status(&lb).await;
    let listener = &status["listeners"][0];
    assert_eq!(listener["name"], "other");
    let ids: Vec<i64> = listener["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [3, 1],
        "the route naming it before the one for every listener"
    );
    lb.stop(Duration::from_secs(5)).await;
}

/// Commit → published latency of a route change: from COMMIT returning to this client to
/// the ring's current generation holding the change, watched on the publish channel. The
/// subscriber hears of the commit as this client does, so the change is often published
/// before the client's COMMIT returns (then the figure is the time to see it, ~0): the
/// statement sent → published time, which includes the commit's round trip, is printed
/// beside it.
///
/// cargo test --release --test routes -- --ignored --nocapture commit_to_publish
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures, asserts only that every change arrives"]
async fn commit_to_publish_latency_of_route_changes() {
    let db = TestDb::new().await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    let c = db.client().await;
    // A realistic table behind the change: 1,000 other routes to recompile each time.
    c.batch_execute(
        "INSERT INTO routes (host, path_prefix, pool)
         SELECT 'svc' || i || '.example.com', '/api/' || (i % 10), 'p' || (i % 16)
         FROM generate_series(1, 1000) i",
    )
    .await
    .unwrap();
    until(&lb, "the routes", |s| s.routes.rows().len() == 1000).await;
    let id: i64 = c
        .query_one(
            "INSERT INTO routes (path_prefix, pool) VALUES ('/', 'default') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    until(&lb, "the measured route", |s| route(s, id).is_some()).await;

    let (mut from_commit, mut from_send) = (Vec::new(), Vec::new());
    let mut already = 0;
    for i in 1..=200 {
        let mut published = lb.ring.subscribe();
        let sent = Instant::now();
        c.batch_execute(&format!("UPDATE routes SET priority = {i} WHERE id = {id}"))
            .await
            .unwrap();
        let committed = Instant::now();
        let holds = || route(&lb.ring.load(), id).is_some_and(|r| r.priority == i);
        if holds() {
            already += 1;
        }
        tokio::time::timeout(WAIT, async {
            while !holds() {
                published.changed().await.expect("the ring lives");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("change {i} not published within {WAIT:?}"));
        from_commit.push(committed.elapsed());
        from_send.push(sent.elapsed());
    }
    let figures = |samples: &mut Vec<Duration>| {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize) - 1];
        format!(
            "p50 {:?}, p99 {:?}, max {:?}",
            at(0.50),
            at(0.99),
            samples[samples.len() - 1]
        )
    };
    println!(
        "route change (1,001 routes), 200 changes; {already} already published when COMMIT returned"
    );
    println!(
        "  COMMIT returned -> published: {}",
        figures(&mut from_commit)
    );
    println!(
        "  UPDATE sent     -> published: {}",
        figures(&mut from_send)
    );
    lb.stop(Duration::from_secs(5)).await;
}
