//! Maglev pick and build costs (issue 12: a pick ≤ 100 ns at 3 and at 10,000 workers, the
//! rebuild of a 10,000-worker table reported). A pick is what the hot path will pay: hashing
//! the request's key and reading its slot.
//!
//! cargo bench --bench maglev

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use load_balancer::ring::maglev::{Table, key_hash};

fn addresses(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", i / 62_500, i / 250 % 250, i % 250))
        .collect()
}

/// Mixed weights, so the weighted fill is what gets measured, not an equal round robin.
fn workers(addresses: &[String]) -> Vec<(&str, u32)> {
    addresses
        .iter()
        .enumerate()
        .map(|(i, a)| (a.as_str(), 1 + (i % 3) as u32))
        .collect()
}

/// Client addresses as keys, as `hash_key = "client_ip"` will hash them.
fn keys() -> Vec<String> {
    (0..1024)
        .map(|i| format!("198.51.{}.{}", i / 250, i % 250))
        .collect()
}

fn pick(c: &mut Criterion) {
    let keys = keys();
    for n in [3, 10_000] {
        let addresses = addresses(n);
        let table = Table::build(&workers(&addresses));
        let mut i = 0;
        c.bench_function(&format!("maglev pick (key_hash + get), {n} workers"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                table.get(key_hash(black_box(keys[i].as_bytes())))
            })
        });
    }
}

/// Every pool's table is built when the pool changes: for a small pool the cost is
/// filling the 65,537 slots, for a large one the workers' turns.
fn build(c: &mut Criterion) {
    for n in [3, 10_000] {
        let addresses = addresses(n);
        let list = workers(&addresses);
        c.bench_function(&format!("maglev build, {n} workers"), |b| {
            b.iter(|| Table::build(black_box(&list)))
        });
    }
}

criterion_group!(benches, pick, build);
criterion_main!(benches);
