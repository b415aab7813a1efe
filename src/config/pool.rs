//! `[pools.NAME]` and its sub-tables, `health_check` and `ejection` (here), `tls`
//! (`backend_tls.rs`) and `sticky` (`sticky.rs`): how a pool's workers are reached and
//! judged. Whether a listener serves the pool is checked once every section is read
//! (`Source::served_pools`).

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawEjection, RawHealthCheck, RawPool};
use super::source::Source;
use super::sticky;
use super::{
    ConfigError, EjectOn, EjectionConfig, HealthCheckConfig, HealthCheckKind, PoolConfig,
    SendProxy, StickySecret, UpstreamProtocol,
};

impl Source<'_> {
    /// Every `[pools.NAME]` table, in file order, so that of two bad tables the first one
    /// written is the one reported. `sticky_secret` is `LB_STICKY_SECRET`, the key of the
    /// sticky tables that set none.
    pub fn pools(
        &self,
        raw: &HashMap<Spanned<String>, RawPool>,
        sticky_secret: Option<String>,
    ) -> Result<HashMap<String, PoolConfig>, ConfigError> {
        let sticky_secret = sticky::env_secret(sticky_secret)?;
        let mut tables: Vec<_> = raw.iter().collect();
        tables.sort_by_key(|(name, _)| name.span().start);
        let mut pools = HashMap::with_capacity(tables.len());
        for (name, raw) in tables {
            let pool = self.pool(name.get_ref(), raw, sticky_secret.as_ref())?;
            pools.insert(name.get_ref().clone(), pool);
        }
        Ok(pools)
    }

    fn pool(
        &self,
        name: &str,
        raw: &RawPool,
        sticky_secret: Option<&StickySecret>,
    ) -> Result<PoolConfig, ConfigError> {
        let d = PoolConfig::default();
        let key = |k: &str| format!("pools.{name}.{k}");
        let health_check = match &raw.health_check {
            None => None,
            Some(h) => Some(self.health_check(&key("health_check"), h)?),
        };
        let ejection = match &raw.ejection {
            None => EjectionConfig::default(),
            Some(e) => self.ejection(&key("ejection"), e)?,
        };
        let tls = match &raw.tls {
            None => None,
            Some(t) => self.backend_tls(&key("tls"), t)?,
        };
        let sticky = match &raw.sticky {
            None => None,
            Some(s) => Some(self.sticky(&key("sticky"), s, sticky_secret)?),
        };
        let protocol = self.upstream_protocol(&key("protocol"), &raw.protocol)?;
        let send_proxy = self.send_proxy(&key("send_proxy"), &raw.send_proxy)?;
        if let (UpstreamProtocol::H2, Some(s)) = (protocol, &raw.send_proxy)
            && send_proxy != SendProxy::Off
        {
            return Err(self.invalid(
                format!(
                    "`{}` cannot be used with `{} = \"h2\"`",
                    key("send_proxy"),
                    key("protocol")
                ),
                s.span(),
                "one header, many clients",
                Some(
                    "an HTTP/2 connection to a worker carries the streams of many clients, and a \
                     PROXY header names one: use `protocol = \"http/1.1\"` with `send_proxy`, \
                     or pass the client's address in X-Forwarded-For (always added)",
                ),
            ));
        }
        let max_streams_per_connection = match &raw.max_streams_per_connection {
            None => d.max_streams_per_connection,
            Some(n) if *n.get_ref() >= 1 => *n.get_ref(),
            Some(n) => {
                return Err(self.invalid(
                    format!("`{}` must be at least 1", key("max_streams_per_connection")),
                    n.span(),
                    "zero",
                    None,
                ));
            }
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
            tls,
            send_proxy,
            sticky,
            protocol,
            max_streams_per_connection,
        })
    }

    /// `[pools.NAME] protocol`; `key` is `pools.NAME.protocol`.
    fn upstream_protocol(
        &self,
        key: &str,
        raw: &Option<Spanned<String>>,
    ) -> Result<UpstreamProtocol, ConfigError> {
        let Some(raw) = raw else {
            return Ok(UpstreamProtocol::Http1);
        };
        let name = raw.get_ref().as_str();
        UpstreamProtocol::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                self.invalid(
                    format!("`{key}` must be \"http/1.1\" or \"h2\", not {name:?}"),
                    raw.span(),
                    "unknown protocol",
                    Some(
                        "\"h2\" speaks HTTP/2 to the workers (gRPC needs it), \"http/1.1\" \
                         (the default) HTTP/1.1",
                    ),
                )
            })
    }

    /// `[pools.NAME.ejection]`; `key` is `pools.NAME.ejection`.
    fn ejection(&self, key: &str, raw: &RawEjection) -> Result<EjectionConfig, ConfigError> {
        let d = EjectionConfig::default();
        let on = match &raw.on {
            None => d.on,
            Some(on) => EjectOn::from_name(on.get_ref()).ok_or_else(|| {
                let names: Vec<String> = EjectOn::ALL.map(|o| format!("{:?}", o.name())).into();
                self.invalid(
                    format!(
                        "`{key}.on` must be {}, not {:?}",
                        names.join(" or "),
                        on.get_ref()
                    ),
                    on.span(),
                    "unknown failure kind",
                    Some(
                        "\"gateway\" (default) counts connect errors, resets, timeouts and \
                         502/503/504; \"5xx\" also counts every other 5xx",
                    ),
                )
            })?,
        };
        Ok(EjectionConfig {
            consecutive_failures: raw.consecutive_failures.unwrap_or(d.consecutive_failures),
            base_time: self.duration(
                &format!("{key}.base_time"),
                &raw.base_time,
                d.base_time,
                false,
            )?,
            max_time: self.duration(
                &format!("{key}.max_time"),
                &raw.max_time,
                d.max_time,
                false,
            )?,
            max_percent: self.percent(
                &format!("{key}.max_percent"),
                &raw.max_percent,
                d.max_percent,
            )?,
            on,
        })
    }

    /// `[pools.NAME.health_check]`; `key` is `pools.NAME.health_check`.
    fn health_check(
        &self,
        key: &str,
        raw: &RawHealthCheck,
    ) -> Result<HealthCheckConfig, ConfigError> {
        let kind = match raw.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("http", _)) => self.http_check(key, raw)?,
            Some(("tcp", _)) => HealthCheckKind::Tcp,
            Some(("grpc", _)) => HealthCheckKind::Grpc {
                service: raw
                    .service
                    .as_ref()
                    .map_or_else(String::new, |s| s.get_ref().clone()),
            },
            Some((other, span)) => {
                return Err(self.invalid(
                    format!("`{key}.type` must be \"http\", \"tcp\" or \"grpc\", not {other:?}"),
                    span,
                    "unknown check",
                    None,
                ));
            }
        };
        // A key of another kind of check is a mistake worth saying, not one to ignore.
        let http_only = [
            ("method", raw.method.as_ref().map(|v| v.span())),
            ("path", raw.path.as_ref().map(|v| v.span())),
            (
                "expect_status",
                raw.expect_status.as_ref().map(|v| v.span()),
            ),
        ];
        let misplaced = match &kind {
            HealthCheckKind::Grpc { .. } => http_only.into_iter().find_map(|(k, s)| Some((k, s?))),
            _ => raw.service.as_ref().map(|s| ("service", s.span())),
        };
        if let Some((k, span)) = misplaced {
            let only = if k == "service" {
                "\"grpc\""
            } else {
                "\"http\""
            };
            return Err(self.invalid(
                format!("`{key}.{k}` applies to `type = {only}` checks only"),
                span,
                "not for this type",
                None,
            ));
        }
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

    /// The request of an HTTP health check: `method`, `path`, `expect_status`.
    fn http_check(&self, key: &str, raw: &RawHealthCheck) -> Result<HealthCheckKind, ConfigError> {
        let method = match &raw.method {
            None => hyper::Method::GET,
            Some(m) => hyper::Method::from_bytes(m.get_ref().as_bytes()).map_err(|_| {
                self.invalid(
                    format!("`{key}.method` is not an HTTP method"),
                    m.span(),
                    "bad method",
                    None,
                )
            })?,
        };
        let path = match &raw.path {
            None => "/".to_string(),
            Some(p)
                if p.get_ref().starts_with('/') && p.get_ref().parse::<hyper::Uri>().is_ok() =>
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
        };
        let expect_status = match &raw.expect_status {
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
        };
        Ok(HealthCheckKind::Http {
            method,
            path,
            expect_status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{GOOD, line_of, parse};
    use super::*;

    /// GOOD with a `[pools.default]` section appended (line 17 onwards).
    fn with_pool(section: &str) -> String {
        format!("{GOOD}\n[pools.default]\n{section}")
    }

    #[test]
    fn pool_keys_and_defaults() {
        let text = with_pool(
            "connect_timeout = \"1s\"\nslow_start = \"0s\"\nmax_connections = 0\n\
             [pools.default.health_check]\ntype = \"tcp\"\nrise = 1\n\
             [pools.default.ejection]\non = \"5xx\"\nmax_time = \"1h\"\n",
        );
        let c = parse(&text).unwrap();
        let p = c.pool("default");
        assert_eq!(p.connect_timeout, Duration::from_secs(1));
        assert_eq!(p.max_connections, None);
        assert_eq!(p.response_timeout, PoolConfig::default().response_timeout);
        let h = p.health_check.unwrap();
        assert_eq!((h.kind, h.rise, h.fall), (HealthCheckKind::Tcp, 1, 3));
        assert_eq!(p.ejection.on, EjectOn::ServerError);
        assert_eq!(p.ejection.max_time, Duration::from_secs(3600));
        assert_eq!(p.ejection.consecutive_failures, 5);
        // A pool without a table, and an ejection table without `on`: the defaults.
        assert_eq!(c.pool("other"), PoolConfig::default());
        let c = parse(&with_pool("[pools.default.ejection]\nmax_percent = 10\n")).unwrap();
        assert_eq!(c.pool("default").ejection.on, EjectOn::Gateway);
    }

    #[test]
    fn bad_pool_values_point_at_their_line() {
        for (section, key, line) in [
            (
                "connect_timeout = \"0s\"\n",
                "pools.default.connect_timeout",
                18,
            ),
            (
                "retry_budget_percent = 101\n",
                "pools.default.retry_budget_percent",
                18,
            ),
            (
                "[pools.default.health_check]\npath = \"health\"\n",
                "pools.default.health_check.path",
                19,
            ),
            (
                "[pools.default.health_check]\ntype = \"grpcs\"\n",
                "pools.default.health_check.type",
                19,
            ),
            (
                "[pools.default.health_check]\ntype = \"grpc\"\npath = \"/\"\n",
                "pools.default.health_check.path",
                20,
            ),
            (
                "[pools.default.health_check]\nservice = \"x\"\n",
                "pools.default.health_check.service",
                19,
            ),
            ("protocol = \"h3\"\n", "pools.default.protocol", 18),
            (
                "max_streams_per_connection = 0\n",
                "pools.default.max_streams_per_connection",
                18,
            ),
            (
                "protocol = \"h2\"\nsend_proxy = \"v2\"\n",
                "pools.default.send_proxy",
                19,
            ),
            (
                "[pools.default.health_check]\nfall = 0\n",
                "pools.default.health_check.fall",
                19,
            ),
            (
                "[pools.default.ejection]\nmax_percent = 200\n",
                "pools.default.ejection.max_percent",
                19,
            ),
        ] {
            let text = with_pool(section);
            let e = parse(&text).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
            assert_eq!(line_of(&text, &e), line, "{e}");
        }
    }

    #[test]
    fn tls_table_defaults_and_bad_server_name() {
        let c = parse(&with_pool("[pools.default.tls]\n")).unwrap();
        let tls = c.pool("default").tls.unwrap();
        assert_eq!((tls.ca, tls.server_name, tls.verify), (None, None, true));
        assert_eq!(tls.client, None);
        let c = parse(&with_pool("[pools.default.tls]\nenabled = false\n")).unwrap();
        assert_eq!(c.pool("default").tls, None);

        let text = with_pool("[pools.default.tls]\nserver_name = \"api internal\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.tls.server_name` must be a DNS name or an IP address, not \"api internal\""
        );
        assert_eq!(line_of(&text, &e), 19);
        let text = with_pool("[pools.default.tls]\nclient_key = \"k.pem\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.tls.client_key` needs `pools.default.tls.client_cert`"
        );
        assert_eq!(line_of(&text, &e), 19);
    }

    #[test]
    fn h2_pool_and_grpc_check() {
        let text = with_pool(
            "protocol = \"h2\"\nmax_streams_per_connection = 7\n\
             [pools.default.health_check]\ntype = \"grpc\"\nservice = \"echo.Echo\"\n",
        );
        let p = parse(&text).unwrap().pool("default");
        assert_eq!(p.protocol, UpstreamProtocol::H2);
        assert_eq!(p.max_streams_per_connection, 7);
        let kind = HealthCheckKind::Grpc {
            service: "echo.Echo".into(),
        };
        assert_eq!(p.health_check.unwrap().kind, kind);
        let p = parse(&with_pool(
            "[pools.default.health_check]\ntype = \"grpc\"\n",
        ))
        .unwrap()
        .pool("default");
        let kind = HealthCheckKind::Grpc { service: "".into() };
        assert_eq!(p.health_check.unwrap().kind, kind, "no service: the server");
        assert_eq!(p.protocol, UpstreamProtocol::Http1, "the default");

        let e = parse(&with_pool("protocol = \"http2\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.protocol` must be \"http/1.1\" or \"h2\", not \"http2\""
        );
        let e = parse(&with_pool("protocol = \"h2\"\nsend_proxy = \"v1\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.send_proxy` cannot be used with `pools.default.protocol = \"h2\"`"
        );
        // Off is fine.
        parse(&with_pool("protocol = \"h2\"\nsend_proxy = \"off\"\n")).unwrap();
    }

    #[test]
    fn unknown_ejection_on_lists_both_values() {
        let text = with_pool("[pools.default.ejection]\non = \"500\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.ejection.on` must be \"gateway\" or \"5xx\", not \"500\""
        );
        assert_eq!(line_of(&text, &e), 19);
    }
}
