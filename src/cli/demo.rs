//! `load_balancer demo`: the whole product in one command. It creates its database if
//! missing, starts three tiny HTTP backends in the process (each answers with its name,
//! `demo-1` to `demo-3`), registers them as rows of `workers`, serves the real proxy in
//! front of them, and says what to type next to change live traffic with SQL.
//!
//! The rows it registers are recorded in a table of its own, `demo_workers` (id, address
//! and pool of each), because `workers` has no column that could say who added a row: a
//! later demo deletes a row only if that table lists it, it still has the recorded address
//! and pool, and nothing accepts connections there any more. Rows a user added are never
//! touched. The rows stay when the demo stops, for inspection.
//!
//! `main.rs` parses the command line, prints and handles the signals; this module builds and
//! stops what runs.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminConfig, AlgorithmKind, Config, DatabaseConfig, ListenerConfig, Protocol};
use crate::db::{Db, StartupError};
use crate::{Running, StartError};

/// The database when neither `--database-url` nor `DATABASE_URL` names one: the README's.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/load_balancer";
/// Where the proxy listens unless `--listen` says otherwise (a free port if it is taken).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Where the admin endpoint listens unless `--admin` says otherwise (likewise).
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);
/// The pool the demo's rows go to and its listener serves: the one a bare `INSERT INTO
/// workers(worker_address)` fills, so the README's examples work against the demo too.
// A pool of its own: its listener serves only it, so the rows it leaves behind are never
// balanced by a proxy serving `default` from the same database (the README's next steps,
// or a deployment whose DATABASE_URL is set in this shell).
const POOL: &str = "demo";
/// The backends' names, in the order their rows are inserted.
const NAMES: [&str; 3] = ["demo-1", "demo-2", "demo-3"];
/// How long a previous demo's backend may take to accept before it counts as gone.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the registered rows may take to reach the proxy's ring (a NOTIFY round trip,
/// milliseconds when all is well).
const RING_WAIT: Duration = Duration::from_secs(10);

/// What the command line chose.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The PostgreSQL URL; its database is created if missing.
    pub url: String,
    /// `--listen`: the proxy's address. `None`: [`DEFAULT_LISTEN`], or any free port of
    /// 127.0.0.1 if that one is taken (a demo should start, not argue about a port).
    pub listen: Option<SocketAddr>,
    /// `--admin`: the admin endpoint's address, with the same fallback.
    pub admin: Option<SocketAddr>,
    /// `LB_ADMIN_TOKEN` (or `--admin-token`): required when `admin` is not a loopback address.
    pub admin_token: Option<String>,
}

/// Why the demo could not start. Each is one line; `help` carries the fix where there is one.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DemoError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Database(#[from] StartupError),
    #[error("cannot create database {database:?} on {server}: {message}")]
    #[diagnostic(code(demo::create_database))]
    CreateDatabase {
        database: String,
        server: String,
        message: String,
        #[help]
        fix: String,
    },
    #[error("cannot listen on {address}: {source}")]
    #[diagnostic(
        code(demo::bind),
        help("pass another address with --listen or --admin (port 0: any free port)")
    )]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Start(StartError),
    #[error("the admin endpoint on {0} is not a loopback address, so it needs a token")]
    #[diagnostic(
        code(demo::admin_token),
        help("set LB_ADMIN_TOKEN, or keep --admin on 127.0.0.1")
    )]
    AdminToken(SocketAddr),
    #[error("the database failed: {0}")]
    #[diagnostic(code(demo::sql))]
    Sql(String),
    #[error("the proxy did not load the demo's rows within {RING_WAIT:?}")]
    #[diagnostic(
        code(demo::ring),
        help("see the log above: the proxy's subscription to the table may have failed")
    )]
    RingTimeout,
}

impl From<tokio_postgres::Error> for DemoError {
    fn from(e: tokio_postgres::Error) -> DemoError {
        // PostgreSQL's own message (e.g. a permission refused) says more than the wrapper.
        DemoError::Sql(match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        })
    }
}

/// One demo backend: a hyper server on a port of 127.0.0.1 that answers every request with
/// its name and a newline.
pub struct DemoBackend {
    pub name: &'static str,
    pub address: SocketAddr,
    /// The `workers.id` of its row.
    pub id: i64,
}

/// The running demo: the proxy, its backends, and what to tell the user.
pub struct Demo {
    /// The database, as given: the printed `psql` commands use it.
    pub url: String,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub backends: Vec<DemoBackend>,
    /// Whether the admin endpoint requires a token (the `curl` line then sends one).
    token: bool,
    /// Rows of a previous demo deleted at start, whose backends were gone.
    pub replaced: u64,
    /// Other rows of the pool (a user's, or a demo's still running), balanced as well.
    pub others: i64,
    running: Running,
    /// Cancelled to stop the backends: their accept loops and open connections.
    stop_backends: CancellationToken,
}

/// Creates the database if needed, starts and registers the backends, serves the proxy, and
/// returns once the proxy's ring holds them.
///
/// The rows go in before the proxy starts, so its startup read already holds them: every
/// startup log line (the sync, "listening") is written before `start` returns, and the
/// instructions printed next are not interleaved with the log of a later change.
pub async fn start(options: &DemoOptions) -> Result<Demo, DemoError> {
    // As `[admin]` in a config file: anyone who can reach a public admin endpoint would
    // otherwise read every worker's address. Checked first: a usage mistake changes nothing.
    let admin_bind = options.admin.unwrap_or(DEFAULT_ADMIN);
    if !admin_bind.ip().is_loopback() && options.admin_token.is_none() {
        return Err(DemoError::AdminToken(admin_bind));
    }
    ensure_database(&options.url).await?;
    // The proxy migrates at startup too; the rows need the table before it starts.
    Db::new(&options.url)?.migrate().await?;
    let stop_backends = CancellationToken::new();
    let registered = match register(&options.url, &stop_backends).await {
        Ok(r) => r,
        Err(e) => {
            stop_backends.cancel();
            return Err(e);
        }
    };
    let ids: Vec<i64> = registered.backends.iter().map(|b| b.id).collect();
    let running = match start_proxy(options).await {
        Ok(r) => r,
        Err(e) => {
            // Rows whose backends die with this process would only cost the next demo a
            // probe; a user who fixes the port and retries should not find them at all.
            unregister(&options.url, &ids).await;
            stop_backends.cancel();
            return Err(e);
        }
    };
    if let Err(e) = wait_for_ring(&running, &ids).await {
        stop_backends.cancel();
        running.stop(Duration::ZERO).await;
        unregister(&options.url, &ids).await;
        return Err(e);
    }
    Ok(Demo {
        url: options.url.clone(),
        proxy: running.listeners[0],
        admin: running
            .admin
            .expect("the demo always serves an admin endpoint"),
        backends: registered.backends,
        token: options.admin_token.is_some(),
        replaced: registered.replaced,
        others: registered.others,
        running,
        stop_backends,
    })
}

impl Demo {
    /// What to try next, with this run's ports and database.
    pub fn instructions(&self) -> String {
        let mut text = String::new();
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!("{} on {}", b.name, b.address))
            .collect();
        let _ = writeln!(
            text,
            "\nThe demo is running: the proxy on {} balances pool \"{POOL}\" (weighted round robin) over {}, weight 1 each.",
            self.proxy,
            backends.join(", ")
        );
        if self.replaced > 0 {
            let _ = writeln!(
                text,
                "({} row(s) of an earlier demo, whose backends were gone, were replaced.)",
                self.replaced
            );
        }
        if self.others > 0 {
            let _ = writeln!(
                text,
                "(Pool \"{POOL}\" has {} other row(s), not the demo's: they get their share too. SELECT * FROM workers shows them.)",
                self.others
            );
        }
        // A URL with a password is not printed: the shell's DATABASE_URL holds it.
        let url = match tokio_postgres::Config::from_str(&self.url) {
            Ok(c) if c.get_password().is_some() => "\"$DATABASE_URL\"".to_string(),
            _ => shell_quote(&self.url),
        };
        let psql = |weight: u32, backend: &DemoBackend| {
            format!(
                "psql {url} -c \"UPDATE workers SET weight = {weight} WHERE pool = '{POOL}' AND worker_address = '{}'\"",
                backend.address
            )
        };
        let _ = writeln!(text, "\nWatch the traffic:");
        let _ = writeln!(
            text,
            "  while true; do curl -s {}/; sleep 0.2; done",
            for_curl(self.proxy)
        );
        // The share is only that simple when the demo's rows are the whole pool.
        let share = if self.others == 0 {
            "3 requests in 5"
        } else {
            "weight 3"
        };
        let _ = writeln!(
            text,
            "\nIn another terminal, change it with SQL: {} gets {share},",
            self.backends[0].name
        );
        let _ = writeln!(text, "  {}", psql(3, &self.backends[0]));
        let _ = writeln!(
            text,
            "then drain {} (weight 0: nothing new reaches it):",
            self.backends[1].name
        );
        let _ = writeln!(text, "  {}", psql(0, &self.backends[1]));
        let _ = writeln!(text, "\nSee what the proxy serves from:");
        let auth = if self.token {
            "-H \"Authorization: Bearer $LB_ADMIN_TOKEN\" "
        } else {
            ""
        };
        let _ = writeln!(text, "  curl {auth}{}/status", for_curl(self.admin));
        let _ = writeln!(
            text,
            "\nCtrl-C stops the demo (its rows stay for inspection)."
        );
        text
    }

    /// Stops the proxy (in-flight requests get `grace`), then the backends. The rows stay.
    pub async fn stop(self, grace: Duration) -> bool {
        let clean = self.running.stop(grace).await;
        self.stop_backends.cancel();
        clean
    }
}

/// `host:port` for a curl command line: `localhost` for a loopback or unspecified IPv4
/// address (what people type), the address itself otherwise.
fn for_curl(address: SocketAddr) -> String {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_loopback() || ip.is_unspecified() => {
            format!("localhost:{}", address.port())
        }
        _ => address.to_string(),
    }
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Connects to the database, creating it first (from the server's `postgres` database) if
/// the server says it does not exist.
async fn ensure_database(url: &str) -> Result<(), DemoError> {
    let db = Db::new(url)?;
    match db.connect().await {
        Ok(_) => return Ok(()),
        Err(StartupError::NoDatabase { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let user = db.config.get_user().unwrap_or("postgres").to_string();
    let database = db.config.get_dbname().unwrap_or(&user).to_string();
    let mut maintenance = db.clone();
    maintenance.config.dbname("postgres");
    let client = maintenance.connect().await?;
    let server = server_of(&db.config);
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => {
            tracing::info!(%database, %server, "created the demo's database");
            Ok(())
        }
        // Another demo created it meanwhile: just as good.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(e) => Err(DemoError::CreateDatabase {
            message: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string()),
            fix: format!(
                "have a user allowed to create databases run: createdb {} {database}",
                createdb_options(&db.config)
            ),
            database,
            server,
        }),
    }
}

fn server_of(config: &tokio_postgres::Config) -> String {
    let (host, port) = host_port(config);
    format!("{host}:{port}")
}

/// `createdb`'s options for the server of `config`, the database owned by its user (who
/// may not create it, but then owns what the demo creates in it).
fn createdb_options(config: &tokio_postgres::Config) -> String {
    let (host, port) = host_port(config);
    let user = config.get_user().unwrap_or("postgres");
    format!("-h {host} -p {port} -O {user}")
}

fn host_port(config: &tokio_postgres::Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// Starts the real proxy on the chosen addresses; a default one that is taken is replaced by
/// a free port of the same IP, an explicit one is an error.
async fn start_proxy(options: &DemoOptions) -> Result<Running, DemoError> {
    let mut listen = options.listen.unwrap_or(DEFAULT_LISTEN);
    let mut admin = options.admin.unwrap_or(DEFAULT_ADMIN);
    // Ends: each retry turns a default address into port 0, and port 0 is never retried.
    loop {
        let config = Config {
            database: DatabaseConfig::new(options.url.clone()),
            listeners: vec![ListenerConfig::new(
                listen,
                Protocol::Http,
                POOL,
                AlgorithmKind::Weighted,
            )],
            admin: Some(AdminConfig {
                bind: admin,
                token: options.admin_token.clone(),
            }),
            pools: Default::default(),
            status: Default::default(),
            log: Default::default(),
        };
        let e = match crate::start(&config).await {
            Ok(running) => return Ok(running),
            Err(StartError::Bind(e)) => e,
            Err(e) => return Err(DemoError::Start(e)),
        };
        let retry = |given: Option<SocketAddr>, tried: SocketAddr| {
            given.is_none() && tried == e.address && tried.port() != 0
        };
        if retry(options.listen, listen) {
            tracing::info!(taken = %listen, "the proxy's default port is taken: using a free one");
            listen.set_port(0);
        } else if retry(options.admin, admin) {
            tracing::info!(taken = %admin, "the admin endpoint's default port is taken: using a free one");
            admin.set_port(0);
        } else {
            return Err(DemoError::Bind {
                address: e.address,
                source: e.cause,
            });
        }
    }
}

/// What [`register`] did.
struct Registered {
    backends: Vec<DemoBackend>,
    /// Rows of an earlier demo deleted, whose backends were gone.
    replaced: u64,
    /// Rows of the pool that are not this demo's.
    others: i64,
}

/// Deletes a previous demo's rows whose backends are gone, starts the backends and inserts
/// their rows (one transaction: one publish for a proxy already following the table).
async fn register(url: &str, stop: &CancellationToken) -> Result<Registered, DemoError> {
    let mut client = Db::new(url)?.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS demo_workers (
                 worker_id bigint PRIMARY KEY,
                 worker_address text NOT NULL,
                 pool text NOT NULL,
                 registered_at timestamptz NOT NULL DEFAULT now()
             );
             COMMENT ON TABLE demo_workers IS
                 'rows of workers that load_balancer demo registered; a later demo deletes those whose backends are gone';",
        )
        .await?;
    let replaced = delete_dead_rows(&client).await?;

    // An address the pool already has (a user's row for a backend that is not running)
    // would violate the pool's unique address: such ports are skipped, and the listeners
    // holding them kept until all three are chosen so the OS does not hand them back.
    let taken: std::collections::HashSet<String> = client
        .query(
            "SELECT worker_address FROM workers WHERE pool = $1",
            &[&POOL],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut skipped = Vec::new();
    let mut listeners = Vec::new();
    while listeners.len() < NAMES.len() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|source| DemoError::Bind {
                address: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
                source,
            })?;
        let address = listener.local_addr().map_err(|source| DemoError::Bind {
            address: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
            source,
        })?;
        if taken.contains(&address.to_string()) {
            skipped.push(listener);
        } else {
            listeners.push((listener, address));
        }
    }
    drop(skipped);

    let tx = client.transaction().await?;
    let mut backends = Vec::with_capacity(NAMES.len());
    for (name, (_, address)) in NAMES.iter().zip(&listeners) {
        let text = address.to_string();
        let id: i64 = tx
            .query_one(
                "INSERT INTO workers (worker_address, weight, pool) VALUES ($1, 1, $2) RETURNING id",
                &[&text, &POOL],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO demo_workers (worker_id, worker_address, pool) VALUES ($1, $2, $3)
             ON CONFLICT (worker_id) DO UPDATE SET worker_address = $2, pool = $3, registered_at = now()",
            &[&id, &text, &POOL],
        )
        .await?;
        backends.push(DemoBackend {
            name,
            address: *address,
            id,
        });
    }
    // Serving before the commit: the proxy may route to them the moment it learns of them.
    for ((listener, _), backend) in listeners.into_iter().zip(&backends) {
        tokio::spawn(serve_backend(listener, backend.name, stop.clone()));
    }
    tx.commit().await?;

    let ids: Vec<i64> = backends.iter().map(|b| b.id).collect();
    let others: i64 = client
        .query_one(
            "SELECT count(*) FROM workers WHERE pool = $1 AND NOT id = ANY($2)",
            &[&POOL, &ids],
        )
        .await?
        .get(0);
    Ok(Registered {
        backends,
        replaced,
        others,
    })
}

/// Deletes the rows `ids` and their records, best effort: a failure is logged, the error
/// that led here is the one to report.
async fn unregister(url: &str, ids: &[i64]) {
    let deleted = async {
        let mut client = Db::new(url)?.connect().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM workers WHERE id = ANY($1)", &[&ids])
            .await?;
        tx.execute(
            "DELETE FROM demo_workers WHERE worker_id = ANY($1)",
            &[&ids],
        )
        .await?;
        tx.commit().await?;
        Ok::<(), DemoError>(())
    }
    .await;
    if let Err(e) = deleted {
        tracing::warn!(error = %e, "cannot delete the demo's rows; a later demo will");
    }
}

/// Deletes the rows a previous demo registered (as `demo_workers` records them, address and
/// pool unchanged since) whose backends no longer accept connections. A row whose backend
/// answers may belong to a demo still running against the same database: it stays.
async fn delete_dead_rows(client: &tokio_postgres::Client) -> Result<u64, DemoError> {
    let rows = client
        .query(
            "SELECT w.id, w.worker_address FROM workers w
             JOIN demo_workers d ON d.worker_id = w.id
              AND d.worker_address = w.worker_address AND d.pool = w.pool",
            &[],
        )
        .await?;
    let mut dead = Vec::new();
    for row in rows {
        let (id, address): (i64, String) = (row.get(0), row.get(1));
        let answers = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&address)).await,
            Ok(Ok(_))
        );
        if !answers {
            dead.push(id);
        }
    }
    let deleted = if dead.is_empty() {
        0
    } else {
        // The join again, so a row changed since the SELECT (now someone else's) is kept.
        client
            .execute(
                "DELETE FROM workers w USING demo_workers d
                 WHERE w.id = ANY($1) AND d.worker_id = w.id
                   AND d.worker_address = w.worker_address AND d.pool = w.pool",
                &[&dead],
            )
            .await?
    };
    // Records of rows that are gone (deleted now, or by hand since) serve nothing.
    client
        .execute(
            "DELETE FROM demo_workers d WHERE NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = d.worker_id)",
            &[],
        )
        .await?;
    if deleted > 0 {
        tracing::info!(
            rows = deleted,
            "deleted an earlier demo's rows, whose backends were gone"
        );
    }
    Ok(deleted)
}

/// Waits until the ring's pool holds every id in `ids`.
async fn wait_for_ring(running: &Running, ids: &[i64]) -> Result<(), DemoError> {
    let holds = || {
        let snapshot = running.ring.load();
        snapshot.pool_named(POOL).is_some_and(|pool| {
            ids.iter()
                .all(|id| pool.workers.iter().any(|w| w.id == *id))
        })
    };
    let mut published = running.ring.subscribe();
    let waited = tokio::time::timeout(RING_WAIT, async {
        while !holds() {
            if published.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    match waited {
        Ok(true) => Ok(()),
        _ => Err(DemoError::RingTimeout),
    }
}

/// Answers every request on `listener` with `name` and a newline, until `stop`.
async fn serve_backend(listener: TcpListener, name: &'static str, stop: CancellationToken) {
    let body = Bytes::from(format!("{name}\n"));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: pause rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let body = body.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
