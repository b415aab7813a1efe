//! The TCP listener: per-connection balancing.
//!
//! Each client connection picks a worker, dials it (a failed dial is retried on another
//! worker, up to the pool's `retries`) and copies bytes both ways until either side closes,
//! or no byte has moved either way for the listener's `idle_timeout`. The connection counts
//! as in flight on its worker for its whole life, so a drain (weight 0) lets open
//! connections run — until the pool's `drain_timeout` — while new ones go elsewhere.
//!
//! With `sni_routing`, the server name of the client's TLS ClientHello (read, not
//! answered: the worker does the handshake) picks the pool through the `routes` table, as
//! an HTTP listener's host does; the bytes read to find it go to the worker first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::edge::Edge;
use super::forward::affinity::client_hash;
use super::proxy_header::Screened;
use super::report::Report;
use super::sni::{self, Peeked};
use super::stamped::{Stamped, quiet_for};
use super::stream::ClientStream;
use super::target::{Target, Targets};
use crate::access_log::Ended;

use crate::balance::{Affinity, Outcome, Pick};
use crate::ring::InFlight;
use crate::ring::state::now_ms;
use crate::shutdown::Shutdown;
use crate::upstream::UpstreamStream;

/// One `[[listeners]]` entry with `protocol = "tcp"`.
pub struct TcpProxy {
    /// The pools its connections go to: its own, and those `sni_routing` routes to.
    pub targets: Targets,
    /// What a client connection goes through first (PROXY header, TLS).
    pub edge: Edge,
    /// A session with no byte either way for this long is closed: peers that both went
    /// silent (or vanished without a FIN) would otherwise hold it, and count as in use, for
    /// ever.
    idle_timeout: Duration,
    /// `sni_routing`: how long a client has to send its whole ClientHello (the listener's
    /// `header_read_timeout`). `None`: connections are not routed.
    sni_within: Option<Duration>,
}

impl TcpProxy {
    pub fn new(
        targets: Targets,
        edge: Edge,
        idle_timeout: Duration,
        sni_within: Option<Duration>,
    ) -> TcpProxy {
        TcpProxy {
            targets,
            edge,
            idle_timeout,
            sni_within,
        }
    }

    /// Serves one client connection (see `proxy::serve`).
    pub(super) async fn serve_connection(
        self: Arc<Self>,
        client: ClientStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) {
        let own = &self.targets.own;
        let _open = own.reports.metrics.connection();
        // On a listener that accepts PROXY headers, a client's own header is refused as
        // it passes (see `Screened`): waiting for it before the session starts would stall
        // protocols where the server speaks first.
        let screen = self.edge.accept_proxy.is_some();
        let mut client = Screened::new(client, screen);
        let mut hello = Vec::new();
        let target = match self.sni_within {
            Some(within) => match self.route(&mut client, &mut hello, within, peer).await {
                Some(target) => target,
                None => return,
            },
            None => own.clone(),
        };
        let reports = &target.reports;
        let mut report = reports.start(peer);
        let Some((mut backend, in_flight)) = connect(&target, &mut report, peer).await else {
            tracing::warn!(client = %peer, "no worker reachable; closing the client connection");
            report.ended(Ended::BackendFailed);
            reports.finish(&mut report);
            return;
        };
        let worker = in_flight.worker().clone();
        worker.state.tally.listener(reports.metrics.id).connection();
        if !hello.is_empty()
            && let Err(e) = backend.write_all(&hello).await
        {
            tracing::debug!(client = %peer, backend = %worker.address.text, error = %e,
                "the worker closed before taking the ClientHello");
            report.ended(Ended::BackendFailed);
            reports.finish(&mut report);
            return;
        }
        let last = AtomicU64::new(now_ms());
        let mut client = Stamped::new(client, &last);
        let mut backend = Stamped::new(backend, &last);
        let mut drain = worker.state.drain.watch();
        let drain_timeout = target.balancer.settings.drain_timeout;
        let ended = tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut backend) => match result {
                Ok((bytes_in, bytes_out)) => {
                    let bytes_in = bytes_in + hello.len() as u64;
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
            _ = drain.expired(drain_timeout) => {
                tracing::info!(backend = %worker.address.text, worker = worker.id,
                    "drain deadline passed: cutting a connection still open");
                Ended::Cut
            }
            _ = shutdown.cut.cancelled() => Ended::Cut,
        };
        report.ended(ended);
        reports.finish(&mut report);
    }

    /// `sni_routing`: the target of the server name in the client's ClientHello, read into
    /// `hello` within `within`; the listener's own pool when there is no name, no route for
    /// it, or the client does not speak TLS. `None`: the client sent no whole hello in
    /// time, or closed (reported here, and the connection closes).
    async fn route(
        &self,
        client: &mut Screened<ClientStream>,
        hello: &mut Vec<u8>,
        within: Duration,
        peer: SocketAddr,
    ) -> Option<Arc<Target>> {
        let mut target = self.targets.own.clone();
        let ended = match sni::peek_server_name(client, hello, within).await {
            Ok(Peeked::ServerName(name)) => {
                let snapshot = self.targets.ring().load();
                (self.targets).route_server_name(&snapshot, name.as_bytes(), &mut target);
                return Some(target);
            }
            Ok(Peeked::NoServerName | Peeked::NotTls) => return Some(target),
            Err(sni::SniError::Timeout) => Ended::Timeout,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "no ClientHello to route by");
                Ended::ClientClosed
            }
        };
        let mut report = target.reports.start(peer);
        report.ended(ended);
        target.reports.finish(&mut report);
        None
    }
}

/// A connection to a worker of `target`'s pool (the client's address hashed, for
/// `consistent_hash`), trying others if it will not connect.
async fn connect(
    target: &Target,
    report: &mut Report,
    client: SocketAddr,
) -> Option<(UpstreamStream, InFlight)> {
    let balancer = &target.balancer;
    let affinity = Affinity {
        hash: balancer.hashes().then(|| client_hash(client.ip())),
        sticky: None,
    };
    let mut tried = Vec::new();
    while tried.len() <= balancer.settings.retries as usize {
        let Pick::Worker(worker) = balancer.pick(&tried, affinity) else {
            return None;
        };
        tried.push(worker.id);
        report.tried(worker.clone());
        let in_flight = InFlight::new(worker.clone());
        let dialled = std::time::Instant::now();
        match target.connector.open(&worker, client).await {
            Ok(stream) => {
                report.detail(|d| d.connect = Some(dialled.elapsed()));
                balancer.record(&worker, Outcome::OK);
                return Some((stream, in_flight));
            }
            Err(e) => {
                balancer.record(&worker, Outcome::Connect);
                if let Some(suppressed) = worker.state.log_gate.allow() {
                    tracing::warn!(backend = %worker.address.text, worker = worker.id,
                        error = %e, suppressed, "connect failed");
                }
            }
        }
    }
    None
}
