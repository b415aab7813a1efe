//! TLS to PostgreSQL, as the URL's `sslmode` asks, with libpq's meanings:
//!
//! - `disable`: plain TCP.
//! - `prefer` (the default, as in libpq): TLS when the server offers it, plain otherwise.
//! - `require`: TLS or no connection. The server's certificate is not verified, as libpq's
//!   `require` does not verify without a root certificate: the connection is encrypted
//!   against anyone listening, not authenticated against anyone in the middle.
//!
//! `verify-ca` and `verify-full` (and `sslrootcert`, `sslcert`, `sslkey`) are refused when
//! the URL is parsed, with a startup error that says so ([`super::StartupError::Url`]):
//! tokio-postgres' parser does not know them, and taking them for `require` would promise
//! a verification that does not happen. tokio-postgres applies the mode itself (whether to
//! ask for TLS, and whether a refusal is fatal); this module gives it the rustls connector.
//!
//! Every connection to PostgreSQL takes [`connector`]: the subscriber's own, the pooled
//! ones (snapshots, the status reporter), migrations and the `workers` commands. The
//! handshake offers ALPN `postgresql`, as libpq 17 does, so `sslnegotiation=direct` (TLS
//! from the first byte, PostgreSQL 17 and later) works too.

use std::error::Error as _;
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::AcceptAnyCertificate;

/// The connector every connection to PostgreSQL is made with.
pub type Connector = MakeRustlsConnect;

/// The connector of every connection (one rustls config for the process, so its session
/// cache lets reconnects resume).
pub fn connector() -> Connector {
    static CONNECTOR: OnceLock<MakeRustlsConnect> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| MakeRustlsConnect::new(client_config()))
        .clone()
}

/// aws-lc-rs (as the listeners and the TLS to workers use), TLS 1.2 and 1.3, any
/// certificate (see the module's doc), ALPN `postgresql`.
fn client_config() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    config
}

/// Why a connection failed, when TLS is the reason and waiting will not fix it: the server
/// refuses TLS while the URL requires it, or the handshake itself fails (no common
/// protocol version or cipher, a malformed certificate). `None` for anything else,
/// including a connection cut during the handshake (the network's doing, not the TLS
/// settings').
pub fn failure(e: &tokio_postgres::Error) -> Option<TlsFailure> {
    // tokio-postgres says which step failed only in its message: this one is its TLS step.
    if e.to_string() != "error performing TLS handshake" {
        return None;
    }
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(rustls) = as_rustls(c) {
            return Some(TlsFailure::Handshake(rustls.to_string()));
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            // The connector refuses a host name that cannot be a TLS server name; any
            // other I/O error is the connection's.
            return (io.kind() == std::io::ErrorKind::InvalidInput)
                .then(|| TlsFailure::Handshake(io.to_string()));
        }
        if c.to_string() == "server does not support TLS" {
            return Some(TlsFailure::NotOffered);
        }
        cause = c.source();
    }
    e.source().map(|c| TlsFailure::Handshake(c.to_string()))
}

/// The rustls error `e` is, or carries (tokio-rustls wraps them in `io::Error`s, whose own
/// `source` skips what they wrap).
fn as_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

/// A TLS problem an operator must fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server answered the TLS request with "no", and the URL says `sslmode=require`.
    NotOffered,
    /// The handshake failed; what rustls said.
    Handshake(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How the peer of [`failing_with`] answers.
    #[derive(Clone, Copy)]
    enum Peer {
        /// `N` to the SSLRequest, as PostgreSQL with `ssl = off`.
        Declines,
        /// `S`, then an HTTP answer to the ClientHello.
        AnswersGarbage,
        /// `S`, then closes after the ClientHello.
        Closes,
    }

    /// What a connection with `sslmode=require` to `peer` fails with.
    async fn failing_with(peer: Peer) -> tokio_postgres::Error {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            s.read_exact(&mut buffer[..8]).await.unwrap();
            match peer {
                Peer::Declines => s.write_all(b"N").await.unwrap(),
                Peer::AnswersGarbage | Peer::Closes => {
                    s.write_all(b"S").await.unwrap();
                    let _ = s.read(&mut buffer).await;
                    if let Peer::Closes = peer {
                        return;
                    }
                    s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        .await
                        .unwrap();
                }
            }
            // Until the client gives up.
            while matches!(s.read(&mut buffer).await, Ok(n) if n > 0) {}
        });
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let connect = config.connect(connector());
        match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
            Ok(Ok(_)) => panic!("connected to a peer that is not PostgreSQL"),
            Ok(Err(e)) => e,
            Err(_) => panic!("no outcome within 10 s"),
        }
    }

    #[tokio::test]
    async fn a_refused_tls_request_is_a_tls_failure() {
        let e = failing_with(Peer::Declines).await;
        assert_eq!(failure(&e), Some(TlsFailure::NotOffered), "{e:?}");
    }

    #[tokio::test]
    async fn a_handshake_answered_with_garbage_is_a_tls_failure() {
        let e = failing_with(Peer::AnswersGarbage).await;
        match failure(&e) {
            Some(TlsFailure::Handshake(reason)) => assert!(!reason.is_empty()),
            other => panic!("{other:?}: {e:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_closed_during_the_handshake_is_not() {
        // The network's doing (or a server restarting), so retrying may help.
        let e = failing_with(Peer::Closes).await;
        assert_eq!(failure(&e), None, "{e:?}");
    }
}
