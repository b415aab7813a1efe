//! A stream that notes when it last delivered bytes: how idle timeouts are told from slow
//! but moving traffic (a TCP session's `idle_timeout`, a request body still arriving while
//! the response timeout runs), without a timer reset per read.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ring::state::now_ms;

/// `io`, stamping `last` with `now_ms()` whenever a read delivers bytes.
pub struct Stamped<'a, T> {
    io: T,
    last: &'a AtomicU64,
}

impl<'a, T> Stamped<'a, T> {
    pub fn new(io: T, last: &'a AtomicU64) -> Stamped<'a, T> {
        Stamped { io, last }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Resolves once nothing was stamped in `last` for `timeout` while `busy` says no. The timer
/// is set again only when it fires, not per read.
pub async fn quiet_for(last: &AtomicU64, timeout: Duration, busy: impl Fn() -> bool) {
    let timeout_ms = timeout.as_millis() as u64;
    loop {
        let since = now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if since >= timeout_ms && !busy() {
            return;
        }
        let left = timeout_ms.saturating_sub(since).max(1);
        tokio::time::sleep(Duration::from_millis(left)).await;
    }
}
