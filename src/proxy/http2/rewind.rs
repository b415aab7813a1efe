//! A client connection as the HTTP/2 transport reads and writes it (`Rewind`): the bytes
//! the HTTP/1 path had already read come first, and every byte moved either way stamps
//! the connection's `Activity`, which its idle timeout counts from.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::stream::ClientStream;
use crate::ring::state::now_ms;

/// What keeps a client connection alive: bytes moving either way, or a stream open.
#[derive(Default)]
pub(super) struct Activity {
    /// When bytes last moved (`now_ms()`).
    pub(super) last_ms: AtomicU64,
    /// Requests whose response has not ended yet.
    pub(super) streams: AtomicUsize,
}

/// A client connection whose first bytes were already read: they are read again first.
pub struct Rewind {
    read: BytesMut,
    stream: ClientStream,
    /// Stamped on every read and write: the connection's idle timeout counts from it.
    pub(super) activity: Arc<Activity>,
}

impl Rewind {
    /// Whether the client connection underneath is TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    pub fn new(read: BytesMut, stream: ClientStream) -> Rewind {
        let activity = Activity::default();
        activity.last_ms.store(now_ms(), Ordering::Relaxed);
        Rewind {
            read,
            stream,
            activity: Arc::new(activity),
        }
    }
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
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
