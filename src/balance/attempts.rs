//! One request's walk over the workers of its pool, and the retry budget that bounds how
//! much retries may add to the load of a pool in trouble.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Affinity, Balancer, Pick};
use crate::ring::Worker;

/// Attempts per request at most, whatever `retries` says.
pub const MAX_ATTEMPTS: usize = 8;

/// One request's way through the pool: the workers tried so far, kept on the stack (no
/// allocation per request), so each retry goes to a worker not tried yet.
#[derive(Debug, Default)]
pub struct Attempts {
    tried: [i64; MAX_ATTEMPTS],
    count: usize,
    /// Whether the last worker is the one the request's sticky cookie named: its response
    /// needs no new cookie.
    pub stuck: bool,
}

/// Why a request found no worker to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoWorker {
    /// No worker with weight > 0: 503.
    Empty,
    /// Every candidate is at its `max_connections`: 503.
    Full,
    /// Every usable worker was tried already: the last failure stands (502).
    Exhausted,
}

impl NoWorker {
    /// What a 503 says (with the pool's name).
    pub fn reason(&self) -> &'static str {
        match self {
            NoWorker::Empty => "no worker with weight > 0",
            NoWorker::Full => "every worker is at its max_connections",
            NoWorker::Exhausted => "every worker failed",
        }
    }
}

impl Attempts {
    /// Picks a worker not tried yet, and says whether another attempt may follow this one
    /// (the pool's `retries`). Only called again when it may.
    /// The first attempt goes to the worker the sticky cookie names, if it takes traffic;
    /// a retry is balanced (and re-stuck).
    pub fn next(
        &mut self,
        balancer: &Balancer,
        affinity: &Affinity,
    ) -> Result<(Arc<Worker>, bool), NoWorker> {
        let tried = &self.tried[..self.count];
        let stuck = match &affinity.sticky {
            Some(cookie) if tried.is_empty() => balancer.stuck(cookie.get()),
            _ => None,
        };
        self.stuck = stuck.is_some();
        let worker = match stuck
            .map(Pick::Worker)
            .unwrap_or_else(|| balancer.pick(tried, *affinity))
        {
            Pick::Worker(w) => w,
            Pick::Empty if tried.is_empty() => return Err(NoWorker::Empty),
            Pick::Full => return Err(NoWorker::Full),
            Pick::Empty => return Err(NoWorker::Exhausted),
        };
        self.tried[self.count] = worker.id;
        self.count += 1;
        let may_retry = self.count <= (balancer.settings.retries as usize).min(MAX_ATTEMPTS - 1);
        Ok((worker, may_retry))
    }

    /// Workers tried so far.
    pub fn tried(&self) -> &[i64] {
        &self.tried[..self.count]
    }
}

/// Retries allowed regardless of the budget's percentage, so a quiet listener can retry.
const RETRY_ALLOWANCE: u64 = 10;

/// Retries may add at most `percent` (plus a small allowance) to the requests sent: when a
/// pool is failing, retries must not multiply its load.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub fn new(percent: u32) -> RetryBudget {
        RetryBudget {
            percent,
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Counts a request toward the budget.
    #[inline]
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget (and takes it if so).
    pub fn take_retry(&self) -> bool {
        let requests = self.requests.load(Ordering::Relaxed);
        let retries = self.retries.load(Ordering::Relaxed);
        let allowed = requests * u64::from(self.percent) / 100 + RETRY_ALLOWANCE;
        if retries >= allowed {
            return false;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::balancer;
    use crate::config::PoolConfig;

    #[test]
    fn attempts_go_to_untried_workers_and_stop_at_retries() {
        let settings = PoolConfig {
            retries: 2,
            ..PoolConfig::default()
        };
        let (b, _m) = balancer(5, settings);
        let mut a = Attempts::default();
        let mut ids = Vec::new();
        let mut may = Vec::new();
        for _ in 0..3 {
            let (w, may_retry) = a.next(&b, &Affinity::default()).unwrap();
            ids.push(w.id);
            may.push(may_retry);
        }
        assert_eq!(may, vec![true, true, false], "retries = 2: three attempts");
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 3, "never the same worker twice: {ids:?}");
        assert_eq!(a.tried(), &ids[..]);
    }

    #[test]
    fn attempts_end_exhausted_when_every_worker_was_tried() {
        let settings = PoolConfig {
            retries: 7,
            ..PoolConfig::default()
        };
        let (b, _m) = balancer(2, settings);
        let mut a = Attempts::default();
        a.next(&b, &Affinity::default()).unwrap();
        a.next(&b, &Affinity::default()).unwrap();
        assert_eq!(
            a.next(&b, &Affinity::default()).unwrap_err(),
            NoWorker::Exhausted
        );
        let (empty, _m) = balancer(0, PoolConfig::default());
        assert_eq!(
            Attempts::default()
                .next(&empty, &Affinity::default())
                .unwrap_err(),
            NoWorker::Empty
        );
    }

    #[test]
    fn retry_budget_allows_a_share_of_requests_plus_an_allowance() {
        let budget = RetryBudget::new(20);
        let granted = (0..100).filter(|_| budget.take_retry()).count();
        assert_eq!(
            granted, RETRY_ALLOWANCE as usize,
            "a quiet listener still retries"
        );
        for _ in 0..100 {
            budget.count_request();
        }
        let more = (0..100).filter(|_| budget.take_retry()).count();
        assert_eq!(more, 20, "20% of 100 requests");
    }
}
