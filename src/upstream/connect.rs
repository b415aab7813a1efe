//! Dialing a worker: a connection for the HTTP transports (HTTP/1.1, or HTTP/2 to an h2
//! pool's workers, `h2/`) and the TCP proxy, made the way the worker's pool says ([`Connector`]). An HTTP
//! connection is cut once its worker has been drained for the pool's `drain_timeout`.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::proxy_header;
use super::stream::UpstreamStream;
use super::tls::{self, UpstreamTls};
use crate::config::{PoolConfig, SendProxy};
use crate::ring::{Address, Worker};

/// Why a backend connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(Arc<str>),
    #[error("connect to {0}: {1}")]
    Io(Arc<str>, std::io::Error),
    /// The worker's certificate was refused: not signed by the pool's CA, not for its name,
    /// expired. Said as such, so an operator does not look for a network fault.
    #[error("TLS to {0}: certificate verification failed: {1}")]
    TlsVerify(Arc<str>, rustls::CertificateError),
    /// Any other handshake failure: the worker refused us (e.g. our client certificate),
    /// does not speak TLS, or closed.
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(Arc<str>, std::io::Error),
    #[error("TLS to {0}: {1}")]
    TlsSetup(Arc<str>, Arc<str>),
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

/// How one pool's connections to its workers are made, from `[pools.NAME]`: built when a
/// listener's proxy is built (at startup and on each reload), used for every new
/// connection, so nothing about it is worked out per connection.
#[derive(Debug, Clone)]
pub struct Connector {
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    /// `[pools.NAME.tls]`: `None` for cleartext.
    pub tls: Option<Arc<UpstreamTls>>,
    /// The PROXY header each new connection starts with (`send_proxy`).
    pub send_proxy: SendProxy,
}

impl Connector {
    pub fn new(settings: &PoolConfig) -> Connector {
        Connector {
            connect_timeout: settings.connect_timeout,
            drain_timeout: settings.drain_timeout,
            tls: UpstreamTls::of(settings),
            send_proxy: settings.send_proxy,
        }
    }

    /// A new connection to `worker`, ready for its first byte. `client` is the address of
    /// the client it is for.
    pub async fn open(
        &self,
        worker: &Worker,
        client: SocketAddr,
    ) -> Result<UpstreamStream, ConnectError> {
        // One deadline for the dial and the TLS handshake: `connect_timeout` bounds the
        // whole connect, whatever it takes.
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut tcp = dial(&worker.address, self.connect_timeout).await?;
        // Right after the dial: the header precedes everything, the TLS handshake included.
        self.send_proxy_header(&mut tcp, worker, client).await?;
        match &self.tls {
            None => Ok(UpstreamStream::Plain(tcp)),
            Some(tls) => tls::connect_by(deadline, tls, tcp, &worker.address).await,
        }
    }

    /// Whether connections made here may go to the worker's shared idle store, for any
    /// client: not when each carries its client's address in a PROXY header.
    pub fn shares_connections(&self) -> bool {
        self.send_proxy == SendProxy::Off
    }

    /// Writes the PROXY header `send_proxy` asks for, if any, on a new connection.
    async fn send_proxy_header(
        &self,
        tcp: &mut TcpStream,
        worker: &Worker,
        client: SocketAddr,
    ) -> Result<(), ConnectError> {
        if self.send_proxy == SendProxy::Off {
            return Ok(());
        }
        let io = |e| ConnectError::Io(worker.address.text.clone(), e);
        let destination = tcp.peer_addr().map_err(io)?;
        if let Some(header) = proxy_header::header(self.send_proxy, client, destination) {
            // At most 108 bytes into a new socket's empty send buffer: it never waits.
            tcp.write_all(&header).await.map_err(io)?;
        }
        Ok(())
    }
}

/// A backend connection the HTTP transports drive themselves. Dropping it closes it.
pub struct Upstream {
    pub stream: UpstreamStream,
    /// It started with a PROXY header naming one client: it serves that client alone,
    /// and never goes to the worker's shared idle store.
    pub private: bool,
    /// Dropped with the connection: tells its drain watcher to stop.
    _closed: oneshot::Sender<()>,
}

/// Opens a new connection to `worker` for the HTTP transports, for `client`. It is shut
/// down (and whatever request it carries fails) once the worker has been drained for the
/// pool's `drain_timeout`.
pub async fn connect_upstream(
    worker: &Worker,
    connector: &Connector,
    client: SocketAddr,
) -> Result<Upstream, ConnectError> {
    // Boxed: dialling (TCP, PROXY header, TLS handshake) is over a kilobyte and a half of
    // state, which every request's future would otherwise carry and copy as it moves,
    // though nearly every request finds an idle connection.
    let stream = Box::pin(connector.open(worker, client)).await?;
    let drain_timeout = connector.drain_timeout;
    // A second handle on the socket, for the watcher to shut it down under whoever is
    // using it; costs one dup per connection, nothing per request.
    let handle = socket2::SockRef::from(stream.tcp())
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
        private: !connector.shares_connections(),
        _closed: closed,
    })
}
