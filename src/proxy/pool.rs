//! Keep-alive connections to one backend.
//!
//! Each worker's [`ConnPool`] holds idle HTTP/1.1 connections in a lock-free queue. A request
//! takes one (or dials a new one), and the response body hands it back when the backend has
//! sent the last byte ([`PooledBody`]); a connection whose response was not read to the end
//! is dropped, never reused. Keyed by worker id (it lives in `WorkerState`), so a reweight
//! keeps the warm connections.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::{ConnectError, dial};
use crate::ring::availability::now_ms;
use crate::ring::{InFlight, Worker};

/// A request body on its way to a backend: the client's, streamed, or none (a retry of a
/// bodiless request, rebuilt from its head).
pub type RequestBody = Either<Incoming, Empty<Bytes>>;

/// A handle that sends requests on one backend connection.
pub type Sender = http1::SendRequest<RequestBody>;

/// An idle connection and when it went idle (`now_ms()`).
struct Idle(Sender, u64);

/// Idle connections kept per backend; more are closed when returned.
const MAX_IDLE: usize = 256;

/// Allocated on the first returned connection: a queue is a few kilobytes, and a pool of
/// 10,000 workers (most never used by a given instance) must not cost tens of megabytes.
#[derive(Default)]
pub struct ConnPool {
    idle: OnceLock<ArrayQueue<Idle>>,
}

impl fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.idle())
            .finish()
    }
}

impl ConnPool {
    /// An idle connection that is still open and was idle less than `max_idle` (older
    /// ones are closed). The caller awaits `ready()` on it: a connection whose last
    /// response just ended may need a moment to turn idle.
    pub fn take(&self, max_idle: Duration) -> Option<Sender> {
        let idle = self.idle.get()?;
        let oldest = now_ms().saturating_sub(max_idle.as_millis() as u64);
        while let Some(Idle(s, since)) = idle.pop() {
            if !s.is_closed() && since >= oldest {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection for reuse; a closed one, or one beyond the cap, is dropped.
    pub fn put(&self, s: Sender) {
        if !s.is_closed() {
            let _ = self
                .idle
                .get_or_init(|| ArrayQueue::new(MAX_IDLE))
                .push(Idle(s, now_ms()));
        }
    }

    /// Closes every idle connection (the backend was removed or drained).
    pub fn clear(&self) {
        if let Some(idle) = self.idle.get() {
            while idle.pop().is_some() {}
        }
    }

    pub fn idle(&self) -> usize {
        self.idle.get().map_or(0, ArrayQueue::len)
    }
}

/// Dials a new HTTP/1.1 connection to `worker` and starts driving it. The connection is cut
/// once the worker has been drained for `drain_timeout`.
pub async fn connect(
    worker: &Arc<Worker>,
    timeout: Duration,
    drain_timeout: Duration,
) -> Result<Sender, ConnectError> {
    let address = &worker.address;
    let stream = dial(address, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(address.text.clone(), e))?;
    let text = address.text.clone();
    let mut driver = tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(backend = %text, error = %e, "backend connection closed");
        }
    });
    // The drain deadline is watched beside the connection, not inside its task: that task
    // is polled twice per request, and the watch would be polled with it.
    let worker = worker.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = &mut driver => {}
            _ = worker.state.drain.expired(drain_timeout) => {
                tracing::info!(backend = %worker.address.text, worker = worker.id,
                    "drain deadline passed: cutting a connection still in use");
                driver.abort();
            }
        }
    });
    Ok(sender)
}

/// A backend's response body on its way to the client. It owns the request's claim on the
/// worker: the in-flight count drops, and the connection goes back to the pool, only when
/// the body has ended (or the client went away, in which case the connection is dropped).
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

/// A request's hold on a worker and, while the response streams, on its connection.
pub struct Lease {
    in_flight: InFlight,
    sender: Option<Sender>,
}

impl Lease {
    pub fn new(in_flight: InFlight) -> Lease {
        Lease {
            in_flight,
            sender: None,
        }
    }

    pub fn worker(&self) -> &Arc<Worker> {
        self.in_flight.worker()
    }

    /// Keeps `sender` to return to the pool when the response is complete.
    pub fn hold(&mut self, sender: Sender) {
        self.sender = Some(sender);
    }

    /// The response ended cleanly: the connection can serve another request.
    fn release(mut self) {
        if let Some(s) = self.sender.take() {
            self.worker().state.conns.put(s);
        }
    }
}

impl PooledBody {
    pub fn new(inner: Incoming, lease: Lease) -> PooledBody {
        let mut body = PooledBody {
            inner,
            lease: Some(lease),
        };
        // A bodiless response (204, 304, HEAD, Content-Length: 0) is already complete.
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
