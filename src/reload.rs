//! Reload: a new, already validated configuration applied to a running proxy (SIGHUP).
//!
//! Listeners are matched by `bind` (as configured, or as bound). A kept listener gets a new
//! proxy built from its new entry and its pool's new settings (algorithm, timeouts,
//! retries, ejection, slow start, limits on each client, even its protocol): connections
//! accepted from then on use it, open ones finish with the proxy they started with, so no
//! request is cut. A listener no longer configured stops accepting at once and its
//! connections drain as on shutdown; a new one is bound and served. Pools whose settings
//! changed get new health-check and reaper tasks.
//!
//! Everything that can fail (binding new addresses, opening new access logs, loading new
//! certificates) happens first: a reload that fails
//! changes nothing. What cannot change without a restart (the database connection, the
//! admin endpoint, a kept listener's `max_connections`) is reported and left as it is,
//! while the rest applies, as nginx does for the settings its reload cannot take.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::Running;
use crate::access_log::AccessLogError;
use crate::config::Config;
use crate::listeners::{self, BindError, BindFor, Bound, Served};
use crate::tls::TlsError;
use miette::Diagnostic;

/// What a reload did, for its one log line.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    /// Listeners bound by this reload, as bound.
    pub added: Vec<SocketAddr>,
    /// Listeners no longer configured, now draining.
    pub removed: Vec<SocketAddr>,
    /// Listeners kept, each with a proxy built from its new settings.
    pub kept: usize,
    /// Pools whose background tasks started, restarted (settings changed) or stopped.
    pub pools_restarted: Vec<String>,
    /// Settings that changed but apply only after a restart.
    pub needs_restart: Vec<String>,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: &[String]| {
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join(", ")
            }
        };
        let addresses =
            |a: &[SocketAddr]| list(&a.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        write!(
            f,
            "listeners added: {}; removed: {}; kept: {}; pools restarted: {}",
            addresses(&self.added),
            addresses(&self.removed),
            self.kept,
            list(&self.pools_restarted),
        )?;
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; not applied until a restart: {}",
                list(&self.needs_restart)
            )?;
        }
        Ok(())
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ReloadError {
    /// A listener the new configuration adds cannot be bound. Not a `source`: the
    /// message holds it, and a report would print it again.
    #[error("configuration not reloaded: {0}")]
    #[diagnostic(transparent)]
    Bind(BindError),
    /// A listener's new access log cannot be opened.
    #[error("configuration not reloaded: {0}")]
    #[diagnostic(
        code(reload::access_log),
        help("check the listener's `access_log` path and its permissions")
    )]
    AccessLog(#[from] AccessLogError),
    /// A listener's new certificates cannot be loaded.
    #[error("configuration not reloaded: {0}")]
    #[diagnostic(transparent)]
    Tls(#[from] TlsError),
}

impl From<BindError> for ReloadError {
    fn from(e: BindError) -> ReloadError {
        ReloadError::Bind(e)
    }
}

impl ReloadError {
    /// Names `path`, the file the new configuration was read from, in the help of an
    /// error about one of its addresses.
    pub fn in_file(self, path: &std::path::Path) -> ReloadError {
        match self {
            ReloadError::Bind(e) => ReloadError::Bind(e.in_file(path)),
            other => other,
        }
    }
}

/// Where each entry of the new configuration comes from.
enum Source {
    /// An old listener (its index among the served ones).
    Kept(usize),
    /// A socket this reload bound.
    Added(Bound),
}

impl Running {
    /// Applies `config`, or changes nothing if it cannot (see the module's doc). A removed
    /// listener's connections get `grace` to finish. The outcome is counted in
    /// `lb_config_reloads_total`.
    pub async fn reload(
        &mut self,
        config: Config,
        grace: Duration,
    ) -> Result<ReloadSummary, ReloadError> {
        let result = self.apply(config, grace).await;
        self.metrics.config_reloaded(result.is_ok());
        result
    }

    async fn apply(
        &mut self,
        config: Config,
        grace: Duration,
    ) -> Result<ReloadSummary, ReloadError> {
        let sources = self.match_listeners(&config).await?;
        let mut logs = Vec::with_capacity(sources.len());
        let mut tls = Vec::with_capacity(sources.len());
        for (entry, source) in config.listeners.iter().zip(&sources) {
            let (address, previous) = match source {
                Source::Kept(i) => {
                    let served = &self.served.served()[*i];
                    (served.address, Some(served))
                }
                Source::Added(bound) => (bound.address, None),
            };
            logs.push(self.served.open_log(entry, address, previous)?);
            tls.push(self.served.open_tls(entry, previous)?);
        }
        // Nothing can fail from here on.
        let mut summary = ReloadSummary {
            needs_restart: needs_restart(&self.config, &config, self.served.served(), &sources),
            ..ReloadSummary::default()
        };
        for needed in &summary.needs_restart {
            tracing::warn!(setting = %needed, "changed in the configuration, but applies only after a restart");
        }
        for entry in &config.listeners {
            self.ring.configure(&entry.pool);
        }
        summary.pools_restarted = self.pool_tasks.apply(&config);

        let mut old: Vec<Option<Served>> = self.served.take().into_iter().map(Some).collect();
        let mut unused = Vec::new();
        let built = config
            .listeners
            .iter()
            .zip(sources)
            .zip(logs.into_iter().zip(tls));
        for ((entry, source), (log, tls)) in built {
            match source {
                Source::Kept(i) => {
                    let served = old[i].take().expect("each old listener is kept once");
                    unused.extend(self.served.keep(served, entry.clone(), &config, log, tls));
                    summary.kept += 1;
                }
                Source::Added(bound) => {
                    let address = self.served.serve(entry.clone(), bound, &config, log, tls);
                    summary.added.push(address);
                }
            }
        }
        for served in old.into_iter().flatten() {
            summary.removed.push(served.address);
            unused.push(self.served.retire(served, grace));
        }
        self.served.forget_unused(&unused);
        self.listeners = self.served.addresses();
        self.served_names
            .store(std::sync::Arc::new(crate::served_listeners(&self.served)));
        self.config = config;
        Ok(summary)
    }

    /// For each entry of `config`, the served listener it names, or a newly bound socket.
    /// Binds every new address before anything changes: one that fails fails the reload.
    async fn match_listeners(&self, config: &Config) -> Result<Vec<Source>, ReloadError> {
        let served = self.served.served();
        let mut taken = vec![false; served.len()];
        let mut sources = Vec::with_capacity(config.listeners.len());
        for (index, entry) in config.listeners.iter().enumerate() {
            let old = (0..served.len()).find(|&i| !taken[i] && served[i].is(entry.bind));
            match old {
                Some(i) => {
                    taken[i] = true;
                    sources.push(Source::Kept(i));
                }
                None => {
                    let bound = listeners::bind(entry.bind, BindFor::listener(index, entry));
                    sources.push(Source::Added(bound.await?));
                }
            }
        }
        Ok(sources)
    }
}

/// The settings that differ between `old` and `new` but cannot change in a running process.
fn needs_restart(old: &Config, new: &Config, served: &[Served], sources: &[Source]) -> Vec<String> {
    let mut needed = Vec::new();
    let (a, b) = (&old.database, &new.database);
    let database = [
        ("database.url", a.url != b.url),
        ("database.cache_path", a.cache_path != b.cache_path),
        (
            "database.heartbeat_interval",
            a.heartbeat_interval != b.heartbeat_interval,
        ),
        (
            "database.anti_entropy_interval",
            a.anti_entropy_interval != b.anti_entropy_interval,
        ),
    ];
    needed.extend(
        database
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key.to_string()),
    );
    if old.admin != new.admin {
        needed.push("[admin]".to_string());
    }
    for (i, (entry, source)) in new.listeners.iter().zip(sources).enumerate() {
        // The accept loop keeps the limit it was started with (see `proxy::serve`).
        if let Source::Kept(k) = source
            && served[*k].config.max_connections != entry.max_connections
        {
            needed.push(format!("listeners[{i}].max_connections"));
        }
    }
    needed
}
