//! The database subscriber against a real PostgreSQL: concurrent startup, lost connections,
//! payloads it cannot use, rows that move, and the TCP listener fed by the same ring.

mod common;

use std::time::Duration;

use common::*;
use load_balancer::config::AlgorithmKind;
use load_balancer::config::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn two_instances_start_on_one_fresh_database_at_once() {
    let db = TestDb::new().await;
    let config = config(&db, Protocol::Http, AlgorithmKind::Weighted);
    let (one, two) = tokio::join!(load_balancer::start(&config), load_balancer::start(&config));
    let (one, two) = (one.expect("first instance"), two.expect("second instance"));
    let a = Backend::start("a").await;
    let before = (one.ring.load().generation, two.ring.load().generation);
    db.exec(&format!(
        "INSERT INTO workers(worker_address) VALUES ('{}')",
        a.addr
    ))
    .await;
    wait_publish(&one, before.0, "instance one").await;
    wait_publish(&two, before.1, "instance two").await;
    for lb in [&one, &two] {
        let (status, body) = get(&client(), lb.listeners[0], "/").await;
        assert_eq!((status, body.as_str()), (200, "a"));
    }
    one.stop(Duration::from_secs(5)).await;
    two.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn killed_subscriber_connection_reconnects_and_catches_up() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    add(&db, &lb, &[&a]).await;

    // Kill every connection the proxy has, then change the table while it is away.
    let admin = db.client().await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the subscriber connection was found");
    let before = lb.ring.load().generation;
    admin
        .batch_execute(&format!(
            "UPDATE workers SET weight = 0; INSERT INTO workers(worker_address) VALUES ('{}')",
            b.addr
        ))
        .await
        .unwrap();

    // Meanwhile the last ring keeps serving; afterwards the change arrives by resync or event.
    let (status, _) = get(&client(), lb.listeners[0], "/").await;
    assert_eq!(status, 200, "traffic does not depend on the database");
    tokio::time::timeout(WAIT, async {
        loop {
            let g = lb.ring.load().generation;
            if lb.ring.load().pool(0).workers.len() == 2 {
                break;
            }
            wait_publish(&lb, g, "catch up after reconnect").await;
        }
    })
    .await
    .expect("the ring catches up after the reconnect");
    assert!(lb.ring.load().generation > before);
    let got = tally(&client(), lb.listeners[0], 6).await;
    assert_eq!(got.get("b"), Some(&6), "{got:?}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn unparsable_payload_triggers_a_resync() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    add(&db, &lb, &[&a]).await;
    // A change the triggers do not see (replica mode skips them), then a garbage payload:
    // the only way the ring learns of the change is the resync the garbage provokes.
    let before = lb.ring.load().generation;
    db.exec(
        "SET session_replication_role = replica;
         UPDATE workers SET weight = 0;
         SET session_replication_role = origin;
         SELECT pg_notify('lb_workers', 'not json at all');",
    )
    .await;
    wait_publish(&lb, before, "resync after garbage").await;
    assert_eq!(lb.ring.load().pool(0).workers[0].weight, 0);
    let (status, _) = get(&client(), lb.listeners[0], "/").await;
    assert_eq!(status, 503, "the silent drain took effect");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn moved_renamed_and_reinserted_rows_end_in_the_right_ring() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    let c = client();
    add(&db, &lb, &[&a]).await;

    // Moved to another pool: gone from default.
    change(&db, &lb, "UPDATE workers SET pool = 'elsewhere'").await;
    assert_eq!(get(&c, lb.listeners[0], "/").await.0, 503);
    assert_eq!(
        lb.ring
            .load()
            .pool_named("elsewhere")
            .unwrap()
            .workers
            .len(),
        1
    );

    // Moved back, then its address changed in place.
    change(&db, &lb, "UPDATE workers SET pool = 'default'").await;
    assert_eq!(get(&c, lb.listeners[0], "/").await.1, "a");
    change(
        &db,
        &lb,
        &format!("UPDATE workers SET worker_address = '{}'", b.addr),
    )
    .await;
    assert_eq!(get(&c, lb.listeners[0], "/").await.1, "b");

    // Deleted and re-inserted in one transaction: a new id, still served.
    let old_id = lb.ring.load().pool(0).workers[0].id;
    change(
        &db,
        &lb,
        &format!(
            "BEGIN; DELETE FROM workers; INSERT INTO workers(worker_address) VALUES ('{}'); COMMIT;",
            a.addr
        ),
    )
    .await;
    let snapshot = lb.ring.load();
    assert_eq!(snapshot.pool(0).workers.len(), 1);
    assert_ne!(snapshot.pool(0).workers[0].id, old_id);
    assert_eq!(get(&c, lb.listeners[0], "/").await.1, "a");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn tcp_listener_balances_connections() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = load_balancer::start(&config(&db, Protocol::Tcp, AlgorithmKind::RoundRobin))
        .await
        .expect("tcp proxy starts");
    add(&db, &lb, &[&a, &b]).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        // A raw HTTP/1.0 exchange over one TCP connection per request.
        let mut s = tokio::net::TcpStream::connect(lb.listeners[0])
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        seen.push(reply.rsplit("\r\n\r\n").next().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, vec!["a", "a", "b", "b"]);

    // Drained: new connections go to b only.
    change(
        &db,
        &lb,
        &format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}'",
            a.addr
        ),
    )
    .await;
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(lb.listeners[0])
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.ends_with("\r\n\r\nb"), "{reply}");
    }
    lb.stop(Duration::from_secs(5)).await;
}
