//! The data plane: client-facing listeners that pick a worker (`balance`) for each request
//! or connection and forward to it over `upstream`'s connections.
//!
//! `http` serves a client connection: HTTP/1 clients through the proxy's own forwarding path
//! (`http1`), HTTP/2 clients (prior knowledge, h2c) through hyper (`http2`). Both are
//! transports around one forwarding policy (`forward`): what is refused, how heads are
//! rewritten, what the proxy answers itself and when a request is retried. `tcp` balances
//! each connection.

pub mod forward;
pub mod http;
pub mod http1;
pub mod http2;
pub mod report;
pub mod stamped;
pub mod tcp;

use std::sync::Arc;
use std::time::Duration;

use crate::balance::Balancer;
use crate::config::ListenerConfig;
use crate::db::SyncStatus;
use report::Reports;

/// One `[[listeners]]` entry with `protocol = "http"`: what both HTTP transports need to
/// serve its clients (`http` accepts them and hands each to the transport it speaks).
pub struct HttpProxy {
    pub balancer: Balancer,
    pub limits: ClientLimits,
    /// The database subscriber's state, for what a 503 says before the ring is loaded.
    pub sync: Arc<SyncStatus>,
    /// Where each request's report goes.
    pub reports: Reports,
}

impl HttpProxy {
    pub fn new(
        balancer: Balancer,
        limits: ClientLimits,
        sync: Arc<SyncStatus>,
        reports: Reports,
    ) -> HttpProxy {
        HttpProxy {
            balancer,
            limits,
            sync,
            reports,
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
