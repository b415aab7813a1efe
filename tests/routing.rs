//! Routes are rows: requests routed by host, wildcard, path prefix, priority and listener
//! name, changed live with SQL, through the real proxy, a real PostgreSQL and real backends;
//! and TLS passthrough by SNI on a TCP listener, with `openssl s_client` and the handshake
//! done by the backend.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use load_balancer::config::{AlgorithmKind, ListenerConfig, Protocol};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// GET `path` with `Host: host` (HTTP/1.1): status and body.
async fn get_host(proxy: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let reply = raw(proxy, request.as_bytes()).await;
    let status = reply
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// A config with two HTTP listeners on pool `default`, named `public` and `internal`.
fn two_listeners(db: &TestDb) -> load_balancer::config::Config {
    let mut config = config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    config.listeners[0].name = Some("public".into());
    let mut internal = ListenerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Protocol::Http,
        "default",
        AlgorithmKind::RoundRobin,
    );
    internal.name = Some("internal".into());
    config.listeners.push(internal);
    config
}

/// Inserts one worker per (pool, backend) and waits for the ring to publish them.
async fn workers(db: &TestDb, lb: &load_balancer::Running, rows: &[(&str, &Backend)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(pool, b)| format!("('{}', '{pool}')", b.addr))
        .collect();
    change(
        db,
        lb,
        &format!(
            "INSERT INTO workers(worker_address, pool) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
}

#[tokio::test]
async fn routes_by_host_wildcard_path_priority_and_listener_change_live_with_sql() {
    let db = TestDb::new().await;
    let lb = load_balancer::start(&two_listeners(&db))
        .await
        .expect("proxy starts");
    let (public, internal) = (lb.listeners[0], lb.listeners[1]);
    let names = ["web", "api", "wild", "admin", "low", "high", "inside"];
    let mut backends = Vec::new();
    for name in names {
        backends.push(Backend::start(name).await);
    }
    let pools: Vec<(&str, &Backend)> = names
        .iter()
        .zip(&backends)
        .map(|(n, b)| (if *n == "web" { "default" } else { *n }, b))
        .collect();
    workers(&db, &lb, &pools).await;

    // No route yet: the listener's pool serves every host.
    assert_eq!(
        get_host(public, "api.example", "/").await,
        (200, "web".into())
    );

    change(
        &db,
        &lb,
        "INSERT INTO routes(host, pool) VALUES ('api.example', 'api');
         INSERT INTO routes(host, pool) VALUES ('*.example', 'wild');
         INSERT INTO routes(path_prefix, pool) VALUES ('/admin', 'admin');
         INSERT INTO routes(host, pool, priority) VALUES ('prio.example', 'low', 0), ('prio.example', 'high', 10);
         INSERT INTO routes(host, pool, listener) VALUES ('inside.example', 'inside', 'internal')",
    )
    .await;
    for (host, path, pool) in [
        // Exact host, compared without the port and whatever the case.
        ("api.example", "/", "api"),
        ("API.Example:8080", "/x", "api"),
        // Exact beats wildcard, which beats any host; the host's own routes win over a
        // longer path prefix for any host.
        ("api.example", "/admin", "api"),
        ("x.example", "/", "wild"),
        ("a.b.example", "/admin", "wild"),
        // A wildcard does not match the bare suffix.
        ("example", "/", "web"),
        ("other.test", "/admin/users", "admin"),
        ("other.test", "/administrator", "admin"),
        ("other.test", "/adm", "web"),
        // Equal host and prefix: the highest priority.
        ("prio.example", "/", "high"),
        // A route for listener `internal` only.
        ("inside.example", "/", "wild"),
    ] {
        assert_eq!(
            get_host(public, host, path).await,
            (200, pool.to_string()),
            "public: {host}{path}"
        );
    }
    assert_eq!(
        get_host(internal, "inside.example", "/").await,
        (200, "inside".into())
    );
    assert_eq!(
        get_host(internal, "api.example", "/").await,
        (200, "api".into()),
        "NULL = every listener"
    );

    // HTTP/2 requests are routed by :authority alike.
    let (mut h2, _connection) = h2_connect(public).await;
    let request = hyper::Request::get("http://api.example/").body(()).unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let mut body = response.await.unwrap().into_body();
    assert!(matches!(h2_body(&mut body).await, H2End::Complete(b) if b == b"api"));

    // Metrics count each request under the pool it went to.
    let (_, metrics) = get(&client(), lb.admin.unwrap(), "/metrics").await;
    let api_requests = format!("lb_requests_total{{listener=\"{public}\",pool=\"api\",");
    assert!(metrics.contains(&api_requests), "{metrics}");

    // Live: a committed UPDATE or DELETE moves the next request.
    change(
        &db,
        &lb,
        "UPDATE routes SET pool = 'high' WHERE host = 'api.example'",
    )
    .await;
    assert_eq!(
        get_host(public, "api.example", "/").await,
        (200, "high".into())
    );
    change(
        &db,
        &lb,
        "DELETE FROM routes WHERE host IN ('api.example', '*.example')",
    )
    .await;
    assert_eq!(
        get_host(public, "api.example", "/").await,
        (200, "web".into())
    );

    // A route to a pool without a worker: 503 naming the pool.
    change(
        &db,
        &lb,
        "INSERT INTO routes(host, pool) VALUES ('empty.example', 'nothing')",
    )
    .await;
    let (status, body) = get_host(public, "empty.example", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"nothing\""), "{body}");

    // /status lists the routes of each listener.
    let status = status_of(&lb).await;
    let text = status.to_string();
    assert!(text.contains("inside.example"), "{text}");
}

async fn status_of(lb: &load_balancer::Running) -> serde_json::Value {
    status(lb).await
}

#[tokio::test]
async fn commit_to_routed_request_latency() {
    let db = TestDb::new().await;
    let lb = load_balancer::start(&two_listeners(&db))
        .await
        .expect("proxy starts");
    let (web, other) = (Backend::start("web").await, Backend::start("other").await);
    workers(&db, &lb, &[("default", &web), ("other", &other)]).await;
    let proxy = lb.listeners[0];
    let sql = db.client().await;
    let mut latencies = Vec::new();
    for i in 0..200 {
        let host = format!("h{i}.example");
        sql.batch_execute(&format!(
            "INSERT INTO routes(host, pool) VALUES ('{host}', 'other')"
        ))
        .await
        .unwrap();
        let committed = Instant::now();
        loop {
            if get_host(proxy, &host, "/").await.1 == "other" {
                break;
            }
            assert!(committed.elapsed() < WAIT, "route {host} never applied");
        }
        latencies.push(committed.elapsed());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "commit → first routed request, 200 routes added one by one: p50 {p50:?}, p99 {p99:?}"
    );
}

// ---------------------------------------------------------------------------------------
// SNI passthrough

/// A TLS server whose certificate names `name`; after the handshake it writes `name` and
/// closes. Counts the connections it accepted.
struct TlsNamer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl TlsNamer {
    async fn start(name: &'static str) -> TlsNamer {
        let signing = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&signing).unwrap();
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(name.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        TlsNamer { addr, accepted }
    }
}

/// `openssl s_client` through `proxy` with `args`: the subject of the certificate it saw
/// and what the server sent after the handshake. Run off the test's runtime, which serves
/// the proxy meanwhile.
async fn s_client(proxy: SocketAddr, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || s_client_blocking(proxy, &args))
        .await
        .unwrap()
}

fn s_client_blocking(proxy: SocketAddr, args: &[String]) -> String {
    let out = Command::new("timeout")
        .args([
            "10",
            "openssl",
            "s_client",
            "-connect",
            &proxy.to_string(),
            "-ign_eof",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (apt-get install -y openssl)");
    format!(
        "{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn sni_passthrough_routes_tls_by_server_name_and_the_backend_does_the_handshake() {
    let db = TestDb::new().await;
    let mut config = config(&db, Protocol::Tcp, AlgorithmKind::RoundRobin);
    config.listeners[0].sni_routing = true;
    config.listeners[0].header_read_timeout = Duration::from_secs(1);
    let lb = load_balancer::start(&config).await.expect("proxy starts");
    let proxy = lb.listeners[0];
    let fallback = TlsNamer::start("fallback.example").await;
    let a = TlsNamer::start("a.example").await;
    let wild = TlsNamer::start("w.wild.example").await;
    change(
        &db,
        &lb,
        &format!(
            "INSERT INTO workers(worker_address, pool) VALUES ('{}', 'default'), ('{}', 'a'), ('{}', 'wild');
             INSERT INTO routes(host, pool) VALUES ('a.example', 'a'), ('*.wild.example', 'wild');
             INSERT INTO routes(host, path_prefix, pool) VALUES ('p.example', '/api', 'a');
             INSERT INTO routes(path_prefix, pool) VALUES ('/', 'a')",
            fallback.addr, a.addr, wild.addr
        ),
    )
    .await;

    let seen = s_client(proxy, &["-servername", "a.example"]).await;
    assert!(
        seen.contains("CN=a.example") || seen.contains("CN = a.example"),
        "{seen}"
    );
    assert!(
        seen.contains("\na.example") || seen.ends_with("a.example"),
        "{seen}"
    );
    let seen = s_client(proxy, &["-servername", "W.Wild.Example"]).await;
    assert!(seen.contains("w.wild.example"), "{seen}");
    for args in [
        &["-servername", "unknown.example"][..],
        // Paths do not apply: a route with a path prefix never matches a connection; nor
        // do routes for any host (the catch-all route above is for HTTP requests).
        &["-servername", "p.example"][..],
        &["-noservername"][..],
    ] {
        let seen = s_client(proxy, args).await;
        assert!(seen.contains("fallback.example"), "{args:?}: {seen}");
    }

    // A ClientHello split over many TCP segments is put together before routing, and the
    // backend gets every byte of it.
    let hello = client_hello("a.example");
    let before = a.accepted.load(Ordering::SeqCst);
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    for piece in hello.chunks(40) {
        s.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut server_hello = [0u8; 5];
    tokio::time::timeout(WAIT, s.read_exact(&mut server_hello))
        .await
        .expect("the backend answers the hello")
        .unwrap();
    assert_eq!(
        server_hello[0], 0x16,
        "a TLS handshake record from the backend"
    );
    assert_eq!(a.accepted.load(Ordering::SeqCst), before + 1);

    // Not TLS at all: the listener's pool gets the bytes as they came.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let before = fallback.accepted.load(Ordering::SeqCst);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert_eq!(fallback.accepted.load(Ordering::SeqCst), before + 1);

    // Half a hello, then silence: closed after header_read_timeout (1 s), no backend.
    let accepted: usize = [&fallback, &a, &wild]
        .iter()
        .map(|n| n.accepted.load(Ordering::SeqCst))
        .sum();
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let after: usize = [&fallback, &a, &wild]
        .iter()
        .map(|n| n.accepted.load(Ordering::SeqCst))
        .sum();
    assert_eq!(after, accepted, "no backend saw the stalled client");
}

/// The first flight of a rustls client to `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut client =
        rustls::ClientConnection::new(Arc::new(config), name.to_string().try_into().unwrap())
            .unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

#[tokio::test]
async fn a_routed_pool_gets_its_own_settings_and_health_checks() {
    let db = TestDb::new().await;
    let mut config = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    // Pool `api` is no listener's: only a route reaches it, and its table still applies.
    config.pools.insert(
        "api".into(),
        load_balancer::config::PoolConfig {
            health_check: Some(quick_health_check()),
            ..Default::default()
        },
    );
    let lb = load_balancer::start(&config).await.expect("proxy starts");
    let proxy = lb.listeners[0];
    let (web, sick, well) = (
        Backend::start("web").await,
        Backend::start("sick").await,
        Backend::start("well").await,
    );
    sick.health.store(503, Ordering::SeqCst);
    workers(
        &db,
        &lb,
        &[("default", &web), ("api", &sick), ("api", &well)],
    )
    .await;
    change(
        &db,
        &lb,
        "INSERT INTO routes(host, pool) VALUES ('api.example', 'api')",
    )
    .await;

    // The route started the pool's health checker: the failing worker is taken out.
    eventually("the routed pool's health check marks `sick` down", || {
        lb.ring
            .load()
            .pool_named("api")
            .is_some_and(|p| p.workers.iter().any(|w| !w.state.health.is_healthy()))
    })
    .await;
    for _ in 0..6 {
        assert_eq!(
            get_host(proxy, "api.example", "/").await,
            (200, "well".into())
        );
    }
}
