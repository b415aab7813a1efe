//! Shared test fixtures: a database of the test's own on the local PostgreSQL, real HTTP
//! backends on 127.0.0.1:0, the real proxy started in-process, and a plain HTTP client.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use load_balancer::config::AlgorithmKind;
use load_balancer::config::{AdminConfig, Config, DatabaseConfig, ListenerConfig, Protocol};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The server every test database lives on; `TEST_PG` overrides it.
pub fn server_url() -> String {
    std::env::var("TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Upper bound for anything the tests wait on; a failure says what did not happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// A database created for one test and dropped (with its connections) when it ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "lb_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        );
        let admin = connect(&format!("{}/postgres", server_url())).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        TestDb {
            url: format!("{}/{name}", server_url()),
            name,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Runs SQL on a fresh connection (autocommit: each statement commits on its own).
    pub async fn exec(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}

/// Drops database `name` (and its connections) now. Called from a `Drop`, which runs in a
/// test's runtime that must not block: the work gets a thread and a runtime of its own.
pub fn drop_database(name: &str) {
    let name = name.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let admin = connect(&format!("{}/postgres", server_url())).await;
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        });
    })
    .join()
    .ok();
}

/// A directory of the test's own under the system's temporary one, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// `what` names it, for whoever finds one a crashed test left behind.
    pub fn new(what: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "lb-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// A real HTTP backend on 127.0.0.1:0. It answers `GET /` with its name (and the status in
/// `status`), `/health` with the status in `health`, `/headers` with the request headers it
/// received (one `name: value` per line), `/hold` only when the test calls `release`,
/// `POST /echo` with the request body streamed back, and `/ws` (with `Upgrade: echo`) with
/// a 101 and an echo of every byte that follows.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// Requests served, health checks excluded.
    pub hits: Arc<AtomicUsize>,
    pub status: Arc<std::sync::atomic::AtomicU16>,
    pub health: Arc<std::sync::atomic::AtomicU16>,
    gate: Arc<Notify>,
    /// Requests currently parked on `/hold`.
    pub holding: Arc<AtomicUsize>,
    /// Connections open now (accepted and not yet closed by either side).
    pub open: Arc<AtomicUsize>,
    /// Connections accepted since the start.
    pub accepted: Arc<AtomicUsize>,
    killed: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            killed: tokio_util::sync::CancellationToken::new(),
            hits: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Notify::new()),
            holding: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(std::sync::atomic::AtomicU16::new(200)),
            health: Arc::new(std::sync::atomic::AtomicU16::new(200)),
        });
        let s = shared.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (gauge, count) = (open.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                let open = Gauge::up(&gauge);
                tokio::spawn(async move {
                    let _open = open;
                    let killed = s.killed.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(backend_response(req, &s).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.cancelled() => {}
                    }
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            hits: shared.hits.clone(),
            status: shared.status.clone(),
            health: shared.health.clone(),
            gate: shared.gate.clone(),
            holding: shared.holding.clone(),
            open,
            accepted,
            killed: shared.killed.clone(),
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Lets every request parked on `/hold` answer.
    pub fn release(&self) {
        self.gate.notify_waiters();
    }

    /// Stops accepting; the port is refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Dies: stops accepting and closes every open connection, mid-request or idle.
    pub fn kill(&self) {
        self.task.abort();
        self.killed.cancel();
    }
}

/// One open connection counted in a gauge, for as long as this lives.
pub struct Gauge(Arc<AtomicUsize>);

impl Gauge {
    pub fn up(gauge: &Arc<AtomicUsize>) -> Gauge {
        gauge.fetch_add(1, Ordering::SeqCst);
        Gauge(gauge.clone())
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a backend's request handlers share.
struct Shared {
    name: String,
    /// Cancelled by `kill`: every open connection closes at once.
    killed: tokio_util::sync::CancellationToken,
    hits: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    holding: Arc<AtomicUsize>,
    status: Arc<std::sync::atomic::AtomicU16>,
    health: Arc<std::sync::atomic::AtomicU16>,
}

async fn backend_response(
    mut req: Request<Incoming>,
    s: &Shared,
) -> Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>> {
    let full = |t: String| Full::new(Bytes::from(t)).map_err(|e| match e {}).boxed();
    let with_status = |code: u16, t: String| {
        let mut r = Response::new(full(t));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        r
    };
    if req.uri().path() == "/health" {
        return with_status(s.health.load(Ordering::SeqCst), String::new());
    }
    s.hits.fetch_add(1, Ordering::SeqCst);
    match req.uri().path() {
        "/headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        "/hold" => {
            let released = s.gate.notified();
            s.holding.fetch_add(1, Ordering::SeqCst);
            released.await;
            s.holding.fetch_sub(1, Ordering::SeqCst);
            Response::new(full(s.name.clone()))
        }
        "/echo" => Response::new(req.into_body().boxed()),
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = with_status(101, String::new());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
            r
        }
        _ => with_status(s.status.load(Ordering::SeqCst), s.name.clone()),
    }
}

/// A config with one listener on 127.0.0.1:0 for `pool` and an admin endpoint.
pub fn config(db: &TestDb, protocol: Protocol, algorithm: AlgorithmKind) -> Config {
    Config {
        database: DatabaseConfig::new(db.url.clone()),
        listeners: vec![ListenerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            protocol,
            "default",
            algorithm,
        )],
        admin: Some(AdminConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            token: None,
        }),
        pools: Default::default(),
        status: Default::default(),
        log: Default::default(),
    }
}

pub async fn start_http(db: &TestDb, algorithm: AlgorithmKind) -> load_balancer::Running {
    load_balancer::start(&config(db, Protocol::Http, algorithm))
        .await
        .expect("proxy starts")
}

/// Waits until the ring publishes a generation after `after`; panics with `what` if not.
pub async fn wait_publish(running: &load_balancer::Running, after: u64, what: &str) -> u64 {
    let mut rx = running.ring.subscribe();
    let g = tokio::time::timeout(WAIT, rx.wait_for(|g| *g > after))
        .await
        .unwrap_or_else(|_| panic!("no publish after generation {after} within {WAIT:?}: {what}"))
        .expect("ring alive");
    *g
}

/// Registers `backends` (weight 1, pool default) and waits for the ring to publish them.
pub async fn add(db: &TestDb, running: &load_balancer::Running, backends: &[&Backend]) -> u64 {
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    add_addresses(db, running, &addresses).await
}

/// Registers workers at `addresses` (weight 1, pool default) and waits for the ring to
/// publish them: for workers that are not a [`Backend`] (scripted, TLS, raw TCP).
pub async fn add_addresses(
    db: &TestDb,
    running: &load_balancer::Running,
    addresses: &[SocketAddr],
) -> u64 {
    let values: Vec<String> = addresses.iter().map(|a| format!("('{a}')")).collect();
    let sql = format!(
        "INSERT INTO workers(worker_address) VALUES {}",
        values.join(", ")
    );
    change(db, running, &sql).await
}

/// Eight clients sending GETs through `proxy` until `stop`; each returns (ok, failed).
pub fn load(
    proxy: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..8)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = client();
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    match get(&c, proxy, "/").await.0 {
                        200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Stops the clients of [`load`] and sums their counts.
pub async fn finish(
    stop: &std::sync::atomic::AtomicBool,
    clients: Vec<tokio::task::JoinHandle<(u64, u64)>>,
) -> (u64, u64) {
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    (ok, failed)
}

/// Runs `sql` and waits for the ring to publish it.
pub async fn change(db: &TestDb, running: &load_balancer::Running, sql: &str) -> u64 {
    let before = running.ring.load().generation;
    db.exec(sql).await;
    wait_publish(running, before, sql).await
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `path` through the proxy: status and body text.
pub async fn get(client: &HttpClient, proxy: SocketAddr, path: &str) -> (u16, String) {
    let uri: hyper::Uri = format!("http://{proxy}{path}").parse().unwrap();
    let res = tokio::time::timeout(WAIT, client.get(uri))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `n` GETs to `/` and counts responses by body (backend name, or the status).
pub async fn tally(client: &HttpClient, proxy: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(client, proxy, "/").await;
        let key = if status == 200 {
            body
        } else {
            status.to_string()
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// The admin `/status` document.
pub async fn status(running: &load_balancer::Running) -> serde_json::Value {
    let (code, body) = get(&client(), running.admin.unwrap(), "/status").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

/// What a [`Relay`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Pass,
    /// Closes every connection and every new one at once: a stopped server or a kill.
    Cut,
    /// Holds every connection open and forwards nothing: a server or path that vanished
    /// without closing anything.
    Blackhole,
}

/// A TCP relay between the proxy and PostgreSQL that the test controls: outages without
/// touching the shared server.
pub struct Relay {
    pub addr: SocketAddr,
    mode: tokio::sync::watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to the PostgreSQL server of [`server_url`].
    pub async fn to_postgres() -> Relay {
        let url: tokio_postgres::Config = server_url().parse().unwrap();
        let host = match &url.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("TEST_PG must be a TCP address, not {other:?}"),
        };
        let port = url.get_ports().first().copied().unwrap_or(5432);
        let upstream: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap();
        Relay::start(upstream).await
    }

    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = tokio::sync::watch::channel(Mode::Pass);
        let modes = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut rx = modes.subscribe();
                tokio::spawn(async move {
                    let current = *rx.borrow_and_update();
                    match current {
                        Mode::Cut => {}
                        Mode::Blackhole => {
                            let _held = client;
                            let _ = rx.wait_for(|m| *m != Mode::Blackhole).await;
                        }
                        Mode::Pass => {
                            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                                return;
                            };
                            let (mut client, mut server) = (client, server);
                            let after = tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                                m = rx.wait_for(|m| *m != Mode::Pass) => m.map(|m| *m),
                            };
                            if matches!(after, Ok(Mode::Blackhole)) {
                                let _ = rx.wait_for(|m| *m != Mode::Blackhole).await;
                            }
                        }
                    }
                });
            }
        });
        Relay { addr, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The URL of `db` through this relay.
    pub fn url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@{}/{}", self.addr, db.name)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Cut);
    }
}

/// Polls `check` (cheap, in-process) until it holds; panics with `what` after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends raw bytes through the proxy on a new connection and reads until it closes it.
pub async fn raw(proxy: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut reply))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

/// Polls the async `check` until it holds, for at most `within`; panics with `what` if it
/// never does. Returns how long it took.
pub async fn eventually_within(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// The `/status` entry of the worker at `address`.
pub fn worker_status(status: &serde_json::Value, address: &str) -> serde_json::Value {
    status["pools"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["address"] == address)
        .unwrap_or_else(|| panic!("{address} not in {status}"))
        .clone()
}

/// Writes `request` on `s` and reads one response: interim ones (except 101) included, then
/// the final head and its body (by Content-Length, chunked to its last chunk, or until the
/// close). Does not wait for the proxy to close a keep-alive connection.
pub async fn exchange(s: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    s.write_all(request).await.unwrap();
    tokio::time::timeout(WAIT, read_response(s))
        .await
        .unwrap_or_else(|_| panic!("no complete response within {WAIT:?}"))
}

/// Sends raw bytes on a new connection and reads one response (see [`exchange`]).
pub async fn raw_once(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    exchange(&mut s, request).await
}

async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut start = 0;
    // Reads more; false at the end of the stream (or a reset: what came is kept).
    async fn more(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf[start..], b"\r\n\r\n") {
                break start + i + 4;
            }
            if !more(s, &mut buf).await {
                return String::from_utf8_lossy(&buf).into_owned();
            }
        };
        let head = String::from_utf8_lossy(&buf[start..head_end]).to_lowercase();
        let status: u16 = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            start = head_end;
            continue;
        }
        if status == 101 {
            return String::from_utf8_lossy(&buf).into_owned();
        }
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        loop {
            let done = match (length, chunked) {
                (_, true) => buf[head_end..].ends_with(b"0\r\n\r\n"),
                (Some(n), false) => buf.len() >= head_end + n,
                (None, false) => false,
            };
            if done || !more(s, &mut buf).await {
                return String::from_utf8_lossy(&buf).into_owned();
            }
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A raw HTTP/1.1 backend on 127.0.0.1:0 that records every request it receives, byte for
/// byte (head, body, and the chunked framing and trailers as they came). It answers 200
/// `ok`, or, to a request with an `Upgrade` field, `101 Switching Protocols` with the same
/// `Upgrade` (as a server that would accept h2c, or a WebSocket, does), and then holds the
/// connection, reading and discarding.
pub struct Recorder {
    pub addr: SocketAddr,
    requests: Log,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (record, count) = (requests.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(record_connection(s, record.clone()));
            }
        });
        Recorder {
            addr,
            requests,
            accepted,
            task,
        }
    }

    /// Every request received so far, as text (invalid UTF-8 shown lossily).
    pub fn requests(&self) -> Vec<String> {
        lines(&self.requests)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The last request received; panics if none was.
    pub fn last(&self) -> String {
        self.requests()
            .pop()
            .expect("the backend received no request")
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record_connection(
    mut s: tokio::net::TcpStream,
    record: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::new();
    // Reads until `buf` holds `len` bytes; false if the connection ends first.
    async fn need(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, len: usize) -> bool {
        while buf.len() < len {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }
    // The end of the line starting at `from` (the index of its CRLF).
    async fn line(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, from: usize) -> Option<usize> {
        loop {
            if let Some(i) = find(&buf[from..], b"\r\n") {
                return Some(from + i);
            }
            let len = buf.len() + 1;
            if !need(s, buf, len).await {
                return None;
            }
        }
    }
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let len = buf.len() + 1;
            if !need(&mut s, &mut buf, len).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let field = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let mut end = head_end;
        if field("transfer-encoding").is_some_and(|v| v.to_lowercase().contains("chunked")) {
            loop {
                let Some(eol) = line(&mut s, &mut buf, end).await else {
                    return;
                };
                let size_text = String::from_utf8_lossy(&buf[end..eol]).into_owned();
                let size_text = size_text.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(size_text, 16).unwrap_or(0);
                end = eol + 2;
                if size == 0 {
                    // Trailer fields, up to the empty line.
                    loop {
                        let Some(eol) = line(&mut s, &mut buf, end).await else {
                            return;
                        };
                        let empty = eol == end;
                        end = eol + 2;
                        if empty {
                            break;
                        }
                    }
                    break;
                }
                if !need(&mut s, &mut buf, end + size + 2).await {
                    return;
                }
                end += size + 2;
            }
        } else if let Some(n) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if !need(&mut s, &mut buf, head_end + n).await {
                return;
            }
            end = head_end + n;
        }
        record.lock().unwrap().push(buf.drain(..end).collect());
        if let Some(protocol) = field("upgrade") {
            let switch = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
            );
            if s.write_all(switch.as_bytes()).await.is_err() {
                return;
            }
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
            return;
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A raw TCP worker on 127.0.0.1:0 that runs its script on every connection it accepts and
/// counts them: a connection is open until its script returns, and the scripts below return
/// when the proxy closes the connection (they see EOF), so `open` falling is the close.
pub struct Scripted {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    requests: Log,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`Scripted`] worker's script is given: its connection and the request log.
pub type Log = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// What a worker logged, as text (invalid UTF-8 shown lossily).
fn lines(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect()
}

impl Scripted {
    pub async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(tokio::net::TcpStream, Log) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Log = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (log, count, gauge) = (requests.clone(), accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let open = Gauge::up(&gauge);
                let run = script(s, log.clone());
                tokio::spawn(async move {
                    let _open = open;
                    run.await;
                });
            }
        });
        Scripted {
            addr,
            accepted,
            open,
            requests,
            task,
        }
    }

    /// A [`Recorder`] whose connections are counted: it answers each complete request with
    /// 200 `ok`, and waits for the rest of an incomplete one until the proxy closes.
    pub async fn recorder() -> Scripted {
        Scripted::start(record_connection).await
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Every request (or, for scripts that answer after the head, every head) logged.
    pub fn requests(&self) -> Vec<String> {
        lines(&self.requests)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request head (up to its empty line) from `s`, logs it and returns it; `None` if
/// the connection ends first.
pub async fn read_request_head(s: &mut tokio::net::TcpStream, log: &Log) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.push(byte[0]),
        }
    }
    log.lock().unwrap().push(head.clone());
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Reads and discards until the proxy closes the connection.
pub async fn until_eof(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 8192];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Script: answers the first request's head at once with a chunked 200 and one chunk
/// (`first`), then sends nothing more and holds the connection until the proxy closes it.
pub async fn answer_one_chunk_then_hold(mut s: tokio::net::TcpStream, log: Log) {
    use tokio::io::AsyncWriteExt;
    if read_request_head(&mut s, &log).await.is_none() {
        return;
    }
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
    if s.write_all(response).await.is_err() {
        return;
    }
    until_eof(&mut s).await;
}

/// Script: answers each request (bodiless, or with a Content-Length) only once its whole
/// body is in, echoing the body back with a Content-Length: a worker whose response head
/// waits for the end of the upload.
pub async fn buffering_echo(mut s: tokio::net::TcpStream, log: Log) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Some(head) = read_request_head(&mut s, &log).await else {
            return;
        };
        let length = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n").into_bytes();
        response.extend_from_slice(&body);
        if s.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// A new HTTP/2 (prior knowledge) connection to `proxy` with the h2 crate. The handle ends
/// when the connection does (with the connection's error, if any).
pub async fn h2_connect(
    proxy: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let client = client.ready().await.expect("h2 connection ready");
    (client, connection)
}

/// How an HTTP/2 response body ended.
#[derive(Debug)]
pub enum H2End {
    /// END_STREAM after this body.
    Complete(Vec<u8>),
    /// A stream or connection error after this much body.
    Broken(Vec<u8>, h2::Error),
}

/// Reads `body` to its end (bounded by [`WAIT`]), releasing flow-control capacity.
pub async fn h2_body(body: &mut h2::RecvStream) -> H2End {
    let mut got = Vec::new();
    loop {
        let next = tokio::time::timeout(WAIT, body.data())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the HTTP/2 body neither went on nor ended within {WAIT:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                )
            });
        match next {
            None => return H2End::Complete(got),
            Some(Err(e)) => return H2End::Broken(got, e),
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
        }
    }
}

/// Runs `load_balancer ARGS` with DATABASE_URL=`url`, from a directory without a
/// config.toml (DATABASE_URL alone is enough); killed after 20 s (exit 124) so a regression
/// fails instead of hanging. Awaited, not blocking: a proxy started by the test runs on the
/// same runtime and must go on serving meanwhile.
pub async fn lb_with_database_url(url: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_load_balancer"))
        .args(args)
        .current_dir(std::env::temp_dir())
        .env("DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

/// Undoes migration V4 (the `routes` table) and its history row: a migration test's way
/// back to a database at V3.
pub const UNDO_V4: &str = "DROP TABLE routes;
     DROP FUNCTION routes_bump_version();
     DROP FUNCTION routes_notify_row();
     DROP SEQUENCE routes_version_seq;
     DELETE FROM refinery_schema_history WHERE version = 4;";

/// Active checks of `/health` every 50 ms (500 ms timeout); one failure or pass flips a
/// worker.
pub fn quick_health_check() -> load_balancer::config::HealthCheckConfig {
    load_balancer::config::HealthCheckConfig {
        kind: load_balancer::config::HealthCheckKind::Http {
            method: hyper::Method::GET,
            path: "/health".into(),
            expect_status: 200,
        },
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
    }
}

/// A pool whose workers are ejected by their first failure, whatever share of the pool that
/// is: a failure recorded against a worker shows in `/status` at once.
pub fn eject_on_first_failure(
    pool: load_balancer::config::PoolConfig,
) -> load_balancer::config::PoolConfig {
    load_balancer::config::PoolConfig {
        ejection: load_balancer::config::EjectionConfig {
            consecutive_failures: 1,
            max_percent: 100,
            base_time: Duration::from_secs(60),
            ..Default::default()
        },
        ..pool
    }
}

/// gRPC workers (`test.Echo` and the health service) and clients: see its own doc.
pub mod grpc;

/// Raw HTTP/2 frames, for what the h2 crate would not send or a test must see byte by byte.
pub mod h2raw {
    use tokio::io::AsyncReadExt;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    /// An HPACK literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2);
    /// names and values under 127 bytes.
    pub fn literal(name: &str, value: &str) -> Vec<u8> {
        assert!(name.len() < 127 && value.len() < 127);
        let mut out = vec![0x00, name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
        out
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A raw-frame server's side of the handshake: the client's preface read and checked,
    /// then this side's SETTINGS (`settings`: its payload) sent. `false`: the connection
    /// is no HTTP/2 client's, or it went.
    pub async fn accept(s: &mut tokio::net::TcpStream, settings: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        let mut preface = [0u8; 24];
        if s.read_exact(&mut preface).await.is_err() || preface != PREFACE {
            return false;
        }
        s.write_all(&frame(SETTINGS, 0, 0, settings)).await.is_ok()
    }

    /// One frame read from `s`: kind, flags, stream, payload.
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    /// The next frame; `Err` at the end of the connection (EOF or reset).
    pub async fn read(s: &mut tokio::net::TcpStream) -> std::io::Result<Frame> {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await?;
        Ok(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        })
    }
}

/// An access log file's lines once it has `n` of them (exactly `n`) (the writer flushes when its queue is empty).
pub async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut last = Vec::new();
    eventually_within(
        &format!("{n} lines in {}", path.display()),
        WAIT,
        async || {
            last = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            last.len() >= n
        },
    )
    .await;
    assert_eq!(last.len(), n, "exactly {n} lines: {last:#?}");
    last
}

/// One JSON access-log line, parsed.
pub fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}
