//! Active health checks: one task per pool that has `[pools.NAME.health_check]`.
//!
//! Every interval it checks each worker of the pool's current snapshot (all at once, each
//! within the check timeout) and records the result in the worker's state, keyed by id:
//! the ring is never rebuilt, and a reweight keeps the verdict. The proxy skips unhealthy
//! workers at pick time. A worker that recovers starts a slow start from zero.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::dial;
use crate::config::{HealthCheckConfig, HealthCheckKind};
use crate::ring::{Ring, Worker};

/// Checks the workers of `pool` until `stop`.
pub async fn run(ring: Arc<Ring>, pool: String, check: HealthCheckConfig, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let check = Arc::new(check);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let snapshot = ring.load_full();
        let Some(p) = snapshot.pool_named(&pool) else {
            continue;
        };
        let mut checks = JoinSet::new();
        for worker in &p.workers {
            let (worker, check) = (worker.clone(), check.clone());
            checks.spawn(async move {
                let passed = tokio::time::timeout(check.timeout, probe(&worker, &check))
                    .await
                    .unwrap_or(false);
                (worker, passed)
            });
        }
        while let Some(Ok((worker, passed))) = checks.join_next().await {
            match worker.state.health.record(passed, check.rise, check.fall) {
                Some(true) => {
                    worker.state.ramp.begin(0.0);
                    tracing::warn!(pool, backend = %worker.address.text, worker = worker.id,
                        "health check passing: worker is healthy again");
                }
                Some(false) => tracing::warn!(pool, backend = %worker.address.text,
                    worker = worker.id, "health check failing: worker marked unhealthy"),
                None => {}
            }
        }
    }
}

/// One check of one worker: a TCP connect, or an HTTP request answered with the expected
/// status.
async fn probe(worker: &Worker, check: &HealthCheckConfig) -> bool {
    let Ok(stream) = dial(&worker.address, check.timeout).await else {
        return false;
    };
    let HealthCheckKind::Http {
        method,
        path,
        expect_status,
    } = &check.kind
    else {
        return true;
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    let driver = tokio::spawn(conn);
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method.clone();
    *request.uri_mut() = path.parse().expect("validated by config");
    if let Ok(host) = HeaderValue::from_str(&worker.address.text) {
        request.headers_mut().insert(header::HOST, host);
    }
    request.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("load_balancer-health-check"),
    );
    let passed = match sender.send_request(request).await {
        Ok(response) => response.status().as_u16() == *expect_status,
        Err(_) => false,
    };
    driver.abort();
    passed
}
