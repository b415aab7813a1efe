//! Active health checks: one task per pool that has `[pools.NAME.health_check]`.
//!
//! Every interval it checks each worker of the pool's current snapshot (all at once, each
//! within the check timeout) and records the result in the worker's state, keyed by id:
//! the ring is never rebuilt, and a reweight keeps the verdict. Picks skip unhealthy
//! workers. A worker that recovers starts a slow start from zero. How a worker is checked
//! (a connection, a request) is the [`Probe`]'s business: `upstream::probe` in the proxy,
//! a scripted one in tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::HealthCheckConfig;
use crate::ring::{Ring, Worker};

/// Checks one worker once; true when it passes.
pub trait Probe: Send + Sync + 'static {
    fn probe(
        &self,
        worker: Arc<Worker>,
        check: Arc<HealthCheckConfig>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send>>;
}

/// Checks the workers of `pool` with `probe` until `stop`.
pub async fn run(
    ring: Arc<Ring>,
    pool: String,
    check: HealthCheckConfig,
    probe: Arc<dyn Probe>,
    stop: CancellationToken,
) {
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
            let probe = probe.probe(worker.clone(), check.clone());
            checks.spawn(async move {
                let passed = tokio::time::timeout(check.timeout, probe)
                    .await
                    .unwrap_or(false);
                (worker, passed)
            });
        }
        while let Some(Ok((worker, passed))) = checks.join_next().await {
            judge(&pool, &worker, passed, &check);
        }
    }
}

/// Records one check result: `fall` failures in a row make a worker unhealthy, `rise`
/// passes make it healthy again and start its slow start.
fn judge(pool: &str, worker: &Worker, passed: bool, check: &HealthCheckConfig) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthCheckKind;
    use crate::ring::{Membership, Row};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Answers what the test set for each worker id; counts probes.
    #[derive(Default)]
    struct Scripted {
        failing: Mutex<Vec<i64>>,
        hang: AtomicBool,
    }

    impl Probe for Scripted {
        fn probe(
            &self,
            worker: Arc<Worker>,
            _check: Arc<HealthCheckConfig>,
        ) -> Pin<Box<dyn Future<Output = bool> + Send>> {
            let pass = !self.failing.lock().unwrap().contains(&worker.id);
            let hang = self.hang.load(Ordering::Relaxed);
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                pass
            })
        }
    }

    fn check() -> HealthCheckConfig {
        HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }

    fn healthy(ring: &Ring, id: i64) -> bool {
        let s = ring.load();
        let w = s.pool(0).workers.iter().find(|w| w.id == id).unwrap();
        w.state.health.is_healthy()
    }

    #[tokio::test(start_paused = true)]
    async fn fall_failures_mark_unhealthy_and_rise_passes_recover() {
        let ring = Ring::new(&["p".into()]);
        let mut m = Membership::new(ring.clone());
        m.reset(
            (1..=2)
                .map(|id| Row {
                    id,
                    address: format!("127.0.0.1:{id}"),
                    weight: 1,
                    pool: "p".into(),
                    version: id,
                })
                .collect(),
        );
        let probe = Arc::new(Scripted::default());
        probe.failing.lock().unwrap().push(2);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            ring.clone(),
            "p".into(),
            check(),
            probe.clone(),
            stop.clone(),
        ));
        // Ticks at 0 s, 2 s, 4 s: the third failure (fall = 3) marks it.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(healthy(&ring, 2), "two failures are not enough");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!healthy(&ring, 2), "three failures in a row");
        assert!(healthy(&ring, 1));
        probe.failing.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!healthy(&ring, 2), "one pass is not enough");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(healthy(&ring, 2), "two passes in a row (rise = 2)");
        // A probe that never answers fails by the check's timeout (1 s after each tick).
        probe.hang.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(!healthy(&ring, 1) && !healthy(&ring, 2), "hung probes fail");
        stop.cancel();
        task.await.unwrap();
    }
}
