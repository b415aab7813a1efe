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

use crate::config::{AlgorithmKind, PoolConfig};
use crate::ring::{Pool, Ring, Slot, Worker};
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
    /// `consistent_hash`: requests with a key go to its worker in the pool's Maglev table.
    hashing: Option<Hashing>,
    /// The pool's `[sticky]` cookie, if it has one.
    sticky: Option<sticky::Sticky>,
}

/// How `consistent_hash` places keyed requests.
#[derive(Debug, Clone, Copy)]
pub struct Hashing {
    /// Bounded loads (`hash_balance_factor`, percent; 0 = off): a worker carrying more than
    /// this share of the pool's average in-flight load (weighted) passes its keys on.
    pub balance_factor: u32,
}

/// What of a request may pin it to a worker, found by the transport before the first pick.
#[derive(Debug, Clone, Copy, Default)]
pub struct Affinity {
    /// The hash of the listener's `hash_key` (`maglev::key_hash`), when the request has it.
    pub hash: Option<u64>,
    /// The value of the pool's sticky cookie, when the request carries one.
    pub sticky: Option<CookieValue>,
}

/// A cookie value copied out of the request (no allocation): values longer than any
/// cookie this proxy sets cannot name a worker and are not kept.
#[derive(Clone, Copy)]
pub struct CookieValue {
    len: u8,
    bytes: [u8; CookieValue::MAX],
}

impl CookieValue {
    const MAX: usize = 64;

    /// `value`, if it is short enough to be one of ours.
    pub fn new(value: &[u8]) -> Option<CookieValue> {
        let mut bytes = [0; Self::MAX];
        bytes.get_mut(..value.len())?.copy_from_slice(value);
        Some(CookieValue {
            len: value.len() as u8,
            bytes,
        })
    }

    pub fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for CookieValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieValue({} bytes)", self.len)
    }
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

    /// A listener's balancer for `pool`: its algorithm, and for `consistent_hash` the
    /// listener's `hash_balance_factor`.
    pub fn of(
        ring: Arc<Ring>,
        pool: &str,
        kind: AlgorithmKind,
        balance_factor: u32,
        settings: PoolConfig,
    ) -> Balancer {
        if kind == AlgorithmKind::ConsistentHash {
            ring.hash_pool(pool);
        }
        let mut balancer = Balancer::new(ring, pool, build(kind), settings);
        if kind == AlgorithmKind::ConsistentHash {
            balancer.hashing = Some(Hashing { balance_factor });
        }
        balancer
    }

    /// Whether requests are placed by their key (`consistent_hash`): the transport then
    /// finds the listener's `hash_key` in each request.
    pub fn hashes(&self) -> bool {
        self.hashing.is_some()
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
        let sticky = settings.sticky.as_ref().map(sticky::Sticky::new);
        Balancer {
            budget: RetryBudget::new(settings.retry_budget_percent),
            ring,
            pool,
            algorithm,
            settings,
            failing_open: AtomicBool::new(false),
            random,
            hashing: None,
            sticky,
        }
    }

    /// One atomic load of the snapshot and a pick, skipping workers in `tried`, unhealthy,
    /// ejected, at their connection limit, or (by chance, in proportion to their ramp)
    /// warming up. When no worker is healthy, health is ignored (fail open). The worker is
    /// cloned out so the snapshot is not held while the work is in flight.
    pub fn pick(&self, tried: &[i64], affinity: Affinity) -> Pick {
        let snapshot = self.ring.load();
        let pool = snapshot.pool(self.pool);
        if let (Some(hashing), Some(hash)) = (self.hashing, affinity.hash)
            && let Some(w) = self.placed(pool, hash, hashing, tried)
        {
            return self.found(w);
        }
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

    /// The key's worker: its owner in the Maglev table if that one takes traffic (and is
    /// within bounded loads), else the next of its preferences that does. Only an
    /// unavailable worker's keys move, and they spread over the others by weight. `None`
    /// when no worker is usable (the caller's walk then decides between full, empty and
    /// failing open).
    fn placed<'p>(
        &self,
        pool: &'p Pool,
        hash: u64,
        hashing: Hashing,
        tried: &[i64],
    ) -> Option<&'p Slot> {
        let usable = |w: &Slot| {
            !tried.contains(&w.id) && matches!(self.judge(w), Verdict::Usable | Verdict::Cold(_))
        };
        let table = pool.maglev.as_ref()?;
        let bound = Bound::of(pool, hashing);
        // The usual case, without starting a walk: the owner takes it.
        let owner = &pool.slots[table.get(hash)? as usize];
        let owner_usable = usable(owner);
        if owner_usable && bound.admits(owner) {
            return Some(owner);
        }
        // Usable workers over their bound, the least loaded (per unit of weight) first: one
        // of them is taken only when no usable worker within its bound comes up first.
        let mut least = owner_usable.then_some(owner);
        let mut over = usize::from(owner_usable);
        for index in table.preferences(hash).skip(1) {
            let w = &pool.slots[index as usize];
            if !usable(w) {
                continue;
            }
            if bound.admits(w) {
                return Some(w);
            }
            if least.is_none_or(|l| lighter(w, l)) {
                least = Some(w);
            }
            over += 1;
            // Every worker over its bound means the load is spread already: the walk stops
            // instead of lapping a large table on every request.
            if over >= MAX_OVER {
                break;
            }
        }
        least
    }

    fn found(&self, w: &Slot) -> Pick {
        if self.failing_open.load(Ordering::Relaxed)
            && self.failing_open.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(pool = %self.pool_name(), "healthy workers again: no longer failing open");
        }
        Pick::Worker(w.worker.clone())
    }

    /// The worker a sticky cookie names, when the pool has `[sticky]`, the value
    /// authenticates as one of its workers, and that worker takes traffic (weight > 0, not
    /// down, not at its limit). Otherwise the request is balanced as usual and re-stuck.
    pub fn stuck(&self, cookie: &[u8]) -> Option<Arc<Worker>> {
        let sticky = self.sticky.as_ref()?;
        let snapshot = self.ring.load();
        let w = sticky.stuck_to(cookie, snapshot.pool(self.pool))?;
        let takes = w.weight > 0 && matches!(self.judge(w), Verdict::Usable | Verdict::Cold(_));
        takes.then(|| w.worker.clone())
    }

    /// The `Set-Cookie` value that sticks the client to `worker`, if the pool has `[sticky]`.
    pub fn stick(&self, worker: &Worker) -> Option<String> {
        let sticky = self.sticky.as_ref()?;
        Some(sticky.set_cookie(&worker.pool, worker))
    }

    /// The name of the pool's sticky cookie, if it has `[sticky]`.
    pub fn sticky_cookie(&self) -> Option<&str> {
        self.sticky.as_ref().map(|s| s.cookie_name())
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

    /// The pool's fixed index in every snapshot.
    pub fn pool_index(&self) -> usize {
        self.pool
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

/// Usable workers over their bound a hashed pick looks at before it takes the least loaded.
const MAX_OVER: usize = 16;

/// How often a pool's usable weight is summed again for bounded loads.
const USABLE_WEIGHT_EVERY_MS: u64 = 100;

/// Bounded loads for one pick: whether a worker may take one more request without
/// carrying more than `balance_factor` percent of its weighted share of the pool's
/// in-flight load, counting the new request. As HAProxy's `hash-balance-factor`:
/// `in_flight + 1 <= ceil(factor/100 × (total + 1) × weight / usable_weight)`, compared in
/// integers, where the usable weight leaves out workers that are down (else their share
/// would be missing from everyone's bound, and every usable worker would be "over").
struct Bound {
    /// 0: off.
    factor: u128,
    /// The pool's in-flight requests, plus the new one.
    total: u128,
    usable_weight: u128,
}

impl Bound {
    fn of(pool: &Pool, hashing: Hashing) -> Bound {
        let factor = u128::from(hashing.balance_factor);
        if factor == 0 || pool.total_weight == 0 {
            return Bound {
                factor: 0,
                total: 0,
                usable_weight: 0,
            };
        }
        let usable = pool
            .usable_weight
            .get(USABLE_WEIGHT_EVERY_MS, || availability::usable_weight(pool));
        Bound {
            factor,
            total: u128::from(pool.load.load(Ordering::Relaxed)) + 1,
            // None usable (or not summed yet): the whole weight, as if all were.
            usable_weight: u128::from(if usable == 0 {
                pool.total_weight
            } else {
                usable
            }),
        }
    }

    #[inline]
    fn admits(&self, w: &Slot) -> bool {
        if self.factor == 0 {
            return true;
        }
        let own = u128::from(w.state.in_flight.load(Ordering::Relaxed));
        own * 100 * self.usable_weight < self.total * self.factor * u128::from(w.weight)
    }
}

/// Whether `a` carries fewer in-flight requests per unit of weight than `b`.
fn lighter(a: &Slot, b: &Slot) -> bool {
    let load = |w: &Slot| u128::from(w.state.in_flight.load(Ordering::Relaxed));
    load(a) * u128::from(b.weight) < load(b) * u128::from(a.weight)
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
        match b.pick(tried, Affinity::default()) {
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
        assert!(matches!(b.pick(&[], Affinity::default()), Pick::Full));
        drop(held);
        assert!(matches!(b.pick(&[], Affinity::default()), Pick::Worker(_)));
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
            matches!(b.pick(&[], Affinity::default()), Pick::Empty),
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
                matches!(b.pick(&[], Affinity::default()), Pick::Full),
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

    /// A consistent-hash balancer over workers 1..=n (weight 1) of pool "p".
    fn hashing(n: i64, balance_factor: u32) -> (Balancer, Membership) {
        let ring = Ring::new(&["p".into()]);
        let mut m = Membership::new(ring.clone());
        m.reset((1..=n).map(|id| row(id, 1)).collect());
        let b = Balancer::of(
            ring,
            "p",
            AlgorithmKind::ConsistentHash,
            balance_factor,
            PoolConfig::default(),
        );
        (b, m)
    }

    fn keyed(b: &Balancer, key: u64, tried: &[i64]) -> Option<i64> {
        let affinity = Affinity {
            hash: Some(crate::ring::maglev::key_hash(&key.to_le_bytes())),
            sticky: None,
        };
        match b.pick(tried, affinity) {
            Pick::Worker(w) => Some(w.id),
            _ => None,
        }
    }

    #[test]
    fn a_key_goes_to_its_owner_and_moves_only_while_its_owner_is_unavailable() {
        let (b, _m) = hashing(5, 0);
        let before: Vec<i64> = (0..2000).map(|k| keyed(&b, k, &[]).unwrap()).collect();
        let again: Vec<i64> = (0..2000).map(|k| keyed(&b, k, &[]).unwrap()).collect();
        assert_eq!(before, again, "the same key, the same worker");
        for id in 1..=5 {
            let share = before.iter().filter(|&&w| w == id).count();
            assert!(
                (300..=500).contains(&share),
                "worker {id} owns {share} of 2000"
            );
        }
        worker(&b, 3).state.health.record(false, 1, 1);
        for (k, &owner) in before.iter().enumerate() {
            let now = keyed(&b, k as u64, &[]).unwrap();
            if owner == 3 {
                assert_ne!(now, 3, "key {k}: its owner is down");
            } else {
                assert_eq!(now, owner, "key {k} moved though its owner is up");
            }
        }
        // A retry goes to the key's next preference, not back to the owner.
        let k = before.iter().position(|&w| w == 1).unwrap() as u64;
        let next = keyed(&b, k, &[1]).unwrap();
        assert!(next != 1 && next != 3, "{next}");
        assert_eq!(keyed(&b, k, &[1]), Some(next), "and always the same one");
    }

    #[test]
    fn bounded_loads_cap_every_worker_at_the_factor_of_the_average() {
        // Every request has the same key: without a bound, one worker takes them all.
        let held = |b: &Balancer| {
            (0..40)
                .map(|_| {
                    let id = keyed(b, 7, &[]).unwrap();
                    crate::ring::InFlight::new(worker(b, id))
                })
                .collect::<Vec<_>>()
        };
        let (b, _m) = hashing(4, 0);
        let unbounded = held(&b);
        let owner = unbounded[0].worker().id;
        assert!(unbounded.iter().all(|f| f.worker().id == owner));
        drop(unbounded);

        let (b, _m) = hashing(4, 150);
        let bounded = held(&b);
        for id in 1..=4 {
            let load = bounded.iter().filter(|f| f.worker().id == id).count();
            // 150% of the average of 40 over 4 workers.
            assert!(load <= 15, "worker {id} carries {load} of 40");
        }
        let most = bounded.iter().filter(|f| f.worker().id == owner).count();
        assert_eq!(most, 15, "the owner fills up to its bound first");
    }

    #[test]
    fn bounded_loads_share_the_load_among_the_workers_that_are_up() {
        // Half the pool down: the bound is 150% of the average over the five that are up,
        // not over all ten (which would put every worker over it, and the owner would take
        // everything).
        let (b, _m) = hashing(10, 150);
        for id in 6..=10 {
            worker(&b, id).state.health.record(false, 1, 1);
        }
        let held: Vec<_> = (0..40)
            .map(|_| {
                let id = keyed(&b, 7, &[]).unwrap();
                crate::ring::InFlight::new(worker(&b, id))
            })
            .collect();
        let loads: Vec<usize> = (1..=10)
            .map(|id| held.iter().filter(|f| f.worker().id == id).count())
            .collect();
        assert!(loads[5..].iter().all(|&l| l == 0), "{loads:?}");
        // 150% of 40 / 5.
        assert!(loads.iter().all(|&l| l <= 12), "{loads:?}");
    }

    #[test]
    fn a_request_without_a_key_is_balanced_by_weight() {
        let (b, _m) = hashing(3, 0);
        let mut seen: Vec<i64> = (0..6).filter_map(|_| picked(&b, &[])).collect();
        seen.sort();
        assert_eq!(seen, vec![1, 1, 2, 2, 3, 3]);
    }
}
