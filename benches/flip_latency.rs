//! Commit → first request routed by the new weights, through the real proxy and a real
//! PostgreSQL (the local server, or TEST_PG). Two backends; each flip moves all weight from
//! one to the other in one UPDATE, then requests are sent back to back until one is served
//! by the new backend. Reports p50/p99 from the UPDATE being sent and from its commit
//! being acknowledged.
//!
//! cargo bench --bench flip_latency [-- FLIPS]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use load_balancer::config::{Config, DatabaseConfig, ListenerConfig, Protocol};
use load_balancer::ring::AlgorithmKind;

#[tokio::main]
async fn main() {
    let flips: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
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
    };
    let lb = load_balancer::start(&config).await.expect("proxy starts");
    let backends = [backend("a").await, backend("b").await];
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

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{}/", lb.listeners[0]).parse().unwrap();
    let served_by = |client: &Client<_, Empty<Bytes>>| {
        let fut = client.get(uri.clone());
        async move {
            let body = fut
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    // Warm up: the first backend serves, connections are pooled.
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_by(&client).await != "a" {
        assert!(Instant::now() < deadline, "initial ring never served a");
    }

    let (mut from_send, mut from_commit) = (Vec::new(), Vec::new());
    for flip in 0..flips {
        let (target, name) = if flip % 2 == 0 {
            (&backends[1], "b")
        } else {
            (&backends[0], "a")
        };
        let address = target.to_string();
        let sent = Instant::now();
        db.execute(&update, &[&address]).await.unwrap();
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(5);
        while served_by(&client).await != name {
            assert!(
                Instant::now() < deadline,
                "flip {flip} never routed to {name}"
            );
        }
        from_send.push(sent.elapsed());
        from_commit.push(committed.elapsed());
    }
    lb.stop(Duration::from_secs(5)).await;
    drop(db);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();

    println!("flips: {flips}");
    report(
        "UPDATE sent -> first request on new backend",
        &mut from_send,
    );
    report(
        "commit acked -> first request on new backend",
        &mut from_commit,
    );
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

/// A backend answering every request with its name.
async fn backend(name: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(name.as_bytes())),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
