//! TLS to PostgreSQL, as the URL's `sslmode` asks, against the real local server (whose
//! `ssl = on` uses Debian's self-signed snakeoil certificate): `require` encrypts every
//! connection the proxy makes and NOTIFY arrives over it; `disable` is plain; `prefer` (the
//! default) takes TLS when offered and plain when not; a server that refuses TLS while the
//! URL requires it, and `sslmode` values that are not supported, stop the start at once
//! with a clear error instead of a retry loop. The `workers` commands connect the same way.
//!
//! "A server that refuses TLS" is the real server behind a relay that answers the client's
//! TLS request with `N`, byte for byte what PostgreSQL with `ssl = off` answers, and passes
//! everything else through.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Backend, TestDb, client, get, lb_with_database_url as lb};
use load_balancer::config::{AlgorithmKind, Config, Protocol};
use load_balancer::db::StartupError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The most a start that must fail may take: no retry loop, just one attempt or none.
const FAILS_WITHIN: Duration = Duration::from_secs(5);

/// Whether the test server offers TLS; if not, says so (the TLS tests are then skipped).
async fn server_offers_tls(test: &str) -> bool {
    let admin = common::connect(&format!("{}/postgres", common::server_url())).await;
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        eprintln!(
            "skipped {test}: the PostgreSQL at {} has ssl = {ssl}, so there is no TLS to test",
            common::server_url()
        );
    }
    ssl == "on"
}

/// `url` with `sslmode=MODE` (it has no query yet).
fn with_sslmode(url: &str, mode: &str) -> String {
    format!("{url}?sslmode={mode}")
}

fn config_for(db: &TestDb, url: String) -> Config {
    let mut config = common::config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    config.database.url = url;
    config
}

/// Whether each of the proxy's connections to `db` is encrypted, from another connection
/// (`pg_stat_ssl` of each backend whose application is the proxy), once there are at least
/// `at_least` of them and the subscriber's and the status reporter's have run their
/// statements.
async fn proxy_connections_ssl(db: &TestDb, at_least: usize) -> Vec<(bool, String)> {
    let observer = db.client().await;
    let deadline = Instant::now() + common::WAIT;
    loop {
        let rows = observer
            .query(
                "SELECT s.ssl, coalesce(a.query, '')
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.application_name = 'load_balancer' AND a.datname = $1
                 ORDER BY a.pid",
                &[&db.name],
            )
            .await
            .unwrap();
        let seen: Vec<(bool, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // A connection shows up before its first statement: the count alone would catch
        // the status reporter's with an empty `query` (seen once in CI).
        let ran = |what: &str| seen.iter().any(|(_, q)| q.contains(what));
        if seen.len() >= at_least && ran("LISTEN lb_workers") && ran("worker_status") {
            return seen;
        }
        if Instant::now() >= deadline {
            // The callers' assertions say which kind is missing.
            assert!(
                seen.len() >= at_least,
                "fewer than {at_least} proxy connections: {seen:?}"
            );
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The three kinds of connection a running proxy holds: the subscriber's own (it ran
/// LISTEN last), the pool's that read the snapshot, and the status reporter's (it writes
/// `worker_status`).
fn assert_all_three_kinds(seen: &[(bool, String)], ssl: bool) {
    assert!(seen.iter().all(|(s, _)| *s == ssl), "ssl = {ssl}: {seen:?}");
    let has = |what: &str| seen.iter().any(|(_, q)| q.contains(what));
    assert!(has("LISTEN lb_workers"), "the subscriber's: {seen:?}");
    assert!(has("worker_status"), "the status reporter's: {seen:?}");
}

#[tokio::test]
async fn require_encrypts_every_connection_and_notify_arrives_over_it() {
    if !server_offers_tls("require_encrypts_every_connection_and_notify_arrives_over_it").await {
        return;
    }
    let db = TestDb::new().await;
    let mut config = config_for(&db, with_sslmode(&db.url, "require"));
    // The subscriber's last statement stays its LISTEN for the whole test.
    config.database.heartbeat_interval = Duration::from_secs(60);
    config.database.anti_entropy_interval = Duration::from_secs(60);
    let running = load_balancer::start(&config)
        .await
        .expect("starts over TLS");

    // Added with SQL, the NOTIFY reaches the ring over the subscriber's TLS connection.
    let backend = Backend::start("tls-a").await;
    common::add(&db, &running, &[&backend]).await;
    let (status, body) = get(&client(), running.listeners[0], "/").await;
    assert_eq!((status, body.as_str()), (200, "tls-a"));

    // Subscriber, snapshot pool and status reporter: at least three, all encrypted.
    let seen = proxy_connections_ssl(&db, 3).await;
    assert_all_three_kinds(&seen, true);
    running.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn disable_is_plain() {
    let db = TestDb::new().await;
    let mut config = config_for(&db, with_sslmode(&db.url, "disable"));
    config.database.heartbeat_interval = Duration::from_secs(60);
    config.database.anti_entropy_interval = Duration::from_secs(60);
    let running = load_balancer::start(&config).await.expect("starts");
    let backend = Backend::start("plain-a").await;
    common::add(&db, &running, &[&backend]).await;
    let seen = proxy_connections_ssl(&db, 3).await;
    assert_all_three_kinds(&seen, false);
    running.stop(Duration::from_secs(1)).await;
}

/// No `sslmode`: `prefer`, as libpq; the server offers TLS, so it is taken.
#[tokio::test]
async fn the_default_takes_tls_when_the_server_offers_it() {
    if !server_offers_tls("the_default_takes_tls_when_the_server_offers_it").await {
        return;
    }
    let db = TestDb::new().await;
    let running = load_balancer::start(&config_for(&db, db.url.clone()))
        .await
        .expect("starts");
    let seen = proxy_connections_ssl(&db, 2).await;
    assert!(seen.iter().all(|(ssl, _)| *ssl), "{seen:?}");
    running.stop(Duration::from_secs(1)).await;
}

/// tokio-postgres parses only disable, prefer and require: `verify-full` (or `verify-ca`)
/// would promise a verification that does not happen, so it stops the start, at once, with
/// what is supported instead; it is not taken for an unreachable server.
#[tokio::test]
async fn verify_modes_are_refused_with_what_is_supported() {
    let db = TestDb::new().await;
    for mode in ["verify-full", "verify-ca"] {
        let started = Instant::now();
        let result = load_balancer::start(&config_for(&db, with_sslmode(&db.url, mode))).await;
        assert!(started.elapsed() < FAILS_WITHIN, "{:?}", started.elapsed());
        let Err(load_balancer::StartError::Database(e)) = result else {
            panic!("{mode}: not a database error: {:?}", result.err());
        };
        assert!(matches!(e, StartupError::Url { .. }), "{e:?}");
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "the database URL is not valid: invalid connection string: invalid value for option `sslmode`"
        );
        assert_eq!(
            miette::Diagnostic::help(&e).unwrap().to_string(),
            "sslmode can be disable, prefer (the default: TLS when the server offers it) or require (always TLS, the server's certificate not verified); verify-ca and verify-full are not supported: use require"
        );
    }
    let result = load_balancer::start(&config_for(
        &db,
        format!(
            "{}?sslmode=require&sslrootcert=/etc/ssl/certs/ssl-cert-snakeoil.pem",
            db.url
        ),
    ))
    .await;
    let Err(load_balancer::StartError::Database(e)) = result else {
        panic!("sslrootcert: not a database error: {:?}", result.err());
    };
    assert!(
        e.to_string().ends_with("unknown option `sslrootcert`"),
        "{e}"
    );
    assert!(
        miette::Diagnostic::help(&e).unwrap().to_string().ends_with(
            "certificates (sslrootcert, sslcert, sslkey) are not supported: remove the option"
        ),
        "{e:?}"
    );
}

/// A relay to the real server that declines TLS, as PostgreSQL with `ssl = off` does: it
/// answers an SSLRequest with `N`, then passes the connection through.
struct DecliningRelay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// The SSLRequest: length 8, then the code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

impl DecliningRelay {
    async fn start() -> DecliningRelay {
        let url: tokio_postgres::Config = common::server_url().parse().unwrap();
        let host = match &url.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("TEST_PG must be a TCP address, not {other:?}"),
        };
        let port = url.get_ports().first().copied().unwrap_or(5432);
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(decline_then_relay(client, upstream));
            }
        });
        DecliningRelay { addr, task }
    }

    fn url(&self, db: &TestDb, mode: &str) -> String {
        format!(
            "postgres://postgres@{}/{}?sslmode={mode}",
            self.addr, db.name
        )
    }
}

impl Drop for DecliningRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn decline_then_relay(mut client: TcpStream, upstream: SocketAddr) {
    let mut first = [0u8; 8];
    if client.read_exact(&mut first).await.is_err() {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if first == SSL_REQUEST {
        if client.write_all(b"N").await.is_err() {
            return;
        }
    } else if server.write_all(&first).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// `require` against a server that declines TLS: a startup error that says so, at once,
/// not "does not answer" and a retry loop.
#[tokio::test]
async fn require_against_a_server_without_tls_fails_at_once() {
    let db = TestDb::new().await;
    let relay = DecliningRelay::start().await;
    let started = Instant::now();
    let result = load_balancer::start(&config_for(&db, relay.url(&db, "require"))).await;
    assert!(started.elapsed() < FAILS_WITHIN, "{:?}", started.elapsed());
    let Err(load_balancer::StartError::Database(e)) = result else {
        panic!("not a database error: {:?}", result.err());
    };
    assert!(matches!(e, StartupError::Tls { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert_eq!(
        e.to_string(),
        format!(
            "TLS to PostgreSQL at {}:{} failed: the server does not accept TLS connections, and the URL requires TLS (sslmode=require)",
            relay.addr.ip(),
            relay.addr.port()
        )
    );
    assert_eq!(
        miette::Diagnostic::help(&e).unwrap().to_string(),
        "turn TLS on in PostgreSQL (`ssl = on` and a certificate in postgresql.conf), or allow a plain connection: sslmode=prefer (TLS when offered) or sslmode=disable"
    );
}

/// `prefer` against the same server: plain, and everything works.
#[tokio::test]
async fn prefer_falls_back_to_plain_when_tls_is_declined() {
    let db = TestDb::new().await;
    let relay = DecliningRelay::start().await;
    let mut config = config_for(&db, relay.url(&db, "prefer"));
    config.database.heartbeat_interval = Duration::from_secs(60);
    config.database.anti_entropy_interval = Duration::from_secs(60);
    let running = load_balancer::start(&config).await.expect("starts plain");
    let backend = Backend::start("declined-a").await;
    common::add(&db, &running, &[&backend]).await;
    let seen = proxy_connections_ssl(&db, 3).await;
    assert_all_three_kinds(&seen, false);
    running.stop(Duration::from_secs(1)).await;
}

/// `migrate` and `workers` connect as the proxy does: over TLS with `require`, and a
/// clear one-line error, at once, when the server declines it.
#[tokio::test]
async fn the_commands_connect_the_same_way() {
    let db = TestDb::new().await;
    let relay = DecliningRelay::start().await;
    let started = Instant::now();
    let out = lb(&relay.url(&db, "require"), &["workers", "list"]).await;
    assert!(started.elapsed() < FAILS_WITHIN, "{:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "error: TLS to PostgreSQL at {}:{} failed: the server does not accept TLS connections, and the URL requires TLS (sslmode=require); turn TLS on in PostgreSQL (`ssl = on` and a certificate in postgresql.conf), or allow a plain connection: sslmode=prefer (TLS when offered) or sslmode=disable",
            relay.addr.ip(),
            relay.addr.port()
        )
    );
    let out = lb(&relay.url(&db, "require"), &["migrate"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not accept TLS connections"),
        "{out:?}"
    );

    if !server_offers_tls("the_commands_connect_the_same_way (over TLS)").await {
        return;
    }
    let url = with_sslmode(&db.url, "require");
    let out = lb(&url, &["migrate"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = lb(&url, &["workers", "add", "127.0.0.1:8000"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = lb(&url, &["workers", "list"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:8000"),
        "{out:?}"
    );
}
