//! `config.toml`: its schema, defaults and validation.
//!
//! Everything is checked before anything starts, and every mistake becomes a miette
//! diagnostic that names the key and points at the offending line of the file. The rest of
//! the program only ever sees a validated [`Config`].
//!
//! The file is read in two steps: serde turns the text into the `Raw*` structs of `raw.rs`
//! (the file as written, with spans), then `validate.rs` and `pool.rs` check it one section
//! at a time and fill in the defaults, building diagnostics with `source.rs`. This file holds only the validated types and imports nothing else of
//! the crate: every other module may depend on `config`, never the reverse.

// A diagnostic carries the file's text to point into it: large, but built once, at startup.
#![allow(clippy::result_large_err)]

mod access_log;
mod backend_tls;
mod consistent_hash;
mod duration;
mod pool;
mod proxy_protocol;
mod raw;
mod routing;
mod source;
mod sticky;
mod tls;
mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use miette::{Diagnostic, NamedSource, SourceSpan};

pub use backend_tls::{BackendTlsConfig, ClientIdentity, PemCertificates};
pub use duration::parse_duration;
pub use proxy_protocol::{SendProxy, TrustedProxies};
use source::Source;
pub use tls::{
    AcceptAnyCertificate, CertificateError, CertificateFiles, LoadedCertificate, TlsConfig,
    TlsVersion, provider as tls_provider,
};

/// `e` and its causes, as one line (`invalid connection string: invalid value for option
/// `sslmode``): errors that wrap one say what matters only in their source. Here because
/// both config (a URL in the file) and db (a connection) describe tokio-postgres errors.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// What to do about a database URL tokio-postgres refused with `message` (see
/// [`with_causes`]), when it is a TLS option it does not know: the ones that work.
pub fn database_url_help(message: &str) -> Option<String> {
    const MODES: &str = "sslmode can be disable, prefer (the default: TLS when the server offers it) or require (always TLS, the server's certificate not verified)";
    if message.contains("option `sslmode`") {
        return Some(format!(
            "{MODES}; verify-ca and verify-full are not supported: use require"
        ));
    }
    let certificates = ["sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl"];
    if (certificates.iter()).any(|option| message.contains(&format!("option `{option}`"))) {
        return Some(format!(
            "{MODES}; certificates (sslrootcert, sslcert, sslkey) are not supported: remove the option"
        ));
    }
    None
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub listeners: Vec<ListenerConfig>,
    /// `None` when the file has no `[admin]` table: no admin endpoint is served.
    pub admin: Option<AdminConfig>,
    /// `[pools.NAME]` tables; pools not listed use [`PoolConfig::default`].
    pub pools: HashMap<String, PoolConfig>,
    /// `[status]`: how this instance reports its view of the workers to `worker_status`.
    pub status: StatusConfig,
    pub log: LogConfig,
}

impl Config {
    /// The settings of pool `name`.
    pub fn pool(&self, name: &str) -> PoolConfig {
        self.pools.get(name).cloned().unwrap_or_default()
    }

    /// Reads and validates `path`; `database_url` (from `DATABASE_URL`) overrides the file.
    pub fn load(path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Config::parse_with(&path.display().to_string(), &text, overrides)
    }

    /// Validates the text of a config file; `name` is shown in diagnostics.
    ///
    /// Sections are checked in file order, each by its own function (`validate.rs`,
    /// `pool.rs`); the checks that need several sections at once (addresses bound twice)
    /// come last, once every section is known to be valid.
    pub fn parse(
        name: &str,
        text: &str,
        database_url: Option<String>,
    ) -> Result<Config, ConfigError> {
        let overrides = Overrides {
            database_url,
            ..Overrides::default()
        };
        Config::parse_with(name, text, overrides)
    }

    /// [`Config::parse`] with every environment override.
    pub fn parse_with(name: &str, text: &str, overrides: Overrides) -> Result<Config, ConfigError> {
        let source = Source { name, text };
        let raw = source.toml()?;
        let config = Config {
            database: source.database(&raw.database, overrides.database_url)?,
            listeners: source.listeners(&raw.listeners)?,
            admin: source.admin(raw.admin.as_ref(), overrides.admin_token)?,
            pools: source.pools(&raw.pools, overrides.sticky_secret)?,
            status: source.status(raw.status.as_ref())?,
            log: source.log(raw.log.as_ref())?,
        };
        source.distinct_binds(&raw, &config)?;
        source.distinct_sticky_cookies(&raw)?;
        Ok(config)
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
    /// How often the ring is compared with the table, to heal from any lost event: per pool,
    /// the row count and an MD5 fingerprint of every row's id, version, weight and address
    /// (`ring::Fingerprint`), so any drift in content shows, not only in membership.
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
    /// TCP listeners: a session with no byte in either direction for this long is closed, so
    /// clients that vanish without a FIN do not hold a worker's connection forever. HTTP
    /// listeners refuse the key: `header_read_timeout` already bounds an idle keep-alive client.
    pub idle_timeout: Duration,
    /// Where this listener's access log goes: one line per HTTP request or TCP connection.
    pub access_log: AccessLogTarget,
    /// How each access-log line is written. `Combined` only on HTTP listeners (validated).
    pub access_log_format: AccessLogFormat,
    /// `[listeners.tls]`: `None` serves cleartext.
    pub tls: Option<TlsConfig>,
    /// Whether a connection from `trusted_proxies` must start with a PROXY header (v1 or
    /// v2), whose address is then the client's. Other peers are served as themselves.
    pub accept_proxy: bool,
    /// The peers allowed to send PROXY headers (required, non-empty, with `accept_proxy`).
    pub trusted_proxies: TrustedProxies,
    /// `name`: what the `listener` column of `routes` matches. `None`: only the routes for
    /// every listener (`listener IS NULL`) apply. Unique among listeners.
    pub name: Option<String>,
    /// `consistent_hash`: what of a request is hashed to place it. Anything other than
    /// `ClientIp` is refused on TCP listeners and without `consistent_hash`.
    pub hash_key: HashKey,
    /// `consistent_hash`: bounded loads, in percent of the pool's average in-flight load
    /// (weighted) that one worker may carry before its keys spill to the next preference;
    /// 0 turns it off. 0 or at least 100.
    pub hash_balance_factor: u32,
    /// TCP listeners: route each connection by the server name of its TLS ClientHello
    /// (read without terminating TLS) through the `routes` table's `host`.
    pub sni_routing: bool,
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
            idle_timeout: Duration::from_secs(60 * 60),
            access_log: AccessLogTarget::Off,
            access_log_format: AccessLogFormat::Json,
            tls: None,
            accept_proxy: false,
            trusted_proxies: TrustedProxies::default(),
            name: None,
            hash_key: HashKey::ClientIp,
            hash_balance_factor: 0,
            sni_routing: false,
        }
    }
}

/// A listener's `hash_key`: what `consistent_hash` hashes. A request without it (no such
/// header, cookie or query parameter) is balanced by `weighted` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `"client_ip"` (the default): the client's address, from the PROXY header when the
    /// listener accepts one. The only key of a TCP listener.
    ClientIp,
    /// `"header:NAME"`: the first field `NAME` (stored lower-case) of the request.
    Header(String),
    /// `"cookie:NAME"`: the value of cookie `NAME`.
    Cookie(String),
    /// `"path"`: the request-target's path, without the query.
    Path,
    /// `"query:NAME"`: the value of query parameter `NAME`, as sent (not decoded).
    Query(String),
}

/// A listener's `access_log` key: where its access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// `"off"` (the default): no line is built or written.
    Off,
    /// `"stdout"`: the process's standard output, for containers whose runtime collects it
    /// (stderr stays for the proxy's own diagnostics).
    Stdout,
    /// Any other value: a file, created if missing and appended to. Its directory must exist
    /// (checked at validation). Reopened on SIGHUP, so it can be rotated by renaming it.
    File(PathBuf),
}

/// A listener's `access_log_format` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `"json"` (the default): one JSON object per line with fixed keys, what log collectors
    /// ingest without a parsing rule.
    Json,
    /// `"combined"`: Apache/nginx combined log format, then this proxy's own fields, so the
    /// standard tools (GoAccess, awstats, logstash's COMBINEDAPACHELOG) read it. HTTP only: a
    /// TCP connection has no request line or status to put in it.
    Combined,
}

impl AccessLogFormat {
    pub const ALL: [AccessLogFormat; 2] = [AccessLogFormat::Json, AccessLogFormat::Combined];

    /// The value written in `config.toml`.
    pub fn name(self) -> &'static str {
        match self {
            AccessLogFormat::Json => "json",
            AccessLogFormat::Combined => "combined",
        }
    }

    /// The format called `name` in `config.toml`, if there is one.
    pub fn from_name(name: &str) -> Option<AccessLogFormat> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The `algorithm` key of a listener. The selectors themselves live in `ring`
/// (`ring::build`); config only names them, so it depends on nothing else of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgorithmKind {
    /// Each worker with weight > 0 in turn, whatever its weight.
    RoundRobin,
    /// A random worker, chosen in proportion to its weight.
    Random,
    /// Smooth weighted round robin, as nginx: shares follow weights, without bursts.
    Weighted,
    /// The worker with the fewest in-flight requests relative to its weight.
    LeastConnections,
    /// Of two random workers (weighted), the one with fewer in-flight requests per weight.
    PowerOfTwo,
    /// The same key (the listener's `hash_key`) to the same worker, on every instance
    /// (weighted Maglev); a request without the key is balanced as `Weighted`.
    ConsistentHash,
}

impl AlgorithmKind {
    /// Every algorithm a listener may use: the one list that diagnostics print, so a name is
    /// offered as valid exactly when it parses.
    pub const ALL: [AlgorithmKind; 6] = [
        AlgorithmKind::RoundRobin,
        AlgorithmKind::Random,
        AlgorithmKind::Weighted,
        AlgorithmKind::LeastConnections,
        AlgorithmKind::PowerOfTwo,
        AlgorithmKind::ConsistentHash,
    ];

    /// The name written in `config.toml` (and shown in logs).
    pub fn name(self) -> &'static str {
        match self {
            AlgorithmKind::RoundRobin => "round_robin",
            AlgorithmKind::Random => "random",
            AlgorithmKind::Weighted => "weighted",
            AlgorithmKind::LeastConnections => "least_connections",
            AlgorithmKind::PowerOfTwo => "power_of_two",
            AlgorithmKind::ConsistentHash => "consistent_hash",
        }
    }

    /// The algorithm called `name` in `config.toml`, if there is one.
    pub fn from_name(name: &str) -> Option<AlgorithmKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
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
    /// `[pools.NAME.tls]`: `None` for cleartext to the workers.
    pub tls: Option<BackendTlsConfig>,
    /// The PROXY header written first on each new connection to a worker, carrying the
    /// client's address.
    pub send_proxy: SendProxy,
    /// `[pools.NAME.sticky]`: HTTP requests carrying the pool's cookie go to the worker it
    /// names while that worker is available. `None`: no sticky sessions.
    pub sticky: Option<StickyConfig>,
    /// How HTTP requests reach the workers: HTTP/1.1 (the default) or HTTP/2.
    pub protocol: UpstreamProtocol,
    /// With `protocol = "h2"`: streams one connection to a worker carries at once (fewer
    /// if the worker's SETTINGS say so); beyond it, another connection is opened.
    pub max_streams_per_connection: u32,
}

/// `[pools.NAME] protocol`: what the HTTP transports speak to the pool's workers. TCP
/// listeners forward bytes whatever it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// `"http/1.1"`: one request at a time per connection, connections kept idle for reuse.
    Http1,
    /// `"h2"`: HTTP/2, many streams per connection; prior knowledge in cleartext, ALPN `h2`
    /// over `[pools.NAME.tls]`. What gRPC workers need.
    H2,
}

impl UpstreamProtocol {
    pub const ALL: [UpstreamProtocol; 2] = [UpstreamProtocol::Http1, UpstreamProtocol::H2];

    /// As written in `config.toml` (and in ALPN for `h2`).
    pub fn name(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http/1.1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// Sticky sessions: `[pools.NAME.sticky]`. The cookie names a worker opaquely: its id and
/// an HMAC of it keyed by `secret`, so a client can neither read an address in it nor
/// forge one that names a worker of its choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// The cookie's name (`cookie`, default `"lb_sticky"`).
    pub cookie: String,
    /// `Max-Age` of the cookie; `None`: a session cookie.
    pub max_age: Option<Duration>,
    pub secure: bool,
    /// Default `true`: scripts have no business reading it.
    pub http_only: bool,
    /// Default `Lax`.
    pub same_site: Option<SameSite>,
    /// The HMAC key: `secret`, or `LB_STICKY_SECRET`, or one drawn at random for this process.
    pub secret: StickySecret,
}

/// The `SameSite` attribute of the sticky cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub const ALL: [SameSite; 3] = [SameSite::Strict, SameSite::Lax, SameSite::None];

    /// As written in `config.toml` and in the `Set-Cookie` attribute.
    pub fn name(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// The key sticky cookies are signed with. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StickySecret {
    pub bytes: std::sync::Arc<[u8]>,
    /// Where it came from: a random one only holds for this process, so its cookies are not
    /// honoured by other instances or after a restart (startup warns).
    pub source: SecretSource,
}

impl std::fmt::Debug for StickySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StickySecret({:?}, redacted)", self.source)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// `[pools.NAME.sticky] secret`.
    File,
    /// `LB_STICKY_SECRET`.
    Environment,
    /// Neither was set: random, drawn once per process (a reload keeps it).
    Random,
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
            tls: None,
            send_proxy: SendProxy::Off,
            sticky: None,
            protocol: UpstreamProtocol::Http1,
            max_streams_per_connection: 100,
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
    /// `grpc.health.v1.Health/Check` over HTTP/2 for `service` ("" asks about the server
    /// as a whole); the check passes on `SERVING` only.
    Grpc { service: String },
}

/// Passive ejection: `[pools.NAME.ejection]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectionConfig {
    /// Consecutive failures (as counted by `on`) that eject a worker; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat adds as much again, up to `max_time`.
    pub base_time: Duration,
    pub max_time: Duration,
    /// At most this percentage of a pool's workers is ejected at once.
    pub max_percent: u32,
    /// Which failures count toward `consecutive_failures`.
    pub on: EjectOn,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 5,
            base_time: Duration::from_secs(10),
            max_time: Duration::from_secs(300),
            max_percent: 50,
            on: EjectOn::Gateway,
        }
    }
}

/// `[pools.NAME.ejection] on`: what counts as a worker's failure for passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectOn {
    /// `"gateway"` (the default): only failures that say the worker itself is unreachable or
    /// broken: connect errors, resets, timeouts, and 502/503/504. A 500 is usually one bad
    /// request, not a bad worker, so it does not count.
    Gateway,
    /// `"5xx"`: any 5xx response, plus everything `Gateway` counts.
    ServerError,
}

impl EjectOn {
    pub const ALL: [EjectOn; 2] = [EjectOn::Gateway, EjectOn::ServerError];

    /// The value written in `config.toml`.
    pub fn name(self) -> &'static str {
        match self {
            EjectOn::Gateway => "gateway",
            EjectOn::ServerError => "5xx",
        }
    }

    /// The value called `name` in `config.toml`, if there is one.
    pub fn from_name(name: &str) -> Option<EjectOn> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Per-request balancing over HTTP/1.1 keep-alive connections.
    Http,
    /// Per-connection balancing of raw TCP streams.
    Tcp,
}

impl Protocol {
    /// As written in `config.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// Requests must carry `Authorization: Bearer <token>` when set (`[admin] token`, or
    /// `LB_ADMIN_TOKEN`). Required when `bind` is not a loopback address.
    pub token: Option<String>,
}

/// `[status]`: the instance's rows in `worker_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    /// Every row is rewritten at least this often; a row older than three of them is no
    /// longer fresh (`worker_health` ignores it). Transitions are written sooner.
    pub interval: Duration,
    /// The `instance` column. `None`: `HOSTNAME:admin-port`, or `HOSTNAME:pid` without an
    /// admin endpoint (see `db::status::instance_name`).
    pub instance: Option<String>,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            interval: Duration::from_secs(5),
            instance: None,
        }
    }
}

/// `[log]`: what the process logs. Read at startup and at each reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// `level`: `tracing` filter directives (`"info"`, `"warn,load_balancer=debug"`), checked
    /// when the file is read. `None`: not set, `info`. `RUST_LOG`, when set, wins over it.
    pub level: Option<String>,
}

/// Settings from the environment that replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `DATABASE_URL`: replaces `[database] url`.
    pub database_url: Option<String>,
    /// `LB_ADMIN_TOKEN`: replaces `[admin] token`.
    pub admin_token: Option<String>,
    /// `LB_STICKY_SECRET`: the key of every pool's sticky cookies that sets no `secret`.
    pub sticky_secret: Option<String>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ConfigError {
    // `cause`, not `source`: in the message, and not a source a report would print again.
    #[error("cannot read config file {path}: {cause}")]
    #[diagnostic(
        code(config::read),
        help("pass the file with --config PATH (default ./config.toml)")
    )]
    Read { path: String, cause: std::io::Error },

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

    #[error(
        "LB_STICKY_SECRET is {len} bytes long; a sticky-cookie key must be at least {min}",
        min = sticky::MIN_SECRET_BYTES
    )]
    #[diagnostic(
        code(config::sticky_secret),
        help("set a long random value, e.g. LB_STICKY_SECRET=$(openssl rand -hex 32)")
    )]
    StickySecretEnv { len: usize },
}

/// Helpers shared by the unit tests of every file of this module.
#[cfg(test)]
mod test_support {
    use super::{Config, ConfigError};

    /// A valid file, the base that tests break one line of.
    pub const GOOD: &str = r#"
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

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("config.toml", text, None)
    }

    /// `GOOD` with `lines` added to its first listener (line 10 onwards).
    pub fn first_listener_with(lines: &str) -> String {
        GOOD.replacen(
            "algorithm = \"weighted\"",
            &format!("algorithm = \"weighted\"\n{lines}"),
            1,
        )
    }

    /// The 1-based line of the diagnostic's primary span.
    pub fn line_of(text: &str, err: &ConfigError) -> usize {
        let offset = match err {
            ConfigError::Invalid { span, .. } => span.offset(),
            ConfigError::DuplicateBind { second, .. } => second.offset(),
            other => panic!("no span in {other:?}"),
        };
        text[..offset].matches('\n').count() + 1
    }

    /// The help text of an `Invalid` diagnostic.
    pub fn help_of(err: &ConfigError) -> &str {
        match err {
            ConfigError::Invalid { help, .. } => help.as_deref().unwrap_or(""),
            other => panic!("not an Invalid diagnostic: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{GOOD, parse};
    use super::*;

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
    fn missing_file_is_a_read_error() {
        let e =
            Config::load(Path::new("/nonexistent/config.toml"), Overrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    }

    #[test]
    fn repo_config_is_valid() {
        let text = include_str!("../../config.toml");
        parse(text).unwrap();
    }

    #[test]
    fn docker_config_is_valid_with_the_token_compose_passes() {
        let text = include_str!("../../docker/config.toml");
        assert!(
            parse(text).is_err(),
            "an open admin endpoint without a token is refused"
        );
        let overrides = Overrides {
            admin_token: Some("demo".into()),
            ..Overrides::default()
        };
        Config::parse_with("docker/config.toml", text, overrides).unwrap();
    }

    #[test]
    fn algorithm_names_round_trip() {
        for kind in AlgorithmKind::ALL {
            assert_eq!(AlgorithmKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(AlgorithmKind::from_name("fastest"), None);
    }

    #[test]
    fn affinity_and_routing_keys_together() {
        let text = r#"
[database]
url = "postgres://postgres@127.0.0.1:5432/load_balancer"

[[listeners]]
name = "public"
bind = "127.0.0.1:8080"
pool = "web"
algorithm = "consistent_hash"
hash_key = "header:X-Tenant"
hash_balance_factor = 125

[[listeners]]
name = "tls-passthrough"
bind = "127.0.0.1:8443"
protocol = "tcp"
pool = "tls"
algorithm = "consistent_hash"
hash_key = "client_ip"
sni_routing = true

[pools.web.sticky]
cookie = "SRV"
max_age = "2h"
secure = true
http_only = false
same_site = "None"
secret = "a secret of at least 16 bytes"
"#;
        let c = parse(text).unwrap();
        let mut public = ListenerConfig::new(
            "127.0.0.1:8080".parse().unwrap(),
            Protocol::Http,
            "web",
            AlgorithmKind::ConsistentHash,
        );
        public.name = Some("public".into());
        public.hash_key = HashKey::Header("x-tenant".into());
        public.hash_balance_factor = 125;
        assert_eq!(c.listeners[0], public);
        let mut passthrough = ListenerConfig::new(
            "127.0.0.1:8443".parse().unwrap(),
            Protocol::Tcp,
            "tls",
            AlgorithmKind::ConsistentHash,
        );
        passthrough.name = Some("tls-passthrough".into());
        passthrough.sni_routing = true;
        assert_eq!(c.listeners[1], passthrough);
        let sticky = c.pool("web").sticky.unwrap();
        assert_eq!(
            sticky,
            StickyConfig {
                cookie: "SRV".into(),
                max_age: Some(Duration::from_secs(2 * 60 * 60)),
                secure: true,
                http_only: false,
                same_site: Some(SameSite::None),
                secret: StickySecret {
                    bytes: b"a secret of at least 16 bytes".as_slice().into(),
                    source: SecretSource::File,
                },
            }
        );
        assert_eq!(c.pool("tls").sticky, None);
    }

    #[test]
    fn eject_on_names_round_trip() {
        for on in EjectOn::ALL {
            assert_eq!(EjectOn::from_name(on.name()), Some(on));
        }
        assert_eq!(EjectOn::from_name("500"), None);
        assert_eq!(EjectionConfig::default().on, EjectOn::Gateway);
    }
}
