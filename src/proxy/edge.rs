//! What happens to a client connection before the transports see it: the PROXY protocol
//! header, when the listener accepts one, then the TLS handshake, when the listener
//! terminates TLS. Both run on the connection's own task, within the listener's
//! `header_read_timeout`, and a connection that fails either is closed there: nothing
//! else is disturbed.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::stream::ClientStream;

/// One listener's edge settings.
#[derive(Default)]
pub struct Edge {}

impl Edge {
    /// A listener with neither PROXY protocol nor TLS.
    pub fn plain() -> Edge {
        Edge {}
    }

    /// The client's stream and its address (the one a PROXY header gave, else the peer's),
    /// or `None` when the connection was closed here.
    pub async fn open(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(ClientStream, SocketAddr)> {
        Some((ClientStream::Plain(tcp), peer))
    }
}
