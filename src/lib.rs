//! load_balancer: an HTTP and TCP load balancer whose backends are the rows of a PostgreSQL
//! table, changed live with plain SQL.
//!
//! Data flows one way, and the imports follow it: [`config`] → [`db`] (migrations, snapshot,
//! the subscriber task that follows the table) → [`ring`] (membership and one published
//! snapshot) → [`balance`] (which worker: pure policy) → [`upstream`] (connections to
//! workers) and [`proxy`] (the client-facing transports and their one forwarding policy) →
//! [`admin`] (reads it all). [`accept`] and [`shutdown`] serve every listening socket.
//! [`start`] wires these together; `main.rs` only adds the command line, logging and
//! signals.

#![forbid(unsafe_code)]

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod db;
pub mod metrics;
pub mod proxy;
pub mod ring;
pub mod shutdown;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use miette::Diagnostic;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use access_log::AccessLog;
use balance::Balancer;
use config::{Config, Protocol};
use db::subscriber::Timing;
use db::{Db, Subscriber, SubscriberError, SyncStatus};
use metrics::Metrics;
use proxy::ClientLimits;
use proxy::HttpProxy;
use proxy::report::Reports;
use proxy::tcp::TcpProxy;
use ring::{Membership, Ring};
use shutdown::Shutdown;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    #[diagnostic(
        code(startup::bind),
        help("another process may hold this address; change `bind` in config.toml")
    )]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Database(#[from] db::StartupError),
    #[error("cannot read the workers table: {0}")]
    #[diagnostic(code(startup::sync))]
    Sync(#[source] SubscriberError),
    #[error(transparent)]
    #[diagnostic(
        code(startup::access_log),
        help("check the listener's `access_log` path and its permissions")
    )]
    AccessLog(access_log::AccessLogError),
}

/// A started proxy: its bound addresses and the handles to stop it.
pub struct Running {
    pub ring: Arc<Ring>,
    /// The database subscriber's connection state, as `/status` shows it.
    pub sync: Arc<SyncStatus>,
    /// What `/metrics` shows beyond the ring's per-worker counts.
    pub metrics: Arc<Metrics>,
    /// The bound address of each `[[listeners]]` entry, in config order (port 0 resolved).
    pub listeners: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Every listener's open access log, reopened on SIGHUP (log rotation).
    access_logs: Vec<AccessLog>,
    shutdown: Shutdown,
    subscriber_task: JoinHandle<()>,
    /// Writes `worker_status` until the cut, then deletes this instance's rows.
    status_task: JoinHandle<()>,
}

/// Binds every address, migrates the database, syncs the ring once, and starts serving.
/// Addresses are bound first, so a taken port is reported before the database is touched.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        bound.push(bind(l.bind).await?);
    }
    let admin_listener = match &config.admin {
        Some(a) => Some(bind(a.bind).await?),
        None => None,
    };

    let pools: Vec<String> = config.listeners.iter().map(|l| l.pool.clone()).collect();
    let ring = Ring::new(&pools);
    let shutdown = Shutdown::new();
    let sync = Arc::new(SyncStatus::default());
    let metrics = Metrics::new();
    let subscriber_task = start_subscriber(config, &ring, &sync, &metrics, &shutdown).await?;
    spawn_pool_tasks(config, &ring, &shutdown);
    let admin_port = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let status_task = db::status::spawn(
        &config.database.url,
        &config.status,
        ring.clone(),
        admin_port.map(|a| a.port()),
        shutdown.cut.clone(),
    )?;

    let mut listeners = Vec::with_capacity(bound.len());
    let mut access_logs = Vec::new();
    for (l, tcp) in config.listeners.iter().zip(bound) {
        let address = tcp.local_addr().map_err(|source| StartError::Bind {
            address: l.bind,
            source,
        })?;
        listeners.push(address);
        let http = l.protocol == Protocol::Http;
        let name = address.to_string();
        let dropped = metrics.access_log_dropped.clone();
        let log = AccessLog::open(&name, &l.access_log, l.access_log_format, dropped)
            .map_err(StartError::AccessLog)?;
        access_logs.extend(log.clone());
        let reports = Reports::new(metrics.listener(&name, &l.pool, http), log);
        let slow_start = config.pool(&l.pool).slow_start.as_millis() as u64;
        (reports.metrics.pool_counts.slow_start_ms).store(slow_start, Ordering::Relaxed);
        let balancer = Balancer::new(
            ring.clone(),
            &l.pool,
            balance::build(l.algorithm),
            config.pool(&l.pool),
        );
        match l.protocol {
            Protocol::Http => {
                let limits = ClientLimits::of(l);
                let proxy = HttpProxy::new(balancer, limits, sync.clone(), reports);
                tokio::spawn(Arc::new(proxy).serve(tcp, shutdown.clone()))
            }
            Protocol::Tcp => {
                let proxy = TcpProxy::new(balancer, l.max_connections, l.idle_timeout, reports);
                tokio::spawn(Arc::new(proxy).serve(tcp, shutdown.clone()))
            }
        };
        tracing::info!(%address, protocol = l.protocol.name(), pool = %l.pool,
            algorithm = l.algorithm.name(), "listening");
    }
    let admin = admin_listener.and_then(|tcp| {
        let address = tcp.local_addr().ok();
        let shown = address.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let endpoint = admin::Admin {
            ring: ring.clone(),
            sync: sync.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            token: config.admin.as_ref().and_then(|a| a.token.clone()),
        };
        tokio::spawn(admin::serve(tcp, endpoint));
        tracing::info!(address = %shown,
            "admin endpoint listening (GET /status, /metrics, /livez, /readyz)");
        address
    });
    Ok(Running {
        ring,
        sync,
        metrics,
        access_logs,
        listeners,
        admin,
        shutdown,
        subscriber_task,
        status_task,
    })
}

/// Migrates, reads the table once and starts following it. The proxy must be able to
/// start while its database is down: then it serves the cached ring (or 503) and keeps
/// trying in the background; a database that refuses it for good stops the start.
async fn start_subscriber(
    config: &Config,
    ring: &Arc<Ring>,
    sync: &Arc<SyncStatus>,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    let db = Db::new(&config.database.url)?;
    let timing = Timing {
        heartbeat: config.database.heartbeat_interval,
        anti_entropy: config.database.anti_entropy_interval,
    };
    let mut subscriber = Subscriber::new(
        db,
        Membership::new(ring.clone()),
        shutdown.drain.clone(),
        sync.clone(),
        timing,
        metrics.clone(),
    );
    let session = match subscriber.connect("startup").await {
        Ok(session) => Some(session),
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "PostgreSQL does not answer; starting without it and retrying");
            sync.set_unreachable(&e);
            restore_cache(&mut subscriber, config.database.cache_path.as_deref());
            None
        }
        Err(SubscriberError::Prepare(e)) => return Err(e.into()),
        Err(e) => return Err(StartError::Sync(e)),
    };
    if let Some(path) = &config.database.cache_path {
        tokio::spawn(db::cache::writer(
            path.clone(),
            ring.clone(),
            shutdown.drain.clone(),
        ));
    }
    Ok(tokio::spawn(subscriber.run(session)))
}

/// One health checker and one idle-connection reaper per pool, shared by every listener of
/// the pool.
fn spawn_pool_tasks(config: &Config, ring: &Arc<Ring>, shutdown: &Shutdown) {
    for (index, name) in ring.configured_pools().iter().enumerate() {
        let settings = config.pool(name);
        if let Some(check) = settings.health_check {
            tokio::spawn(balance::health::run(
                ring.clone(),
                name.to_string(),
                check,
                Arc::new(upstream::probe::NetworkProbe),
                shutdown.drain.clone(),
            ));
        }
        tokio::spawn(upstream::idle::reap(
            ring.clone(),
            index,
            settings.idle_timeout,
            shutdown.drain.clone(),
        ));
    }
}

/// Seeds the ring from the cache file, if there is a usable one; says why not otherwise.
fn restore_cache(subscriber: &mut Subscriber, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::warn!("no [database] cache_path: answering 503 until the database answers");
        return;
    };
    match db::cache::load(path) {
        Ok(Some(rows)) => subscriber.restore(rows),
        Ok(None) => tracing::warn!(path = %path.display(),
            "no ring cache yet: answering 503 until the database answers"),
        Err(e) => tracing::error!(error = %e,
            "ignoring the ring cache: answering 503 until the database answers"),
    }
}

impl Running {
    /// Reopens every access-log file (after a log rotation moved them away).
    pub fn reopen_access_logs(&self) {
        for log in &self.access_logs {
            log.reopen();
        }
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, cuts the rest,
    /// deletes this instance's `worker_status` rows and closes the database subscriber.
    /// Returns whether everything finished in time.
    pub async fn stop(self, grace: Duration) -> bool {
        let clean = self.shutdown.run(grace).await;
        let _ = self.status_task.await;
        let _ = self.subscriber_task.await;
        clean
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })
}
