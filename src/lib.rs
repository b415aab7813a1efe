//! load_balancer: an HTTP and TCP load balancer whose backends are the rows of a PostgreSQL
//! table, changed live with plain SQL.
//!
//! Data flows one way, and the imports follow it: [`config`] → [`db`] (migrations, snapshot,
//! the subscriber task that follows the table) → [`ring`] (membership and one published
//! snapshot) → [`balance`] (which worker: pure policy) → [`upstream`] (connections to
//! workers) and [`proxy`] (the client-facing transports and their one forwarding policy) →
//! [`admin`] (reads it all). [`accept`] and [`shutdown`] serve every listening socket.
//! [`start`] wires these together: the served [`listeners`] and each pool's
//! [`pool_tasks`]; [`reload`] applies a new configuration to them. Beside the flow:
//! [`metrics`] (the counters the transports add to, which `admin` exposes), [`access_log`]
//! (its queue and writer), [`codec`] (HTTP/2 frames and HPACK, without I/O), [`tls`] (termination on listeners; TLS to workers is
//! `upstream`'s, to PostgreSQL `db`'s) and [`cli`] (the `workers` commands, the `demo` and
//! the `healthcheck`). `main.rs` only adds the command line, logging and signals.

#![forbid(unsafe_code)]

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod balance;
pub mod cli;
pub mod codec;
mod codec_io;
pub mod config;
pub mod db;
mod io_variants;
pub mod listeners;
pub mod metrics;
pub mod pool_tasks;
pub mod proxy;
pub mod reload;
pub mod ring;
pub mod shutdown;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use miette::Diagnostic;
use tokio::task::JoinHandle;

use config::Config;
use db::subscriber::Timing;
use db::{Db, Subscriber, SubscriberError, SyncStatus};
use listeners::{BindError, BindFor, Listeners, bind};
use metrics::Metrics;
use pool_tasks::PoolTasks;
use ring::{Membership, Ring};
use shutdown::Shutdown;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum StartError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Bind(#[from] BindError),
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
    AccessLog(#[from] access_log::AccessLogError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Tls(#[from] tls::TlsError),
}

impl StartError {
    /// Names `path`, the configuration file `start` was given the contents of, in the
    /// help of an error about one of its addresses (`start` takes a [`Config`], which
    /// does not know where it was read from).
    pub fn in_file(self, path: &std::path::Path) -> StartError {
        match self {
            StartError::Bind(e) => StartError::Bind(e.in_file(path)),
            other => other,
        }
    }
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
    /// The configuration being served, which a reload compares the new one with.
    config: Config,
    served: Listeners,
    /// What `/status` knows of `served` (addresses and names), renewed by each reload.
    served_names: admin::ServedListeners,
    pool_tasks: PoolTasks,
    shutdown: Shutdown,
    subscriber_task: JoinHandle<()>,
    /// Writes `worker_status` until the cut, then deletes this instance's rows.
    status_task: JoinHandle<()>,
}

/// Binds every address, migrates the database, syncs the ring once, and starts serving.
/// Addresses are bound first, so a taken port is reported before the database is touched.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for (i, l) in config.listeners.iter().enumerate() {
        bound.push(bind(l.bind, BindFor::listener(i, l)).await?);
    }
    let admin_listener = match &config.admin {
        Some(a) => Some(bind(a.bind, BindFor::Admin).await?),
        None => None,
    };
    // Certificates were checked when the file was read, but may have changed since: they
    // are loaded again before the database is touched, so a bad one stops the start early.
    let mut terminators = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        terminators.push(match &l.tls {
            Some(t) => Some(Arc::new(tls::Terminator::new(t)?)),
            None => None,
        });
    }

    warn_of_random_sticky_secrets(config);
    let pools: Vec<String> = config.listeners.iter().map(|l| l.pool.clone()).collect();
    let ring = Ring::new(&pools);
    let shutdown = Shutdown::new();
    let sync = Arc::new(SyncStatus::default());
    let metrics = Metrics::new();
    let subscriber_task = start_subscriber(config, &ring, &sync, &metrics, &shutdown).await?;
    let pool_tasks = PoolTasks::new(ring.clone(), shutdown.drain.clone(), metrics.clone());
    pool_tasks.apply(config);
    let status_task = db::status::spawn(
        &config.database.url,
        &config.status,
        ring.clone(),
        admin_listener.as_ref().map(|a| a.address.port()),
        shutdown.cut.clone(),
    )?;

    let mut served = Listeners::new(
        ring.clone(),
        sync.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    for ((l, socket), tls) in config.listeners.iter().zip(bound).zip(terminators) {
        let log = served.open_log(l, socket.address, None)?;
        served.serve(l.clone(), socket, config, log, tls);
    }
    let served_names = admin::ServedListeners::default();
    served_names.store(Arc::new(served_listeners(&served)));
    let admin = admin_listener.map(|bound| {
        let address = bound.address;
        let endpoint = admin::Admin {
            ring: ring.clone(),
            sync: sync.clone(),
            listeners: served_names.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            token: config.admin.as_ref().and_then(|a| a.token.clone()),
        };
        tokio::spawn(admin::serve(bound.into_listener(), endpoint));
        tracing::info!(%address,
            "admin endpoint listening (GET /status, /metrics, /livez, /readyz)");
        address
    });
    Ok(Running {
        ring,
        sync,
        metrics,
        listeners: served.addresses(),
        admin,
        config: config.clone(),
        served,
        served_names,
        pool_tasks,
        shutdown,
        subscriber_task,
        status_task,
    })
}

/// A sticky cookie signed with a key drawn at startup is honoured by this process only:
/// another instance, or this one after a restart, balances its clients afresh.
fn warn_of_random_sticky_secrets(config: &Config) {
    for (name, pool) in &config.pools {
        if let Some(sticky) = &pool.sticky
            && sticky.secret.source == config::SecretSource::Random
        {
            tracing::warn!(pool = %name,
                "[pools.{name}.sticky] has no secret and LB_STICKY_SECRET is unset: its cookies are signed with a key of this process, so other instances and restarts do not honour them");
        }
    }
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

/// The served listeners as `/status` shows them.
fn served_listeners(served: &Listeners) -> Vec<admin::ServedListener> {
    served
        .served()
        .iter()
        .map(|s| admin::ServedListener {
            address: s.address,
            name: s.config.name.clone(),
        })
        .collect()
}

/// Seeds the ring from the cache file, if there is a usable one; says why not otherwise.
fn restore_cache(subscriber: &mut Subscriber, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::warn!("no [database] cache_path: answering 503 until the database answers");
        return;
    };
    match db::cache::load_tables(path) {
        Ok(Some(rows)) => subscriber.restore(rows),
        Ok(None) => tracing::warn!(path = %path.display(),
            "no ring cache yet: answering 503 until the database answers"),
        Err(e) => tracing::error!(error = %e,
            "ignoring the ring cache: answering 503 until the database answers"),
    }
}

impl Running {
    /// Reopens every listener's access-log file (after a log rotation moved them away).
    pub fn reopen_access_logs(&self) {
        self.served.reopen_logs();
    }

    /// What SIGHUP does before the configuration is reread, whatever the new file says:
    /// reopens the access logs (rotation) and re-reads every TLS listener's certificates
    /// (renewal), each keeping what it had if the new one cannot be opened.
    pub fn on_sighup(&self) {
        self.served.reopen_logs();
        self.served.reread_certificates();
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
