//! Route lookup and compile costs (issue 12 §3: a lookup ≤ 100 ns with 10,000 routes; the
//! compile of 10,000 routes, which the subscriber pays on every publish that changes a
//! route, reported). A lookup is what the hot path will pay per request: the listener's
//! table, the host's normalisation and the host tiers' and paths' probes.
//!
//! cargo bench --bench routes

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use load_balancer::ring::routes::{RouteRow, Routes};

/// `n` routes, a mix of the shapes operators write: for 10,000, 6,000 exact hosts (some
/// with a few API prefixes), 1,000 wildcards, 2,500 prefixes for any host (of many
/// distinct lengths, so a lookup probes several), and 500 routes for one named listener.
fn rows(n: usize) -> Vec<RouteRow> {
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let (host, path, listener) = match i * 20 / n.max(1) {
            // 60%: exact hosts; one in four has an API prefix besides "/".
            0..12 => {
                let host = format!("svc{}.example.com", i / 2);
                let path = if i % 2 == 0 {
                    "/".to_string()
                } else {
                    format!("/api/v{}/", i % 7)
                };
                (Some(host), path, None)
            }
            // 10%: wildcards, some nested under others.
            12..14 => (
                Some(format!("*.t{}.example.net", i % 1000)),
                "/".to_string(),
                None,
            ),
            // 25%: any host, by path: prefixes of lengths 3 to about 30.
            14..19 => {
                let depth = i % 5;
                let path: String = (0..=depth).map(|d| format!("/s{}", (i + d) % 97)).collect();
                (None, path, None)
            }
            // 5%: for the listener named "web" only.
            _ => (None, format!("/web{}", i % 50), Some("web".to_string())),
        };
        rows.push(RouteRow {
            id: i as i64 + 1,
            version: i as i64 + 1,
            host,
            path_prefix: path,
            pool: format!("pool{}", i % 64),
            priority: (i % 3) as i32,
            listener,
        });
    }
    rows
}

/// A lookup's arguments: listener name, Host, path.
type Request = (Option<&'static str>, Option<Vec<u8>>, Vec<u8>);

/// Requests as clients send them: exact hosts (with a port, in capitals), deep wildcard
/// hosts, unknown hosts that fall through to paths, on a named listener and an unnamed one.
/// With 10 routes nearly all miss, after probing every tier: the most work those do.
fn requests() -> Vec<Request> {
    (0..1024)
        .map(|i| {
            let (host, path) = match i % 6 {
                0 => (
                    format!("svc{}.example.com", i * 7 % 3000),
                    "/api/v3/users/42".to_string(),
                ),
                1 => (format!("SVC{}.Example.COM:8443", i % 3000), "/".to_string()),
                2 => (
                    format!("a{}.b.t{}.example.net", i, i % 1000),
                    "/index.html".to_string(),
                ),
                3 => (
                    "unknown.example.org".to_string(),
                    format!("/s{}/s{}/s{}/file", i % 97, (i + 1) % 97, (i + 2) % 97),
                ),
                4 => (
                    format!("svc{}.example.com", i % 3000),
                    "/nothing/here".to_string(),
                ),
                _ => ("www.example.org".to_string(), format!("/web{}/x", i % 50)),
            };
            let listener = if i % 2 == 0 { Some("web") } else { None };
            (listener, Some(host.into_bytes()), path.into_bytes())
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let requests = requests();
    for n in [10, 10_000] {
        let routes = Routes::compile(rows(n), |p| p.len());
        let hits = requests
            .iter()
            .filter(|(l, h, p)| routes.lookup(*l, h.as_deref(), p).is_some())
            .count();
        eprintln!("{n} routes: {hits} of {} requests match", requests.len());
        let mut i = 0;
        c.bench_function(&format!("routes lookup, {n} routes"), |b| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                let (listener, host, path) = &requests[i];
                routes
                    .lookup(
                        black_box(*listener),
                        black_box(host.as_deref()),
                        black_box(path),
                    )
                    .map(|r| r.pool)
            })
        });
    }
}

fn compile(c: &mut Criterion) {
    let rows = rows(10_000);
    c.bench_function("routes compile, 10,000 routes", |b| {
        b.iter(|| Routes::compile(black_box(rows.clone()), |p| p.len()))
    });
}

criterion_group! {
    name = benches;
    // Shorter than criterion's defaults: the figures settle well within them.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = lookup, compile
}
criterion_main!(benches);
