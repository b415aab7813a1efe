//! Health you can `SELECT`: two instances on one database write their view of every worker
//! to `worker_status`; `worker_health` sums the fresh views; transitions are NOTIFYed on
//! `worker_health`; a deleted worker's rows go; a stopped instance removes its own.

mod common;

use std::time::Duration;

use common::{
    Backend, TestDb, UNDO_V4, WAIT, add, client, eventually_within, get, quick_health_check,
};
use load_balancer::config::{AlgorithmKind, Config, PoolConfig, Protocol, StatusConfig};
use tokio::sync::mpsc;

/// A config for instance `name` that writes every 200 ms, with `pool` for "default".
fn instance(db: &TestDb, name: &str, pool: PoolConfig) -> Config {
    let mut config = common::config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    config.status = StatusConfig {
        interval: Duration::from_millis(200),
        instance: Some(name.to_string()),
    };
    config.pools.insert("default".into(), pool);
    config
}

async fn start(config: &Config) -> load_balancer::Running {
    load_balancer::start(config).await.expect("proxy starts")
}

/// Active checks of `/health` every 50 ms; one failure or pass flips a worker.
fn checked(pool: PoolConfig) -> PoolConfig {
    PoolConfig {
        health_check: Some(quick_health_check()),
        ..pool
    }
}

/// `sql`'s rows as text, one `a|b|c` string per row.
async fn rows(db: &TestDb, sql: &str) -> Vec<String> {
    let client = db.client().await;
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

/// Polls `sql` until its rows are `want`; fails with the last rows seen.
async fn until_rows(db: &TestDb, sql: &str, want: &[&str]) {
    let mut last = Vec::new();
    let polled = tokio::time::timeout(WAIT, async {
        loop {
            last = rows(db, sql).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "{sql}\nnot {want:#?} within {WAIT:?}; last: {last:#?}"
    );
}

#[tokio::test]
async fn two_instances_write_their_views_and_the_view_sums_them() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let one = start(&instance(&db, "one", PoolConfig::default())).await;
    let two = start(&instance(&db, "two", PoolConfig::default())).await;
    add(&db, &one, &[&a, &b]).await;

    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let want = [
        format!("one|{a_addr}|default|t|f|0|f|1|200"),
        format!("one|{b_addr}|default|t|f|0|f|1|200"),
        format!("two|{a_addr}|default|t|f|0|f|1|200"),
        format!("two|{b_addr}|default|t|f|0|f|1|200"),
    ];
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    until_rows(
        &db,
        "SELECT instance, worker_address, pool, healthy, ejected, in_flight, drained, weight,
                interval_ms
         FROM worker_status ORDER BY instance, worker_id",
        &want,
    )
    .await;

    // Four requests through instance one, round robin: two each; instance two served none.
    let c = client();
    for _ in 0..4 {
        assert_eq!(get(&c, one.listeners[0], "/").await.0, 200);
    }
    until_rows(
        &db,
        "SELECT instance, requests, failures FROM worker_status ORDER BY instance, worker_id",
        &["one|2|0", "one|2|0", "two|0|0", "two|0|0"],
    )
    .await;

    let fresh = rows(
        &db,
        "SELECT worker_address, weight, instances, healthy_instances, ejected_instances,
                unhealthy_on, in_flight, updated_at IS NOT NULL
         FROM worker_health ORDER BY worker_id",
    )
    .await;
    assert_eq!(
        fresh,
        [
            format!("{a_addr}|1|2|2|0|{{}}|0|t"),
            format!("{b_addr}|1|2|2|0|{{}}|0|t")
        ]
    );

    // A worker nobody reports yet still shows, with no instance.
    db.exec(
        "INSERT INTO worker_status (instance, worker_id, pool, worker_address, healthy,
                 ejected, in_flight, requests, failures, weight, interval_ms, updated_at)
             SELECT 'gone', id, pool, worker_address, false, false, 0, 0, 0, 1, 200,
                    now() - interval '1 second'
             FROM workers",
    )
    .await;
    // The new worker and the read are one transaction: the running instances cannot see the
    // worker yet, so none can have reported it (they do within milliseconds of the commit).
    let health = rows(
        &db,
        "BEGIN;
         INSERT INTO workers (worker_address, weight) VALUES ('127.0.0.1:1', 0);
         SELECT worker_address, instances, healthy_instances FROM worker_health
         ORDER BY worker_id;
         COMMIT",
    )
    .await;
    assert_eq!(
        health,
        [
            format!("{a_addr}|2|2"),
            format!("{b_addr}|2|2"),
            "127.0.0.1:1|0|0".to_string()
        ],
        "a stale instance (3 of its intervals old) is not counted"
    );

    one.stop(Duration::from_secs(5)).await;
    two.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn transitions_show_at_once_and_are_notified() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let pool = common::eject_on_first_failure(checked(PoolConfig::default()));
    let one = start(&instance(&db, "one", pool.clone())).await;
    let two = start(&instance(&db, "two", pool)).await;
    add(&db, &one, &[&a, &b]).await;
    let a_addr = a.addr.to_string();
    let id: i64 = db
        .client()
        .await
        .query_one(
            "SELECT id FROM workers WHERE worker_address = $1",
            &[&a_addr],
        )
        .await
        .unwrap()
        .get(0);
    let health_of_a = format!(
        "SELECT instances, healthy_instances, ejected_instances, unhealthy_on
         FROM worker_health WHERE worker_id = {id}"
    );
    until_rows(&db, &health_of_a, &["2|2|0|{}"]).await;

    let mut listener = listening(&db).await;

    // Health checks fail: both instances see it unhealthy and say so at once.
    a.health.store(503, std::sync::atomic::Ordering::SeqCst);
    until_rows(&db, &health_of_a, &["2|0|0|{one,two}"]).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let note = tokio::time::timeout(WAIT, listener.recv())
            .await
            .unwrap_or_else(|_| panic!("no NOTIFY worker_health within {WAIT:?}; got {got:#?}"))
            .expect("listener alive");
        got.push(serde_json::from_str::<serde_json::Value>(&note).expect("JSON payload"));
    }
    got.sort_by_key(|n| n["instance"].as_str().unwrap().to_string());
    for (note, name) in got.iter().zip(["one", "two"]) {
        assert_eq!(
            *note,
            serde_json::json!({
                "instance": name, "worker_id": id, "address": a_addr, "pool": "default",
                "healthy": false, "ejected": false
            })
        );
    }

    // Healthy again, then a failure of real traffic through instance one ejects it there.
    a.health.store(200, std::sync::atomic::Ordering::SeqCst);
    until_rows(&db, &health_of_a, &["2|2|0|{}"]).await;
    a.status.store(502, std::sync::atomic::Ordering::SeqCst);
    let c = client();
    eventually_within("a request reaches a and fails", WAIT, async || {
        get(&c, one.listeners[0], "/").await;
        rows(
            &db,
            &format!(
                "SELECT failures > 0 FROM worker_status WHERE instance = 'one' AND worker_id = {id}"
            ),
        )
        .await
            == ["t"]
    })
    .await;
    until_rows(&db, &health_of_a, &["2|2|1|{}"]).await;
    let ejected = loop {
        let note = tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("NOTIFY of the ejection")
            .expect("listener alive");
        let note: serde_json::Value = serde_json::from_str(&note).unwrap();
        if note["ejected"] == true {
            break note;
        }
    };
    assert_eq!(ejected["instance"], "one");
    assert_eq!(ejected["worker_id"], id);
    assert_eq!(ejected["healthy"], true);

    one.stop(Duration::from_secs(5)).await;
    two.stop(Duration::from_secs(5)).await;
}

/// A plain connection that has run `LISTEN worker_health`, and its payloads.
async fn listening(db: &TestDb) -> mpsc::UnboundedReceiver<String> {
    let (client, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("listener connects");
    let (tx, rx) = mpsc::unbounded_channel();
    let (listened_tx, listened_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    tokio::spawn(async move {
        client
            .batch_execute("LISTEN worker_health")
            .await
            .expect("LISTEN");
        let _ = listened_tx.send(());
        // Kept open for as long as the test runs.
        std::future::pending::<()>().await;
    });
    listened_rx.await.expect("LISTEN done");
    rx
}

#[tokio::test]
async fn deleted_workers_rows_go_and_a_stopped_instance_removes_its_own() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let one = start(&instance(&db, "one", PoolConfig::default())).await;
    let two = start(&instance(&db, "two", PoolConfig::default())).await;
    add(&db, &one, &[&a, &b]).await;
    let count = "SELECT instance, count(*) FROM worker_status GROUP BY instance ORDER BY 1";
    until_rows(&db, count, &["one|2", "two|2"]).await;

    // The trigger removes every instance's row of a deleted worker in the same statement.
    db.exec(&format!(
        "DELETE FROM workers WHERE worker_address = '{}'",
        a.addr
    ))
    .await;
    let left = rows(&db, "SELECT DISTINCT worker_address FROM worker_status").await;
    assert_eq!(left, [b.addr.to_string()]);
    // And nothing brings it back (an instance that raced the delete forgets it itself).
    tokio::time::sleep(Duration::from_millis(600)).await;
    until_rows(&db, count, &["one|1", "two|1"]).await;

    // Rows of a worker the instance no longer has (written behind its back) go at its next
    // interval.
    db.exec(
        "INSERT INTO worker_status (instance, worker_id, pool, worker_address, healthy,
             ejected, in_flight, requests, failures, weight, interval_ms)
         VALUES ('one', 999999, 'default', '127.0.0.1:1', true, false, 0, 0, 0, 1, 200)",
    )
    .await;
    until_rows(&db, count, &["one|1", "two|1"]).await;

    // stop() returns once the rows are gone.
    two.stop(Duration::from_secs(5)).await;
    assert_eq!(rows(&db, count).await, ["one|1"]);
    one.stop(Duration::from_secs(5)).await;
    assert_eq!(rows(&db, count).await, Vec::<String>::new());
}

/// V3 applies on a database already at V2, with workers in it.
#[tokio::test]
async fn the_worker_status_migration_applies_to_a_database_at_v2() {
    let db = TestDb::new().await;
    let database = load_balancer::db::Db::new(&db.url).unwrap();
    database.migrate().await.unwrap();
    db.exec("INSERT INTO workers (worker_address) VALUES ('127.0.0.1:8000')")
        .await;
    // Back to V2: what V3 adds is gone, and its history row too (and V4's, which came
    // after it).
    db.exec(UNDO_V4).await;
    db.exec(
        "DROP VIEW worker_health;
         DROP TABLE worker_status;
         DROP TRIGGER worker_status_forget_deleted ON workers;
         DROP TRIGGER worker_status_forget_all ON workers;
         DROP FUNCTION worker_status_forget_deleted();
         DROP FUNCTION worker_status_forget_all();
         DELETE FROM refinery_schema_history WHERE version = 3;",
    )
    .await;
    assert_eq!(
        rows(&db, "SELECT max(version) FROM refinery_schema_history").await,
        ["2"]
    );
    database.migrate().await.expect("V3 applies on V2");
    assert_eq!(
        rows(
            &db,
            "SELECT count(*) FROM refinery_schema_history WHERE version = 3"
        )
        .await,
        ["1"]
    );
    assert_eq!(
        rows(&db, "SELECT worker_address, instances FROM worker_health").await,
        ["127.0.0.1:8000|0"]
    );
}

/// A database that goes away costs the proxy nothing, and the rows come back with it.
#[tokio::test]
async fn rows_come_back_after_an_outage_and_the_proxy_serves_through_it() {
    use common::{Mode, Relay};
    let db = TestDb::new().await;
    let relay = Relay::to_postgres().await;
    let a = Backend::start("a").await;
    let mut config = instance(&db, "one", PoolConfig::default());
    config.database.url = relay.url(&db);
    let one = start(&config).await;
    add(&db, &one, &[&a]).await;
    let count = "SELECT instance, count(*) FROM worker_status GROUP BY instance";
    until_rows(&db, count, &["one|1"]).await;

    relay.set(Mode::Cut);
    // Written behind its back while it cannot write: only a write after the outage fixes it.
    db.exec("DELETE FROM worker_status").await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, one.listeners[0], "/").await, (200, "a".to_string()));
    }
    relay.set(Mode::Pass);
    until_rows(&db, count, &["one|1"]).await;
    until_rows(
        &db,
        "SELECT requests FROM worker_status WHERE instance = 'one'",
        &["3"],
    )
    .await;

    one.stop(Duration::from_secs(5)).await;
    assert_eq!(rows(&db, count).await, Vec::<String>::new());
}
