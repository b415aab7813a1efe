//! The TCP listener: per-connection balancing.
//!
//! Each client connection picks a worker, dials it (a failed dial is retried on another
//! worker, up to the pool's `retries`) and copies bytes both ways until either side closes.
//! The connection counts as in flight on its worker for its whole life, so a drain (weight
//! 0) lets open connections run — until the pool's `drain_timeout` — while new ones go
//! elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::{Balancer, Pick, accept_loop, dial};
use crate::ring::InFlight;
use crate::shutdown::Shutdown;

pub struct TcpProxy {
    balancer: Balancer,
    max_connections: Option<usize>,
}

impl TcpProxy {
    pub fn new(balancer: Balancer, max_connections: Option<usize>) -> TcpProxy {
        TcpProxy {
            balancer,
            max_connections,
        }
    }

    /// Serves clients from `listener` until the shutdown drains it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        let sd = shutdown.clone();
        let max = self.max_connections;
        accept_loop(listener, shutdown, max, move |stream, peer| {
            self.clone().serve_connection(stream, peer, sd.clone())
        })
        .await
    }

    async fn serve_connection(
        self: Arc<Self>,
        mut client: TcpStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) {
        let Some((mut backend, in_flight)) = self.connect().await else {
            tracing::warn!(client = %peer, "no worker reachable; closing the client connection");
            return;
        };
        let worker = in_flight.worker().clone();
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(e) = result {
                    tracing::debug!(client = %peer, backend = %worker.address.text,
                        error = %e, "tcp session ended with an error");
                }
            }
            _ = worker.state.drain.expired(self.balancer.settings.drain_timeout) => {
                tracing::info!(backend = %worker.address.text, worker = worker.id,
                    "drain deadline passed: cutting a connection still open");
            }
            _ = shutdown.cut.cancelled() => {}
        }
    }

    /// A connection to a picked worker, trying others if it will not connect.
    async fn connect(&self) -> Option<(TcpStream, InFlight)> {
        let settings = &self.balancer.settings;
        let mut tried = Vec::new();
        while tried.len() <= settings.retries as usize {
            let Pick::Worker(worker) = self.balancer.pick(&tried) else {
                return None;
            };
            tried.push(worker.id);
            let in_flight = InFlight::new(worker.clone());
            match dial(&worker.address, settings.connect_timeout).await {
                Ok(stream) => {
                    self.balancer.record(&worker, true);
                    return Some((stream, in_flight));
                }
                Err(e) => {
                    self.balancer.record(&worker, false);
                    if let Some(suppressed) = worker.state.log_gate.allow() {
                        tracing::warn!(backend = %worker.address.text, worker = worker.id,
                            error = %e, suppressed, "connect failed");
                    }
                }
            }
        }
        None
    }
}
