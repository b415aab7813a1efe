//! The HTTP listener: per-request balancing.
//!
//! A client connection is served by the HTTP/1 transport (`http1`), which forwards each
//! request to a worker picked afresh; one that opens with the HTTP/2 preface (prior
//! knowledge, h2c) is handed with the bytes read so far to the HTTP/2 transport (`http2`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::http1::session::{self, Ended};
use super::{ClientLimits, http2};
use crate::accept::accept_loop;
use crate::balance::Balancer;
use crate::db::SyncStatus;
use crate::shutdown::Shutdown;

/// One `[[listeners]]` entry with `protocol = "http"`.
pub struct HttpProxy {
    pub(super) balancer: Balancer,
    pub(super) limits: ClientLimits,
    /// The database subscriber's state, for what a 503 says before the ring is loaded.
    pub(super) sync: Arc<SyncStatus>,
}

impl HttpProxy {
    pub fn new(balancer: Balancer, limits: ClientLimits, sync: Arc<SyncStatus>) -> HttpProxy {
        HttpProxy {
            balancer,
            limits,
            sync,
        }
    }

    /// Serves clients from `listener` until the shutdown drains it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        let sd = shutdown.clone();
        let max = self.limits.max_connections;
        accept_loop(listener, shutdown, max, move |stream, peer| {
            self.clone().serve_connection(stream, peer, sd.clone())
        })
        .await
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) {
        let ended = session::serve(
            &self.balancer,
            &self.sync,
            &self.limits,
            &shutdown,
            stream,
            peer,
        )
        .await;
        if let Ended::Http2(stream, read) = ended {
            // Boxed: hyper's HTTP/2 connection is kilobytes, and every HTTP/1 connection
            // task would otherwise be that large too.
            Box::pin(http2::serve(self, Rewind { read, stream }, peer, shutdown)).await;
        }
    }
}

/// A client connection whose first bytes were already read: they are read again first.
pub struct Rewind {
    read: BytesMut,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
