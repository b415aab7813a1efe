//! The admin endpoint: `GET /status`, a JSON view of the ring every listener reads and of
//! the database subscriber that feeds it (shown under the key `"listener"`); `GET /metrics`
//! for Prometheus (`metrics.rs`); `GET /livez` and `GET /readyz` for orchestrators.
//!
//! It loads the same snapshot as the proxy and reads the per-worker counters beside it, so
//! what it shows is what the hot path sees: the pools and their workers, and per served
//! listener the routes that apply to it. With a token configured (required when the
//! endpoint is reachable from other hosts), every request must carry it.

use std::convert::Infallible;
use std::net::SocketAddr;
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

pub mod metrics;

use crate::accept::accept_loop;
use crate::db::{SyncState, SyncStatus};
use crate::metrics::Metrics;
use crate::ring::{Ring, RouteRow, Snapshot};
use crate::shutdown::Shutdown;
use crate::upstream::IdleConns;

/// An admin client must send its request head within this time: the endpoint is for
/// scrapers and operators, never slow clients.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize)]
struct Status<'a> {
    generation: u64,
    /// The database subscriber (the key predates the name; dashboards read it).
    listener: SyncState,
    pools: Vec<PoolStatus<'a>>,
    /// The served `[[listeners]]`, in config order, each with its routes.
    listeners: Vec<ListenerStatus<'a>>,
}

#[derive(Serialize)]
struct ListenerStatus<'a> {
    address: SocketAddr,
    name: Option<&'a str>,
    /// The routes that apply on this listener, in precedence order (the first that
    /// matches a request wins).
    routes: Vec<RouteStatus<'a>>,
}

#[derive(Serialize)]
struct RouteStatus<'a> {
    id: i64,
    host: Option<&'a str>,
    path_prefix: &'a str,
    pool: &'a str,
    priority: i32,
    listener: Option<&'a str>,
}

impl<'a> From<&'a RouteRow> for RouteStatus<'a> {
    fn from(r: &'a RouteRow) -> Self {
        RouteStatus {
            id: r.id,
            host: r.host.as_deref(),
            path_prefix: &r.path_prefix,
            pool: &r.pool,
            priority: r.priority,
            listener: r.listener.as_deref(),
        }
    }
}

/// A served listener as `/status` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedListener {
    /// Where it is bound.
    pub address: SocketAddr,
    /// Its `[[listeners]] name`: which routes apply to it.
    pub name: Option<String>,
}

/// The served listeners: set at startup, replaced by each reload that changes them. The
/// admin endpoint cannot see the listeners themselves (they belong to `Running`).
pub type ServedListeners = Arc<arc_swap::ArcSwap<Vec<ServedListener>>>;

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

/// The `/status` document for `snapshot`, the subscriber's state and the served listeners.
pub fn status_json(snapshot: &Snapshot, listener: SyncState, served: &[ServedListener]) -> String {
    let status = Status {
        generation: snapshot.generation,
        listener,
        listeners: served
            .iter()
            .map(|l| ListenerStatus {
                address: l.address,
                name: l.name.as_deref(),
                routes: snapshot
                    .routes
                    .in_precedence(l.name.as_deref())
                    .into_iter()
                    .map(RouteStatus::from)
                    .collect(),
            })
            .collect(),
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

/// What the admin endpoint answers from.
pub struct Admin {
    pub ring: Arc<Ring>,
    pub sync: Arc<SyncStatus>,
    /// For the routes per listener in `/status`.
    pub listeners: ServedListeners,
    pub metrics: Arc<Metrics>,
    /// Readiness ends when the drain starts.
    pub shutdown: Shutdown,
    /// `Authorization: Bearer <token>` required on every request when set.
    pub token: Option<String>,
}

/// Serves the admin endpoint from `listener` until the shutdown drains it.
pub async fn serve(listener: TcpListener, admin: Admin) {
    let admin = Arc::new(admin);
    let shutdown = admin.shutdown.clone();
    let sd = shutdown.clone();
    accept_loop(listener, shutdown, None, move |stream, _peer| {
        let admin = admin.clone();
        let shutdown = sd.clone();
        async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.respond(&request)) }
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

impl Admin {
    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.authorized(request) {
            let mut response = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"load_balancer admin\""),
            );
            return response;
        }
        let path = request.uri().path();
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return match path {
                "/status" | "/metrics" | "/livez" | "/readyz" => {
                    text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
                }
                _ => not_found(),
            };
        }
        match path {
            "/status" => {
                let snapshot = self.ring.load_full();
                // 503 until a ring is loaded: a scraper must not take "no pools" for news.
                let status = if snapshot.generation == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                let body = status_json(&snapshot, self.sync.get(), &self.listeners.load()) + "\n";
                respond_with(status, "application/json", body)
            }
            "/metrics" => {
                let sources = metrics::Sources {
                    ring: self.ring.clone(),
                    metrics: self.metrics.clone(),
                    sync: self.sync.clone(),
                };
                respond_with(
                    StatusCode::OK,
                    metrics::CONTENT_TYPE,
                    metrics::render(&sources),
                )
            }
            "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.not_ready() {
                None => text(StatusCode::OK, "ready\n"),
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            },
            _ => not_found(),
        }
    }

    /// Why new traffic should not come here, if it should not: no ring loaded yet (every
    /// request would get 503), or the listeners are draining for shutdown.
    fn not_ready(&self) -> Option<&'static str> {
        if self.shutdown.is_draining() {
            Some("not ready: shutting down\n")
        } else if self.ring.load().generation == 0 {
            Some("not ready: no ring loaded yet (the database has not answered)\n")
        } else {
            None
        }
    }

    /// Whether the request carries the token, when one is required. Compared in constant
    /// time, so the comparison does not tell how much of a guess was right.
    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let offered = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        constant_time_eq(offered, token.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond_with(status, "text/plain; charset=utf-8", body.to_string())
}

fn not_found() -> Response<Full<Bytes>> {
    text(
        StatusCode::NOT_FOUND,
        "not found; try GET /status, /metrics, /livez or /readyz\n",
    )
}

fn respond_with(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ring::{Membership, Row};

    fn admin(ring: Arc<Ring>, shutdown: Shutdown) -> Admin {
        Admin {
            ring,
            sync: Arc::new(SyncStatus::default()),
            listeners: ServedListeners::default(),
            metrics: Metrics::new(),
            shutdown,
            token: None,
        }
    }

    #[tokio::test]
    async fn ready_once_a_ring_is_loaded_and_until_the_drain_starts() {
        let ring = Ring::new(&["default".into()]);
        let shutdown = Shutdown::new();
        let a = admin(ring.clone(), shutdown.clone());
        assert!(a.not_ready().unwrap().contains("no ring loaded"));
        Membership::new(ring).reset(vec![Row {
            id: 1,
            address: "127.0.0.1:1".into(),
            weight: 1,
            pool: "default".into(),
            version: 1,
        }]);
        assert_eq!(a.not_ready(), None);
        // Nothing in flight: the drain completes at once, and readiness ends with it.
        shutdown.run(Duration::from_secs(1)).await;
        assert!(a.not_ready().unwrap().contains("shutting down"));
    }

    #[test]
    fn status_lists_each_listeners_routes_in_precedence_order() {
        use crate::ring::{RouteRow, Tables};
        let route = |id, host: Option<&str>, path: &str, listener: Option<&str>| RouteRow {
            id,
            version: id,
            host: host.map(str::to_string),
            path_prefix: path.into(),
            pool: "api".into(),
            priority: 0,
            listener: listener.map(str::to_string),
        };
        let ring = Ring::new(&["default".into()]);
        Membership::new(ring.clone()).reset_tables(Tables {
            workers: vec![],
            routes: vec![
                route(1, None, "/", None),
                route(2, Some("a.example.com"), "/", Some("web")),
                route(3, None, "/api", None),
            ],
        });
        let served = [
            ServedListener {
                address: "127.0.0.1:8080".parse().unwrap(),
                name: Some("web".into()),
            },
            ServedListener {
                address: "127.0.0.1:8081".parse().unwrap(),
                name: None,
            },
        ];
        let json: serde_json::Value =
            serde_json::from_str(&status_json(&ring.load(), SyncState::default(), &served))
                .unwrap();
        let ids = |i: usize| -> Vec<i64> {
            json["listeners"][i]["routes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap())
                .collect()
        };
        assert_eq!(json["listeners"][0]["name"], "web");
        assert_eq!(json["listeners"][0]["address"], "127.0.0.1:8080");
        assert_eq!(ids(0), [2, 3, 1]);
        assert_eq!(json["listeners"][1]["name"], serde_json::Value::Null);
        assert_eq!(ids(1), [3, 1]);
        assert_eq!(
            json["listeners"][0]["routes"][0],
            serde_json::json!({"id": 2, "host": "a.example.com", "path_prefix": "/",
                "pool": "api", "priority": 0, "listener": "web"})
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3creT", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }
}
