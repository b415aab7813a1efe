//! Dialing a worker: a TCP connection for the HTTP transports (both speak HTTP/1.1 to
//! workers) and the TCP proxy. An HTTP connection is cut once its worker has been drained
//! for the pool's `drain_timeout`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::ring::{Address, Worker};

/// Why a backend connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(Arc<str>),
    #[error("connect to {0}: {1}")]
    Io(Arc<str>, std::io::Error),
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

/// A backend connection the HTTP/1 path drives itself. Dropping it closes it.
pub struct Upstream {
    pub stream: TcpStream,
    /// Dropped with the connection: tells its drain watcher to stop.
    _closed: oneshot::Sender<()>,
}

/// Dials a new connection to `worker` for the HTTP/1 path. It is shut down (and whatever
/// request it carries fails) once the worker has been drained for `drain_timeout`.
pub async fn connect_upstream(
    worker: &Worker,
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
    // The watch, not the worker: an idle connection sits in the worker's own state, and
    // holding the worker here would keep a removed worker (and so the connection) alive.
    let mut drain = worker.state.drain.watch();
    let (address, id) = (worker.address.text.clone(), worker.id);
    tokio::spawn(async move {
        tokio::select! {
            _ = &mut dropped => {}
            _ = drain.expired(drain_timeout) => {
                tracing::info!(backend = %address, worker = id,
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
