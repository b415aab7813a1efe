//! `[pools.NAME.tls]`: TLS from the proxy to a pool's workers.
//!
//! Every file it names is read and checked here, at load: a CA bundle that cannot be read, a
//! client key that is not the client certificate's, are refused before anything starts (and
//! a reload with one changes nothing), with a diagnostic naming the key and the file. What
//! is kept is the material itself, not the paths: the connector is then built from it
//! without anything left to fail, and a reload that re-reads a rotated file compares unequal,
//! so the pool's health checks restart with the new certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use toml::Spanned;

use super::ConfigError;
use super::raw::RawBackendTls;
use super::source::Source;

/// TLS to a pool's workers, validated, with its files read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsConfig {
    /// The trust anchors of `ca`; `None`: the system's roots.
    pub ca: Option<Arc<PemCertificates>>,
    /// Sent as SNI and matched against the worker's certificate, for every worker of the
    /// pool; `None`: the host part of each worker's `worker_address`.
    pub server_name: Option<ServerName<'static>>,
    /// `false`: any certificate is accepted (no authentication of the worker at all).
    pub verify: bool,
    /// The certificate and key presented when a worker asks for one (mTLS).
    pub client: Option<Arc<ClientIdentity>>,
}

/// Certificates read from a PEM file.
#[derive(Debug, PartialEq, Eq)]
pub struct PemCertificates {
    /// For messages only.
    pub path: PathBuf,
    pub certificates: Vec<CertificateDer<'static>>,
}

/// A client certificate chain with its private key, known to match.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

const FILE_HELP: &str = "a PEM file; a relative path is taken from the working directory";

impl Source<'_> {
    /// `[pools.NAME.tls]`; `key` is `pools.NAME.tls`. `None` when TLS is off: no table, or
    /// `enabled = false` (whose other keys are then not checked, so TLS can be switched off
    /// while its files are away).
    pub(super) fn backend_tls(
        &self,
        key: &str,
        raw: &RawBackendTls,
    ) -> Result<Option<BackendTlsConfig>, ConfigError> {
        // A table written is TLS wanted: `enabled` exists to switch it off, not on.
        if raw.enabled == Some(false) {
            return Ok(None);
        }
        let ca = match &raw.ca {
            None => None,
            Some(path) => Some(Arc::new(self.ca(&format!("{key}.ca"), path)?)),
        };
        let server_name = match &raw.server_name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.get_ref().as_str())
                    .map(|n| n.to_owned())
                    .map_err(|_| {
                        self.invalid(
                            format!(
                                "`{key}.server_name` must be a DNS name or an IP address, not {:?}",
                                name.get_ref()
                            ),
                            name.span(),
                            "not a server name",
                            Some("the name the workers' certificates are issued for, e.g. \"api.internal\""),
                        )
                    })?,
            ),
        };
        let client = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(cert), Some(k)) => Some(Arc::new(self.client_identity(key, cert, k)?)),
            (Some(alone), None) | (None, Some(alone)) => {
                let (has, lacks) = if raw.client_cert.is_some() {
                    ("client_cert", "client_key")
                } else {
                    ("client_key", "client_cert")
                };
                return Err(self.invalid(
                    format!("`{key}.{has}` needs `{key}.{lacks}`"),
                    alone.span(),
                    "alone",
                    Some("mTLS takes both the certificate and its private key"),
                ));
            }
        };
        Ok(Some(BackendTlsConfig {
            ca,
            server_name,
            verify: raw.verify.unwrap_or(true),
            client,
        }))
    }

    /// `ca`: at least one certificate, each one usable as a trust anchor (what the
    /// connector's root store will take, checked with the same call).
    fn ca(&self, key: &str, path: &Spanned<String>) -> Result<PemCertificates, ConfigError> {
        let certificates = self.certificates(key, path)?;
        let mut roots = RootCertStore::empty();
        for certificate in &certificates {
            roots.add(certificate.clone()).map_err(|e| {
                self.invalid(
                    format!(
                        "`{key}`: a certificate in {:?} is not usable as a CA: {e}",
                        path.get_ref()
                    ),
                    path.span(),
                    "bad certificate",
                    Some(FILE_HELP),
                )
            })?;
        }
        Ok(PemCertificates {
            path: PathBuf::from(path.get_ref()),
            certificates,
        })
    }

    /// `client_cert` and `client_key` (of table `key`): readable, and the key the first
    /// certificate's (as rustls checks it when the client config is built).
    fn client_identity(
        &self,
        key: &str,
        cert: &Spanned<String>,
        private: &Spanned<String>,
    ) -> Result<ClientIdentity, ConfigError> {
        let chain = self.certificates(&format!("{key}.client_cert"), cert)?;
        let key_key = format!("{key}.client_key");
        let file_error = |e: pem::Error| {
            let (message, label) = describe(&e, "private key");
            self.invalid(
                format!("`{key_key}`: {:?} {message}", private.get_ref()),
                private.span(),
                label,
                Some(FILE_HELP),
            )
        };
        let private_key =
            PrivateKeyDer::from_pem_file(Path::new(private.get_ref())).map_err(file_error)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        CertifiedKey::from_der(chain.clone(), private_key.clone_key(), &provider).map_err(|e| {
            let mismatch = matches!(e, rustls::Error::InconsistentKeys(_));
            if mismatch {
                self.invalid(
                    format!(
                        "`{key_key}` {:?} is not the private key of `{key}.client_cert` {:?}",
                        private.get_ref(),
                        cert.get_ref()
                    ),
                    private.span(),
                    "key mismatch",
                    Some("client_key must be the private key of the first certificate in client_cert"),
                )
            } else {
                self.invalid(
                    format!(
                        "`{key_key}` {:?} is not a usable private key: {e}",
                        private.get_ref()
                    ),
                    private.span(),
                    "bad key",
                    Some(FILE_HELP),
                )
            }
        })?;
        Ok(ClientIdentity {
            chain,
            key: private_key,
        })
    }

    /// Every certificate of the PEM file at `path` (at least one).
    fn certificates(
        &self,
        key: &str,
        path: &Spanned<String>,
    ) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let refuse = |e: pem::Error| {
            let (message, label) = describe(&e, "certificate");
            self.invalid(
                format!("`{key}`: {:?} {message}", path.get_ref()),
                path.span(),
                label,
                Some(FILE_HELP),
            )
        };
        let certificates = CertificateDer::pem_file_iter(Path::new(path.get_ref()))
            .map_err(refuse)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(refuse)?;
        if certificates.is_empty() {
            return Err(refuse(pem::Error::NoItemsFound));
        }
        Ok(certificates)
    }
}

/// What went wrong with a PEM file expected to hold `what`, said after its path, and the
/// label under it.
fn describe(e: &pem::Error, what: &str) -> (String, &'static str) {
    match e {
        pem::Error::Io(io) => (format!("cannot be read: {io}"), "unreadable"),
        pem::Error::NoItemsFound => (format!("holds no PEM {what}"), "no PEM"),
        other => (format!("is not valid PEM: {other}"), "bad PEM"),
    }
}
