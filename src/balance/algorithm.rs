//! Selection algorithms: how a listener picks one worker of a pool.
//!
//! All of them sit behind [`Algorithm`], one small trait. A value lives as long as its
//! listener, so its cursor carries on across snapshots; the tables it reads (`active`,
//! `schedule`) were built with the snapshot, off the hot path. Every algorithm honours weight
//! 0 as drain: such a worker is in neither table, so it gets nothing new. Randomness comes
//! from a [`RandomSource`] so tests are deterministic.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::AlgorithmKind;
use crate::ring::{Pool, Slot};

/// A fresh selector of `kind`, drawing randomness from the thread-local generator.
pub fn build(kind: AlgorithmKind) -> Box<dyn Algorithm> {
    match kind {
        AlgorithmKind::RoundRobin => Box::new(RoundRobin::default()),
        AlgorithmKind::Random => Box::new(Random(ThreadRandom)),
        // Requests without a hash key are balanced as `weighted`: the hashed picks are the
        // balancer's own (see `Balancer::pick`), over the pool's Maglev table.
        AlgorithmKind::Weighted | AlgorithmKind::ConsistentHash => Box::new(Weighted::default()),
        AlgorithmKind::LeastConnections => Box::new(LeastConnections::default()),
        AlgorithmKind::PowerOfTwo => Box::new(PowerOfTwo(ThreadRandom)),
    }
}

/// Picks a worker for new traffic.
pub trait Algorithm: Send + Sync {
    /// A worker of `pool` with weight > 0, or `None` when there is none.
    fn pick<'a>(&self, pool: &'a Pool) -> Option<&'a Slot>;

    /// Like `pick`, but none of the workers in `not` (tried already) unless no other is
    /// left.
    fn pick_other<'a>(&self, pool: &'a Pool, not: &[i64]) -> Option<&'a Slot> {
        if not.is_empty() {
            return self.pick(pool);
        }
        for _ in 0..4 {
            match self.pick(pool) {
                Some(w) if !not.contains(&w.id) => return Some(w),
                Some(_) => {}
                None => return None,
            }
        }
        pool.active
            .iter()
            .map(|&i| &pool.slots[i as usize])
            .find(|w| !not.contains(&w.id))
            .or_else(|| self.pick(pool))
    }
}

/// A source of uniform random numbers; tests supply a fixed sequence.
pub trait RandomSource: Send + Sync {
    /// A uniform number in `0..n`; `n > 0`.
    fn below(&self, n: usize) -> usize;
}

/// rand's thread-local generator: no lock, no shared state between cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRandom;

impl RandomSource for ThreadRandom {
    #[inline]
    fn below(&self, n: usize) -> usize {
        use rand::RngExt;
        rand::rng().random_range(0..n)
    }
}

#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl Algorithm for RoundRobin {
    #[inline]
    fn pick<'a>(&self, pool: &'a Pool) -> Option<&'a Slot> {
        let n = pool.active.len();
        if n == 0 {
            return None;
        }
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        Some(&pool.slots[pool.active[i] as usize])
    }
}

#[derive(Debug, Default)]
pub struct Weighted {
    cursor: AtomicUsize,
}

impl Algorithm for Weighted {
    #[inline]
    fn pick<'a>(&self, pool: &'a Pool) -> Option<&'a Slot> {
        let n = pool.schedule.len();
        if n == 0 {
            return None;
        }
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        Some(&pool.slots[pool.schedule[i] as usize])
    }
}

/// Weighted random: a uniform slot of the schedule, where each worker holds slots in
/// proportion to its weight.
#[derive(Debug)]
pub struct Random<R>(pub R);

impl<R: RandomSource> Algorithm for Random<R> {
    #[inline]
    fn pick<'a>(&self, pool: &'a Pool) -> Option<&'a Slot> {
        let n = pool.schedule.len();
        if n == 0 {
            return None;
        }
        Some(&pool.slots[pool.schedule[self.0.below(n)] as usize])
    }
}

/// Scans the active workers: O(n) per pick, meant for pools of tens of workers. The scan
/// starts at a rotating offset so ties spread instead of piling onto the first worker.
#[derive(Debug, Default)]
pub struct LeastConnections {
    cursor: AtomicUsize,
}

impl Algorithm for LeastConnections {
    fn pick<'a>(&self, pool: &'a Pool) -> Option<&'a Slot> {
        let n = pool.active.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &pool.slots[pool.active[(start + k) % n] as usize])
            .reduce(|best, w| if less_loaded(w, best) { w } else { best })
    }
}

#[derive(Debug)]
pub struct PowerOfTwo<R>(pub R);

impl<R: RandomSource> Algorithm for PowerOfTwo<R> {
    fn pick<'a>(&self, pool: &'a Pool) -> Option<&'a Slot> {
        let n = pool.schedule.len();
        if n == 0 {
            return None;
        }
        let a = &pool.slots[pool.schedule[self.0.below(n)] as usize];
        let b = &pool.slots[pool.schedule[self.0.below(n)] as usize];
        Some(if less_loaded(b, a) { b } else { a })
    }
}

/// `a` has strictly fewer in-flight requests per unit of weight than `b`.
fn less_loaded(a: &Slot, b: &Slot) -> bool {
    let load = |w: &Slot| u128::from(w.state.in_flight.load(Ordering::Relaxed));
    load(a) * u128::from(b.weight) < load(b) * u128::from(a.weight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Address, Worker, WorkerState};
    use std::sync::Arc;
    use std::sync::Mutex;

    /// Replays a fixed list of numbers, reduced modulo `n`.
    struct Fixed(Mutex<Vec<usize>>);

    impl RandomSource for Fixed {
        fn below(&self, n: usize) -> usize {
            self.0.lock().unwrap().remove(0) % n
        }
    }

    fn pool(weights: &[u32]) -> Pool {
        let workers = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Arc::new(Worker {
                    id: i as i64 + 1,
                    address: Address::new(&format!("127.0.0.1:{}", 8000 + i)),
                    pool_load: Default::default(),
                    weight,
                    pool: "p".into(),
                    version: 1,
                    state: Arc::new(WorkerState::default()),
                })
            })
            .collect();
        Pool::new("p".into(), 1, workers, Default::default())
    }

    fn ids(alg: &dyn Algorithm, pool: &Pool, n: usize) -> Vec<i64> {
        (0..n).map(|_| alg.pick(pool).unwrap().id).collect()
    }

    #[test]
    fn round_robin_rotates_and_skips_drained() {
        let p = pool(&[5, 0, 1]);
        assert_eq!(ids(&RoundRobin::default(), &p, 4), vec![1, 3, 1, 3]);
    }

    #[test]
    fn weighted_is_smooth() {
        let p = pool(&[5, 1, 1]);
        assert_eq!(
            ids(&Weighted::default(), &p, 14),
            vec![1, 1, 2, 1, 3, 1, 1, 1, 1, 2, 1, 3, 1, 1]
        );
    }

    #[test]
    fn random_is_weighted_and_injectable() {
        let p = pool(&[3, 0, 1]); // schedule 0,0,2,0 (ids 1,1,3,1)
        let alg = Random(Fixed(Mutex::new(vec![0, 1, 2, 3, 6])));
        assert_eq!(ids(&alg, &p, 5), vec![1, 1, 3, 1, 3]);
    }

    #[test]
    fn every_algorithm_drains_weight_zero_and_empty_pools() {
        let drained = pool(&[0, 0]);
        let empty = pool(&[]);
        let one = pool(&[0, 4]);
        for kind in AlgorithmKind::ALL {
            let alg = build(kind);
            assert!(alg.pick(&drained).is_none(), "{kind:?}");
            assert!(alg.pick(&empty).is_none(), "{kind:?}");
            for _ in 0..50 {
                assert_eq!(alg.pick(&one).unwrap().id, 2, "{kind:?}");
            }
        }
    }

    #[test]
    fn least_connections_prefers_idle_per_weight() {
        let p = pool(&[1, 2, 1]);
        p.workers[0].state.in_flight.store(1, Ordering::Relaxed);
        p.workers[1].state.in_flight.store(1, Ordering::Relaxed); // 0.5 per weight
        p.workers[2].state.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(ids(&LeastConnections::default(), &p, 3), vec![2, 2, 2]);
        p.workers[1].state.in_flight.store(3, Ordering::Relaxed);
        // Ties between ids 1 and 3 alternate with the rotating start.
        let got = ids(&LeastConnections::default(), &p, 4);
        assert!(got.contains(&1) && got.contains(&3), "{got:?}");
    }

    #[test]
    fn power_of_two_takes_less_loaded_of_two() {
        let p = pool(&[1, 1]);
        p.workers[0].state.in_flight.store(5, Ordering::Relaxed);
        let alg = PowerOfTwo(Fixed(Mutex::new(vec![0, 1, 1, 0, 0, 0])));
        assert_eq!(ids(&alg, &p, 3), vec![2, 2, 1]);
    }

    #[test]
    fn pick_other_avoids_the_failed_worker() {
        let p = pool(&[1, 1, 1]);
        let alg = Weighted::default();
        for _ in 0..10 {
            assert_ne!(alg.pick_other(&p, &[2]).unwrap().id, 2);
            assert_eq!(alg.pick_other(&p, &[1, 3]).unwrap().id, 2);
        }
        let single = pool(&[1]);
        assert_eq!(alg.pick_other(&single, &[1]).unwrap().id, 1);
    }
}
