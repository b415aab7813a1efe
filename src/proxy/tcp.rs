//! The TCP listener: per-connection balancing.
//!
//! Each client connection picks a worker, dials it (a failed dial is retried once on
//! another worker) and copies bytes both ways until either side closes. The connection
//! counts as in flight on its worker for its whole life, so a drain (weight 0) lets open
//! connections run while new ones go elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::{Balancer, CONNECT_TIMEOUT, accept_loop, dial};
use crate::ring::InFlight;
use crate::shutdown::Shutdown;

pub struct TcpProxy {
    balancer: Balancer,
}

impl TcpProxy {
    pub fn new(balancer: Balancer) -> TcpProxy {
        TcpProxy { balancer }
    }

    /// Serves clients from `listener` until the shutdown drains it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        let sd = shutdown.clone();
        accept_loop(listener, shutdown, move |stream, peer| {
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
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(e) = result {
                    tracing::debug!(client = %peer, backend = %in_flight.worker().address.text,
                        error = %e, "tcp session ended with an error");
                }
            }
            _ = shutdown.cut.cancelled() => {}
        }
    }

    /// A connection to a picked worker, trying a second worker if the first will not connect.
    async fn connect(&self) -> Option<(TcpStream, InFlight)> {
        let mut failed: Option<i64> = None;
        for _ in 0..2 {
            let worker = self.balancer.pick(failed)?;
            if failed == Some(worker.id) {
                return None;
            }
            let in_flight = InFlight::new(worker.clone());
            match dial(&worker.address, CONNECT_TIMEOUT).await {
                Ok(stream) => return Some((stream, in_flight)),
                Err(e) => {
                    tracing::warn!(backend = %worker.address.text, worker = worker.id, error = %e,
                        "connect failed");
                    failed = Some(worker.id);
                }
            }
        }
        None
    }
}
