//! Everything that talks to PostgreSQL: connection settings, the startup checks, migrations,
//! the snapshot of both tables (`workers`, `routes`), the subscriber task that turns NOTIFY
//! events into ring updates, and the status reporter that writes this instance's view of
//! the workers to `worker_status`. Every connection is made with the one TLS connector of
//! [`tls`], as the URL's `sslmode` asks.
//!
//! The hot path never comes here: it only reads the ring the subscriber publishes.

pub mod cache;
mod event;
mod migrate;
pub mod status;
pub mod subscriber;
pub mod tls;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use miette::Diagnostic;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

use crate::ring::{Fingerprint, Fingerprints, RouteRow, Row, Tables};

pub use event::Event;
pub use subscriber::{Subscriber, SubscriberError, SyncState, SyncStatus};

/// The NOTIFY channel the triggers of `migrations/V2__notify.sql` (workers) and
/// `V4__routes.sql` (routes) send on.
pub const CHANNEL: &str = "lb_workers";

/// How long to wait for a TCP connection to PostgreSQL before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keepalive probes start after this much silence, so a dead peer is noticed in seconds.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Unacknowledged data older than this kills the connection (Linux `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection settings and the connections for ordinary queries.
#[derive(Clone)]
pub struct Db {
    /// Settings for the subscriber's own connection (never pooled: see `subscriber.rs`).
    pub config: tokio_postgres::Config,
    /// TLS for every connection, pooled or not (`sslmode` in `config` says whether it is used).
    pub tls: tls::Connector,
    /// Pooled connections for queries such as the snapshot read.
    /// A deadpool of connections for snapshot and fingerprint queries (a "pool" of
    /// workers is another thing: `workers.pool`).
    pub connections: deadpool_postgres::Pool,
}

/// Why the proxy could not start against the database. Each says which problem it is and
/// how to fix it.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum StartupError {
    #[error("database {database:?} does not exist on {server}")]
    #[diagnostic(code(database::missing))]
    NoDatabase {
        database: String,
        server: String,
        #[help]
        fix: String,
    },
    #[error("PostgreSQL at {server} refused the login of user {user:?}: {message}")]
    #[diagnostic(
        code(database::auth),
        help("fix the user or password in [database] url, or in DATABASE_URL")
    )]
    Auth {
        server: String,
        user: String,
        message: String,
    },
    #[error("PostgreSQL at {server} does not answer: {message}")]
    #[diagnostic(
        code(database::unreachable),
        help("start PostgreSQL, or fix the host and port in [database] url or DATABASE_URL")
    )]
    Unreachable { server: String, message: String },
    #[error("TLS to PostgreSQL at {server} failed: {message}")]
    #[diagnostic(code(database::tls))]
    Tls {
        server: String,
        message: String,
        #[help]
        fix: String,
    },
    #[error("PostgreSQL at {server} failed: {message}")]
    #[diagnostic(code(database::error))]
    Other { server: String, message: String },
    /// The URL does not parse. Its text is not repeated: it may hold a password.
    #[error("the database URL is not valid: {message}")]
    #[diagnostic(code(database::url))]
    Url {
        message: String,
        #[help]
        fix: Option<String>,
    },
    #[error("database migrations failed: {0}")]
    #[diagnostic(code(database::migrate))]
    Migrate(String),
}

impl StartupError {
    /// Whether waiting may fix it (the server is down or cut off), as opposed to a problem
    /// an operator must fix (no such database, refused login, failed migration).
    pub fn is_transient(&self) -> bool {
        matches!(self, StartupError::Unreachable { .. })
    }
}

impl Db {
    /// Parses `url` into connection settings and connections for queries. No I/O: nothing is
    /// connected until it is used.
    pub fn new(url: &str) -> Result<Db, StartupError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| url_error(&e))?;
        if config.get_application_name().is_none() {
            config.application_name("load_balancer");
        }
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(TCP_USER_TIMEOUT);

        let tls = tls::connector();
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // Checked with a query on checkout: snapshots are rare, and a connection the
                // server dropped meanwhile must not fail a resync.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let connections = deadpool_postgres::Pool::builder(manager)
            .max_size(4)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .expect("a tokio runtime and timeouts are set");
        Ok(Db {
            config,
            tls,
            connections,
        })
    }

    /// Opens one connection of its own (not pooled) and drives it on a task; the error
    /// says what went wrong.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, StartupError> {
        match self.config.connect(self.tls.clone()).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "database connection closed");
                    }
                });
                Ok(client)
            }
            Err(e) => Err(classify(&self.config, &e)),
        }
    }

    /// Connects (a clear error if that fails) and runs the pending migrations.
    pub async fn migrate(&self) -> Result<(), StartupError> {
        let mut client = self.connect().await?;
        migrate::run(&mut client)
            .await
            .map_err(|e| StartupError::Migrate(e.to_string()))
    }

    /// Per pool, and for the whole of `routes`: the row count and digest of
    /// [`Fingerprint`], as [`crate::ring::Snapshot::fingerprints`] computes them. One
    /// statement (so one consistent view of both tables), one round trip, a few bytes back.
    pub async fn fingerprints(
        client: &tokio_postgres::Client,
    ) -> Result<Fingerprints, tokio_postgres::Error> {
        // The routes' row has a NULL pool, which no workers row has. Text columns are
        // encoded as their byte length, ':' and the text, or '~' for NULL, so no value can
        // pass for another.
        let rows = client
            .query(
                "SELECT pool, count(*), md5(string_agg(
                     id::text || ':' || version::text || ':' || weight::text || ':' || worker_address,
                     ';' ORDER BY id))
                 FROM workers GROUP BY pool
                 UNION ALL
                 SELECT NULL, count(*), coalesce(md5(string_agg(
                     id::text || ':' || version::text || ':' || priority::text || ':'
                     || coalesce(octet_length(host)::text || ':' || host, '~')
                     || coalesce(octet_length(path_prefix)::text || ':' || path_prefix, '~')
                     || coalesce(octet_length(pool)::text || ':' || pool, '~')
                     || coalesce(octet_length(listener)::text || ':' || listener, '~'),
                     ';' ORDER BY id)), '')
                 FROM routes",
                &[],
            )
            .await?;
        let mut fingerprints = Fingerprints::default();
        for r in &rows {
            let count: i64 = r.get(1);
            let fingerprint = Fingerprint {
                count: count as u64,
                digest: r.get(2),
            };
            match r.get::<_, Option<String>>(0) {
                Some(pool) => {
                    fingerprints.pools.insert(pool, fingerprint);
                }
                None => fingerprints.routes = fingerprint,
            }
        }
        Ok(fingerprints)
    }

    /// Reads every row of `workers` and of `routes`, in one REPEATABLE READ transaction so
    /// the two are from one instant (a route and the workers of its pool added together
    /// are both there or both not): the full state the subscriber resets to.
    pub async fn snapshot(&self) -> Result<Tables, SnapshotError> {
        let mut client = self.connections.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // Sent together (pipelined): one round trip for both.
        let (workers, routes) = tokio::try_join!(
            tx.query(
                "SELECT id, worker_address, weight, pool, version FROM workers",
                &[],
            ),
            tx.query(
                "SELECT id, version, host, path_prefix, pool, priority, listener FROM routes",
                &[],
            ),
        )?;
        tx.commit().await?;
        let workers = workers
            .iter()
            .map(|r| {
                let weight: i32 = r.try_get(2)?;
                Ok(Row {
                    id: r.try_get(0)?,
                    address: r.try_get(1)?,
                    // The CHECK constraint keeps it in 0..=10000.
                    weight: weight.clamp(0, 10_000) as u32,
                    pool: r.try_get(3)?,
                    version: r.try_get(4)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()?;
        let routes = routes
            .iter()
            .map(|r| {
                Ok(RouteRow {
                    id: r.try_get(0)?,
                    version: r.try_get(1)?,
                    host: r.try_get(2)?,
                    path_prefix: r.try_get(3)?,
                    pool: r.try_get(4)?,
                    priority: r.try_get(5)?,
                    listener: r.try_get(6)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()?;
        Ok(Tables { workers, routes })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no pooled database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("snapshot query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// `e` and its causes, as one line: the interesting part ("Connection refused", "invalid
/// value for option `sslmode`") is inside.
fn chain(e: &tokio_postgres::Error) -> String {
    crate::config::with_causes(e)
}

/// A URL tokio-postgres cannot parse: what it says, and for the TLS options it does not
/// know, what it does support (see [`tls`]).
fn url_error(e: &tokio_postgres::Error) -> StartupError {
    let message = chain(e);
    let fix = crate::config::database_url_help(&message);
    StartupError::Url { message, fix }
}

/// Turns a connection error into the one-line reason and fix a user needs.
fn classify(config: &tokio_postgres::Config, e: &tokio_postgres::Error) -> StartupError {
    let server = describe_server(config);
    if let Some(failure) = tls::failure(e) {
        return tls_error(server, failure);
    }
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| chain(e));
    let user = config.get_user().unwrap_or("(default)").to_string();
    match e.code() {
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            let database = config.get_dbname().unwrap_or(&user).to_string();
            let (host, port) = host_port(config);
            StartupError::NoDatabase {
                fix: format!("create it: createdb -h {host} -p {port} -U {user} {database}"),
                database,
                server,
            }
        }
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            StartupError::Auth {
                server,
                user,
                message,
            }
        }
        Some(_) => StartupError::Other { server, message },
        None => StartupError::Unreachable { server, message },
    }
}

/// What to say of a TLS failure, and how to fix it.
fn tls_error(server: String, failure: tls::TlsFailure) -> StartupError {
    match failure {
        tls::TlsFailure::NotOffered => StartupError::Tls {
            server,
            message: "the server does not accept TLS connections, and the URL requires TLS (sslmode=require)".to_string(),
            fix: "turn TLS on in PostgreSQL (`ssl = on` and a certificate in postgresql.conf), or allow a plain connection: sslmode=prefer (TLS when offered) or sslmode=disable".to_string(),
        },
        tls::TlsFailure::Handshake(reason) => StartupError::Tls {
            server,
            message: format!("the handshake failed: {reason}"),
            fix: "check the server's TLS settings (ssl_min_protocol_version, ssl_ciphers, its certificate), or connect without TLS: sslmode=disable".to_string(),
        },
    }
}

fn host_port(config: &tokio_postgres::Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

fn describe_server(config: &tokio_postgres::Config) -> String {
    let (host, port) = host_port(config);
    format!("{host}:{port}")
}
