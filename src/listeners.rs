//! The listeners being served: each `[[listeners]]` entry's bound socket, the proxy its new
//! connections get, and its own shutdown. `start` fills it; a reload adds, replaces and
//! removes entries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use miette::Diagnostic;
use tokio::net::TcpListener;

use crate::access_log::{AccessLog, AccessLogError};
use crate::config::{Config, ListenerConfig, Protocol};
use crate::db::SyncStatus;
use crate::metrics::Metrics;
use crate::proxy::edge::Edge;
use crate::proxy::proxy_header::AcceptProxy;
use crate::proxy::target::Targets;
use crate::proxy::tcp::TcpProxy;
use crate::proxy::{self, ClientLimits, HttpProxy, Proxy};
use crate::ring::Ring;
use crate::shutdown::Shutdown;
use crate::tls::{Terminator, TlsError};

/// An address that could not be bound: which entry of the configuration asked for it, the
/// address, and the OS's reason, once (in the message, so it is not also a `source` that a
/// report would print a second time).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} for {entry}: {cause}")]
pub struct BindError {
    /// The `[[listeners]]` entry or the `[admin]` table whose `bind` this is.
    pub entry: BindFor,
    pub address: SocketAddr,
    /// What the OS said (e.g. "Address already in use (os error 98)").
    pub cause: std::io::Error,
    /// The configuration file the address comes from, when the caller knows it (see
    /// [`BindError::in_file`]): the help names it.
    pub config_path: Option<PathBuf>,
}

/// What a bound socket is for, as the configuration file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindFor {
    /// The `[[listeners]]` entry at `index` (from 0, as in `listeners[1].bind`).
    Listener { index: usize, name: Option<String> },
    /// The `[admin]` table.
    Admin,
}

impl BindFor {
    pub fn listener(index: usize, entry: &ListenerConfig) -> BindFor {
        BindFor::Listener {
            index,
            name: entry.name.clone(),
        }
    }

    /// The key of its address in the file, as the configuration's own diagnostics say it.
    pub fn key(&self) -> String {
        match self {
            BindFor::Listener { index, .. } => format!("listeners[{index}].bind"),
            BindFor::Admin => "admin.bind".to_string(),
        }
    }
}

/// `[[listeners]] #2 (listeners[1], name "public")`: counted from 1 as a reader counts
/// the entries, with the key the configuration's diagnostics use; or `[admin]`.
impl std::fmt::Display for BindFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindFor::Listener { index, name } => {
                write!(f, "[[listeners]] #{} (listeners[{index}]", index + 1)?;
                if let Some(name) = name {
                    write!(f, ", name {name:?}")?;
                }
                f.write_str(")")
            }
            BindFor::Admin => f.write_str("[admin]"),
        }
    }
}

impl BindError {
    /// Names `path` as the file to change in the help.
    pub fn in_file(mut self, path: &Path) -> BindError {
        self.config_path = Some(path.to_path_buf());
        self
    }
}

impl Diagnostic for BindError {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new("listeners::bind"))
    }

    /// What most likely causes it, and the key to change in the file it is in.
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        let file = match &self.config_path {
            Some(path) => path.display().to_string(),
            None => "the configuration file".to_string(),
        };
        let fix = format!("change `{}` in {file}", self.entry.key());
        let port = self.address.port();
        let help = match self.cause.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "another process holds this address (`ss -ltnp 'sport = :{port}'` shows which): stop it, or {fix}"
            ),
            std::io::ErrorKind::PermissionDenied if port < 1024 => format!(
                "a port below 1024 needs root or the CAP_NET_BIND_SERVICE capability: grant it, or {fix}"
            ),
            std::io::ErrorKind::AddrNotAvailable => {
                format!("no network interface of this host has this address: {fix}")
            }
            _ => fix,
        };
        Some(Box::new(help))
    }
}

/// A socket bound for a listener, not served yet.
pub struct Bound {
    listener: TcpListener,
    /// Where it is bound (the port the OS chose, for port 0).
    pub address: SocketAddr,
}

/// Binds `address` (as configured) for `entry`, a listener or the admin endpoint.
pub async fn bind(address: SocketAddr, entry: BindFor) -> Result<Bound, BindError> {
    let error = |cause| BindError {
        entry: entry.clone(),
        address,
        cause,
        config_path: None,
    };
    let listener = TcpListener::bind(address).await.map_err(error)?;
    let address = listener.local_addr().map_err(error)?;
    Ok(Bound { listener, address })
}

impl Bound {
    pub fn into_listener(self) -> TcpListener {
        self.listener
    }
}

/// Every served listener, in config order, and what building their proxies takes.
pub struct Listeners {
    ring: Arc<Ring>,
    sync: Arc<SyncStatus>,
    metrics: Arc<Metrics>,
    /// The process's shutdown: each listener's is a child of it.
    shutdown: Shutdown,
    served: Vec<Served>,
}

/// One listener being served.
pub struct Served {
    /// The entry as configured (a reload matches entries by `bind`, see [`Served::is`]).
    pub config: ListenerConfig,
    /// Where it is bound (the port the OS chose, for port 0).
    pub address: SocketAddr,
    /// The proxy each new connection gets: a reload swaps it.
    proxy: Arc<ArcSwap<Proxy>>,
    /// Its access log, if it has one (also held by its proxies' reports).
    log: Option<AccessLog>,
    /// Its TLS termination, if it has one (also held by its proxies' edges).
    tls: Option<Arc<Terminator>>,
    /// This listener's own drain and cut, so a reload can remove it alone.
    shutdown: Shutdown,
}

impl Served {
    /// Whether `bind` names this listener: as configured, or as bound (so a listener
    /// configured on port 0 can be named by the port it got).
    pub fn is(&self, bind: SocketAddr) -> bool {
        self.config.bind == bind || self.address == bind
    }
}

impl Listeners {
    pub fn new(
        ring: Arc<Ring>,
        sync: Arc<SyncStatus>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Listeners {
        Listeners {
            ring,
            sync,
            metrics,
            shutdown,
            served: Vec::new(),
        }
    }

    pub fn served(&self) -> &[Served] {
        &self.served
    }

    /// The bound addresses, in config order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.served.iter().map(|s| s.address).collect()
    }

    /// Takes every served listener out, for a reload to put each back ([`Listeners::keep`],
    /// in the new config's order) or retire it ([`Listeners::retire`]).
    pub fn take(&mut self) -> Vec<Served> {
        std::mem::take(&mut self.served)
    }

    /// Starts serving `bound` (bound from `entry`) at the end of the list, with the pool
    /// settings of `config`. The entry's pool must be configured in the ring.
    pub fn serve(
        &mut self,
        entry: ListenerConfig,
        bound: Bound,
        config: &Config,
        log: Option<AccessLog>,
        tls: Option<Arc<Terminator>>,
    ) -> SocketAddr {
        let Bound { listener, address } = bound;
        let proxy = self.build(&entry, address, config, log.clone(), tls.clone());
        let proxy = Arc::new(ArcSwap::from_pointee(proxy));
        let shutdown = self.shutdown.child();
        let own = shutdown.clone();
        let current = proxy.clone();
        let max_connections = entry.max_connections;
        // Tracked by the process's shutdown: it waits for this listener's connections too.
        self.shutdown.tracker.spawn(async move {
            proxy::serve(current, listener, own.clone(), max_connections).await;
            own.tracker.close();
            own.tracker.wait().await;
        });
        tracing::info!(%address, protocol = entry.protocol.name(), pool = %entry.pool,
            algorithm = entry.algorithm.name(), tls = tls.is_some(), "listening");
        self.served.push(Served {
            config: entry,
            address,
            proxy,
            log,
            tls,
            shutdown,
        });
        address
    }

    /// The access log `entry` asks for on the listener bound at `address`: the one
    /// `previous` (the same listener before a reload) already writes, when its target and
    /// format are unchanged, else one opened afresh. Opening is what can fail, so a reload
    /// opens every log before it changes anything.
    pub fn open_log(
        &self,
        entry: &ListenerConfig,
        address: SocketAddr,
        previous: Option<&Served>,
    ) -> Result<Option<AccessLog>, AccessLogError> {
        if let Some(p) = previous
            && p.config.access_log == entry.access_log
            && p.config.access_log_format == entry.access_log_format
        {
            return Ok(p.log.clone());
        }
        let dropped = self.metrics.access_log_dropped.clone();
        let name = address.to_string();
        AccessLog::open(&name, &entry.access_log, entry.access_log_format, dropped)
    }

    /// The TLS termination `entry` asks for: the one `previous` (the same listener before a
    /// reload) already has when its tls table is unchanged (its session tickets and cache
    /// stay valid, and its watcher keeps the certificates current), else one built afresh.
    /// Building loads the certificates, which can fail, so a reload builds every one before
    /// it changes anything.
    pub fn open_tls(
        &self,
        entry: &ListenerConfig,
        previous: Option<&Served>,
    ) -> Result<Option<Arc<Terminator>>, TlsError> {
        let Some(config) = &entry.tls else {
            return Ok(None);
        };
        if let Some(kept) = previous.and_then(|p| p.tls.as_ref())
            && kept.config == *config
        {
            return Ok(Some(kept.clone()));
        }
        Ok(Some(Arc::new(Terminator::new(config)?)))
    }

    /// Re-reads every TLS listener's certificate and key files (SIGHUP): new handshakes
    /// get what loads; a file that does not load is logged and its old certificate stays.
    pub fn reread_certificates(&self) {
        for tls in self.served.iter().filter_map(|s| s.tls.as_ref()) {
            tls.certificates.refresh(true);
        }
    }

    /// Reopens every access-log file (log rotation).
    pub fn reopen_logs(&self) {
        for log in self.served.iter().filter_map(|s| s.log.as_ref()) {
            log.reopen();
        }
    }

    /// Puts `served` back at the end of the list with a proxy built from `entry` and
    /// `config`: connections accepted from now on get it, open ones keep theirs. Returns
    /// the id of the listener metrics it stops using, if its pool or protocol changed.
    pub fn keep(
        &mut self,
        mut served: Served,
        entry: ListenerConfig,
        config: &Config,
        log: Option<AccessLog>,
        tls: Option<Arc<Terminator>>,
    ) -> Option<u32> {
        let old = served.proxy.load().reports().metrics.id;
        let proxy = self.build(&entry, served.address, config, log.clone(), tls.clone());
        served.log = log;
        served.tls = tls;
        let new = proxy.reports().metrics.id;
        served.proxy.store(Arc::new(proxy));
        served.config = entry;
        self.served.push(served);
        (old != new).then_some(old)
    }

    /// Stops accepting on `served` at once (its port is closed), and lets its open
    /// connections finish as on shutdown: up to `grace`, then they are cut. Returns the id
    /// of the listener metrics it used.
    pub fn retire(&self, served: Served, grace: Duration) -> u32 {
        let metrics = served.proxy.load().reports().metrics.id;
        tracing::info!(address = %served.address, grace_ms = grace.as_millis() as u64,
            "listener removed: draining its connections");
        self.shutdown.tracker.spawn(async move {
            if !served.shutdown.run(grace).await {
                tracing::warn!(address = %served.address,
                    "removed listener's drain deadline passed; its remaining connections were cut");
            }
        });
        metrics
    }

    /// Drops the series of listener metrics `ids` from `/metrics`, except those a served
    /// listener still counts in.
    pub fn forget_unused(&self, ids: &[u32]) {
        for &id in ids {
            let used = self
                .served
                .iter()
                .any(|s| s.proxy.load().reports().metrics.id == id);
            if !used {
                self.metrics.forget_listener(id);
            }
        }
    }

    /// The proxy of one listener, from its entry and its pool's settings: everything a
    /// reload changes in how a listener serves comes in here, at startup and at each reload.
    fn build(
        &self,
        entry: &ListenerConfig,
        address: SocketAddr,
        config: &Config,
        log: Option<AccessLog>,
        tls: Option<Arc<Terminator>>,
    ) -> Proxy {
        // The PROXY header first (when accepted), then the TLS handshake (when terminated).
        let edge = || {
            let edge = match &tls {
                Some(tls) => Edge::tls(tls.clone(), entry.header_read_timeout),
                None => Edge::plain(),
            };
            edge.accepting_proxy(AcceptProxy::of(entry))
        };
        let targets = Targets::new(
            self.ring.clone(),
            self.metrics.clone(),
            entry,
            address.to_string(),
            &config.pools,
            log,
        );
        match entry.protocol {
            Protocol::Http => Proxy::Http(Arc::new(HttpProxy {
                targets,
                hash_key: entry.hash_key.clone(),
                edge: edge(),
                limits: ClientLimits::of(entry),
                sync: self.sync.clone(),
            })),
            Protocol::Tcp => Proxy::Tcp(Arc::new(TcpProxy::new(
                targets,
                edge(),
                entry.idle_timeout,
                entry.sni_routing.then_some(entry.header_read_timeout),
            ))),
        }
    }
}
