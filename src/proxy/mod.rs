//! The data plane: client-facing listeners that pick a worker (`balance`) for each request
//! or connection and forward to it over `upstream`'s connections.
//!
//! `http` serves a client connection: HTTP/1 clients through the proxy's own forwarding path
//! (`http1`), HTTP/2 clients (prior knowledge, h2c) on the proxy's own codec (`http2`,
//! over `codec::server`). Both are
//! transports around one forwarding policy (`forward`): what is refused, how heads are
//! rewritten, what the proxy answers itself and when a request is retried. Either transport
//! sends a request for a `protocol = "h2"` pool through `to_h2`. `tcp` balances each
//! connection. [`serve`] accepts a listener's clients and hands each to the listener's
//! current [`Proxy`], which a reload replaces.

pub mod edge;
pub mod forward;
pub mod http;
pub mod http1;
pub mod http2;
pub mod proxy_header;
pub mod report;
pub mod sni;
pub mod stamped;
pub mod stream;
pub mod target;
pub mod tcp;
pub mod to_h2;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::accept::accept_loop;
use crate::config::{HashKey, ListenerConfig};
use crate::db::SyncStatus;
use crate::shutdown::Shutdown;
use edge::Edge;
use report::Reports;
use target::Targets;
use tcp::TcpProxy;

/// What serves one `[[listeners]]` entry's clients, by its protocol.
#[derive(Clone)]
pub enum Proxy {
    Http(Arc<HttpProxy>),
    Tcp(Arc<TcpProxy>),
}

impl Proxy {
    /// The counters of the listener it serves (for its own pool).
    pub fn reports(&self) -> &Reports {
        match self {
            Proxy::Http(p) => &p.targets.own.reports,
            Proxy::Tcp(p) => &p.targets.own.reports,
        }
    }

    /// What a new connection goes through before the transport sees it.
    pub fn edge(&self) -> &Edge {
        match self {
            Proxy::Http(p) => &p.edge,
            Proxy::Tcp(p) => &p.edge,
        }
    }
}

/// Serves clients from `listener` until `shutdown` drains it, each connection with the
/// proxy `current` holds when it is accepted: a reload swaps in a new proxy (new pool
/// settings, algorithm, limits, protocol), and a connection keeps the one it started with
/// until it closes, so a reload never cuts a request. The swap costs one lock-free load
/// per connection, nothing per request. `max_connections` is the listener's as it was
/// bound: the accept loop's own limit.
pub async fn serve(
    current: Arc<ArcSwap<Proxy>>,
    listener: TcpListener,
    shutdown: Shutdown,
    max_connections: Option<usize>,
) {
    let sd = shutdown.clone();
    accept_loop(listener, shutdown, max_connections, move |stream, peer| {
        let proxy = Proxy::clone(&current.load());
        let shutdown = sd.clone();
        async move {
            let Some((stream, peer)) = proxy.edge().open(stream, peer).await else {
                return;
            };
            match proxy {
                Proxy::Http(p) => p.serve_connection(stream, peer, shutdown).await,
                // Boxed: an HTTP connection's task must not grow to a TCP session's size.
                Proxy::Tcp(p) => Box::pin(p.serve_connection(stream, peer, shutdown)).await,
            }
        }
    })
    .await
}

/// One `[[listeners]]` entry with `protocol = "http"`: what both HTTP transports need to
/// serve its clients (`http` accepts them and hands each to the transport it speaks).
pub struct HttpProxy {
    /// The pools its requests go to: its own, and those routes name.
    pub targets: Targets,
    /// What `consistent_hash` hashes of a request.
    pub hash_key: HashKey,
    /// What a client connection goes through first (PROXY header, TLS).
    pub edge: Edge,
    pub limits: ClientLimits,
    /// The database subscriber's state, for what a 503 says before the ring is loaded.
    pub sync: Arc<SyncStatus>,
}

/// A listener's limits on each client connection (how many connections at once is the
/// accept loop's, see [`serve`]).
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
}

impl ClientLimits {
    pub fn of(listener: &ListenerConfig) -> ClientLimits {
        ClientLimits {
            header_read_timeout: listener.header_read_timeout,
            max_header_size: listener.max_header_size,
        }
    }
}
