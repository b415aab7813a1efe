//! What happens to a client connection before the transports see it: the PROXY protocol
//! header, when the listener accepts one, then the TLS handshake, when the listener
//! terminates TLS. Both run on the connection's own task, within the listener's
//! `header_read_timeout`, and a connection that fails either is closed there: nothing
//! else is disturbed.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::proxy_header::AcceptProxy;
use super::stream::ClientStream;

/// One listener's edge settings.
#[derive(Default)]
pub struct Edge {
    /// `accept_proxy`: whose PROXY headers are read, within what time.
    pub accept_proxy: Option<AcceptProxy>,
}

impl Edge {
    /// A listener with neither PROXY protocol nor TLS.
    pub fn plain() -> Edge {
        Edge::default()
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
        Some((ClientStream::Plain(tcp), peer))
    }
}
