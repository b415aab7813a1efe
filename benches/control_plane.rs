//! Control-plane figures through the real proxy and a real PostgreSQL (the local server, or
//! TEST_PG), with the test fixtures:
//! - bulk: a 10,000-row INSERT / UPDATE / DELETE, statement sent → the one publish;
//! - reconnect: after a 1 s outage (relay cut), database back → ring resynced;
//! - convergence: three instances, UPDATE sent → all three rings hold it.
//!
//! cargo bench --bench control_plane

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use load_balancer::config::AlgorithmKind;
use load_balancer::config::Protocol;

#[tokio::main]
async fn main() {
    // RUST_LOG=info shows the proxy's own NOTIFY → publish time per batch.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .init();
    }
    bulk().await;
    reconnect().await;
    convergence().await;
}

async fn bulk() {
    let db = TestDb::new().await;
    let lb = start_http(&db, AlgorithmKind::Weighted).await;
    let admin = db.client().await;
    let (mut insert, mut update, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    let mut commit_to_publish = Vec::new();
    for round in 0..5 {
        for (sql, samples) in [
            (
                "INSERT INTO workers(worker_address) SELECT '10.' || (i / 62500) || '.' || (i / 250 % 250) || '.' || (i % 250) || ':80' FROM generate_series(0, 9999) i".to_string(),
                &mut insert,
            ),
            (format!("UPDATE workers SET weight = {}", round + 2), &mut update),
            ("DELETE FROM workers".to_string(), &mut delete),
        ] {
            let generation = lb.ring.load().generation;
            let sent = Instant::now();
            admin.batch_execute(&sql).await.unwrap();
            let committed = Instant::now();
            wait_publish(&lb, generation, &sql).await;
            samples.push(sent.elapsed());
            commit_to_publish.push(committed.elapsed());
        }
    }
    report("bulk 10k INSERT, sent -> publish", &mut insert);
    report("bulk 10k UPDATE, sent -> publish", &mut update);
    report("bulk 10k DELETE, sent -> publish", &mut delete);
    report(
        "bulk 10k any, commit acked -> publish",
        &mut commit_to_publish,
    );
    lb.stop(Duration::from_secs(5)).await;
}

async fn reconnect() {
    let db = TestDb::new().await;
    let relay = Relay::to_postgres().await;
    let mut config = config(&db, Protocol::Http, AlgorithmKind::Weighted);
    config.database.url = relay.url(&db);
    config.database.heartbeat_interval = Duration::from_millis(300);
    let lb = load_balancer::start(&config).await.unwrap();
    let admin = db.client().await;
    let mut samples = Vec::new();
    for i in 0..10 {
        relay.set(Mode::Cut);
        eventually("reconnecting", || lb.sync.get().state == "reconnecting").await;
        admin
            .batch_execute(&format!(
                "INSERT INTO workers(worker_address) VALUES ('10.7.0.{i}:80')"
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await; // the outage
        let generation = lb.ring.load().generation;
        let back = Instant::now();
        relay.set(Mode::Pass);
        wait_publish(&lb, generation, "resync").await;
        samples.push(back.elapsed());
    }
    report(
        "reconnect + resync after a 1 s outage (backoff included)",
        &mut samples,
    );
    lb.stop(Duration::from_secs(5)).await;
}

async fn convergence() {
    let db = TestDb::new().await;
    let cfg = config(&db, Protocol::Http, AlgorithmKind::Weighted);
    let (x, y, z) = tokio::join!(
        load_balancer::start(&cfg),
        load_balancer::start(&cfg),
        load_balancer::start(&cfg)
    );
    let instances = [x.unwrap(), y.unwrap(), z.unwrap()];
    let admin = db.client().await;
    admin
        .batch_execute("INSERT INTO workers(worker_address) SELECT '10.8.0.' || i || ':80' FROM generate_series(1, 20) i")
        .await
        .unwrap();
    let update = admin
        .prepare("UPDATE workers SET weight = $1 WHERE id = 1")
        .await
        .unwrap();
    let mut samples = Vec::new();
    for i in 0..200u32 {
        let weight = (i % 100 + 2) as i32;
        let sent = Instant::now();
        admin.execute(&update, &[&weight]).await.unwrap();
        for lb in &instances {
            let mut rx = lb.ring.subscribe();
            let holds = || {
                lb.ring
                    .load()
                    .pool(0)
                    .workers
                    .iter()
                    .any(|w| w.id == 1 && w.weight == weight as u32)
            };
            while !holds() {
                tokio::time::timeout(WAIT, rx.changed())
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        samples.push(sent.elapsed());
    }
    report(
        "three instances converged, UPDATE sent -> all rings",
        &mut samples,
    );
    for lb in instances {
        lb.stop(Duration::from_secs(5)).await;
    }
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: n {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}
