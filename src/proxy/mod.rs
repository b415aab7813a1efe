//! The data plane: client-facing listeners that pick a backend from the ring and forward.
//!
//! `http` balances each request over keep-alive connections (`pool`); `tcp` balances each
//! connection. Both share the accept loop and the backend dialer below.

pub mod headers;
pub mod http;
pub mod pool;
pub mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::ring::{Address, Algorithm, Ring, Worker};
use crate::shutdown::Shutdown;

/// A client must send its request headers within this time (slowloris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a backend may take to accept a TCP connection before we try another.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A listener's way to pick a worker: its pool in the ring and its own algorithm (whose
/// cursor is per listener, so two listeners on one pool do not skew each other).
pub struct Balancer {
    ring: Arc<Ring>,
    /// Index of the pool in every snapshot (see `Ring::pool_index`).
    pool: usize,
    algorithm: Box<dyn Algorithm>,
}

impl Balancer {
    pub fn new(ring: Arc<Ring>, pool: &str, algorithm: Box<dyn Algorithm>) -> Balancer {
        let pool = ring
            .pool_index(pool)
            .expect("listener pools are configured in the ring");
        Balancer {
            ring,
            pool,
            algorithm,
        }
    }

    /// One atomic load of the snapshot and a pick (not worker `not`, when retrying). The
    /// worker is cloned out so the snapshot is not held while the work is in flight.
    #[inline]
    pub fn pick(&self, not: Option<i64>) -> Option<Arc<Worker>> {
        let snapshot = self.ring.load();
        let pool = snapshot.pool(self.pool);
        match not {
            None => self.algorithm.pick(pool).cloned(),
            Some(id) => self.algorithm.pick_other(pool, id).cloned(),
        }
    }

    pub fn pool_name(&self) -> Arc<str> {
        self.ring.load().pool(self.pool).name.clone()
    }
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

/// Serves one HTTP/1.1 client connection with `service`. When the drain starts it finishes
/// the request in progress and closes instead of keeping alive; at the cut it just closes.
pub async fn serve_http1<S, B>(
    stream: TcpStream,
    service: S,
    shutdown: &Shutdown,
) -> Result<(), hyper::Error>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
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

/// Accepts connections until the drain starts, serving each on its own tracked task.
pub async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: Shutdown, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                shutdown.tracker.spawn(serve(stream, peer));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
