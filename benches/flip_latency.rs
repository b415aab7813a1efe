//! Commit → first request routed by the new weights, through the real proxy and a real
//! PostgreSQL (the local server, or TEST_PG). Two backends; each flip moves all weight from
//! one to the other in one UPDATE, while clients send requests back to back; a flip is
//! routed when the first request reaches the new backend.
//!
//! Reported with p50/p99/max, each from the UPDATE being sent and from its commit being
//! acknowledged to the client that sent it, with the stages in between:
//!
//! - sent → commit acknowledged: PostgreSQL runs the statement and flushes its commit;
//! - commit acknowledged → NOTIFY received: by a LISTEN connection of the bench's own, which
//!   stands in for the proxy's (both are signalled by the same commit);
//! - commit acknowledged → ring published: seen by a task waiting on `Ring::subscribe`
//!   (and the part of it after the bench's own NOTIFY arrived: the proxy's listener);
//! - published → request at the new backend: the pick and the forwarding, plus the wait
//!   for a client to send its next request;
//! - and, as before, the response back at the client.
//!
//! cargo bench --bench flip_latency [-- FLIPS [CLIENTS]]   (defaults: 1000 flips, 2 clients)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use load_balancer::config::AlgorithmKind;
use load_balancer::config::{Config, DatabaseConfig, ListenerConfig, Protocol};
use tokio::sync::Notify;

/// Nanoseconds since a fixed instant, so instants fit in atomics (0: not yet).
fn stamp(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64 + 1
}

fn at(epoch: Instant, stamp: u64) -> Instant {
    epoch + Duration::from_nanos(stamp - 1)
}

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse().ok());
    let flips: usize = numbers.next().unwrap_or(1000);
    let clients: usize = numbers.next().unwrap_or(2).max(1);
    let server =
        std::env::var("TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("lb_bench_flip_{}", std::process::id());
    let admin = connect(&format!("{server}/postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{server}/{name}");

    let config = Config {
        database: DatabaseConfig::new(url.clone()),
        listeners: vec![ListenerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Protocol::Http,
            "default",
            AlgorithmKind::Weighted,
        )],
        admin: None,
        pools: Default::default(),
        status: Default::default(),
        log: Default::default(),
    };
    let lb = load_balancer::start(&config).await.expect("proxy starts");
    let epoch = Instant::now();
    let first_seen = [Arc::new(Seen::default()), Arc::new(Seen::default())];
    let backends = [
        backend("a", first_seen[0].clone(), epoch).await,
        backend("b", first_seen[1].clone(), epoch).await,
    ];
    // The proxy's listener measures its own part (first NOTIFY of a batch received →
    // published) and logs it; the bench keeps the latest value.
    let listener_us = Arc::new(AtomicU64::new(u64::MAX));
    {
        use tracing_subscriber::layer::SubscriberExt;
        let capture = Capture(listener_us.clone());
        let subscriber =
            tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(
                capture,
                tracing_subscriber::filter::filter_fn(|m| {
                    m.target() == "load_balancer::db::subscriber"
                }),
            ));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    }
    let db = connect(&url).await;
    db.batch_execute(&format!(
        "INSERT INTO workers(worker_address, weight) VALUES ('{}', 1), ('{}', 0)",
        backends[0], backends[1]
    ))
    .await
    .unwrap();
    let update = db
        .prepare("UPDATE workers SET weight = CASE WHEN worker_address = $1 THEN 1 ELSE 0 END")
        .await
        .unwrap();

    // The bench's own listener: when the END marker of each statement arrives.
    let notified = Arc::new(AtomicU64::new(0));
    let listen = listen(&url, notified.clone(), epoch).await;
    // When the ring last published a generation.
    let published = Arc::new(AtomicU64::new(0));
    let watcher = {
        let published = published.clone();
        let mut generations = lb.ring.subscribe();
        tokio::spawn(async move {
            while generations.changed().await.is_ok() {
                published.store(stamp(epoch), Ordering::Relaxed);
            }
        })
    };

    // Clients sending requests back to back, each on its own keep-alive connection, so a
    // flip waits for at most a fraction of one request's round trip to be noticed.
    let uri: hyper::Uri = format!("http://{}/", lb.listeners[0]).parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Each client's latest response: which backend sent it, and when it arrived.
    let answered = Arc::new(std::sync::Mutex::new(vec![(String::new(), epoch); clients]));
    let progress = Arc::new(Notify::new());
    let mut client_tasks = Vec::new();
    for me in 0..clients {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build_http::<Empty<Bytes>>();
        let (uri, stop, answered, progress) = (
            uri.clone(),
            stop.clone(),
            answered.clone(),
            progress.clone(),
        );
        client_tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = client.get(uri.clone()).await.unwrap();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let now = Instant::now();
                answered.lock().unwrap()[me] = (String::from_utf8_lossy(&body).into_owned(), now);
                progress.notify_waiters();
            }
        }));
    }
    // Warm up: the first backend serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.lock().unwrap().iter().any(|(by, _)| by != "a") {
        assert!(Instant::now() < deadline, "initial ring never served a");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let mut stages: Vec<(&str, Vec<Duration>)> = [
        "UPDATE sent -> commit acknowledged",
        "commit acknowledged -> NOTIFY received (bench's own LISTEN)",
        "commit acknowledged -> ring published",
        "NOTIFY received (bench's own LISTEN) -> ring published",
        "ring published -> first request at the new backend",
        "UPDATE sent -> first request routed (at the new backend)",
        "commit acknowledged -> first request routed (at the new backend)",
        "UPDATE sent -> first response from the new backend at a client",
        "commit acknowledged -> first response from the new backend at a client",
    ]
    .into_iter()
    .map(|s| (s, Vec::with_capacity(flips)))
    .collect();
    let since = |a: Instant, b: Instant| b.saturating_duration_since(a);
    // The proxy's listener, first NOTIFY received -> published, as it logs it.
    let mut listener = Vec::with_capacity(flips);
    // Published -> the new backend accepted the connection of the first routed request,
    // when it was a new one; how many flips reused a pooled connection instead.
    let (mut dials, mut reused) = (Vec::new(), 0);
    for flip in 0..flips {
        let (target, name, seen) = if flip % 2 == 0 {
            (&backends[1], "b", &first_seen[1])
        } else {
            (&backends[0], "a", &first_seen[0])
        };
        let address = target.to_string();
        seen.request.store(0, Ordering::Relaxed);
        seen.accepted.store(0, Ordering::Relaxed);
        listener_us.store(u64::MAX, Ordering::Relaxed);
        notified.store(0, Ordering::Relaxed);
        published.store(0, Ordering::Relaxed);
        let sent = Instant::now();
        db.execute(&update, &[&address]).await.unwrap();
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(5);
        let responded = loop {
            let wait = progress.notified();
            let first = answered
                .lock()
                .unwrap()
                .iter()
                .filter(|(by, when)| by == name && *when > committed)
                .map(|(_, when)| *when)
                .min();
            if let Some(when) = first {
                break when;
            }
            assert!(
                tokio::time::timeout_at(deadline.into(), wait).await.is_ok(),
                "flip {flip} never routed to {name}"
            );
        };
        // Until every client's latest answer is from the new backend, a request picked
        // before the flip may still be on its way to the old one, which the next flip
        // watches: wait for them (this also keeps flips back to back, as an idle gap
        // between them slows the next commit down on this machine).
        let deadline = Instant::now() + Duration::from_secs(5);
        while answered.lock().unwrap().iter().any(|(by, _)| by != name) {
            assert!(Instant::now() < deadline, "flip {flip}: a client is stuck");
            let _ = tokio::time::timeout(Duration::from_millis(1), progress.notified()).await;
        }
        // The listener and the watcher may still be a step behind the request.
        let deadline = Instant::now() + Duration::from_secs(5);
        while notified.load(Ordering::Relaxed) == 0
            || published.load(Ordering::Relaxed) == 0
            || listener_us.load(Ordering::Relaxed) == u64::MAX
        {
            assert!(
                Instant::now() < deadline,
                "flip {flip}: no NOTIFY or publish"
            );
            tokio::task::yield_now().await;
        }
        let routed = at(epoch, seen.request.load(Ordering::Relaxed));
        match seen.accepted.load(Ordering::Relaxed) {
            0 => reused += 1,
            accepted => dials.push(since(
                at(epoch, published.load(Ordering::Relaxed)),
                at(epoch, accepted),
            )),
        }
        listener.push(Duration::from_micros(listener_us.load(Ordering::Relaxed)));
        let notify = at(epoch, notified.load(Ordering::Relaxed));
        let publish = at(epoch, published.load(Ordering::Relaxed));
        for (i, d) in [
            since(sent, committed),
            since(committed, notify),
            since(committed, publish),
            since(notify, publish),
            since(publish, routed),
            since(sent, routed),
            since(committed, routed),
            since(sent, responded),
            since(committed, responded),
        ]
        .into_iter()
        .enumerate()
        {
            stages[i].1.push(d);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in client_tasks {
        let _ = task.await;
    }
    watcher.abort();
    listen.abort();
    lb.stop(Duration::from_secs(5)).await;
    drop(db);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();

    println!("flips: {flips}, clients: {clients}");
    for (what, samples) in &mut stages {
        report(what, samples);
    }
    report(
        "proxy's listener: first NOTIFY of the batch received -> published (as it logs)",
        &mut listener,
    );
    if !dials.is_empty() {
        report(
            &format!(
                "ring published -> new backend connection accepted ({} flips; {reused} reused one)",
                dials.len()
            ),
            &mut dials,
        );
    }
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A LISTEN connection that stamps `notified` when an END marker arrives (the last
/// notification of a statement, as the proxy's listener publishes on it).
async fn listen(
    url: &str,
    notified: Arc<AtomicU64>,
    epoch: Instant,
) -> tokio::task::JoinHandle<()> {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    let driver = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message
                && n.payload().contains("\"END\"")
            {
                notified.store(stamp(epoch), Ordering::Relaxed);
            }
        }
    });
    client.batch_execute("LISTEN lb_workers").await.unwrap();
    tokio::spawn(async move {
        // Keeps the client (and so the connection) alive until aborted.
        let _client = client;
        let _ = driver.await;
    })
}

/// When a backend first served a request since the bench cleared it, and when the proxy's
/// connection that carried it was accepted, if that was its first request (0: a reused one).
#[derive(Default)]
struct Seen {
    request: AtomicU64,
    accepted: AtomicU64,
}

/// A backend answering every request with its name; stamps `seen` when it is clear.
async fn backend(name: &'static str, seen: Arc<Seen>, epoch: Instant) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let accepted = stamp(epoch);
            let seen = seen.clone();
            tokio::spawn(async move {
                let first_on_connection = AtomicBool::new(true);
                let service = hyper::service::service_fn(move |_req| {
                    let now = stamp(epoch);
                    let fresh = first_on_connection.swap(false, Ordering::Relaxed);
                    if seen
                        .request
                        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        let accepted = if fresh { accepted } else { 0 };
                        seen.accepted.store(accepted, Ordering::Relaxed);
                    }
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from_static(name.as_bytes())),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Keeps the latest `notify_to_publish_us` the listener logged.
struct Capture(Arc<AtomicU64>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Field(Option<u64>);
        impl tracing::field::Visit for Field {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "notify_to_publish_us" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut field = Field(None);
        event.record(&mut field);
        if let Some(us) = field.0 {
            self.0.store(us, Ordering::Relaxed);
        }
    }
}
