//! What happens to a client connection before the transports see it: the PROXY protocol
//! header, when the listener accepts one, then the TLS handshake, when the listener
//! terminates TLS. Both run on the connection's own task, within the listener's
//! `header_read_timeout`, and a connection that fails either is closed there: nothing
//! else is disturbed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::proxy_header::AcceptProxy;
use super::stream::ClientStream;
use crate::tls::Terminator;

/// One listener's edge settings.
#[derive(Default)]
pub struct Edge {
    /// The listener's TLS, if it terminates TLS: shared with the listener (and kept across
    /// reloads that leave its tls table alone).
    tls: Option<Arc<Terminator>>,
    /// The listener's `header_read_timeout`: a client that has not finished its handshake
    /// by then is closed, as one that has not sent a request head would be.
    handshake_timeout: Duration,
    /// `accept_proxy`: whose PROXY headers are read, within what time.
    pub accept_proxy: Option<AcceptProxy>,
}

impl Edge {
    /// A listener with neither PROXY protocol nor TLS.
    pub fn plain() -> Edge {
        Edge::default()
    }

    /// A listener terminating TLS with `tls`; a handshake must end within `timeout`.
    pub fn tls(tls: Arc<Terminator>, timeout: Duration) -> Edge {
        Edge {
            tls: Some(tls),
            handshake_timeout: timeout,
            accept_proxy: None,
        }
    }

    /// This edge, reading PROXY headers as `accept` says (`None`: not at all).
    pub fn accepting_proxy(mut self, accept: Option<AcceptProxy>) -> Edge {
        self.accept_proxy = accept;
        self
    }

    /// The client's stream and its address (the one a PROXY header gave, else the peer's),
    /// or `None` when the connection was closed here.
    pub async fn open(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(ClientStream, SocketAddr)> {
        // First: the header comes before anything else, a TLS ClientHello included.
        let peer = match &self.accept_proxy {
            None => peer,
            Some(accept) => match accept.client(&mut tcp, peer).await {
                Ok(client) => client,
                Err(e) => {
                    // Debug, not warn: anyone can send garbage, and each would be a line.
                    tracing::debug!(%peer, error = %e, "PROXY protocol: closing the connection");
                    return None;
                }
            },
        };
        let Some(tls) = &self.tls else {
            return Some((ClientStream::Plain(tcp), peer));
        };
        match tokio::time::timeout(self.handshake_timeout, tls.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Some((ClientStream::Tls(Box::new(stream)), peer)),
            // Scanners and broken clients make these all day: not worth more than debug.
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed; connection closed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, timeout_ms = self.handshake_timeout.as_millis() as u64,
                    "TLS handshake not finished in time; connection closed");
                None
            }
        }
    }
}
