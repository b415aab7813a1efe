//! The HTTP listener: per-request balancing.
//!
//! A client connection is served by the HTTP/1 transport (`http1`), which forwards each
//! request to a worker picked afresh; one that opens with the HTTP/2 preface (prior
//! knowledge, h2c) is handed with the bytes read so far to the HTTP/2 transport (`http2`).

use std::net::SocketAddr;
use std::sync::Arc;

use super::HttpProxy;
use super::http1::session::{self, Ended};
use super::http2::{self, Rewind};
use super::stream::ClientStream;
use crate::shutdown::Shutdown;

impl HttpProxy {
    /// Serves one client connection (see `proxy::serve`).
    pub(super) async fn serve_connection(
        self: Arc<Self>,
        stream: ClientStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) {
        let _open = self.targets.own.reports.metrics.connection();
        // ALPN chose HTTP/2 during the TLS handshake: no preface sniffing.
        if stream.alpn() == Some(b"h2") {
            let io = Rewind::new(bytes::BytesMut::new(), stream);
            return Box::pin(http2::serve(self, io, peer, shutdown)).await;
        }
        let ended = session::serve(&self, &shutdown, stream, peer).await;
        if let Ended::Http2(stream, read) = ended {
            // Boxed: hyper's HTTP/2 connection is kilobytes, and every HTTP/1 connection
            // task would otherwise be that large too.
            Box::pin(http2::serve(
                self,
                Rewind::new(read, stream),
                peer,
                shutdown,
            ))
            .await;
        }
    }
}
