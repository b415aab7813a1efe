//! `config.toml`: its schema, defaults and validation.
//!
//! Everything is checked before anything starts, and every mistake becomes a miette
//! diagnostic that names the key and points at the offending line of the file. The rest of
//! the program only ever sees a validated [`Config`].

// A diagnostic carries the file's text to point into it: large, but built once, at startup.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde::Deserialize;
use toml::Spanned;

use crate::ring::AlgorithmKind;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub listeners: Vec<ListenerConfig>,
    /// `None` when the file has no `[admin]` table: no admin endpoint is served.
    pub admin: Option<AdminConfig>,
    /// `[pools.NAME]` tables; pools not listed use [`PoolConfig::default`].
    pub pools: HashMap<String, PoolConfig>,
}

impl Config {
    /// The settings of pool `name`.
    pub fn pool(&self, name: &str) -> PoolConfig {
        self.pools.get(name).cloned().unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// A libpq-style URL; `DATABASE_URL` replaces the file's value when set.
    pub url: String,
    /// Where the last published ring is kept, so the proxy can start while PostgreSQL is
    /// down. `None`: no cache; without the database the proxy answers 503 until it is back.
    pub cache_path: Option<PathBuf>,
    /// How often the listener proves its connection alive with a query.
    pub heartbeat_interval: Duration,
    /// How often the ring is compared with the table (count and sums of ids and versions
    /// per pool), to heal from any lost event.
    pub anti_entropy_interval: Duration,
}

impl DatabaseConfig {
    /// `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> DatabaseConfig {
        DatabaseConfig {
            url: url.into(),
            cache_path: None,
            heartbeat_interval: Duration::from_secs(5),
            anti_entropy_interval: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// Which rows of `workers` (by their `pool` column) serve this listener.
    pub pool: String,
    pub algorithm: AlgorithmKind,
    /// Client connections served at once; beyond it new ones wait in the kernel's backlog.
    pub max_connections: Option<usize>,
    /// A client must send a request's headers within this time (slowloris protection). The
    /// clock starts when the connection waits for a request, so it also closes a keep-alive
    /// connection idle this long.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted; beyond it: 431.
    pub max_header_size: usize,
}

impl ListenerConfig {
    /// A listener with every optional setting at its default.
    pub fn new(bind: SocketAddr, protocol: Protocol, pool: &str, algorithm: AlgorithmKind) -> Self {
        ListenerConfig {
            bind,
            protocol,
            pool: pool.to_string(),
            algorithm,
            max_connections: None,
            header_read_timeout: Duration::from_secs(30),
            max_header_size: 64 * 1024,
        }
    }
}

/// How a pool's workers are reached and judged: `[pools.NAME]`. A pool without a table gets
/// the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// A worker that does not accept a TCP connection this fast is skipped (retried elsewhere).
    pub connect_timeout: Duration,
    /// A worker that does not send response headers this fast: 504.
    pub response_timeout: Duration,
    /// Idle keep-alive connections to workers older than this are closed.
    pub idle_timeout: Duration,
    /// Requests (HTTP) or connections (TCP) one worker serves at once; `None`: no limit.
    pub max_connections: Option<u64>,
    /// A new, recovered or up-weighted worker ramps to its full share over this long; zero
    /// turns slow start off.
    pub slow_start: Duration,
    /// After a worker is drained (weight 0) or deleted, its in-flight requests may run this
    /// long before their connections are cut.
    pub drain_timeout: Duration,
    /// Extra attempts on other workers after a failure that allows one.
    pub retries: u32,
    /// Retries may add at most this percentage to the requests sent (plus a few per second).
    pub retry_budget_percent: u32,
    pub health_check: Option<HealthCheckConfig>,
    pub ejection: EjectionConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            slow_start: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            retries: 2,
            retry_budget_percent: 20,
            health_check: None,
            ejection: EjectionConfig::default(),
        }
    }
}

/// Active health checks: `[pools.NAME.health_check]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that make an unhealthy worker healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy worker unhealthy.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// A request; the check passes on the expected status.
    Http {
        method: hyper::Method,
        path: String,
        expect_status: u16,
    },
    /// The check passes when a TCP connection is accepted.
    Tcp,
}

/// Passive ejection: `[pools.NAME.ejection]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectionConfig {
    /// Consecutive connect failures or 5xx that eject a worker; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat adds as much again, up to `max_time`.
    pub base_time: Duration,
    pub max_time: Duration,
    /// At most this percentage of a pool's workers is ejected at once.
    pub max_percent: u32,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 5,
            base_time: Duration::from_secs(10),
            max_time: Duration::from_secs(300),
            max_percent: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Per-request balancing over HTTP/1.1 keep-alive connections.
    Http,
    /// Per-connection balancing of raw TCP streams.
    Tcp,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    #[diagnostic(
        code(config::read),
        help("pass the file with --config PATH (default ./config.toml)")
    )]
    Read {
        path: String,
        source: std::io::Error,
    },

    #[error("{message}")]
    #[diagnostic(code(config::invalid))]
    Invalid {
        message: String,
        #[source_code]
        src: NamedSource<String>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("two listeners bind {bind}")]
    #[diagnostic(
        code(config::duplicate_bind),
        help("each [[listeners]] entry needs its own address")
    )]
    DuplicateBind {
        bind: SocketAddr,
        #[source_code]
        src: NamedSource<String>,
        #[label("first bound here")]
        first: SourceSpan,
        #[label("and again here")]
        second: SourceSpan,
    },

    #[error("DATABASE_URL is not a valid PostgreSQL URL: {reason}")]
    #[diagnostic(
        code(config::database_url),
        help("e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/load_balancer")
    )]
    DatabaseUrlEnv { reason: String },
}

// The file as written. Kept apart from `Config` so that spans stay here and defaults and
// validation happen in one place (`Config::parse`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database: RawDatabase,
    listeners: Vec<RawListener>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    pools: HashMap<String, RawPool>,
}

type Dur = Option<Spanned<String>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    connect_timeout: Dur,
    response_timeout: Dur,
    idle_timeout: Dur,
    max_connections: Option<u64>,
    slow_start: Dur,
    drain_timeout: Dur,
    retries: Option<u32>,
    retry_budget_percent: Option<Spanned<u32>>,
    health_check: Option<RawHealthCheck>,
    ejection: Option<RawEjection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    expect_status: Option<Spanned<u16>>,
    interval: Dur,
    timeout: Dur,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEjection {
    consecutive_failures: Option<u32>,
    base_time: Dur,
    max_time: Dur,
    max_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Spanned<String>,
    cache_path: Option<String>,
    heartbeat_interval: Dur,
    anti_entropy_interval: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    bind: Spanned<String>,
    protocol: Option<Spanned<String>>,
    pool: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    max_connections: Option<Spanned<usize>>,
    header_read_timeout: Dur,
    max_header_size: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Spanned<String>,
}

impl Config {
    /// Reads and validates `path`; `database_url` (from `DATABASE_URL`) overrides the file.
    pub fn load(path: &Path, database_url: Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&path.display().to_string(), &text, database_url)
    }

    /// Validates the text of a config file; `name` is shown in diagnostics.
    pub fn parse(
        name: &str,
        text: &str,
        database_url: Option<String>,
    ) -> Result<Config, ConfigError> {
        let source = Source { name, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            source.invalid(
                format!("invalid config: {}", e.message().trim_end()),
                span,
                "here",
                None,
            )
        })?;

        let url = match database_url {
            Some(url) => {
                tokio_postgres::Config::from_str(&url).map_err(|e| {
                    ConfigError::DatabaseUrlEnv {
                        reason: e.to_string(),
                    }
                })?;
                url
            }
            None => {
                let url = &raw.database.url;
                tokio_postgres::Config::from_str(url.get_ref()).map_err(|e| {
                    source.invalid(
                        format!("`database.url` is not a valid PostgreSQL URL: {e}"),
                        url.span(),
                        "this URL",
                        Some("e.g. url = \"postgres://postgres@127.0.0.1:5432/load_balancer\""),
                    )
                })?;
                url.get_ref().clone()
            }
        };

        if raw.listeners.is_empty() {
            return Err(source.invalid(
                "`listeners` is empty: nothing to serve".into(),
                0..0,
                "no [[listeners]] entry",
                Some(LISTENER_EXAMPLE),
            ));
        }
        let mut listeners = Vec::with_capacity(raw.listeners.len());
        let mut seen: HashMap<SocketAddr, std::ops::Range<usize>> = HashMap::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let bind = source.bind(&format!("listeners[{i}].bind"), &l.bind)?;
            // Port 0 asks the OS for any free port: two of them never clash.
            let clash = if bind.port() == 0 {
                None
            } else {
                seen.insert(bind, l.bind.span())
            };
            if let Some(first) = clash {
                return Err(ConfigError::DuplicateBind {
                    bind,
                    src: source.named(),
                    first: first.into(),
                    second: l.bind.span().into(),
                });
            }
            let protocol = match l.protocol.as_ref() {
                None => Protocol::Http,
                Some(p) => match p.get_ref().as_str() {
                    "http" => Protocol::Http,
                    "tcp" => Protocol::Tcp,
                    other => {
                        return Err(source.invalid(
                            format!("`listeners[{i}].protocol` must be \"http\" or \"tcp\", not {other:?}"),
                            p.span(),
                            "unknown protocol",
                            Some("protocol = \"http\" balances each request; \"tcp\" each connection"),
                        ));
                    }
                },
            };
            let pool = match l.pool.as_ref() {
                None => "default".to_string(),
                Some(p) if p.get_ref().is_empty() || p.get_ref().len() > 200 => {
                    return Err(source.invalid(
                        format!("`listeners[{i}].pool` must be 1 to 200 characters"),
                        p.span(),
                        "bad pool name",
                        Some("it names the rows of workers whose `pool` column matches"),
                    ));
                }
                Some(p) => p.get_ref().clone(),
            };
            let algorithm = match l.algorithm.as_ref() {
                None => AlgorithmKind::Weighted,
                Some(a) => AlgorithmKind::from_name(a.get_ref()).ok_or_else(|| {
                    source.invalid(
                        format!(
                            "`listeners[{i}].algorithm` must be one of {}, not {:?}",
                            AlgorithmKind::NAMES.join(", "),
                            a.get_ref()
                        ),
                        a.span(),
                        "unknown algorithm",
                        Some("weighted (smooth weighted round robin) is the default"),
                    )
                })?,
            };
            if !algorithm.is_supported() {
                let a = l
                    .algorithm
                    .as_ref()
                    .expect("only explicit algorithms are unsupported");
                return Err(source.invalid(
                    format!(
                        "`listeners[{i}].algorithm` {:?} is not yet supported",
                        a.get_ref()
                    ),
                    a.span(),
                    "not yet supported",
                    Some("use round_robin, random or weighted"),
                ));
            }
            let mut listener = ListenerConfig::new(bind, protocol, &pool, algorithm);
            let key = |k: &str| format!("listeners[{i}].{k}");
            listener.max_connections = match &l.max_connections {
                Some(m) if *m.get_ref() == 0 => {
                    return Err(source.invalid(
                        format!(
                            "`{}` must be at least 1 (leave it out for no limit)",
                            key("max_connections")
                        ),
                        m.span(),
                        "zero",
                        None,
                    ));
                }
                m => m.as_ref().map(|m| *m.get_ref()),
            };
            listener.header_read_timeout = source.duration(
                &key("header_read_timeout"),
                &l.header_read_timeout,
                listener.header_read_timeout,
                false,
            )?;
            if let Some(m) = &l.max_header_size {
                // hyper's read buffer cannot be smaller than 8 KiB.
                if *m.get_ref() < 8192 {
                    return Err(source.invalid(
                        format!("`{}` must be at least 8192 bytes", key("max_header_size")),
                        m.span(),
                        "too small",
                        None,
                    ));
                }
                listener.max_header_size = *m.get_ref();
            }
            listeners.push(listener);
        }

        let admin = match &raw.admin {
            None => None,
            Some(a) => {
                let bind = source.bind("admin.bind", &a.bind)?;
                if let Some(first) = seen.get(&bind) {
                    return Err(ConfigError::DuplicateBind {
                        bind,
                        src: source.named(),
                        first: first.clone().into(),
                        second: a.bind.span().into(),
                    });
                }
                Some(AdminConfig { bind })
            }
        };

        let mut database = DatabaseConfig::new(url);
        database.cache_path = raw.database.cache_path.as_ref().map(PathBuf::from);
        database.heartbeat_interval = source.duration(
            "database.heartbeat_interval",
            &raw.database.heartbeat_interval,
            database.heartbeat_interval,
            false,
        )?;
        database.anti_entropy_interval = source.duration(
            "database.anti_entropy_interval",
            &raw.database.anti_entropy_interval,
            database.anti_entropy_interval,
            false,
        )?;

        let mut pools = HashMap::new();
        for (name, raw) in &raw.pools {
            pools.insert(name.clone(), source.pool(name, raw)?);
        }

        Ok(Config {
            database,
            listeners,
            admin,
            pools,
        })
    }
}

/// Parses "250ms", "5s", "2m" (a positive integer and a unit).
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

const LISTENER_EXAMPLE: &str = "add one:\n[[listeners]]\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"default\"\nalgorithm = \"weighted\"";

/// The file being validated, for building diagnostics.
struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn named(&self) -> NamedSource<String> {
        NamedSource::new(self.name, self.text.to_string())
    }

    fn invalid(
        &self,
        message: String,
        span: std::ops::Range<usize>,
        label: &str,
        help: Option<&str>,
    ) -> ConfigError {
        ConfigError::Invalid {
            message,
            src: self.named(),
            span: span.into(),
            label: label.to_string(),
            help: help.map(str::to_string),
        }
    }

    /// A duration key: `default` when absent; zero refused unless `zero_ok`.
    fn duration(
        &self,
        key: &str,
        value: &Dur,
        default: Duration,
        zero_ok: bool,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = value else {
            return Ok(default);
        };
        parse_duration(v.get_ref())
            .filter(|d| zero_ok || !d.is_zero())
            .ok_or_else(|| {
                self.invalid(
                    format!(
                        "`{key}` must be a{} duration such as \"500ms\", \"5s\" or \"1m\", not {:?}",
                        if zero_ok { "" } else { " non-zero" },
                        v.get_ref()
                    ),
                    v.span(),
                    "not a duration",
                    None,
                )
            })
    }

    fn percent(
        &self,
        key: &str,
        value: &Option<Spanned<u32>>,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() <= 100 => Ok(*v.get_ref()),
            Some(v) => Err(self.invalid(
                format!("`{key}` is a percentage: 0 to 100"),
                v.span(),
                "out of range",
                None,
            )),
        }
    }

    fn pool(&self, name: &str, raw: &RawPool) -> Result<PoolConfig, ConfigError> {
        let d = PoolConfig::default();
        let key = |k: &str| format!("pools.{name}.{k}");
        let health_check = match &raw.health_check {
            None => None,
            Some(h) => Some(self.health_check(&key("health_check"), h)?),
        };
        let e = EjectionConfig::default();
        let ejection = match &raw.ejection {
            None => e,
            Some(r) => EjectionConfig {
                consecutive_failures: r.consecutive_failures.unwrap_or(e.consecutive_failures),
                base_time: self.duration(
                    &key("ejection.base_time"),
                    &r.base_time,
                    e.base_time,
                    false,
                )?,
                max_time: self.duration(
                    &key("ejection.max_time"),
                    &r.max_time,
                    e.max_time,
                    false,
                )?,
                max_percent: self.percent(
                    &key("ejection.max_percent"),
                    &r.max_percent,
                    e.max_percent,
                )?,
            },
        };
        Ok(PoolConfig {
            connect_timeout: self.duration(
                &key("connect_timeout"),
                &raw.connect_timeout,
                d.connect_timeout,
                false,
            )?,
            response_timeout: self.duration(
                &key("response_timeout"),
                &raw.response_timeout,
                d.response_timeout,
                false,
            )?,
            idle_timeout: self.duration(
                &key("idle_timeout"),
                &raw.idle_timeout,
                d.idle_timeout,
                false,
            )?,
            max_connections: raw.max_connections.filter(|m| *m > 0),
            slow_start: self.duration(&key("slow_start"), &raw.slow_start, d.slow_start, true)?,
            drain_timeout: self.duration(
                &key("drain_timeout"),
                &raw.drain_timeout,
                d.drain_timeout,
                true,
            )?,
            retries: raw.retries.unwrap_or(d.retries),
            retry_budget_percent: self.percent(
                &key("retry_budget_percent"),
                &raw.retry_budget_percent,
                d.retry_budget_percent,
            )?,
            health_check,
            ejection,
        })
    }

    fn health_check(
        &self,
        key: &str,
        raw: &RawHealthCheck,
    ) -> Result<HealthCheckConfig, ConfigError> {
        let kind = match raw.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("http", _)) => HealthCheckKind::Http {
                method: match &raw.method {
                    None => hyper::Method::GET,
                    Some(m) => hyper::Method::from_bytes(m.get_ref().as_bytes()).map_err(|_| {
                        self.invalid(
                            format!("`{key}.method` is not an HTTP method"),
                            m.span(),
                            "bad method",
                            None,
                        )
                    })?,
                },
                path: match &raw.path {
                    None => "/".to_string(),
                    Some(p)
                        if p.get_ref().starts_with('/')
                            && p.get_ref().parse::<hyper::Uri>().is_ok() =>
                    {
                        p.get_ref().clone()
                    }
                    Some(p) => {
                        return Err(self.invalid(
                            format!("`{key}.path` must be a path starting with /"),
                            p.span(),
                            "bad path",
                            None,
                        ));
                    }
                },
                expect_status: match &raw.expect_status {
                    None => 200,
                    Some(s) if (100..=599).contains(s.get_ref()) => *s.get_ref(),
                    Some(s) => {
                        return Err(self.invalid(
                            format!("`{key}.expect_status` must be an HTTP status, 100 to 599"),
                            s.span(),
                            "not a status",
                            None,
                        ));
                    }
                },
            },
            Some(("tcp", _)) => HealthCheckKind::Tcp,
            Some((other, span)) => {
                return Err(self.invalid(
                    format!("`{key}.type` must be \"http\" or \"tcp\", not {other:?}"),
                    span,
                    "unknown check",
                    None,
                ));
            }
        };
        let count = |k: &str, v: &Option<Spanned<u32>>, default: u32| match v {
            None => Ok(default),
            Some(n) if *n.get_ref() >= 1 => Ok(*n.get_ref()),
            Some(n) => Err(self.invalid(
                format!("`{key}.{k}` must be at least 1"),
                n.span(),
                "zero",
                None,
            )),
        };
        Ok(HealthCheckConfig {
            kind,
            interval: self.duration(
                &format!("{key}.interval"),
                &raw.interval,
                Duration::from_secs(2),
                false,
            )?,
            timeout: self.duration(
                &format!("{key}.timeout"),
                &raw.timeout,
                Duration::from_secs(1),
                false,
            )?,
            rise: count("rise", &raw.rise, 2)?,
            fall: count("fall", &raw.fall, 3)?,
        })
    }

    fn bind(&self, key: &str, value: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            self.invalid(
                format!(
                    "`{key}` must be an IP address and port, not {:?}",
                    value.get_ref()
                ),
                value.span(),
                "not an address",
                Some("e.g. \"127.0.0.1:8080\", \"0.0.0.0:80\" or \"[::1]:8080\""),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[database]
url = "postgres://postgres@127.0.0.1:5432/load_balancer"

[[listeners]]
bind = "127.0.0.1:8080"
protocol = "http"
pool = "default"
algorithm = "weighted"

[[listeners]]
bind = "127.0.0.1:8081"

[admin]
bind = "127.0.0.1:9901"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("config.toml", text, None)
    }

    /// The 1-based line of the diagnostic's primary span.
    fn line_of(text: &str, err: &ConfigError) -> usize {
        let offset = match err {
            ConfigError::Invalid { span, .. } => span.offset(),
            ConfigError::DuplicateBind { second, .. } => second.offset(),
            other => panic!("no span in {other:?}"),
        };
        text[..offset].matches('\n').count() + 1
    }

    #[test]
    fn good_config_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            c.listeners[1],
            ListenerConfig::new(
                "127.0.0.1:8081".parse().unwrap(),
                Protocol::Http,
                "default",
                AlgorithmKind::Weighted
            )
        );
        assert_eq!(c.admin.unwrap().bind, "127.0.0.1:9901".parse().unwrap());
    }

    #[test]
    fn database_url_env_overrides_file() {
        let c = Config::parse("c", GOOD, Some("postgres://u@h:1/other".into())).unwrap();
        assert_eq!(c.database.url, "postgres://u@h:1/other");
        let e = Config::parse("c", GOOD, Some("postgres://h:notaport/x".into())).unwrap_err();
        assert!(matches!(e, ConfigError::DatabaseUrlEnv { .. }), "{e:?}");
    }

    #[test]
    fn unknown_key_points_at_its_line() {
        let text = GOOD.replace("pool = \"default\"", "pool = \"default\"\nweigth = 3");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("unknown field `weigth`"), "{e}");
        assert_eq!(line_of(&text, &e), 9);
    }

    #[test]
    fn bad_protocol_algorithm_and_bind() {
        let text = GOOD.replace("protocol = \"http\"", "protocol = \"udp\"");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("listeners[0].protocol"), "{e}");
        assert_eq!(line_of(&text, &e), 7);

        let text = GOOD.replace("algorithm = \"weighted\"", "algorithm = \"fastest\"");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("listeners[0].algorithm"), "{e}");
        assert_eq!(line_of(&text, &e), 9);

        let text = GOOD.replace("127.0.0.1:8081", "localhost:http");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("listeners[1].bind"), "{e}");
        assert_eq!(line_of(&text, &e), 12);

        let text = GOOD.replace("127.0.0.1:9901", "nowhere");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("admin.bind"), "{e}");
    }

    #[test]
    fn duplicate_bind_points_at_both() {
        let text = GOOD.replace("127.0.0.1:8081", "127.0.0.1:8080");
        let e = parse(&text).unwrap_err();
        assert!(matches!(e, ConfigError::DuplicateBind { .. }), "{e:?}");
        assert_eq!(line_of(&text, &e), 12);
        let text = GOOD.replace("127.0.0.1:9901", "127.0.0.1:8081");
        assert!(matches!(
            parse(&text).unwrap_err(),
            ConfigError::DuplicateBind { .. }
        ));
    }

    #[test]
    fn broken_toml_and_missing_parts() {
        let text = GOOD.replace("[admin]", "[admin");
        let e = parse(&text).unwrap_err();
        assert_eq!(line_of(&text, &e), 14);

        let e = parse("[database]\nurl = \"postgres://x@y/z\"\n").unwrap_err();
        assert!(e.to_string().contains("listeners"), "{e}");

        let e = parse("[[listeners]]\nbind = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.to_string().contains("database"), "{e}");

        let text = GOOD.replace("postgres://postgres@127.0.0.1:5432", "postgres://h:port");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("database.url"), "{e}");
        assert_eq!(line_of(&text, &e), 3);
    }

    #[test]
    fn database_tuning_keys() {
        let text = GOOD.replacen(
            "[[listeners]]",
            "cache_path = \"/var/lib/lb/ring.json\"\nheartbeat_interval = \"500ms\"\nanti_entropy_interval = \"1m\"\n\n[[listeners]]",
            1,
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.database.cache_path.unwrap(),
            PathBuf::from("/var/lib/lb/ring.json")
        );
        assert_eq!(c.database.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.database.anti_entropy_interval, Duration::from_secs(60));
        assert_eq!(
            parse(GOOD).unwrap().database.anti_entropy_interval,
            Duration::from_secs(15)
        );

        for bad in ["\"5\"", "\"0s\"", "\"soon\"", "\"5h\""] {
            let text = GOOD.replacen(
                "[[listeners]]",
                &format!("heartbeat_interval = {bad}\n[[listeners]]"),
                1,
            );
            let e = parse(&text).unwrap_err();
            assert!(e.to_string().contains("database.heartbeat_interval"), "{e}");
            assert_eq!(line_of(&text, &e), 5);
        }
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = Config::load(Path::new("/nonexistent/config.toml"), None).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    }

    #[test]
    fn repo_config_is_valid() {
        let text = include_str!("../config.toml");
        parse(text).unwrap();
    }
}
