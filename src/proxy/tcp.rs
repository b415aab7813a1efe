//! The TCP listener: per-connection balancing.
//!
//! Each client connection picks a worker, dials it (a failed dial is retried on another
//! worker, up to the pool's `retries`) and copies bytes both ways until either side closes,
//! or no byte has moved either way for the listener's `idle_timeout`. The connection counts
//! as in flight on its worker for its whole life, so a drain (weight 0) lets open
//! connections run — until the pool's `drain_timeout` — while new ones go elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::edge::Edge;
use super::proxy_header::Screened;
use super::report::{Report, Reports};
use super::stamped::{Stamped, quiet_for};
use super::stream::ClientStream;
use crate::access_log::Ended;

use crate::balance::{Balancer, Outcome, Pick};
use crate::ring::InFlight;
use crate::ring::state::now_ms;
use crate::shutdown::Shutdown;
use crate::upstream::{Connector, UpstreamStream};

/// One `[[listeners]]` entry with `protocol = "tcp"`.
pub struct TcpProxy {
    balancer: Balancer,
    /// How connections to the pool's workers are made.
    connector: Connector,
    /// What a client connection goes through first (PROXY header, TLS).
    pub edge: Edge,
    pub reports: Reports,
    /// A session with no byte either way for this long is closed: peers that both went
    /// silent (or vanished without a FIN) would otherwise hold it, and count as in use, for
    /// ever.
    idle_timeout: Duration,
}

impl TcpProxy {
    pub fn new(
        balancer: Balancer,
        connector: Connector,
        edge: Edge,
        idle_timeout: Duration,
        reports: Reports,
    ) -> TcpProxy {
        TcpProxy {
            balancer,
            connector,
            edge,
            reports,
            idle_timeout,
        }
    }

    /// Serves one client connection (see `proxy::serve`).
    pub(super) async fn serve_connection(
        self: Arc<Self>,
        client: ClientStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) {
        let metrics = &self.reports.metrics;
        let _open = metrics.connection();
        let mut report = self.reports.start(peer);
        let Some((backend, in_flight)) = self.connect(&mut report, peer).await else {
            tracing::warn!(client = %peer, "no worker reachable; closing the client connection");
            report.ended(Ended::BackendFailed);
            self.reports.finish(&mut report);
            return;
        };
        let worker = in_flight.worker().clone();
        worker.state.tally.listener(metrics.id).connection();
        let last = AtomicU64::new(now_ms());
        // On a listener that accepts PROXY headers, a client's own header is refused as
        // it passes (see `Screened`): waiting for it before the session starts would stall
        // protocols where the server speaks first.
        let screen = self.edge.accept_proxy.is_some();
        let mut client = Stamped::new(Screened::new(client, screen), &last);
        let mut backend = Stamped::new(backend, &last);
        let mut drain = worker.state.drain.watch();
        let ended = tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut backend) => match result {
                Ok((bytes_in, bytes_out)) => {
                    report.detail(|d| (d.bytes_in, d.bytes_out) = (bytes_in, bytes_out));
                    Ended::Complete
                }
                Err(e) => {
                    tracing::debug!(client = %peer, backend = %worker.address.text,
                        error = %e, "tcp session ended with an error");
                    Ended::ClientClosed
                }
            },
            _ = quiet_for(&last, self.idle_timeout, || false) => {
                tracing::debug!(client = %peer, backend = %worker.address.text,
                    idle_timeout_ms = self.idle_timeout.as_millis() as u64,
                    "tcp session idle: closing both sides");
                Ended::Timeout
            }
            _ = drain.expired(self.balancer.settings.drain_timeout) => {
                tracing::info!(backend = %worker.address.text, worker = worker.id,
                    "drain deadline passed: cutting a connection still open");
                Ended::Cut
            }
            _ = shutdown.cut.cancelled() => Ended::Cut,
        };
        report.ended(ended);
        self.reports.finish(&mut report);
    }

    /// A connection to a picked worker, trying others if it will not connect.
    async fn connect(
        &self,
        report: &mut Report,
        client: SocketAddr,
    ) -> Option<(UpstreamStream, InFlight)> {
        let settings = &self.balancer.settings;
        let mut tried = Vec::new();
        while tried.len() <= settings.retries as usize {
            let Pick::Worker(worker) = self.balancer.pick(&tried) else {
                return None;
            };
            tried.push(worker.id);
            report.tried(worker.clone());
            let in_flight = InFlight::new(worker.clone());
            let dialled = std::time::Instant::now();
            match self.connector.open(&worker, client).await {
                Ok(stream) => {
                    report.detail(|d| d.connect = Some(dialled.elapsed()));
                    self.balancer.record(&worker, Outcome::OK);
                    return Some((stream, in_flight));
                }
                Err(e) => {
                    self.balancer.record(&worker, Outcome::Connect);
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
