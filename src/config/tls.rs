//! A listener's `[listeners.tls]` table: the certificates it serves (chosen by SNI), the
//! oldest TLS version it accepts and the protocols it offers by ALPN.
//!
//! Certificates are loaded here, at validation, and not only when the listener starts: an
//! unreadable file, a file without a certificate or a key that does not match its
//! certificate is then a diagnostic pointing at the entry, before anything starts (and a
//! reload with such a file changes nothing). The same loader serves the running proxy
//! (`tls::Certificates`), which re-reads the files when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use toml::Spanned;

use super::raw::{RawCertificate, RawTls};
use super::source::Source;
use super::{ConfigError, Protocol};

/// `[listeners.tls]`, validated: the listener terminates TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// At least one; the first is served when SNI names none of them (or is absent).
    pub certificates: Vec<CertificateFiles>,
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in the server's order of preference. Empty: no ALPN (the
    /// default on tcp listeners; http listeners default to `h2`, `http/1.1`).
    pub alpn: Vec<String>,
    /// `accept_proxy` written inside the tls table: the same setting as the listener's own
    /// `accept_proxy` (the PROXY header comes before the TLS handshake); kept as written so
    /// both places can be honoured by the PROXY-protocol edge.
    pub accept_proxy: Option<bool>,
}

/// One `{ cert = "…", key = "…" }` entry: PEM files, the certificate file holding the leaf
/// first and then its chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `min_version`: the oldest protocol version a client may negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// `"1.2"` (the default): TLS 1.2 and 1.3.
    Tls12,
    /// `"1.3"`: TLS 1.3 only.
    Tls13,
}

impl TlsVersion {
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

/// A certificate ready to serve, and the names SNI picks it by.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// The DNS names of its subjectAltName extension, lowercase, wildcards (`*.example.com`)
    /// included as written.
    pub names: Vec<String>,
}

/// Why a certificate entry cannot be served. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} is not a readable PEM file: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("the private key in {} cannot be used: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{} is not a certificate rustls can parse: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// The crypto provider every TLS listener uses: aws-lc-rs, rustls' default, the faster of
/// the two for the handshake's signatures and for AES-GCM, and built from a vendored copy
/// (prebuilt NASM) so a fresh machine needs only a C compiler and cmake.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A verifier that takes any certificate: for TLS whose peer the operator chose not to
/// verify (a pool's `verify = false`, a database URL's `sslmode=require`). The handshake's
/// signatures are still checked (it costs nothing more and catches a broken peer), but
/// since the certificate is not, that proves nothing about who the peer is. Here, in the
/// module both `db` and `upstream` may import, so that both use one.
#[derive(Debug)]
pub struct AcceptAnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl CertificateFiles {
    /// Reads both files and checks that they belong together.
    pub fn load(&self) -> Result<LoadedCertificate, CertificateError> {
        self.load_with(&provider())
    }

    pub fn load_with(
        &self,
        provider: &CryptoProvider,
    ) -> Result<LoadedCertificate, CertificateError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| CertificateError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let pem = |path: &Path, e: rustls_pki_types::pem::Error| CertificateError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(&self.cert, e))?;
        if chain.is_empty() {
            return Err(CertificateError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(key) => key,
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                return Err(CertificateError::NoKey {
                    path: self.key.clone(),
                });
            }
            Err(e) => return Err(pem(&self.key, e)),
        };
        let names = names(&chain[0]).map_err(|reason| CertificateError::BadCertificate {
            path: self.cert.clone(),
            reason,
        })?;
        let signing =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| CertificateError::BadKey {
                    path: self.key.clone(),
                    reason: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain, signing);
        // aws-lc-rs always knows the public key of a key it loaded, so "unknown" does not
        // happen; were it to, serving a key that might not match is refused all the same.
        certified
            .keys_match()
            .map_err(|_| CertificateError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            })?;
        Ok(LoadedCertificate {
            key: Arc::new(certified),
            names,
        })
    }
}

/// The DNS names a leaf certificate is valid for, read by webpki (the parser rustls itself
/// verifies certificates with, so no second X.509 parser is compiled in).
fn names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
    Ok(cert
        .valid_dns_names()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect())
}

/// ALPN names an http listener can serve: anything else would be offered and then spoken
/// to as HTTP/1.
const HTTP_ALPN: [&str; 2] = ["h2", "http/1.1"];

impl Source<'_> {
    /// `[listeners.tls]` of the listener `key` (`listeners[i]`), with its certificates loaded.
    pub fn tls(
        &self,
        key: &str,
        raw: &RawTls,
        protocol: Protocol,
    ) -> Result<TlsConfig, ConfigError> {
        let key = |k: &str| format!("{key}.{k}");
        if raw.certificates.get_ref().is_empty() {
            return Err(self.invalid(
                format!(
                    "`{}` is empty: a TLS listener needs a certificate",
                    key("certificates")
                ),
                raw.certificates.span(),
                "no certificate",
                Some(
                    "certificates = [{ cert = \"/etc/lb/site.pem\", key = \"/etc/lb/site.key\" }]",
                ),
            ));
        }
        let mut certificates = Vec::new();
        for (i, c) in raw.certificates.get_ref().iter().enumerate() {
            certificates.push(self.certificate(&format!("{}[{i}]", key("certificates")), c)?);
        }
        let min_version = match &raw.min_version {
            None => TlsVersion::Tls12,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => TlsVersion::Tls12,
                "1.3" => TlsVersion::Tls13,
                other => {
                    return Err(self.invalid(
                        format!(
                            "`{}` must be \"1.2\" or \"1.3\", not {other:?}",
                            key("min_version")
                        ),
                        v.span(),
                        "unknown version",
                        Some("TLS 1.0 and 1.1 are not offered: rustls implements neither"),
                    ));
                }
            },
        };
        let alpn = match (&raw.alpn, protocol) {
            (None, Protocol::Http) => HTTP_ALPN.iter().map(|s| s.to_string()).collect(),
            (None, Protocol::Tcp) => Vec::new(),
            (Some(list), _) => self.alpn(&key("alpn"), list, protocol)?,
        };
        Ok(TlsConfig {
            certificates,
            min_version,
            alpn,
            accept_proxy: raw.accept_proxy.as_ref().map(|a| *a.get_ref()),
        })
    }

    fn certificate(
        &self,
        key: &str,
        raw: &RawCertificate,
    ) -> Result<CertificateFiles, ConfigError> {
        let files = CertificateFiles {
            cert: PathBuf::from(raw.cert.get_ref()),
            key: PathBuf::from(raw.key.get_ref()),
        };
        files.load().map_err(|e| {
            let (span, label, help) = match &e {
                CertificateError::Read { path, .. } | CertificateError::Pem { path, .. }
                    if *path == files.key =>
                {
                    (raw.key.span(), "this key file", "check the path and its permissions")
                }
                CertificateError::Read { .. } | CertificateError::Pem { .. } => {
                    (raw.cert.span(), "this certificate file", "check the path and its permissions")
                }
                CertificateError::NoCertificate { .. } | CertificateError::BadCertificate { .. } => (
                    raw.cert.span(),
                    "this certificate file",
                    "`cert` is a PEM file: the certificate first, then its chain",
                ),
                CertificateError::NoKey { .. } | CertificateError::BadKey { .. } => (
                    raw.key.span(),
                    "this key file",
                    "`key` is a PEM private key (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
                ),
                CertificateError::Mismatch { .. } => (
                    raw.key.span(),
                    "not this certificate's key",
                    "compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`",
                ),
            };
            self.invalid(format!("`{key}`: {e}"), span, label, Some(help))
        })?;
        Ok(files)
    }

    fn alpn(
        &self,
        key: &str,
        list: &Spanned<Vec<String>>,
        protocol: Protocol,
    ) -> Result<Vec<String>, ConfigError> {
        for name in list.get_ref() {
            let refused = match protocol {
                Protocol::Http => !HTTP_ALPN.contains(&name.as_str()),
                // RFC 7301: 1 to 255 bytes.
                Protocol::Tcp => name.is_empty() || name.len() > 255,
            };
            if refused {
                let help = match protocol {
                    Protocol::Http => "an http listener serves \"h2\" and \"http/1.1\"",
                    Protocol::Tcp => "an ALPN protocol name is 1 to 255 bytes",
                };
                return Err(self.invalid(
                    format!("`{key}` cannot offer {name:?}"),
                    list.span(),
                    "unsupported protocol",
                    Some(help),
                ));
            }
        }
        Ok(list.get_ref().clone())
    }
}
