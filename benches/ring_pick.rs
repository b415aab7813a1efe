//! Ring pick cost: what the hot path pays per request to choose a backend (one atomic load
//! of the snapshot, the algorithm's pick, and the `Arc` clone that keeps the worker alive).
//! Measured on a quiet ring, and while another thread publishes 1,000 snapshots a second.
//!
//! cargo bench --bench ring_pick

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use load_balancer::balance::{Affinity, Balancer, Pick, build};
use load_balancer::config::{AlgorithmKind, PoolConfig};
use load_balancer::ring::{Change, InFlight, Membership, Ring, Row};

fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| Row {
            id: i as i64 + 1,
            address: format!("10.0.{}.{}:80", i / 250, i % 250),
            weight: 1 + (i % 3) as u32,
            pool: "default".into(),
            version: i as i64 + 1,
        })
        .collect()
}

/// Worker 1 gets a new weight, as an UPDATE event with `version` would carry.
fn reweight(version: i64) -> Change {
    Change::Update {
        row: Row {
            id: 1,
            address: "10.0.0.0:80".into(),
            weight: 1 + (version % 5) as u32,
            pool: "default".into(),
            version,
        },
        prev: version - 1,
    }
}

fn ring_with(n: usize) -> (Arc<Ring>, Membership) {
    let ring = Ring::new(&["default".to_string()]);
    let mut membership = Membership::new(ring.clone());
    membership.reset(rows(n));
    (ring, membership)
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for (n, kinds) in [
        (
            3,
            &[
                AlgorithmKind::RoundRobin,
                AlgorithmKind::Weighted,
                AlgorithmKind::Random,
                AlgorithmKind::LeastConnections,
                AlgorithmKind::PowerOfTwo,
            ][..],
        ),
        (
            10_000,
            &[
                AlgorithmKind::RoundRobin,
                AlgorithmKind::Weighted,
                AlgorithmKind::Random,
                AlgorithmKind::PowerOfTwo,
            ][..],
        ),
    ] {
        let (ring, _membership) = ring_with(n);
        for &kind in kinds {
            let balancer =
                Balancer::new(ring.clone(), "default", build(kind), PoolConfig::default());
            group.bench_function(format!("{}/{n}", kind.name()), |b| {
                b.iter(|| black_box(balancer.pick(&[], Affinity::default())))
            });
        }
        // consistent_hash with a key: hashing the client's address, the owner's slot, and
        // the checks of its availability; with bounded loads on, the pool's load and usable
        // weight (kept fresh with a clock read) as well.
        let clients: Vec<std::net::IpAddr> = (0..1024u32)
            .map(|i| std::net::Ipv4Addr::from(0xc633_6400 + i).into())
            .collect();
        for (name, factor) in [("consistent_hash", 0), ("consistent_hash_bounded", 150)] {
            let balancer = Balancer::of(
                ring.clone(),
                "default",
                AlgorithmKind::ConsistentHash,
                factor,
                PoolConfig::default(),
            );
            let mut i = 0;
            group.bench_function(format!("{name}/{n}"), |b| {
                b.iter(|| {
                    i = (i + 1) % clients.len();
                    let hash = load_balancer::proxy::forward::affinity::client_hash(clients[i]);
                    let affinity = Affinity {
                        hash: Some(black_box(hash)),
                        sticky: None,
                    };
                    black_box(balancer.pick(&[], affinity))
                })
            });
        }
    }
    group.finish();
}

/// What a request does with the ring: the pick, then counting itself in flight on the
/// worker until it is done (here at once). In a large pool both touch the picked worker's
/// memory, which is not in cache.
fn picks_in_flight(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_and_count_in_flight");
    for n in [3, 10_000] {
        let (ring, _membership) = ring_with(n);
        for kind in [AlgorithmKind::RoundRobin, AlgorithmKind::Weighted] {
            let balancer =
                Balancer::new(ring.clone(), "default", build(kind), PoolConfig::default());
            group.bench_function(format!("{}/{n}", kind.name()), |b| {
                b.iter(|| match balancer.pick(&[], Affinity::default()) {
                    Pick::Worker(w) => black_box(InFlight::new(w)),
                    _ => unreachable!("every worker is usable"),
                })
            });
        }
    }
    group.finish();
}

/// The same picks while a publisher thread swaps in a new snapshot every millisecond
/// (each one a real rebuild: one worker's weight changes).
fn picks_while_publishing(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_while_publishing_1000_per_s");
    for n in [3, 10_000] {
        let (ring, mut membership) = ring_with(n);
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut version = 1_000_000;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    version += 1;
                    membership.apply(vec![reweight(version)]);
                    next += Duration::from_millis(1);
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        };
        for kind in [AlgorithmKind::RoundRobin, AlgorithmKind::Weighted] {
            let balancer =
                Balancer::new(ring.clone(), "default", build(kind), PoolConfig::default());
            group.bench_function(format!("{}/{n}", kind.name()), |b| {
                b.iter(|| black_box(balancer.pick(&[], Affinity::default())))
            });
        }
        stop.store(true, Ordering::Relaxed);
        publisher.join().unwrap();
    }
    group.finish();
}

/// Applying changes off the hot path: one reweight in a big pool, and a 10,000-row reset.
fn updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.sample_size(20);
    let (_ring, mut membership) = ring_with(10_000);
    let mut version = 1_000_000;
    group.bench_function("reweight_one/10000", |b| {
        b.iter(|| {
            version += 1;
            membership.apply(vec![reweight(version)])
        })
    });
    group.bench_function("reset/10000", |b| {
        b.iter_batched(
            || {
                let ring = Ring::new(&["default".to_string()]);
                (Membership::new(ring), rows(10_000))
            },
            |(mut m, rows)| m.reset(rows),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    picks,
    picks_in_flight,
    picks_while_publishing,
    updates
);
criterion_main!(benches);
