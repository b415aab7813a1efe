//! TLS from the proxy to a pool's workers (`[pools.NAME.tls]`): the client side of rustls,
//! built once per [`Connector`](super::Connector) (and once for the pool's health checks)
//! from the validated settings, used for every new connection.
//!
//! What is verified: the worker's chain against `ca` (or the system's roots), and its name
//! against `server_name` or else the host of `worker_address` (an IP address host is
//! matched against the certificate's IP addresses and sends no SNI, as TLS requires).
//! `verify = false` accepts any certificate. A failed handshake is a connect failure, so
//! the request goes to another worker: never a fallback to cleartext.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};

use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ConnectError;
use super::stream::UpstreamStream;
use crate::config::{
    AcceptAnyCertificate, BackendTlsConfig, HealthCheckKind, PoolConfig, UpstreamProtocol,
};
use crate::ring::Address;

/// How a pool's connections are made TLS: one rustls client config, shared by every
/// connection so its session cache lets reconnects resume instead of redoing a full
/// handshake.
pub struct UpstreamTls {
    /// `Err`: the config could not be built (its files were checked at load, so this is not
    /// expected); every connection then fails with the reason rather than go out in clear.
    connector: Result<TlsConnector, Arc<str>>,
    /// The pool's `server_name`; `None`: each worker's host.
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ready", &self.connector.is_ok())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl UpstreamTls {
    /// The TLS of a pool with `settings` for its traffic, or `None` for a cleartext pool.
    pub fn of(settings: &PoolConfig) -> Option<Arc<UpstreamTls>> {
        Self::speaking(settings, settings.protocol == UpstreamProtocol::H2)
    }

    /// The pool's TLS, offering ALPN `h2` alone when `h2`: an h2 pool's traffic, or a
    /// `type = "grpc"` health check whatever the pool's `protocol` (a TLS worker serving
    /// both versions picks HTTP/2 by it). Otherwise no ALPN, as before `h2` existed.
    fn speaking(settings: &PoolConfig, h2: bool) -> Option<Arc<UpstreamTls>> {
        let tls = settings.tls.as_ref()?;
        let connector = client_config(tls)
            .map(|mut c| {
                if h2 {
                    c.alpn_protocols = vec![b"h2".to_vec()];
                }
                TlsConnector::from(Arc::new(c))
            })
            .map_err(|e| {
                tracing::error!(error = %e, "TLS to workers cannot be set up: their connections will fail");
                Arc::from(e.to_string())
            });
        Some(Arc::new(UpstreamTls {
            connector,
            server_name: tls.server_name.clone(),
        }))
    }

    /// Runs the TLS handshake with the worker at `address` on `tcp`. The caller bounds it
    /// in time.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        address: &Address,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let text = &address.text;
        let connector = self
            .connector
            .as_ref()
            .map_err(|e| ConnectError::TlsSetup(text.clone(), e.clone()))?;
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_name(address).ok_or_else(|| {
                ConnectError::TlsSetup(
                    text.clone(),
                    "its host is not a valid TLS server name; set `server_name`".into(),
                )
            })?,
        };
        let (result, asked) = CERT_ASKED
            .scope(Cell::new(false), async {
                let result = connector.connect(name, tcp).await;
                (result, CERT_ASKED.with(Cell::get))
            })
            .await;
        let stream = result.map_err(|e| classify(text, e))?;
        if asked {
            // A worker may ask for a certificate and take connections without one
            // (`ssl_verify_client optional`), so this is no failure. One that requires it
            // refuses with an alert, which under TLS 1.3 arrives only after the client's
            // handshake has ended: with the first response, as a failed exchange (counted
            // as a reset, its alert in the log line). This line says why, for debugging.
            tracing::debug!(backend = %text,
                "the worker asked for a client certificate; the pool has no client_cert");
        }
        Ok(stream)
    }
}

/// `tls`'s handshake on `tcp` to the worker at `address`, given up at `deadline`.
pub async fn connect_by(
    deadline: tokio::time::Instant,
    tls: &UpstreamTls,
    tcp: TcpStream,
    address: &Address,
) -> Result<UpstreamStream, ConnectError> {
    match tokio::time::timeout_at(deadline, tls.handshake(tcp, address)).await {
        Ok(stream) => Ok(UpstreamStream::Tls(Box::new(stream?))),
        Err(_) => Err(ConnectError::Tls(
            address.text.clone(),
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no handshake within connect_timeout",
            ),
        )),
    }
}

/// The SNI and the name to verify for a worker without a pool `server_name`: the host part
/// of its address, an IP address as such.
fn host_name(address: &Address) -> Option<ServerName<'static>> {
    if let Some(ip) = address.ip {
        return Some(ServerName::IpAddress(ip.ip().into()));
    }
    let host = match address.text.rsplit_once(':') {
        Some((host, _port)) => host,
        None => &address.text,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host).ok().map(|n| n.to_owned())
}

/// A handshake error, said as what it was: the worker's certificate refused (by us), or
/// anything else (refused by the worker, not TLS at all, cut).
fn classify(address: &Arc<str>, e: io::Error) -> ConnectError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(reason)) => {
            ConnectError::TlsVerify(address.clone(), reason.clone())
        }
        _ => ConnectError::Tls(address.clone(), e),
    }
}

tokio::task_local! {
    /// Set when the worker asked for a client certificate during the handshake this task
    /// is running and the pool had none to give. A task-local, because the rustls client
    /// config (and so its certificate resolver) is shared by every connection.
    static CERT_ASKED: Cell<bool>;
}

/// The certificate resolver of a pool without `client_cert`: has nothing to send, and notes
/// that it was asked.
#[derive(Debug)]
struct NoClientCert;

impl ResolvesClientCert for NoClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let _ = CERT_ASKED.try_with(|asked| asked.set(true));
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// Why a pool's TLS client config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("TLS to workers: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS to workers: the system has no root certificates (set `ca`)")]
    NoSystemRoots,
}

/// The rustls client config of `tls`: aws-lc-rs (as the listeners use), TLS 1.2 and 1.3,
/// the default session cache (resumption on by default in rustls).
pub fn client_config(tls: &BackendTlsConfig) -> Result<ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if tls.verify {
        let roots = match &tls.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for certificate in &ca.certificates {
                    roots.add(certificate.clone())?;
                }
                Arc::new(roots)
            }
            None => system_roots().ok_or(TlsSetupError::NoSystemRoots)?,
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        builder.with_webpki_verifier(verifier)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    };
    Ok(match &tls.client {
        Some(identity) => {
            builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?
        }
        None => builder.with_client_cert_resolver(Arc::new(NoClientCert)),
    })
}

/// The system's trust anchors, read once per process (they change with the OS, whose
/// updates restart services anyway); `None` when there are none.
fn system_roots() -> Option<Arc<RootCertStore>> {
    static ROOTS: OnceLock<Option<Arc<RootCertStore>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's root certificates");
            }
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            (!roots.is_empty()).then(|| Arc::new(roots))
        })
        .clone()
}

/// The TLS of pool `name` for its health checks (ALPN `h2` for gRPC checks), and its one
/// startup warning when it does not verify workers (called once per start of the pool's
/// tasks: at startup and when a reload changes the pool).
pub fn for_pool_tasks(name: &str, settings: &PoolConfig) -> Option<Arc<UpstreamTls>> {
    if settings.tls.as_ref().is_some_and(|t| !t.verify) {
        tracing::warn!(
            pool = name,
            "verify = false: connections to pool {name} are not authenticated"
        );
    }
    let grpc = settings
        .health_check
        .as_ref()
        .is_some_and(|c| matches!(c.kind, HealthCheckKind::Grpc { .. }));
    UpstreamTls::speaking(settings, grpc || settings.protocol == UpstreamProtocol::H2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_server_name_is_the_host_of_the_address() {
        let name = |text: &str| host_name(&Address::new(text));
        assert_eq!(
            name("127.0.0.1:8443"),
            Some(ServerName::IpAddress(
                std::net::IpAddr::from([127, 0, 0, 1]).into()
            ))
        );
        assert_eq!(
            name("[::1]:443"),
            Some(ServerName::IpAddress(
                std::net::IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]).into()
            ))
        );
        assert_eq!(
            name("api.internal:443"),
            Some(ServerName::try_from("api.internal").unwrap())
        );
        assert_eq!(name("bad_host!:443"), None);
    }
}
