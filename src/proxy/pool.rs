//! Keep-alive connections to one backend.
//!
//! Each worker's [`ConnPool`] holds idle connections in lock-free queues: plain TCP
//! streams ([`Upstream`]) for the HTTP/1 path, which reads and writes them itself, and
//! hyper handles ([`Sender`]) for HTTP/2 clients. A request takes one (or dials a new one)
//! and gives it back only once the response has ended cleanly; a connection in any other
//! state is dropped, never reused. Keyed by worker id (it lives in `WorkerState`), so a
//! reweight keeps the warm connections.

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
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::{ConnectError, dial};
use crate::ring::availability::now_ms;
use crate::ring::{InFlight, Worker};

/// A request body on its way to a backend: the client's, streamed, or none (a retry of a
/// bodiless request, rebuilt from its head).
pub type RequestBody = Either<Incoming, Empty<Bytes>>;

/// A handle that sends requests on one backend connection (HTTP/2 clients' path).
pub type Sender = http1::SendRequest<RequestBody>;

/// A backend connection the HTTP/1 path drives itself. Dropping it closes it.
pub struct Upstream {
    pub stream: TcpStream,
    /// Dropped with the connection: tells its drain watcher to stop.
    _closed: oneshot::Sender<()>,
}

/// A connection that can tell whether its backend has closed it.
trait Reusable {
    fn is_closed(&self) -> bool;
}

impl Reusable for Sender {
    fn is_closed(&self) -> bool {
        http1::SendRequest::is_closed(self)
    }
}

impl Reusable for Upstream {
    /// Without a system call in the usual case: tokio knows the socket is not readable
    /// until epoll says otherwise, and an idle connection becomes readable only when the
    /// backend closes it (or, wrongly, sends something unasked).
    fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// An idle connection and when it went idle (`now_ms()`).
struct Idle<T>(T, u64);

/// Idle connections kept per backend and kind; more are closed when returned.
const MAX_IDLE: usize = 256;

/// One queue of idle connections, allocated on the first one returned: a queue is a few
/// kilobytes, and a pool of 10,000 workers (most never used by a given instance) must not
/// cost tens of megabytes.
struct Queue<T>(OnceLock<ArrayQueue<Idle<T>>>);

impl<T: Reusable> Queue<T> {
    fn take(&self, max_idle: Duration) -> Option<T> {
        let idle = self.0.get()?;
        let oldest = now_ms().saturating_sub(max_idle.as_millis() as u64);
        while let Some(Idle(c, since)) = idle.pop() {
            if since >= oldest && !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: T) {
        let _ = self
            .0
            .get_or_init(|| ArrayQueue::new(MAX_IDLE))
            .push(Idle(c, now_ms()));
    }

    fn clear(&self) {
        if let Some(idle) = self.0.get() {
            while idle.pop().is_some() {}
        }
    }

    fn len(&self) -> usize {
        self.0.get().map_or(0, ArrayQueue::len)
    }
}

#[derive(Default)]
pub struct ConnPool {
    h1: Queue<Upstream>,
    hyper: Queue<Sender>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue(OnceLock::new())
    }
}

impl fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.idle())
            .finish()
    }
}

impl ConnPool {
    /// An idle connection for the HTTP/1 path that is still open and was idle less than
    /// `max_idle` (older ones are closed).
    pub fn take_upstream(&self, max_idle: Duration) -> Option<Upstream> {
        self.h1.take(max_idle)
    }

    /// Returns a connection whose last response ended cleanly.
    pub fn put_upstream(&self, c: Upstream) {
        self.h1.put(c);
    }

    /// The same for hyper's handles. The caller awaits `ready()` on it: a connection whose
    /// last response just ended may need a moment to turn idle.
    pub fn take(&self, max_idle: Duration) -> Option<Sender> {
        self.hyper.take(max_idle)
    }

    pub fn put(&self, s: Sender) {
        if !s.is_closed() {
            self.hyper.put(s);
        }
    }

    /// Closes every idle connection (the backend was removed or drained).
    pub fn clear(&self) {
        self.h1.clear();
        self.hyper.clear();
    }

    pub fn idle(&self) -> usize {
        self.h1.len() + self.hyper.len()
    }
}

/// Dials a new connection to `worker` for the HTTP/1 path. It is shut down (and whatever
/// request it carries fails) once the worker has been drained for `drain_timeout`.
pub async fn connect_upstream(
    worker: &Arc<Worker>,
    timeout: Duration,
    drain_timeout: Duration,
) -> Result<Upstream, ConnectError> {
    let stream = dial(&worker.address, timeout).await?;
    // A second handle on the socket, for the watcher to shut it down under whoever is
    // using it; costs one dup per connection, nothing per request.
    let handle = socket2::SockRef::from(&stream)
        .try_clone()
        .map_err(|e| ConnectError::Io(worker.address.text.clone(), e))?;
    let (closed, mut dropped) = oneshot::channel::<()>();
    let worker = worker.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = &mut dropped => {}
            _ = worker.state.drain.expired(drain_timeout) => {
                tracing::info!(backend = %worker.address.text, worker = worker.id,
                    "drain deadline passed: cutting a connection still in use");
                let _ = handle.shutdown(std::net::Shutdown::Both);
            }
        }
    });
    Ok(Upstream {
        stream,
        _closed: closed,
    })
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
