//! Balancing policy: which worker gets the next request (HTTP) or connection (TCP).
//!
//! Pure policy over the ring's snapshot: the selection algorithms (`algorithm`), whether a
//! worker takes traffic right now (`availability`: health, ejection, slow start, limits,
//! failing open), the walk of one request over workers with its retry budget (`attempts`)
//! and the active health checks' schedule (`health`). Nothing here opens a socket or reads
//! the database, so all of it is unit-tested with injected randomness and paused time; the
//! connections themselves are `upstream`'s, the protocols `proxy`'s.

pub mod algorithm;
pub mod attempts;
pub mod availability;
pub mod health;
pub mod sticky;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use algorithm::{Algorithm, RandomSource, ThreadRandom, build};
pub use attempts::{Attempts, NoWorker, RetryBudget};
pub use availability::Outcome;

use crate::config::PoolConfig;
use crate::ring::{Ring, Slot, Worker};
use availability::Verdict;

/// A listener's way to pick a worker: its pool in the ring, the pool's settings, and its
/// own algorithm (whose cursor is per listener, so two listeners on one pool do not skew
/// each other).
pub struct Balancer {
    ring: Arc<Ring>,
    /// Index of the pool in every snapshot (see `Ring::pool_index`).
    pool: usize,
    algorithm: Box<dyn Algorithm>,
    pub settings: PoolConfig,
    /// Whether picks currently ignore health because no worker is healthy (logged on change).
    failing_open: AtomicBool,
    /// Retries may add at most the pool's `retry_budget_percent` to the requests.
    pub budget: RetryBudget,
    /// Slow start's draws: which warming worker takes a request.
    random: Box<dyn RandomSource>,
}

/// The outcome of a pick.
pub enum Pick {
    Worker(Arc<Worker>),
    /// No worker with weight > 0 (or none left that was not tried already).
    Empty,
    /// Every candidate is at its `max_connections`.
    Full,
}

/// Picks drawn from the algorithm before scanning the pool for any usable worker.
const PICK_ATTEMPTS: usize = 8;

impl Balancer {
    pub fn new(
        ring: Arc<Ring>,
        pool: &str,
        algorithm: Box<dyn Algorithm>,
        settings: PoolConfig,
    ) -> Balancer {
        Balancer::with_random(ring, pool, algorithm, settings, Box::new(ThreadRandom))
    }

    /// The same, drawing slow start's chances from `random` (tests use a fixed sequence).
    pub fn with_random(
        ring: Arc<Ring>,
        pool: &str,
        algorithm: Box<dyn Algorithm>,
        settings: PoolConfig,
        random: Box<dyn RandomSource>,
    ) -> Balancer {
        let pool = ring
            .pool_index(pool)
            .expect("listener pools are configured in the ring");
        Balancer {
            budget: RetryBudget::new(settings.retry_budget_percent),
            ring,
            pool,
            algorithm,
            settings,
            failing_open: AtomicBool::new(false),
            random,
        }
    }

    /// One atomic load of the snapshot and a pick, skipping workers in `tried`, unhealthy,
    /// ejected, at their connection limit, or (by chance, in proportion to their ramp)
    /// warming up. When no worker is healthy, health is ignored (fail open). The worker is
    /// cloned out so the snapshot is not held while the work is in flight.
    pub fn pick(&self, tried: &[i64]) -> Pick {
        let snapshot = self.ring.load();
        let pool = snapshot.pool(self.pool);
        // The warmest of the workers slow start turned down, if no other was usable.
        let mut cold: Option<(f64, &Slot)> = None;
        // The first unhealthy or ejected worker drawn: failing open follows the algorithm's
        // order, so traffic still spreads over all of them.
        let mut down: Option<&Slot> = None;
        for _ in 0..pool.active.len().min(PICK_ATTEMPTS) {
            let Some(w) = self.algorithm.pick_other(pool, tried) else {
                break;
            };
            if tried.contains(&w.id) {
                break;
            }
            match self.judge(w) {
                Verdict::Usable => return self.found(w),
                Verdict::Cold(share) if cold.is_none_or(|(s, _)| share > s) => {
                    cold = Some((share, w))
                }
                Verdict::Down => down = down.or(Some(w)),
                Verdict::Cold(_) | Verdict::Full => {}
            }
        }
        if let Some((_, w)) = cold {
            return self.found(w);
        }
        // The draws found nothing: look at every candidate once.
        let mut any = false;
        let mut full = false;
        let candidates = pool.active.iter().map(|&i| &pool.slots[i as usize]);
        for w in candidates.filter(|w| !tried.contains(&w.id)) {
            any = true;
            match self.judge(w) {
                Verdict::Usable | Verdict::Cold(_) => return self.found(w),
                Verdict::Down => down = down.or(Some(w)),
                Verdict::Full => full = true,
            }
        }
        match down {
            // A healthy worker at its limit is not "no worker is healthy": failing open
            // would send to a down worker what a healthy one is only too busy to take.
            Some(_) if full => Pick::Full,
            Some(first) => {
                // One more draw, ignoring health: the algorithm's cursor moves on with every
                // request, so failing open spreads over all the workers.
                let w = self
                    .algorithm
                    .pick_other(pool, tried)
                    .filter(|w| !tried.contains(&w.id) && !self.full(w))
                    .unwrap_or(first);
                if !self.failing_open.swap(true, Ordering::Relaxed) {
                    tracing::error!(pool = %pool.name,
                        "no worker is healthy: failing open, sending traffic to all of them");
                }
                Pick::Worker(w.worker.clone())
            }
            None if any => Pick::Full,
            None => Pick::Empty,
        }
    }

    fn found(&self, w: &Slot) -> Pick {
        if self.failing_open.load(Ordering::Relaxed)
            && self.failing_open.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(pool = %self.pool_name(), "healthy workers again: no longer failing open");
        }
        Pick::Worker(w.worker.clone())
    }

    #[inline(always)]
    fn judge(&self, w: &Slot) -> Verdict {
        availability::judge(w, &self.settings, &*self.random)
    }

    #[inline]
    fn full(&self, w: &Slot) -> bool {
        availability::full(w, &self.settings)
    }

    /// What real traffic to `w` came to: passive ejection counts the failures the pool's
    /// `[ejection] on` names, unless ejecting would take more than `max_percent` of the pool.
    pub fn record(&self, w: &Worker, outcome: Outcome) {
        // Every request ends here: a success costs one flag check, and only a failure loads
        // the snapshot (to count what is ejected already).
        let failure = outcome.is_failure(self.settings.ejection.on);
        w.state.tally.ended(outcome.error_kind(), failure);
        if !failure {
            w.state.ejection.success();
            return;
        }
        let snapshot = self.ring.load();
        availability::record(
            w,
            outcome,
            &self.settings.ejection,
            snapshot.pool(self.pool),
        );
    }

    /// Counts a request toward the retry budget.
    #[inline]
    pub fn count_request(&self) {
        self.budget.count_request();
    }

    /// Whether one more retry fits the budget (and takes it if so).
    pub fn take_retry(&self) -> bool {
        self.budget.take_retry()
    }

    pub fn pool_name(&self) -> Arc<str> {
        self.ring.load().pool(self.pool).name.clone()
    }

    /// Whether the ring was ever loaded (from the database or the cache): until then every
    /// pool is empty for want of data, not for want of workers.
    pub fn ring_loaded(&self) -> bool {
        self.ring.load().generation > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Change, Membership, Row};
    use std::sync::Mutex;

    /// Replays a fixed list of numbers, reduced modulo `n`.
    pub(crate) struct Fixed(pub Mutex<Vec<usize>>);

    impl RandomSource for Fixed {
        fn below(&self, n: usize) -> usize {
            let mut v = self.0.lock().unwrap();
            if v.is_empty() { 0 } else { v.remove(0) % n }
        }
    }

    fn row(id: i64, weight: u32) -> Row {
        Row {
            id,
            address: format!("127.0.0.1:{}", 9000 + id),
            weight,
            pool: "p".into(),
            version: id,
        }
    }

    /// A ring with pool "p" holding workers 1..=n of weight 1, and a weighted balancer.
    pub(crate) fn balancer(n: i64, settings: PoolConfig) -> (Balancer, Membership) {
        let ring = Ring::new(&["p".into()]);
        let mut m = Membership::new(ring.clone());
        m.reset((1..=n).map(|id| row(id, 1)).collect());
        let b = Balancer::new(
            ring,
            "p",
            build(crate::config::AlgorithmKind::Weighted),
            settings,
        );
        (b, m)
    }

    fn picked(b: &Balancer, tried: &[i64]) -> Option<i64> {
        match b.pick(tried) {
            Pick::Worker(w) => Some(w.id),
            _ => None,
        }
    }

    fn worker(b: &Balancer, id: i64) -> Arc<Worker> {
        let s = b.ring.load();
        s.pool(0)
            .workers
            .iter()
            .find(|w| w.id == id)
            .unwrap()
            .clone()
    }

    #[test]
    fn pick_skips_tried_unhealthy_and_ejected_workers() {
        let (b, _m) = balancer(3, PoolConfig::default());
        for _ in 0..6 {
            assert_ne!(picked(&b, &[2]), Some(2));
        }
        worker(&b, 1).state.health.record(false, 1, 1);
        worker(&b, 3).state.ejection.eject(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(60),
        );
        for _ in 0..6 {
            assert_eq!(picked(&b, &[]), Some(2));
        }
        assert_eq!(picked(&b, &[1, 2, 3]), None, "all tried: nothing left");
    }

    #[test]
    fn pick_fails_open_over_every_worker_when_none_is_healthy() {
        let (b, _m) = balancer(3, PoolConfig::default());
        for id in 1..=3 {
            worker(&b, id).state.health.record(false, 1, 1);
        }
        let mut seen: Vec<i64> = (0..9).filter_map(|_| picked(&b, &[])).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![1, 2, 3], "failing open spreads over all of them");
    }

    #[test]
    fn pick_reports_full_and_empty() {
        let settings = PoolConfig {
            max_connections: Some(1),
            ..PoolConfig::default()
        };
        let (b, mut m) = balancer(2, settings);
        let held: Vec<_> = (1..=2)
            .map(|id| crate::ring::InFlight::new(worker(&b, id)))
            .collect();
        assert!(matches!(b.pick(&[]), Pick::Full));
        drop(held);
        assert!(matches!(b.pick(&[]), Pick::Worker(_)));
        m.apply(vec![
            Change::Update {
                row: Row {
                    version: 10,
                    ..row(1, 0)
                },
                prev: 1,
            },
            Change::Update {
                row: Row {
                    version: 11,
                    ..row(2, 0)
                },
                prev: 2,
            },
        ]);
        assert!(
            matches!(b.pick(&[]), Pick::Empty),
            "weight 0 everywhere: drained"
        );
    }

    #[test]
    fn a_full_healthy_worker_is_not_failed_open_to_a_down_one() {
        let settings = PoolConfig {
            max_connections: Some(1),
            ..PoolConfig::default()
        };
        let (b, _m) = balancer(2, settings);
        let _busy = crate::ring::InFlight::new(worker(&b, 1));
        worker(&b, 2).state.health.record(false, 1, 1);
        for _ in 0..4 {
            assert!(
                matches!(b.pick(&[]), Pick::Full),
                "503, not the down worker"
            );
        }
    }

    #[test]
    fn slow_start_draws_decide_whether_a_warming_worker_is_taken() {
        let settings = PoolConfig {
            slow_start: std::time::Duration::from_secs(1000),
            ..PoolConfig::default()
        };
        let ring = Ring::new(&["p".into()]);
        let mut m = Membership::new(ring.clone());
        m.reset(vec![row(1, 1)]);
        // Added after the first sync: worker 2 ramps from 0.
        m.apply(vec![Change::Insert(row(2, 1))]);
        let b = Balancer::with_random(
            ring,
            "p",
            Box::new(algorithm::RoundRobin::default()),
            settings,
            // Share ~0: a draw of 999 turns it down, and so would any draw.
            Box::new(Fixed(Mutex::new(vec![999; 16]))),
        );
        for _ in 0..8 {
            assert_eq!(picked(&b, &[]), Some(1));
        }
        // With only the warming worker left, it is still taken rather than nothing.
        assert_eq!(picked(&b, &[1]), Some(2));
    }
}
