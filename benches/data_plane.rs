//! Data-plane figures through the real proxy, real backends and a real PostgreSQL (the local
//! server, or TEST_PG), with the test fixtures:
//! - client-visible errors while a backend is killed under load (8 clients, idempotent GETs);
//! - in-flight requests completed during a drain (weight 0 while 50 requests are held);
//! - time for a dead worker to stop receiving traffic: active checks (interval 200 ms,
//!   fall 2) and passive ejection (5 consecutive failures, under load).
//!
//! cargo bench --bench data_plane

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use load_balancer::config::AlgorithmKind;
use load_balancer::config::{Config, HealthCheckConfig, HealthCheckKind, PoolConfig, Protocol};

#[tokio::main]
async fn main() {
    kill_under_load().await;
    drain_in_flight().await;
    dead_worker_active().await;
}

fn with_pool(db: &TestDb, pool: PoolConfig) -> Config {
    let mut c = config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    c.pools.insert("default".into(), pool);
    c
}

async fn setup(db: &TestDb, pool: PoolConfig, n: usize) -> (load_balancer::Running, Vec<Backend>) {
    let lb = load_balancer::start(&with_pool(db, pool)).await.unwrap();
    let mut backends = Vec::new();
    for i in 0..n {
        backends.push(Backend::start(&format!("b{i}")).await);
    }
    add(db, &lb, &backends.iter().collect::<Vec<_>>()).await;
    (lb, backends)
}

async fn kill_under_load() {
    for round in 0..3 {
        let db = TestDb::new().await;
        let (lb, backends) = setup(&db, PoolConfig::default(), 3).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(lb.listeners[0], stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed_at = Instant::now();
        backends[1].kill();
        let victim = backends[1].addr.to_string();
        let ejected = loop {
            let s = status(&lb).await;
            let w = s["pools"][0]["workers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["address"] == victim.as_str())
                .cloned()
                .unwrap();
            if w["ejected"].as_bool().unwrap() {
                break killed_at.elapsed();
            }
            assert!(killed_at.elapsed() < WAIT, "never ejected");
        };
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (ok, failed) = finish(&stop, clients).await;
        println!(
            "kill under load, round {round}: {failed} client-visible errors of {} requests; passive ejection {:.1} ms after the kill",
            ok + failed,
            ejected.as_secs_f64() * 1e3
        );
        lb.stop(Duration::from_secs(5)).await;
    }
}

async fn drain_in_flight() {
    let db = TestDb::new().await;
    let (lb, backends) = setup(&db, PoolConfig::default(), 2).await;
    let proxy = lb.listeners[0];
    change(
        &db,
        &lb,
        &format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}'",
            backends[1].addr
        ),
    )
    .await;
    let held: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { get(&client(), proxy, "/hold").await.0 }))
        .collect();
    eventually("50 held", || {
        backends[0].holding.load(Ordering::SeqCst) == 50
    })
    .await;
    change(&db, &lb, &format!(
        "UPDATE workers SET weight = 0 WHERE worker_address = '{}'; UPDATE workers SET weight = 1 WHERE worker_address = '{}'",
        backends[0].addr, backends[1].addr
    )).await;
    backends[0].release();
    let mut completed = 0;
    for h in held {
        if h.await.unwrap() == 200 {
            completed += 1;
        }
    }
    println!("drain: {completed} of 50 in-flight requests completed");
    lb.stop(Duration::from_secs(5)).await;
}

async fn dead_worker_active() {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let db = TestDb::new().await;
        let pool = PoolConfig {
            health_check: Some(HealthCheckConfig {
                kind: HealthCheckKind::Http {
                    method: hyper::Method::GET,
                    path: "/health".into(),
                    expect_status: 200,
                },
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(200),
                rise: 2,
                fall: 2,
            }),
            ..PoolConfig::default()
        };
        let (lb, backends) = setup(&db, pool, 2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = Instant::now();
        backends[1].kill();
        let victim = backends[1].addr.to_string();
        loop {
            let down = lb
                .ring
                .load()
                .pool(0)
                .workers
                .iter()
                .any(|w| *w.address.text == *victim && !w.state.health.is_healthy());
            if down {
                break;
            }
            assert!(killed.elapsed() < WAIT, "never marked down");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(killed.elapsed());
        lb.stop(Duration::from_secs(5)).await;
    }
    samples.sort();
    println!(
        "active check (interval 200 ms, fall 2): dead worker out after p50 {:.0} ms, max {:.0} ms (n {})",
        samples[samples.len() / 2].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    );
}
