//! The admin endpoint: `GET /status`, a JSON view of the ring every listener reads and of
//! the database subscriber that feeds it (shown under the key `"listener"`).
//!
//! It loads the same snapshot as the proxy and reads the per-worker counters beside it, so
//! what it shows is what the hot path sees.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::accept::accept_loop;
use crate::db::{SyncState, SyncStatus};
use crate::ring::{Ring, Snapshot};
use crate::shutdown::Shutdown;
use crate::upstream::IdleConns;

/// An admin client must send its request head within this time: the endpoint is for
/// scrapers and operators, never slow clients.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize)]
struct Status<'a> {
    generation: u64,
    listener: SyncState,
    pools: Vec<PoolStatus<'a>>,
}

#[derive(Serialize)]
struct PoolStatus<'a> {
    name: &'a str,
    /// Highest `workers.version` applied to this pool.
    version: i64,
    worker_count: usize,
    /// When the last change to this pool was applied (Unix milliseconds).
    last_event_unix_ms: u64,
    workers: Vec<WorkerStatus<'a>>,
}

#[derive(Serialize)]
struct WorkerStatus<'a> {
    id: i64,
    address: &'a str,
    weight: u32,
    in_flight: u64,
    idle_connections: usize,
    /// Active health checks' verdict (true without checks).
    healthy: bool,
    /// Passively ejected after consecutive failures.
    ejected: bool,
}

/// The `/status` document for `snapshot` and the listener's state.
pub fn status_json(snapshot: &Snapshot, listener: SyncState) -> String {
    let status = Status {
        generation: snapshot.generation,
        listener,
        pools: snapshot
            .pools
            .iter()
            .map(|p| PoolStatus {
                name: &p.name,
                version: p.version,
                worker_count: p.workers.len(),
                last_event_unix_ms: p
                    .changed_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                workers: p
                    .workers
                    .iter()
                    .map(|w| WorkerStatus {
                        id: w.id,
                        address: &w.address.text,
                        weight: w.weight,
                        in_flight: w.state.in_flight.load(Ordering::Relaxed),
                        idle_connections: IdleConns::count(w),
                        healthy: w.state.health.is_healthy(),
                        ejected: w.state.ejection.is_ejected(),
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&status).expect("plain data serializes")
}

/// Serves the admin endpoint from `listener` until the shutdown drains it.
pub async fn serve(
    listener: TcpListener,
    ring: Arc<Ring>,
    sync: Arc<SyncStatus>,
    shutdown: Shutdown,
) {
    let sd = shutdown.clone();
    accept_loop(listener, shutdown, None, move |stream, _peer| {
        let (ring, sync) = (ring.clone(), sync.clone());
        let shutdown = sd.clone();
        async move {
            let service = service_fn(move |request| {
                let (ring, sync) = (ring.clone(), sync.clone());
                async move { Ok::<_, Infallible>(respond(&ring, &sync, &request)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shutdown.cut.cancelled() => {}
                    }
                }
            }
        }
    })
    .await
}

fn respond(ring: &Ring, sync: &SyncStatus, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/status") => (
            StatusCode::OK,
            "application/json",
            status_json(&ring.load_full(), sync.get()) + "\n",
        ),
        (_, "/status") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; try GET /status\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
