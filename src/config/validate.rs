//! The sections of `config.toml` other than `[pools]` (see `pool.rs`), one function each, and
//! the checks across sections. Each turns the file as written (`raw.rs`) into validated
//! types, with the defaults filled in, or refuses it with a diagnostic at the offending line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawAdmin, RawConfig, RawDatabase, RawListener, RawLog, RawStatus};
use super::source::{Source, by_closeness};
use super::{
    AdminConfig, AlgorithmKind, Config, ConfigError, DatabaseConfig, ListenerConfig, LogConfig,
    Protocol, StatusConfig,
};

const LISTENER_EXAMPLE: &str = "add one:\n[[listeners]]\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"default\"\nalgorithm = \"weighted\"";

impl Source<'_> {
    /// The TOML itself: syntax, types, unknown keys and missing required keys.
    pub fn toml(&self) -> Result<RawConfig, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            self.invalid(
                format!("invalid config: {}", e.message().trim_end()),
                e.span().unwrap_or(0..0),
                "here",
                None,
            )
        })
    }

    /// `[database]`; `env_url` (from `DATABASE_URL`) replaces `url` when set.
    pub fn database(
        &self,
        raw: &RawDatabase,
        env_url: Option<String>,
    ) -> Result<DatabaseConfig, ConfigError> {
        let url = match env_url {
            Some(url) => {
                tokio_postgres::Config::from_str(&url).map_err(|e| {
                    ConfigError::DatabaseUrlEnv {
                        reason: super::with_causes(&e),
                    }
                })?;
                url
            }
            None => {
                tokio_postgres::Config::from_str(raw.url.get_ref()).map_err(|e| {
                    let reason = super::with_causes(&e);
                    let help = super::database_url_help(&reason).unwrap_or_else(|| {
                        "e.g. url = \"postgres://postgres@127.0.0.1:5432/load_balancer\"".into()
                    });
                    self.invalid(
                        format!("`database.url` is not a valid PostgreSQL URL: {reason}"),
                        raw.url.span(),
                        "this URL",
                        Some(&help),
                    )
                })?;
                raw.url.get_ref().clone()
            }
        };
        let mut database = DatabaseConfig::new(url);
        database.cache_path = raw.cache_path.as_ref().map(PathBuf::from);
        database.heartbeat_interval = self.duration(
            "database.heartbeat_interval",
            &raw.heartbeat_interval,
            database.heartbeat_interval,
            false,
        )?;
        database.anti_entropy_interval = self.duration(
            "database.anti_entropy_interval",
            &raw.anti_entropy_interval,
            database.anti_entropy_interval,
            false,
        )?;
        Ok(database)
    }

    /// `[[listeners]]`: at least one, each checked on its own (addresses bound twice are a
    /// cross-check, [`Source::distinct_binds`]).
    pub fn listeners(&self, raw: &[RawListener]) -> Result<Vec<ListenerConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid(
                "`listeners` is empty: nothing to serve".into(),
                0..0,
                "no [[listeners]] entry",
                Some(LISTENER_EXAMPLE),
            ));
        }
        let listeners = raw
            .iter()
            .enumerate()
            .map(|(i, l)| self.listener(&format!("listeners[{i}]"), l))
            .collect::<Result<Vec<_>, _>>()?;
        self.distinct_names(raw, &listeners)?;
        Ok(listeners)
    }

    /// One `[[listeners]]` entry; `key` is `listeners[i]`.
    fn listener(&self, key: &str, raw: &RawListener) -> Result<ListenerConfig, ConfigError> {
        let key_of = key.to_string();
        let key = |k: &str| format!("{key}.{k}");
        let bind = self.bind(&key("bind"), &raw.bind)?;
        let protocol = self.protocol(&key("protocol"), &raw.protocol)?;
        let pool = match raw.pool.as_ref() {
            None => "default".to_string(),
            Some(p) if p.get_ref().is_empty() || p.get_ref().len() > 200 => {
                return Err(self.invalid(
                    format!("`{}` must be 1 to 200 characters", key("pool")),
                    p.span(),
                    "bad pool name",
                    Some("it names the rows of workers whose `pool` column matches"),
                ));
            }
            Some(p) => p.get_ref().clone(),
        };
        let algorithm = self.algorithm(&key("algorithm"), &raw.algorithm)?;
        let mut listener = ListenerConfig::new(bind, protocol, &pool, algorithm);
        listener.name = self.listener_name(&key("name"), &raw.name)?;
        (listener.hash_key, listener.hash_balance_factor) =
            self.consistent_hash(&key_of, raw, protocol, algorithm)?;

        listener.max_connections = match &raw.max_connections {
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.invalid(
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
        listener.header_read_timeout = self.duration(
            &key("header_read_timeout"),
            &raw.header_read_timeout,
            listener.header_read_timeout,
            false,
        )?;
        if let Some(m) = &raw.max_header_size {
            // hyper's read buffer cannot be smaller than 8 KiB.
            if *m.get_ref() < 8192 {
                return Err(self.invalid(
                    format!("`{}` must be at least 8192 bytes", key("max_header_size")),
                    m.span(),
                    "too small",
                    None,
                ));
            }
            listener.max_header_size = *m.get_ref();
        }
        if let (Protocol::Http, Some(t)) = (protocol, &raw.idle_timeout) {
            // Accepting it would suggest it does something: on HTTP the idle keep-alive
            // client is already bounded by header_read_timeout.
            return Err(self.invalid(
                format!("`{}` applies to tcp listeners only", key("idle_timeout")),
                t.span(),
                "on an http listener",
                Some(
                    "an HTTP client's idle keep-alive connection is closed after \
                     `header_read_timeout`; set that instead",
                ),
            ));
        }
        listener.idle_timeout = self.duration(
            &key("idle_timeout"),
            &raw.idle_timeout,
            listener.idle_timeout,
            false,
        )?;
        listener.access_log = self.access_log(&key("access_log"), &raw.access_log)?;
        listener.access_log_format =
            self.access_log_format(&key("access_log_format"), &raw.access_log_format, protocol)?;
        (listener.accept_proxy, listener.trusted_proxies) = self.accept_proxy(&key_of, raw)?;
        // Before the certificates are read: with sni_routing they are the mistake, and
        // fixing a missing file would only lead to this refusal.
        listener.sni_routing = self.sni_routing(&key_of, raw, protocol)?;
        if let Some(tls) = &raw.tls {
            listener.tls = Some(self.tls(&key("tls"), tls, protocol)?);
        }
        Ok(listener)
    }

    fn protocol(&self, key: &str, raw: &Option<Spanned<String>>) -> Result<Protocol, ConfigError> {
        let Some(p) = raw else {
            return Ok(Protocol::Http);
        };
        match p.get_ref().as_str() {
            "http" => Ok(Protocol::Http),
            "tcp" => Ok(Protocol::Tcp),
            other => Err(self.invalid(
                format!("`{key}` must be \"http\" or \"tcp\", not {other:?}"),
                p.span(),
                "unknown protocol",
                Some("protocol = \"http\" balances each request; \"tcp\" each connection"),
            )),
        }
    }

    fn algorithm(
        &self,
        key: &str,
        raw: &Option<Spanned<String>>,
    ) -> Result<AlgorithmKind, ConfigError> {
        let Some(a) = raw else {
            return Ok(AlgorithmKind::Weighted);
        };
        AlgorithmKind::from_name(a.get_ref()).ok_or_else(|| {
            let valid = AlgorithmKind::ALL.map(AlgorithmKind::name).join(", ");
            self.invalid(
                format!("`{key}` must be one of {valid}, not {:?}", a.get_ref()),
                a.span(),
                "unknown algorithm",
                Some("weighted (smooth weighted round robin) is the default"),
            )
        })
    }

    /// `[admin]`, optional; `env_token` (from `LB_ADMIN_TOKEN`) replaces `token`. An
    /// endpoint reachable from other hosts shows the whole backend map and, soon, steers it:
    /// it needs a token, and starting without one is refused.
    pub fn admin(
        &self,
        raw: Option<&RawAdmin>,
        env_token: Option<String>,
    ) -> Result<Option<AdminConfig>, ConfigError> {
        let Some(a) = raw else { return Ok(None) };
        let bind = self.bind("admin.bind", &a.bind)?;
        let token = match (env_token.filter(|t| !t.is_empty()), &a.token) {
            (Some(env), _) => Some(env),
            (None, Some(t)) if t.get_ref().trim().is_empty() => {
                return Err(self.invalid(
                    "`admin.token` is empty".into(),
                    t.span(),
                    "empty token",
                    Some("set a long random value, e.g. from `openssl rand -hex 32`"),
                ));
            }
            (None, Some(t)) => Some(t.get_ref().clone()),
            (None, None) => None,
        };
        if token.is_none() && !bind.ip().is_loopback() {
            return Err(self.invalid(
                format!("`admin.bind` {bind} is reachable from other hosts, and no token is set"),
                a.bind.span(),
                "not a loopback address",
                Some(
                    "set `token = \"...\"` in [admin] (or LB_ADMIN_TOKEN); clients then send \
                     `Authorization: Bearer <token>`. Or bind 127.0.0.1.",
                ),
            ));
        }
        Ok(Some(AdminConfig { bind, token }))
    }

    /// `[status]`, optional. The interval is stored in milliseconds in an `int` column
    /// (`worker_status.interval_ms`), hence the upper bound; the instance name is the
    /// primary key's first half, so it may not be empty.
    pub fn status(&self, raw: Option<&RawStatus>) -> Result<StatusConfig, ConfigError> {
        let mut status = StatusConfig::default();
        let Some(raw) = raw else { return Ok(status) };
        status.interval =
            self.duration("status.interval", &raw.interval, status.interval, false)?;
        if let Some(v) = &raw.interval
            && status.interval > Duration::from_secs(24 * 60 * 60)
        {
            return Err(self.invalid(
                "`status.interval` must be at most 24h".into(),
                v.span(),
                "too long",
                Some("rows older than three intervals count as stale; the default is \"5s\""),
            ));
        }
        if let Some(i) = &raw.instance {
            let name = i.get_ref().trim();
            if name.is_empty() || name.len() > 200 {
                return Err(self.invalid(
                    "`status.instance` must be 1 to 200 characters".into(),
                    i.span(),
                    "bad instance name",
                    Some("leave it out for HOSTNAME:admin-port (or HOSTNAME:pid without [admin])"),
                ));
            }
            status.instance = Some(name.to_string());
        }
        Ok(status)
    }

    /// `[log]`, optional: `level` must parse as the filter it becomes, so a reload with a
    /// mistyped level is refused like any other mistake, instead of logging nothing.
    pub fn log(&self, raw: Option<&RawLog>) -> Result<LogConfig, ConfigError> {
        let Some(level) = raw.and_then(|l| l.level.as_ref()) else {
            return Ok(LogConfig::default());
        };
        tracing_subscriber::EnvFilter::builder()
            .parse(level.get_ref())
            .map_err(|e| {
                self.invalid(
                    format!("`log.level` is not a valid log filter: {e}"),
                    level.span(),
                    "this filter",
                    Some(
                        "a level (error, warn, info, debug, trace), optionally with per-module \
                         levels: e.g. level = \"info,load_balancer::db=debug\"",
                    ),
                )
            })?;
        Ok(LogConfig {
            level: Some(level.get_ref().clone()),
        })
    }

    /// No address is bound twice, by two listeners or by a listener and the admin endpoint.
    pub fn distinct_binds(&self, raw: &RawConfig, config: &Config) -> Result<(), ConfigError> {
        let listeners = raw.listeners.iter().zip(&config.listeners);
        let admin = raw.admin.iter().zip(&config.admin);
        let binds = listeners
            .map(|(r, l)| (l.bind, r.bind.span()))
            .chain(admin.map(|(r, a)| (a.bind, r.bind.span())));
        let mut seen: HashMap<SocketAddr, Range<usize>> = HashMap::new();
        for (bind, span) in binds {
            // Port 0 asks the OS for any free port: two of them never clash.
            if bind.port() == 0 {
                continue;
            }
            if let Some(first) = seen.insert(bind, span.clone()) {
                return Err(ConfigError::DuplicateBind {
                    bind,
                    src: self.named(),
                    first: first.into(),
                    second: span.into(),
                });
            }
        }
        Ok(())
    }

    /// Sticky pools use distinct cookie names. A cookie is signed for its own pool, and a
    /// browser keeps one cookie per name and path: two pools sharing a name (reached by one
    /// client through routes) would each find the other's cookie foreign and replace it, so
    /// neither would stay stuck.
    pub fn distinct_sticky_cookies(&self, raw: &RawConfig) -> Result<(), ConfigError> {
        let mut tables: Vec<(&Spanned<String>, &super::raw::RawSticky)> = (raw.pools.iter())
            .filter_map(|(name, pool)| pool.sticky.as_ref().map(|s| (name, s)))
            .collect();
        // The second one written is the one reported.
        tables.sort_by_key(|(name, _)| name.span().start);
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (pool, sticky) in tables {
            let cookie = sticky
                .cookie
                .as_ref()
                .map_or("lb_sticky", |c| c.get_ref().as_str());
            if let Some(first) = seen.insert(cookie, pool.get_ref()) {
                let span = match &sticky.cookie {
                    Some(c) => c.span(),
                    None => pool.span(),
                };
                return Err(self.invalid(
                    format!(
                        "`[pools.{}.sticky]` uses cookie {cookie:?}, as `[pools.{first}.sticky]` does",
                        pool.get_ref()
                    ),
                    span,
                    "a cookie name of another sticky pool",
                    Some("give each sticky pool its own `cookie`: a browser keeps one cookie per name, and each pool would replace the other's"),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// A warning for each `[pools.NAME]` table of a pool no listener serves. Such a table is
    /// valid, since a row of `routes` (which the file cannot know) may send requests to its
    /// pool; but it is more often a misspelt name, so startup, reload and `check-config` say
    /// so, with the closest served pool.
    pub fn unserved_pool_tables(&self) -> Vec<String> {
        let mut served: Vec<&str> = Vec::new();
        for l in &self.listeners {
            if !served.contains(&l.pool.as_str()) {
                served.push(&l.pool);
            }
        }
        let mut unserved: Vec<&String> = (self.pools.keys())
            .filter(|name| !served.contains(&name.as_str()))
            .collect();
        unserved.sort();
        unserved
            .into_iter()
            .map(|name| {
                let (ranked, near) = by_closeness(name, &served);
                let guess = if near {
                    format!("; did you mean `{}`?", ranked[0])
                } else {
                    String::new()
                };
                format!(
                    "`[pools.{name}]` configures a pool no listener serves: it applies only to requests a row of `routes` sends there{guess} (served pools: {})",
                    ranked.join(", ")
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{GOOD, help_of, line_of, parse};
    use super::*;

    #[test]
    fn an_admin_endpoint_reachable_from_other_hosts_needs_a_token() {
        let open = GOOD.replace("127.0.0.1:9901", "0.0.0.0:9901");
        let e = parse(&open).unwrap_err();
        assert!(e.to_string().contains("admin.bind"), "{e}");
        assert!(help_of(&e).contains("LB_ADMIN_TOKEN"), "{e:?}");
        assert_eq!(line_of(&open, &e), 15);

        let with_token = open.replace("0.0.0.0:9901\"", "0.0.0.0:9901\"\ntoken = \"s3cret\"");
        let admin = parse(&with_token).unwrap().admin.unwrap();
        assert_eq!(admin.token.as_deref(), Some("s3cret"));

        let env = super::super::Overrides {
            admin_token: Some("from-env".into()),
            ..Default::default()
        };
        let admin = Config::parse_with("config.toml", &open, env)
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(
            admin.token.as_deref(),
            Some("from-env"),
            "LB_ADMIN_TOKEN replaces the file's"
        );

        let empty = with_token.replace("\"s3cret\"", "\" \"");
        let e = parse(&empty).unwrap_err();
        assert!(e.to_string().contains("admin.token"), "{e}");
        assert_eq!(line_of(&empty, &e), 16);

        let loopback = parse(GOOD).unwrap().admin.unwrap();
        assert_eq!(loopback.token, None, "a loopback endpoint may go without");
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
    fn unknown_algorithm_lists_every_algorithm() {
        let text = GOOD.replace("algorithm = \"weighted\"", "algorithm = \"fastest\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].algorithm` must be one of round_robin, random, weighted, \
             least_connections, power_of_two, consistent_hash, not \"fastest\""
        );
        assert_eq!(line_of(&text, &e), 9);
        assert_eq!(
            help_of(&e),
            "weighted (smooth weighted round robin) is the default"
        );
    }

    #[test]
    fn duplicate_bind_points_at_both() {
        let text = GOOD.replace("127.0.0.1:8081", "127.0.0.1:8080");
        let e = parse(&text).unwrap_err();
        assert!(matches!(e, ConfigError::DuplicateBind { .. }), "{e:?}");
        assert_eq!(line_of(&text, &e), 12);
        let text = GOOD.replace("127.0.0.1:9901", "127.0.0.1:8081");
        let e = parse(&text).unwrap_err();
        assert!(matches!(e, ConfigError::DuplicateBind { .. }), "{e:?}");
        assert_eq!(line_of(&text, &e), 15);
        // Port 0 is "any free port": never a clash.
        let text = GOOD.replace(":8080", ":0").replace(":8081", ":0");
        parse(&text).unwrap();
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

        for bad in ["\"5\"", "\"0s\"", "\"soon\"", "\"5d\""] {
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
    fn log_level_is_a_checked_filter() {
        assert_eq!(parse(GOOD).unwrap().log.level, None);
        let text = format!("{GOOD}\n[log]\nlevel = \"warn,load_balancer::db=debug\"\n");
        let c = parse(&text).unwrap();
        assert_eq!(c.log.level.as_deref(), Some("warn,load_balancer::db=debug"));

        let text = format!("{GOOD}\n[log]\nlevel = \"load_balancer=loud\"\n");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("log.level"), "{e}");
        assert_eq!(line_of(&text, &e), text.lines().count());
    }

    #[test]
    fn tcp_idle_timeout_defaults_to_an_hour() {
        let text = GOOD.replace("protocol = \"http\"", "protocol = \"tcp\"");
        let c = parse(&text).unwrap();
        assert_eq!(c.listeners[0].idle_timeout, Duration::from_secs(3600));

        let text = text.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nidle_timeout = \"90s\"",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.listeners[0].idle_timeout, Duration::from_secs(90));

        let text = text.replace("\"90s\"", "\"0s\"");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("listeners[0].idle_timeout"), "{e}");
        assert_eq!(line_of(&text, &e), 8);
    }

    #[test]
    fn idle_timeout_is_refused_on_http_listeners() {
        // Listener 1 has no `protocol`: http by default, refused too.
        let text = GOOD.replace(
            "bind = \"127.0.0.1:8081\"",
            "bind = \"127.0.0.1:8081\"\nidle_timeout = \"5m\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[1].idle_timeout` applies to tcp listeners only"
        );
        assert_eq!(line_of(&text, &e), 13);
        assert!(help_of(&e).contains("header_read_timeout"), "{e:?}");
    }

    #[test]
    fn an_unsupported_sslmode_says_why_and_which_modes_work() {
        let text = GOOD.replace("/load_balancer\"", "/load_balancer?sslmode=verify-full\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`database.url` is not a valid PostgreSQL URL: invalid connection string: invalid value for option `sslmode`"
        );
        assert!(
            help_of(&e).starts_with("sslmode can be disable, prefer"),
            "{e:?}"
        );
    }

    #[test]
    fn two_sticky_pools_cannot_share_a_cookie_name() {
        let text = GOOD.to_string()
            + "\n[pools.default.sticky]\nsecret = \"0123456789abcdef\"\n\n[pools.api.sticky]\nsecret = \"0123456789abcdef\"\n";
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`[pools.api.sticky]` uses cookie \"lb_sticky\", as `[pools.default.sticky]` does"
        );
        assert_eq!(line_of(&text, &e), 20);
        assert!(help_of(&e).contains("its own `cookie`"), "{e:?}");
        let text = text + "cookie = \"lb_api\"\n";
        parse(&text).unwrap();
    }

    #[test]
    fn unserved_pool_table_is_accepted_for_routes_with_a_warning_and_a_suggestion() {
        let text = GOOD.replace(
            "[[listeners]]\nbind = \"127.0.0.1:8081\"",
            "[[listeners]]\nbind = \"127.0.0.1:8081\"\npool = \"api\"",
        ) + "\n[pools.api]\nretries = 1\n\n[pools.defualt.health_check]\npath = \"/healthz\"\n";
        let config = parse(&text).unwrap();
        assert_eq!(
            config.unserved_pool_tables(),
            [
                "`[pools.defualt]` configures a pool no listener serves: it applies only to requests a row of `routes` sends there; did you mean `default`? (served pools: default, api)"
            ]
        );

        // Nothing close: no guess, but the served pools.
        let text = GOOD.to_string() + "\n[pools.batch]\nretries = 0\n";
        let config = parse(&text).unwrap();
        assert_eq!(config.pool("batch").retries, 0);
        assert_eq!(
            config.unserved_pool_tables(),
            [
                "`[pools.batch]` configures a pool no listener serves: it applies only to requests a row of `routes` sends there (served pools: default)"
            ]
        );

        // The pool of a listener without a `pool` key is "default", and is served.
        let text = GOOD.to_string() + "\n[pools.default]\nretries = 0\n";
        assert_eq!(parse(&text).unwrap().pool("default").retries, 0);
    }

    #[test]
    fn status_section_defaults_and_checks() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.status, StatusConfig::default());
        assert_eq!(c.status.interval, Duration::from_secs(5));

        let text = GOOD.to_string() + "\n[status]\ninterval = \"250ms\"\ninstance = \"lb-a\"\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.status.interval, Duration::from_millis(250));
        assert_eq!(c.status.instance.as_deref(), Some("lb-a"));

        let text = GOOD.to_string() + "\n[status]\ninterval = \"0s\"\n";
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("status.interval"), "{e}");
        assert_eq!(line_of(&text, &e), 18);

        let text = GOOD.to_string() + "\n[status]\ninterval = \"25h\"\n";
        let e = parse(&text).unwrap_err();
        assert_eq!(e.to_string(), "`status.interval` must be at most 24h");

        let text = GOOD.to_string() + "\n[status]\ninstance = \" \"\n";
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("status.instance"), "{e}");
        assert_eq!(line_of(&text, &e), 18);

        let text = GOOD.to_string() + "\n[status]\nintervall = \"5s\"\n";
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("unknown field `intervall`"), "{e}");
        assert_eq!(line_of(&text, &e), 18);
    }
}
