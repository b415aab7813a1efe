//! TLS termination on a listener: the rustls server configuration built from its
//! `[listeners.tls]` table, the certificates it serves by SNI, and the task that re-reads
//! them when their files change.
//!
//! - [`Terminator`]: one per TLS listener, kept across reloads while the listener's tls table
//!   is unchanged (so session tickets and cached sessions stay valid); the edge
//!   (`proxy::edge`) runs each connection's handshake with its acceptor.
//! - [`Certificates`]: the certificate set, picked from per handshake with one lock-free
//!   load. A change to a file swaps in a new set: handshakes from then on get it, sessions
//!   already established keep the certificate they were made with.

mod certificates;

use std::sync::Arc;
use std::time::Duration;

use miette::Diagnostic;
use rustls::server::ServerSessionMemoryCache;
use rustls::{ServerConfig, version};
use tokio_rustls::TlsAcceptor;

pub use certificates::Certificates;

use crate::config::{CertificateError, TlsConfig, TlsVersion};

/// How often the certificate and key files are checked for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Session IDs remembered for TLS 1.2 resumption without tickets (older clients); each
/// entry is a few hundred bytes, so the whole cache stays within a few megabytes.
const SESSION_CACHE: usize = 8 * 1024;

/// Why a listener's TLS could not be set up.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum TlsError {
    #[error("{0}")]
    #[diagnostic(
        code(tls::certificate),
        help("fix the file (or `[listeners.tls] certificates`); nothing was changed")
    )]
    Certificate(#[from] CertificateError),
    /// Validation refuses an empty list; a `TlsConfig` built in code may still hold one.
    #[error("a TLS listener needs at least one certificate")]
    #[diagnostic(code(tls::no_certificate))]
    NoCertificate,
    #[error("cannot build the TLS configuration: {0}")]
    #[diagnostic(code(tls::config))]
    Rustls(#[from] rustls::Error),
}

/// One TLS listener's handshake state: the acceptor, its certificates and their watcher.
pub struct Terminator {
    /// As configured: a reload keeps this terminator when the new entry's table is equal.
    pub config: TlsConfig,
    pub acceptor: TlsAcceptor,
    pub certificates: Arc<Certificates>,
    /// The watcher task: it holds the certificates only weakly, and is stopped here, so a
    /// terminator a reload replaced stops watching at once.
    watcher: tokio::task::AbortHandle,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Terminator {
    /// Loads the certificates of `config` and starts watching their files (every
    /// [`WATCH_INTERVAL`]). Must run inside a tokio runtime.
    pub fn new(config: &TlsConfig) -> Result<Terminator, TlsError> {
        Terminator::with_interval(config, WATCH_INTERVAL)
    }

    /// [`Terminator::new`] with another watch interval (tests).
    pub fn with_interval(config: &TlsConfig, interval: Duration) -> Result<Terminator, TlsError> {
        if config.certificates.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let provider = crate::config::tls_provider();
        let certificates = Arc::new(Certificates::load(&config.certificates, provider.clone())?);
        let versions: &[&'static rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::Tls12 => &[&version::TLS13, &version::TLS12],
            TlsVersion::Tls13 => &[&version::TLS13],
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        server.alpn_protocols = config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // Resumption both ways: stateless tickets (TLS 1.3, and 1.2 clients that ask), keys
        // rotated by the ticketer; session IDs for TLS 1.2 clients without tickets.
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        let watcher = tokio::spawn(certificates::watch(Arc::downgrade(&certificates), interval))
            .abort_handle();
        Ok(Terminator {
            config: config.clone(),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            certificates,
            watcher,
        })
    }
}
