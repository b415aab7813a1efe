//! `GET /metrics` as Prometheus reads it: the exposition is parsed by the Prometheus
//! project's own Python parser (`prometheus_client.parser`, installed by `.ci/run`), and its
//! figures are checked against what the test made happen through the real proxy — responses
//! by worker and class, a refused request, connect failures and the retries they caused, TCP
//! connections, the ring's and the database's state — and a deleted worker's series leave
//! the next scrape.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use load_balancer::config::{AlgorithmKind, ListenerConfig, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample: its name (with `_total`, `_bucket`, … as exposed) and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

/// Parses an exposition with `prometheus_client.parser.text_string_to_metric_families`
/// and returns every sample. A text the parser refuses fails the test with its reason.
fn parse(exposition: &str) -> HashMap<Series, f64> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, sorted(s.labels.items()), s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (is prometheus-client installed? \
         `pip install prometheus-client`): {}\n{exposition}",
        String::from_utf8_lossy(&out.stderr)
    );
    type Sample = (String, Vec<(String, String)>, f64);
    let samples: Vec<Sample> = serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|(name, labels, value)| (Series { name, labels }, value))
        .collect()
}

async fn scrape(admin: SocketAddr) -> (String, HashMap<Series, f64>) {
    let (code, body) = get(&client(), admin, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    let samples = parse(&body);
    (body, samples)
}

/// The value of `name{labels}`; the labels must match exactly.
fn value(samples: &HashMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    samples
        .get(&Series {
            name: name.into(),
            labels,
        })
        .copied()
}

/// A port on 127.0.0.1 where nothing listens.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_parses_and_counts_what_went_through_the_proxy() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let dead = closed_port().await;
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    cfg.listeners.push(ListenerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Protocol::Tcp,
        "default",
        AlgorithmKind::RoundRobin,
    ));
    let lb = load_balancer::start(&cfg).await.unwrap();
    let (http, tcp, admin) = (lb.listeners[0], lb.listeners[1], lb.admin.unwrap());
    change(
        &db,
        &lb,
        &format!(
            "INSERT INTO workers(worker_address) VALUES ('{}'), ('{dead}')",
            a.addr
        ),
    )
    .await;
    let (a_addr, dead_addr) = (a.addr.to_string(), dead.to_string());
    let (http_name, tcp_name) = (http.to_string(), tcp.to_string());

    // Ten GETs: round robin sends some to the dead worker first, and they are retried on a.
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, http, "/").await.0, 200);
    }
    // A refused request: no worker sees it.
    let reply = raw(http, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // One TCP connection, balanced to a (the dead worker's dial fails and is retried).
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    // Every client leaves (the pooled keep-alive connection too), and the gauge says so.
    drop((c, s));
    eventually_within("no client connection left open", WAIT, async || {
        let m = scrape(admin).await.1;
        value(&m, "lb_client_connections", &[("listener", &http_name)]) == Some(0.0)
            && value(&m, "lb_client_connections", &[("listener", &tcp_name)]) == Some(0.0)
    })
    .await;

    let (text, m) = scrape(admin).await;
    let requests = |worker: &str, class: &str| {
        value(
            &m,
            "lb_requests_total",
            &[
                ("listener", &http_name),
                ("pool", "default"),
                ("worker", worker),
                ("code_class", class),
            ],
        )
    };
    assert_eq!(requests(&a_addr, "2xx"), Some(10.0), "{text}");
    assert_eq!(requests("", "4xx"), Some(1.0), "the refusal: {text}");
    assert_eq!(requests(&dead_addr, "2xx"), None, "{text}");
    assert_eq!(
        value(
            &m,
            "lb_client_errors_total",
            &[("listener", &http_name), ("status", "400")]
        ),
        Some(1.0)
    );
    let connect_errors = value(
        &m,
        "lb_upstream_errors_total",
        &[
            ("pool", "default"),
            ("worker", &dead_addr),
            ("kind", "connect"),
        ],
    )
    .unwrap();
    assert!(connect_errors >= 1.0, "{text}");
    let retries = value(&m, "lb_retries_total", &[("pool", "default")]).unwrap();
    // Every connect failure (of a request or a TCP connection) was retried on a.
    assert!(retries >= 1.0 && retries <= connect_errors, "{text}");
    assert_eq!(
        value(
            &m,
            "lb_tcp_connections_total",
            &[
                ("listener", &tcp_name),
                ("pool", "default"),
                ("worker", &a_addr)
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &m,
            "lb_request_duration_seconds_count",
            &[("listener", &http_name), ("pool", "default")]
        ),
        Some(11.0),
        "every HTTP request, the refused one included: {text}"
    );
    let worker = |id: &str, addr: &str| {
        [
            ("pool", "default".to_string()),
            ("worker", addr.to_string()),
            ("worker_id", id.to_string()),
        ]
    };
    let gauge = |name: &str, labels: &[(&str, String); 3]| {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        value(&m, name, &labels)
    };
    assert_eq!(gauge("lb_worker_weight", &worker("1", &a_addr)), Some(1.0));
    assert_eq!(
        gauge("lb_worker_in_flight", &worker("1", &a_addr)),
        Some(0.0)
    );
    assert_eq!(gauge("lb_worker_healthy", &worker("1", &a_addr)), Some(1.0));
    assert_eq!(gauge("lb_worker_ejected", &worker("1", &a_addr)), Some(0.0));
    assert_eq!(
        gauge("lb_worker_effective_weight", &worker("1", &a_addr)),
        Some(1.0)
    );
    assert_eq!(value(&m, "lb_db_connected", &[]), Some(1.0));
    assert_eq!(
        value(&m, "lb_db_resyncs_total", &[("reason", "startup")]),
        Some(1.0)
    );
    let generation = lb.ring.load().generation as f64;
    assert_eq!(value(&m, "lb_ring_publishes_total", &[]), Some(generation));
    assert_eq!(
        value(&m, "lb_ring_apply_seconds_count", &[]),
        Some(1.0),
        "the INSERT, applied from its NOTIFY: {text}"
    );
    assert!(value(&m, "lb_ring_version", &[("pool", "default")]).unwrap() > 0.0);
    assert_eq!(
        value(&m, "lb_config_reloads_total", &[("result", "error")]),
        Some(0.0)
    );
    assert_eq!(value(&m, "lb_access_log_dropped_total", &[]), Some(0.0));

    // The dead worker leaves the table: its series leave the next scrape.
    change(
        &db,
        &lb,
        &format!("DELETE FROM workers WHERE worker_address = '{dead}'"),
    )
    .await;
    let (text, m) = scrape(admin).await;
    assert!(
        !m.keys()
            .any(|s| s.labels.iter().any(|(_, v)| v == &dead_addr)),
        "a removed worker's series are gone: {text}"
    );
    assert_eq!(
        value(&m, "lb_ring_apply_seconds_count", &[]),
        Some(2.0),
        "{text}"
    );
    lb.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_and_open_connections_are_counted() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::RoundRobin).await;
    let (http, admin) = (lb.listeners[0], lb.admin.unwrap());
    add(&db, &lb, &[&a]).await;

    let (mut h2, conn) = h2_connect(http).await;
    for _ in 0..3 {
        let request = hyper::Request::get(format!("http://{http}/"))
            .body(())
            .unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        h2_body(&mut body).await;
    }
    // A stream is reported when the proxy has sent the end of its response, which is
    // just before or just after the client reads it.
    let http_name = http.to_string();
    let a_addr = a.addr.to_string();
    let labels = [
        ("listener", http_name.as_str()),
        ("pool", "default"),
        ("worker", a_addr.as_str()),
        ("code_class", "2xx"),
    ];
    eventually_within("three HTTP/2 requests counted", WAIT, async || {
        value(&scrape(admin).await.1, "lb_requests_total", &labels) == Some(3.0)
    })
    .await;
    // The connection is still open: the gauge shows it.
    let (text, m) = scrape(admin).await;
    assert_eq!(
        value(&m, "lb_client_connections", &[("listener", &http_name)]),
        Some(1.0),
        "{text}"
    );
    drop(h2);
    conn.abort();
    lb.stop(WAIT).await;
}
