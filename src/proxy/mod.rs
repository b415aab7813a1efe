//! The data plane: client-facing listeners that pick a backend from the ring and forward.
//!
//! `http` balances each request over keep-alive connections (`pool`): HTTP/1 clients through
//! the proxy's own forwarding path (`h1`, with `message` for heads and `chunked` for bodies),
//! HTTP/2 clients through hyper (`h2`). `tcp` balances each connection. All share the accept
//! loop and the backend dialer below.

pub mod chunked;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod health;
pub mod http;
pub mod message;
pub mod pool;
pub mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::{ListenerConfig, PoolConfig};
use crate::ring::{Address, Algorithm, RandomSource, Ring, Slot, ThreadRandom, Worker};
use crate::shutdown::Shutdown;

/// A listener's way to pick a worker: its pool in the ring, the pool's settings, and its
/// own algorithm (whose cursor is per listener, so two listeners on one pool do not skew
/// each other).
pub struct Balancer {
    ring: Arc<Ring>,
    /// Index of the pool in every snapshot (see `Ring::pool_index`).
    pool: usize,
    algorithm: Box<dyn Algorithm>,
    pub settings: PoolConfig,
    /// Whether picks currently ignore health because no worker is healthy (logged on change).
    failing_open: AtomicBool,
    /// Requests and retries so far, for the retry budget.
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The outcome of a pick.
pub enum Pick {
    Worker(Arc<Worker>),
    /// No worker with weight > 0 (or none left that was not tried already).
    Empty,
    /// Every candidate is at its `max_connections`.
    Full,
}

/// Attempts per request at most, whatever `retries` says.
const MAX_ATTEMPTS: usize = 8;

/// One HTTP request's way through the pool: the workers tried so far, kept on the stack (no
/// allocation per request), so each retry goes to a worker not tried yet.
#[derive(Default)]
pub struct Attempts {
    tried: [i64; MAX_ATTEMPTS],
    count: usize,
}

/// Why a request found no worker to try.
pub enum NoWorker {
    /// No worker with weight > 0: 503.
    Empty,
    /// Every candidate is at its `max_connections`: 503.
    Full,
    /// Every usable worker was tried already: the last failure stands (502).
    Exhausted,
}

impl NoWorker {
    /// What a 503 says (with the pool's name).
    pub fn reason(&self) -> &'static str {
        match self {
            NoWorker::Empty => "no worker with weight > 0",
            NoWorker::Full => "every worker is at its max_connections",
            NoWorker::Exhausted => "every worker failed",
        }
    }
}

impl Attempts {
    /// Picks a worker not tried yet, and says whether another attempt may follow this one
    /// (the pool's `retries`). Only called again when it may.
    pub fn next(&mut self, balancer: &Balancer) -> Result<(Arc<Worker>, bool), NoWorker> {
        let tried = &self.tried[..self.count];
        let worker = match balancer.pick(tried) {
            Pick::Worker(w) => w,
            Pick::Empty if tried.is_empty() => return Err(NoWorker::Empty),
            Pick::Full => return Err(NoWorker::Full),
            Pick::Empty => return Err(NoWorker::Exhausted),
        };
        self.tried[self.count] = worker.id;
        self.count += 1;
        let may_retry = self.count <= (balancer.settings.retries as usize).min(MAX_ATTEMPTS - 1);
        Ok((worker, may_retry))
    }
}

/// Picks drawn from the algorithm before scanning the pool for any usable worker.
const PICK_ATTEMPTS: usize = 8;
/// Retries allowed regardless of the budget's percentage, so a quiet listener can retry.
const RETRY_ALLOWANCE: u64 = 10;

impl Balancer {
    pub fn new(
        ring: Arc<Ring>,
        pool: &str,
        algorithm: Box<dyn Algorithm>,
        settings: PoolConfig,
    ) -> Balancer {
        let pool = ring
            .pool_index(pool)
            .expect("listener pools are configured in the ring");
        Balancer {
            ring,
            pool,
            algorithm,
            settings,
            failing_open: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// One atomic load of the snapshot and a pick, skipping workers in `tried`, unhealthy,
    /// ejected, at their connection limit, or (by chance, in proportion to their ramp)
    /// warming up. When no worker is healthy, health is ignored (fail open). The worker is
    /// cloned out so the snapshot is not held while the work is in flight.
    pub fn pick(&self, tried: &[i64]) -> Pick {
        let snapshot = self.ring.load();
        let pool = snapshot.pool(self.pool);
        // The warmest of the workers slow start turned down, if no other was usable.
        let mut cold: Option<(f64, &Slot)> = None;
        // The first unhealthy or ejected worker drawn: failing open follows the algorithm's
        // order, so traffic still spreads over all of them.
        let mut down: Option<&Slot> = None;
        for _ in 0..pool.active.len().min(PICK_ATTEMPTS) {
            let Some(w) = self.algorithm.pick_other(pool, tried) else {
                break;
            };
            if tried.contains(&w.id) {
                break;
            }
            match self.judge(w) {
                Verdict::Usable => return self.found(w),
                Verdict::Cold(share) if cold.is_none_or(|(s, _)| share > s) => {
                    cold = Some((share, w))
                }
                Verdict::Down => down = down.or(Some(w)),
                Verdict::Cold(_) | Verdict::Full => {}
            }
        }
        if let Some((_, w)) = cold {
            return self.found(w);
        }
        // The draws found nothing: look at every candidate once.
        let mut any = false;
        let candidates = pool.active.iter().map(|&i| &pool.slots[i as usize]);
        for w in candidates.filter(|w| !tried.contains(&w.id)) {
            any = true;
            match self.judge(w) {
                Verdict::Usable | Verdict::Cold(_) => return self.found(w),
                Verdict::Down => down = down.or(Some(w)),
                Verdict::Full => {}
            }
        }
        match down {
            Some(first) => {
                // One more draw, ignoring health: the algorithm's cursor moves on with every
                // request, so failing open spreads over all the workers.
                let w = self
                    .algorithm
                    .pick_other(pool, tried)
                    .filter(|w| !tried.contains(&w.id) && !self.full(w))
                    .unwrap_or(first);
                if !self.failing_open.swap(true, Ordering::Relaxed) {
                    tracing::error!(pool = %pool.name,
                        "no worker is healthy: failing open, sending traffic to all of them");
                }
                Pick::Worker(w.worker.clone())
            }
            None if any => Pick::Full,
            None => Pick::Empty,
        }
    }

    fn found(&self, w: &Slot) -> Pick {
        if self.failing_open.load(Ordering::Relaxed)
            && self.failing_open.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(pool = %self.pool_name(), "healthy workers again: no longer failing open");
        }
        Pick::Worker(w.worker.clone())
    }

    /// Reads only the slot and the worker's state (not the worker itself: see `Slot`).
    #[inline(always)]
    fn judge(&self, w: &Slot) -> Verdict {
        let state = &w.state;
        if !state.health.is_healthy() || state.ejection.is_ejected() {
            return Verdict::Down;
        }
        if self.full(w) {
            return Verdict::Full;
        }
        let share = state.ramp.share(self.settings.slow_start);
        if share < 1.0 && ThreadRandom.below(1000) as f64 >= share * 1000.0 {
            return Verdict::Cold(share);
        }
        Verdict::Usable
    }

    /// At the pool's `max_connections`.
    #[inline]
    fn full(&self, w: &Slot) -> bool {
        self.settings
            .max_connections
            .is_some_and(|max| w.state.in_flight.load(Ordering::Relaxed) >= max)
    }

    /// Real traffic to `w` succeeded (`ok`) or failed (connect failure or 5xx): passive
    /// ejection after enough consecutive failures, unless that would eject more than the
    /// pool's `max_percent`.
    pub fn record(&self, w: &Worker, ok: bool) {
        if ok {
            w.state.ejection.success();
            return;
        }
        let cfg = &self.settings.ejection;
        if !w.state.ejection.failure(cfg.consecutive_failures) {
            return;
        }
        let snapshot = self.ring.load();
        let pool = snapshot.pool(self.pool);
        let ejected = pool
            .workers
            .iter()
            .filter(|w| w.state.ejection.is_ejected())
            .count();
        if (ejected + 1) * 100 > pool.workers.len() * cfg.max_percent as usize {
            if let Some(suppressed) = w.state.log_gate.allow() {
                tracing::warn!(backend = %w.address.text, worker = w.id, suppressed,
                    "failing, but ejecting it would exceed max_percent of the pool");
            }
            return;
        }
        let length = w.state.ejection.eject(cfg.base_time, cfg.max_time);
        tracing::warn!(backend = %w.address.text, worker = w.id, ejected_for_s = length.as_secs(),
            "ejected after consecutive failures");
    }

    /// Counts a request toward the retry budget.
    #[inline]
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget (and takes it if so).
    pub fn take_retry(&self) -> bool {
        let requests = self.requests.load(Ordering::Relaxed);
        let retries = self.retries.load(Ordering::Relaxed);
        let allowed =
            requests * u64::from(self.settings.retry_budget_percent) / 100 + RETRY_ALLOWANCE;
        if retries >= allowed {
            return false;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn pool_name(&self) -> Arc<str> {
        self.ring.load().pool(self.pool).name.clone()
    }
}

enum Verdict {
    Usable,
    /// Warming up (slow start, at this share of its full weight) and not chosen this time.
    Cold(f64),
    /// Unhealthy or ejected.
    Down,
    /// At its connection limit.
    Full,
}

/// Why a backend connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(Arc<str>),
    #[error("connect to {0}: {1}")]
    Io(Arc<str>, std::io::Error),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(Arc<str>, hyper::Error),
}

/// Opens a TCP connection to a backend, with `TCP_NODELAY` (small writes must leave at once).
pub async fn dial(address: &Address, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let dial = async {
        match address.ip {
            Some(ip) => TcpStream::connect(ip).await,
            // A name: resolved per new connection, so DNS changes are followed.
            None => TcpStream::connect(&*address.text).await,
        }
    };
    match tokio::time::timeout(timeout, dial).await {
        Err(_) => Err(ConnectError::Timeout(address.text.clone())),
        Ok(Err(e)) => Err(ConnectError::Io(address.text.clone(), e)),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// A listener's limits on its clients.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub max_connections: Option<usize>,
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
}

impl ClientLimits {
    pub fn of(listener: &ListenerConfig) -> ClientLimits {
        ClientLimits {
            max_connections: listener.max_connections,
            header_read_timeout: listener.header_read_timeout,
            max_header_size: listener.max_header_size,
        }
    }
}

/// Serves one client connection with `service`: HTTP/1.1, or HTTP/2 when the client opens
/// with the HTTP/2 preface (prior knowledge, h2c). When the drain starts it finishes the
/// requests in progress and closes instead of keeping alive; at the cut it just closes.
pub async fn serve_http<I, S, B>(
    stream: I,
    service: S,
    limits: &ClientLimits,
    shutdown: &Shutdown,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        > + Send,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // writev(false): hyper copies small bodies into its head buffer and sends both with one
    // write, cheaper than a vectored write of two slices for typical responses.
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_size as u32);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cut.cancelled() => Ok(()),
            }
        }
    }
}

/// Accepts connections until the drain starts, serving each on its own tracked task. With
/// `max_connections`, it stops accepting while that many are open: new clients wait in the
/// kernel's backlog rather than being refused.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: Shutdown,
    max_connections: Option<usize>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = max_connections.map(|n| Arc::new(Semaphore::new(n)));
    loop {
        let permit = match &slots {
            Some(s) => tokio::select! {
                _ = shutdown.drain.cancelled() => return,
                p = s.clone().acquire_owned() => Some(p.expect("never closed")),
            },
            None => None,
        };
        let accepted = tokio::select! {
            _ = shutdown.drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let served = serve(stream, peer);
                shutdown.tracker.spawn(async move {
                    served.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
