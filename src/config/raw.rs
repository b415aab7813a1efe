//! The file as written: what serde reads from `config.toml`, before any check.
//!
//! Kept apart from the validated types so that spans (for diagnostics) stay here, and so that
//! defaults and validation happen in one place (`validate.rs`). Every struct refuses unknown
//! keys: a misspelt key is an error that points at it, never silently ignored.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

/// A duration as written ("5s"); parsed, with its span, by `Source::duration`.
pub(super) type Dur = Option<Spanned<String>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub database: RawDatabase,
    pub listeners: Vec<RawListener>,
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    /// Keyed with their spans, so a pool table no listener serves can be pointed at.
    #[serde(default)]
    pub pools: HashMap<Spanned<String>, RawPool>,
    pub status: Option<RawStatus>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub url: Spanned<String>,
    pub cache_path: Option<String>,
    pub heartbeat_interval: Dur,
    pub anti_entropy_interval: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub bind: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    pub pool: Option<Spanned<String>>,
    pub algorithm: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<usize>>,
    pub header_read_timeout: Dur,
    pub max_header_size: Option<Spanned<usize>>,
    pub idle_timeout: Dur,
    pub access_log: Option<Spanned<String>>,
    pub access_log_format: Option<Spanned<String>>,
    pub accept_proxy: Option<Spanned<bool>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls: Option<RawTls>,
    pub name: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    /// Signed, so a negative number gets the key's own diagnostic rather than serde's.
    pub hash_balance_factor: Option<Spanned<i64>>,
    pub sni_routing: Option<Spanned<bool>>,
}

/// `[listeners.tls]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub certificates: Spanned<Vec<RawCertificate>>,
    pub min_version: Option<Spanned<String>>,
    pub alpn: Option<Spanned<Vec<String>>>,
    pub accept_proxy: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub bind: Spanned<String>,
    pub token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStatus {
    pub interval: Dur,
    pub instance: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub connect_timeout: Dur,
    pub response_timeout: Dur,
    pub idle_timeout: Dur,
    pub max_connections: Option<u64>,
    pub slow_start: Dur,
    pub drain_timeout: Dur,
    pub retries: Option<u32>,
    pub retry_budget_percent: Option<Spanned<u32>>,
    pub health_check: Option<RawHealthCheck>,
    pub ejection: Option<RawEjection>,
    pub send_proxy: Option<Spanned<String>>,
    pub tls: Option<RawBackendTls>,
    pub sticky: Option<RawSticky>,
    pub protocol: Option<Spanned<String>>,
    pub max_streams_per_connection: Option<Spanned<u32>>,
}

/// `[pools.NAME.sticky]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    pub cookie: Option<Spanned<String>>,
    pub max_age: Dur,
    pub secure: Option<bool>,
    pub http_only: Option<bool>,
    pub same_site: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<u16>>,
    pub service: Option<Spanned<String>>,
    pub interval: Dur,
    pub timeout: Dur,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEjection {
    pub consecutive_failures: Option<u32>,
    pub base_time: Dur,
    pub max_time: Dur,
    pub max_percent: Option<Spanned<u32>>,
    pub on: Option<Spanned<String>>,
}

/// `[pools.NAME.tls]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTls {
    pub enabled: Option<bool>,
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub verify: Option<bool>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
}
