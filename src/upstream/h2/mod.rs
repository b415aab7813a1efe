//! HTTP/2 connections to a `protocol = "h2"` worker, shared by every request sent to it:
//! each request is one stream, and a connection carries up to the pool's
//! `max_streams_per_connection` at once before another is opened.
//!
//! A request takes a stream slot on the first open connection with room, without a lock;
//! only when none has room does it dial, one dial per worker at a time (a burst of streams
//! to a new worker makes one connection, not a hundred). The connections live beside the
//! worker's idle HTTP/1.1 ones (`IdleConns`), so a reweight keeps them and a removed worker
//! takes them with it. Each connection is driven by a task of its own over the proxy's
//! HTTP/2 codec (`conn`; a request's stream is `stream`): PINGs keep it checked, and when
//! it ends (the worker closed it, its GOAWAY's streams are done, the drain deadline cut it,
//! a PING went unanswered) it leaves the worker's list. A connection takes no more streams
//! than the worker's `SETTINGS_MAX_CONCURRENT_STREAMS` either.
//!
//! Flow-control windows are far above HTTP/2's 64 KiB default: one stream must be able to
//! move hundreds of megabytes a second, and the worker's memory, not the window, is what
//! bounds a slow reader.

mod conn;
mod stream;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::http::request::Parts;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{ConnectError, Connector, Upstream, connect_upstream};
use crate::codec::client::Config;
use crate::config::PoolConfig;
use crate::ring::Worker;
use crate::ring::state::now_ms;

pub use conn::{Cut, Ended, Unprocessed};
pub use stream::{Gone, RecvStream, ResponseFuture, SendStream};

/// Receive windows we advertise: per stream and for the whole connection.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// The HTTP/2 connections of one worker.
#[derive(Default)]
pub struct Multiplexed {
    conns: ArcSwap<Vec<Arc<Conn>>>,
    /// Held while dialling: one new connection per worker at a time. The value is the
    /// last failed dial, for those who waited on it (see `stream`).
    dialling: tokio::sync::Mutex<Option<(Instant, Arc<str>)>>,
}

/// One connection: what its streams share with its driver, and how many are open.
struct Conn {
    shared: Arc<conn::Shared>,
    open: AtomicU32,
    /// Streams it may carry at once (`max_streams_per_connection`).
    max: u32,
    /// When its last stream ended (`now_ms()`), for the idle timeout.
    idle_since: AtomicU64,
    /// It said GOAWAY, or its driver ended: no new stream goes on it.
    closing: AtomicBool,
}

impl Conn {
    /// A stream slot on this connection, if it has room and is still open.
    fn try_open(self: &Arc<Conn>) -> Option<Slot> {
        if self.closing.load(Ordering::Relaxed) {
            return None;
        }
        // The worker's own limit, once its SETTINGS came (unlimited until then).
        let max = self.max.min(self.shared.peer_max.load(Ordering::Relaxed));
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }
}

/// One stream's place on a connection, given back when dropped (when the response has
/// ended, or the request failed).
pub struct Slot(Arc<Conn>);

impl Drop for Conn {
    /// The pool let it go (idle, or its worker removed), and no stream holds it: its
    /// driver closes it with GOAWAY.
    fn drop(&mut self) {
        self.shared.lock().dropped = true;
        self.shared.wake_driver();
    }
}

impl Slot {
    /// Sends the request head on a new stream: `parts`, then the fields in `added`
    /// (`end`: no body follows). The response to wait for, and the body's handle when one
    /// follows.
    pub fn send_request(
        &self,
        parts: &Parts,
        added: &[(&[u8], &[u8])],
        end: bool,
    ) -> Result<(ResponseFuture, Option<SendStream>), Cut> {
        stream::open(&self.0.shared, parts, added, end)
    }

    /// The worker refused new streams on this connection (GOAWAY): none go on it again.
    pub fn connection_closing(&self) {
        self.0.closing.store(true, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Multiplexed {
    /// A stream slot to `worker`: on a connection with room, or on a new one. The second
    /// value is how long dialling took, when this request dialled.
    pub async fn stream(
        &self,
        worker: &Worker,
        connector: &Connector,
        settings: &PoolConfig,
        client: std::net::SocketAddr,
    ) -> Result<(Slot, Option<Duration>), ConnectError> {
        if let Some(slot) = self.open_slot() {
            return Ok((slot, None));
        }
        let waited = Instant::now();
        let mut dialling = self.dialling.lock().await;
        // Whoever held the lock may have made room.
        if let Some(slot) = self.open_slot() {
            return Ok((slot, None));
        }
        // A dial that failed while this request waited is this request's answer too: the
        // waiters of a dead worker fail together, not one connect timeout after another.
        if let Some((at, why)) = &*dialling
            && *at >= waited
        {
            return Err(ConnectError::Io(
                worker.address.text.clone(),
                io::Error::other(why.to_string()),
            ));
        }
        let dialled = Instant::now();
        // Boxed, as dialling is rare and its state large (see `connect_upstream`).
        match Box::pin(self.dial(worker, connector, settings, client)).await {
            Ok(conn) => {
                self.conns.rcu(|conns| {
                    let mut conns = Vec::clone(conns);
                    conns.push(conn.clone());
                    conns
                });
                // Room, unless the worker's SETTINGS already allow no stream at all.
                let slot = conn.try_open().ok_or_else(|| {
                    let why = "the worker allows no stream (SETTINGS_MAX_CONCURRENT_STREAMS 0)";
                    ConnectError::Io(worker.address.text.clone(), io::Error::other(why))
                })?;
                Ok((slot, Some(dialled.elapsed())))
            }
            Err(e) => {
                *dialling = Some((Instant::now(), e.to_string().into()));
                Err(e)
            }
        }
    }

    /// A stream slot on a connection already open, when one has room: what `stream` does
    /// first, without a future (callers try it before awaiting `stream`).
    pub fn open_slot(&self) -> Option<Slot> {
        self.conns.load().iter().find_map(Conn::try_open)
    }

    /// A new connection to `worker`, with its HTTP/2 handshake sent and its driver running.
    async fn dial(
        &self,
        worker: &Worker,
        connector: &Connector,
        settings: &PoolConfig,
        client: std::net::SocketAddr,
    ) -> Result<Arc<Conn>, ConnectError> {
        let up = connect_upstream(worker, connector, client).await?;
        let shared = Arc::new(conn::Shared::new(Config {
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
            ..Config::default()
        }));
        let conn = Arc::new(Conn {
            shared: shared.clone(),
            open: AtomicU32::new(0),
            max: settings.max_streams_per_connection,
            idle_since: AtomicU64::new(now_ms()),
            closing: AtomicBool::new(false),
        });
        let (address, id) = (worker.address.text.clone(), worker.id);
        // The driver holds the list weakly through the worker's store: the list holds the
        // connection, and a removed worker must not be kept alive by its connections.
        let this = Arc::downgrade(&conn);
        let list = ListHandle::of(worker);
        tokio::spawn(async move {
            match conn::drive(Io(up), shared).await {
                Ended::Closed => {}
                Ended::Unanswered => tracing::info!(backend = %address, worker = id,
                    "an HTTP/2 connection to a worker did not answer a PING: closed"),
                ended => tracing::debug!(backend = %address, worker = id, error = %ended,
                    "HTTP/2 connection to a worker ended"),
            }
            if let Some(conn) = this.upgrade() {
                conn.closing.store(true, Ordering::Relaxed);
                list.remove(&conn);
            }
        });
        Ok(conn)
    }

    /// Closes the connections with no stream open that have been idle since before
    /// `oldest` (a `now_ms()`; every idle one when `u64::MAX`); returns how many.
    pub fn expire(&self, oldest: u64) -> usize {
        let doomed: Vec<Arc<Conn>> = self
            .conns
            .load()
            .iter()
            .filter(|c| {
                c.open.load(Ordering::Acquire) == 0
                    && (c.idle_since.load(Ordering::Relaxed) < oldest
                        || c.closing.load(Ordering::Relaxed))
            })
            .cloned()
            .collect();
        for conn in &doomed {
            // No new stream goes on it; once the last handle (the list's) is dropped, its
            // driver closes it with GOAWAY, no stream being open.
            conn.closing.store(true, Ordering::Relaxed);
            self.remove(conn);
        }
        doomed.len()
    }

    fn remove(&self, conn: &Arc<Conn>) {
        self.conns.rcu(|conns| {
            conns
                .iter()
                .filter(|c| !Arc::ptr_eq(c, conn))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

/// How a connection's driver finds its worker's list when it ends, without holding the
/// worker: the worker's state, weakly.
struct ListHandle(std::sync::Weak<crate::ring::WorkerState>);

impl ListHandle {
    fn of(worker: &Worker) -> ListHandle {
        ListHandle(Arc::downgrade(&worker.state))
    }

    fn remove(&self, conn: &Arc<Conn>) {
        if let Some(state) = self.0.upgrade()
            && let Some(store) = state.attached.peek::<super::IdleConns>()
        {
            store.h2.remove(conn);
        }
    }
}

/// A worker connection as the driver reads and writes it; holding the `Upstream` keeps its
/// drain watcher, which cuts the socket once the worker has been drained too long.
struct Io(Upstream);

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.stream).poll_shutdown(cx)
    }
}
