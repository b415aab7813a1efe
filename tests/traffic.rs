//! Plain SQL on `workers` moves live HTTP traffic: end to end through the real proxy, a real
//! PostgreSQL database of the test's own, and real HTTP backends.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use load_balancer::config::AlgorithmKind;

fn counts(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn insert_update_delete_truncate_move_traffic() {
    let db = TestDb::new().await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    let proxy = lb.listeners[0];
    let c = client();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);

    // Nothing in the table yet: 503 with a reason.
    let (status, body) = get(&c, proxy, "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("no worker"), "{body}");

    // The seed's own INSERT form: weight 1, pool default.
    add(&db, &lb, &[&a]).await;
    assert_eq!(tally(&c, proxy, 10).await, counts(&[("a", 10)]));

    add(&db, &lb, &[&b]).await;
    assert_eq!(tally(&c, proxy, 10).await, counts(&[("a", 5), ("b", 5)]));

    change(
        &db,
        &lb,
        &format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}'",
            a.addr
        ),
    )
    .await;
    assert_eq!(tally(&c, proxy, 10).await, counts(&[("b", 10)]));

    change(
        &db,
        &lb,
        &format!("DELETE FROM workers WHERE worker_address = '{}'", b.addr),
    )
    .await;
    assert_eq!(tally(&c, proxy, 4).await, counts(&[("503", 4)]));

    change(&db, &lb, "UPDATE workers SET weight = 2").await;
    assert_eq!(tally(&c, proxy, 4).await, counts(&[("a", 4)]));

    change(&db, &lb, "TRUNCATE workers").await;
    assert_eq!(tally(&c, proxy, 4).await, counts(&[("503", 4)]));

    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn weights_3_1_0_give_exactly_that_split() {
    let db = TestDb::new().await;
    let (a, b, z) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("z").await,
    );
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    change(
        &db,
        &lb,
        &format!(
            "INSERT INTO workers(worker_address, weight) VALUES ('{}', 3), ('{}', 1), ('{}', 0)",
            a.addr, b.addr, z.addr
        ),
    )
    .await;
    let c = client();
    assert_eq!(
        tally(&c, lb.listeners[0], 400).await,
        counts(&[("a", 300), ("b", 100)])
    );
    assert_eq!(z.hits(), 0, "weight 0 gets nothing");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn every_algorithm_serves_and_honours_drain() {
    let (a, b, z) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("z").await,
    );
    for kind in [
        AlgorithmKind::RoundRobin,
        AlgorithmKind::Random,
        AlgorithmKind::LeastConnections,
        AlgorithmKind::PowerOfTwo,
    ] {
        let db = TestDb::new().await;
        let lb = start_http(&db, kind).await;
        change(
            &db,
            &lb,
            &format!(
                "INSERT INTO workers(worker_address, weight) VALUES ('{}', 3), ('{}', 1), ('{}', 0)",
                a.addr, b.addr, z.addr
            ),
        )
        .await;
        let got = tally(&client(), lb.listeners[0], 200).await;
        assert_eq!(got.values().sum::<usize>(), 200, "{kind:?}: {got:?}");
        assert!(
            !got.contains_key("z"),
            "{kind:?} sent traffic to a drained worker: {got:?}"
        );
        assert!(
            got.contains_key("a") && got.contains_key("b"),
            "{kind:?}: {got:?}"
        );
        if kind == AlgorithmKind::RoundRobin {
            assert_eq!(got, counts(&[("a", 100), ("b", 100)]));
        }
        lb.stop(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn rolled_back_update_changes_nothing() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    add(&db, &lb, &[&a]).await;
    let before = lb.ring.load().generation;

    db.exec("BEGIN; UPDATE workers SET weight = 0; ROLLBACK;")
        .await;
    // A later committed change in another pool is the signal that everything sent before
    // it has been seen: the rollback sent nothing, so this is the only publish.
    let after = change(
        &db,
        &lb,
        "INSERT INTO workers(worker_address, pool) VALUES ('127.0.0.1:9', 'other')",
    )
    .await;
    assert_eq!(after, before + 1, "the rolled-back UPDATE must not publish");
    assert_eq!(
        tally(&client(), lb.listeners[0], 5).await,
        counts(&[("a", 5)])
    );
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn thousand_row_update_is_one_publish() {
    let db = TestDb::new().await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    change(
        &db,
        &lb,
        "INSERT INTO workers(worker_address, pool)
         SELECT '10.9.' || (i / 250) || '.' || (i % 250) || ':80', 'bulk' FROM generate_series(0, 999) i",
    )
    .await;
    let g0 = lb.ring.load().generation;
    let bulk = |snapshot: &load_balancer::ring::Snapshot| {
        let p = snapshot.pool_named("bulk").expect("bulk pool");
        (
            p.workers.len(),
            p.workers.iter().filter(|w| w.weight == 7).count(),
        )
    };
    assert_eq!(bulk(&lb.ring.load()), (1000, 0));

    db.exec("UPDATE workers SET weight = 7 WHERE pool = 'bulk'")
        .await;
    let g1 = wait_publish(&lb, g0, "bulk update").await;
    // The first snapshot after the UPDATE already holds all 1000 changes...
    assert_eq!(g1, g0 + 1);
    assert_eq!(bulk(&lb.ring.load()), (1000, 1000));
    // ...and no other publish follows it: the next change is the very next generation.
    let g2 = change(
        &db,
        &lb,
        "INSERT INTO workers(worker_address, pool) VALUES ('127.0.0.1:9', 'marker')",
    )
    .await;
    assert_eq!(g2, g1 + 1, "the 1000-row UPDATE must publish exactly once");

    db.exec("DELETE FROM workers WHERE pool = 'bulk'").await;
    let g3 = wait_publish(&lb, g2, "bulk delete").await;
    assert!(lb.ring.load().pool_named("bulk").is_none());
    let g4 = change(&db, &lb, "DELETE FROM workers WHERE pool = 'marker'").await;
    assert_eq!((g3, g4), (g2 + 1, g2 + 2));
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn weight_zero_drains_while_in_flight_requests_finish() {
    let db = TestDb::new().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    let proxy = lb.listeners[0];
    add(&db, &lb, &[&a]).await;

    // Three requests parked inside backend a.
    let held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(&client(), proxy, "/hold").await }))
        .collect();
    tokio::time::timeout(WAIT, async {
        while a.holding.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("three requests reach backend a");

    change(
        &db,
        &lb,
        &format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}';
             INSERT INTO workers(worker_address) VALUES ('{}')",
            a.addr, b.addr
        ),
    )
    .await;
    // Wait until both statements are in the ring (they may publish separately).
    tokio::time::timeout(WAIT, async {
        loop {
            let ready = lb.ring.load().pool(0).workers.len() == 2;
            if ready {
                break;
            }
            let g = lb.ring.load().generation;
            wait_publish(&lb, g, "second statement").await;
        }
    })
    .await
    .expect("drain and insert published");

    let status = status(&lb).await;
    let w = &status["pools"][0]["workers"][0];
    assert_eq!(
        (w["weight"].as_u64(), w["in_flight"].as_u64()),
        (Some(0), Some(3))
    );

    // New requests go to b only, while a still holds its three.
    let hits_a = a.hits();
    assert_eq!(tally(&client(), proxy, 10).await, counts(&[("b", 10)]));
    assert_eq!(a.hits(), hits_a);

    a.release();
    for h in held {
        assert_eq!(
            h.await.unwrap(),
            (200, "a".to_string()),
            "in-flight request finishes on a"
        );
    }
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_worker() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let dead = Backend::start("dead").await;
    dead.stop();
    let dead_addr = dead.addr;
    drop(dead);
    let lb = start_http(&db, AlgorithmKind::RoundRobin).await;
    change(
        &db,
        &lb,
        &format!(
            "INSERT INTO workers(worker_address) VALUES ('{}'), ('{dead_addr}')",
            a.addr
        ),
    )
    .await;
    assert_eq!(
        tally(&client(), lb.listeners[0], 20).await,
        counts(&[("a", 20)])
    );

    // With no other worker to go to, the client gets a 502.
    change(
        &db,
        &lb,
        &format!("DELETE FROM workers WHERE worker_address = '{}'", a.addr),
    )
    .await;
    let (status, _) = get(&client(), lb.listeners[0], "/").await;
    assert_eq!(status, 502);
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn headers_are_forwarded_and_hop_by_hop_stripped() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    add(&db, &lb, &[&a]).await;

    let req = hyper::Request::get(format!("http://{}/headers", lb.listeners[0]))
        .header("host", "app.example")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-app", "kept")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = client().request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen = String::from_utf8_lossy(&body).to_string();
    assert!(seen.contains("host: app.example\n"), "{seen}");
    assert!(seen.contains("x-app: kept\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains("forwarded: for=127.0.0.1;proto=http;host=\"app.example\"\n"),
        "{seen}"
    );
    assert!(!seen.contains("x-secret"), "{seen}");
    assert!(!seen.contains("keep-alive"), "{seen}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    add(&db, &lb, &[&a]).await;
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = hyper::Request::post(format!("http://{}/echo", lb.listeners[0]))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            payload.clone(),
        )))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        body == payload,
        "echoed body differs ({} bytes)",
        body.len()
    );
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn keep_alive_connections_to_backends_are_reused() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    add(&db, &lb, &[&a]).await;
    let c = client();
    tally(&c, lb.listeners[0], 50).await;
    let s = status(&lb).await;
    assert_eq!(s["pools"][0]["workers"][0]["idle_connections"], 1, "{s}");
    // A reweight keeps the worker's state, pooled connections included.
    change(&db, &lb, "UPDATE workers SET weight = 5").await;
    let s = status(&lb).await;
    assert_eq!(s["pools"][0]["workers"][0]["idle_connections"], 1, "{s}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    let proxy = lb.listeners[0];
    add(&db, &lb, &[&a]).await;
    let held = tokio::spawn(async move { get(&client(), proxy, "/hold").await });
    tokio::time::timeout(WAIT, async {
        while a.holding.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("request reaches the backend");
    let stopping = tokio::spawn(lb.stop(Duration::from_secs(10)));
    // New connections are refused once the drain has started.
    tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(proxy).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener closes");
    a.release();
    assert_eq!(held.await.unwrap(), (200, "a".to_string()));
    assert!(stopping.await.unwrap(), "drained within the deadline");
}
