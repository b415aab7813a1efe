//! Whether a worker takes new traffic right now, beyond its weight: active health, passive
//! ejection, slow start and connection limits, read from the worker's state cells at pick
//! time; and what real traffic's outcome does to those cells.

use std::sync::atomic::Ordering;

use super::RandomSource;
use crate::config::{EjectOn, EjectionConfig, PoolConfig};
use crate::ring::tally::ErrorKind;
use crate::ring::{Pool, Slot, Worker};

/// What a pick makes of one worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Usable,
    /// Warming up (slow start, at this share of its full weight) and not chosen this time.
    Cold(f64),
    /// Unhealthy or ejected.
    Down,
    /// At its connection limit.
    Full,
}

/// Reads only the slot and the worker's state (not the worker itself: see `Slot`).
#[inline(always)]
pub fn judge(w: &Slot, settings: &PoolConfig, random: &dyn RandomSource) -> Verdict {
    let state = &w.state;
    if !state.health.is_healthy() || state.ejection.is_ejected() {
        return Verdict::Down;
    }
    if full(w, settings) {
        return Verdict::Full;
    }
    let share = state.ramp.share(settings.slow_start);
    if share < 1.0 && random.below(1000) as f64 >= share * 1000.0 {
        return Verdict::Cold(share);
    }
    Verdict::Usable
}

/// The weight of the workers of `pool` that take traffic as far as health and ejection go
/// (limits and slow start aside): what bounded loads divide the load by.
pub fn usable_weight(pool: &Pool) -> u64 {
    (pool.active.iter())
        .map(|&i| &pool.slots[i as usize])
        .filter(|w| w.state.health.is_healthy() && !w.state.ejection.is_ejected())
        .map(|w| u64::from(w.weight))
        .sum()
}

/// At the pool's `max_connections`.
#[inline]
pub fn full(w: &Slot, settings: &PoolConfig) -> bool {
    settings
        .max_connections
        .is_some_and(|max| w.state.in_flight.load(Ordering::Relaxed) >= max)
}

/// What one request (or TCP connection) to a worker came to, as passive ejection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The worker answered with this status.
    Status(u16),
    /// No connection could be made.
    Connect,
    /// No response head within the pool's `response_timeout`.
    Timeout,
    /// The connection broke before the exchange ended.
    Reset,
    /// The worker's answer could not be read as HTTP.
    Protocol,
}

impl Outcome {
    /// A successful TCP connection, or any answer that is not a server error.
    pub const OK: Outcome = Outcome::Status(200);

    /// Whether this counts toward ejection under `on`. Only gateway failures by default: a
    /// client can make a healthy worker answer 500 or 501 at will, and must not be able to
    /// eject it that way.
    pub fn is_failure(self, on: EjectOn) -> bool {
        match self {
            Outcome::Connect | Outcome::Timeout | Outcome::Reset | Outcome::Protocol => true,
            Outcome::Status(502..=504) => true,
            Outcome::Status(s) => on == EjectOn::ServerError && (500..600).contains(&s),
        }
    }

    /// How the worker failed the exchange, if it did (statuses are answers, not errors).
    pub fn error_kind(self) -> Option<ErrorKind> {
        match self {
            Outcome::Status(_) => None,
            Outcome::Connect => Some(ErrorKind::Connect),
            Outcome::Timeout => Some(ErrorKind::Timeout),
            Outcome::Reset => Some(ErrorKind::Reset),
            Outcome::Protocol => Some(ErrorKind::Protocol),
        }
    }
}

/// Applies `outcome` to `w`'s ejection cell: a success ends a failure streak; enough
/// failures in a row eject it, unless that would eject more than `max_percent` of `pool`.
pub fn record(w: &Worker, outcome: Outcome, cfg: &EjectionConfig, pool: &Pool) {
    if !outcome.is_failure(cfg.on) {
        w.state.ejection.success();
        return;
    }
    if !w.state.ejection.failure(cfg.consecutive_failures) {
        return;
    }
    let ejected = pool
        .workers
        .iter()
        .filter(|w| w.state.ejection.is_ejected())
        .count();
    if (ejected + 1) * 100 > pool.workers.len() * cfg.max_percent as usize {
        if let Some(suppressed) = w.state.log_gate.allow() {
            tracing::warn!(backend = %w.address.text, worker = w.id, suppressed,
                "failing, but ejecting it would exceed max_percent of the pool");
        }
        return;
    }
    let length = w.state.ejection.eject(cfg.base_time, cfg.max_time);
    tracing::warn!(backend = %w.address.text, worker = w.id, ejected_for_s = length.as_secs(),
        "ejected after consecutive failures");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Address, WorkerState};
    use std::sync::Arc;

    fn pool(n: usize) -> Pool {
        let workers = (0..n)
            .map(|i| {
                Arc::new(Worker {
                    id: i as i64 + 1,
                    address: Address::new(&format!("127.0.0.1:{}", 8000 + i)),
                    pool_load: Default::default(),
                    weight: 1,
                    pool: "p".into(),
                    version: 1,
                    state: Arc::new(WorkerState::default()),
                })
            })
            .collect();
        Pool::new("p".into(), 1, workers, Default::default())
    }

    #[test]
    fn only_gateway_failures_count_by_default() {
        for o in [
            Outcome::Connect,
            Outcome::Timeout,
            Outcome::Reset,
            Outcome::Protocol,
            Outcome::Status(502),
            Outcome::Status(503),
            Outcome::Status(504),
        ] {
            assert!(o.is_failure(EjectOn::Gateway), "{o:?}");
            assert!(o.is_failure(EjectOn::ServerError), "{o:?}");
        }
        for s in [500, 501, 505] {
            assert!(!Outcome::Status(s).is_failure(EjectOn::Gateway), "{s}");
            assert!(Outcome::Status(s).is_failure(EjectOn::ServerError), "{s}");
        }
        for s in [200, 404, 499] {
            assert!(!Outcome::Status(s).is_failure(EjectOn::ServerError), "{s}");
        }
    }

    #[test]
    fn a_client_provoking_501_never_ejects_a_worker() {
        let p = pool(4);
        let cfg = EjectionConfig {
            consecutive_failures: 2,
            ..EjectionConfig::default()
        };
        for _ in 0..10 {
            record(&p.workers[0], Outcome::Status(501), &cfg, &p);
        }
        assert!(!p.workers[0].state.ejection.is_ejected());
        record(&p.workers[0], Outcome::Status(502), &cfg, &p);
        record(&p.workers[0], Outcome::Connect, &cfg, &p);
        assert!(p.workers[0].state.ejection.is_ejected());
    }

    #[test]
    fn ejection_never_takes_more_than_max_percent() {
        let p = pool(4);
        let cfg = EjectionConfig {
            consecutive_failures: 1,
            max_percent: 50,
            ..EjectionConfig::default()
        };
        for w in &p.workers {
            record(w, Outcome::Reset, &cfg, &p);
        }
        let ejected = p
            .workers
            .iter()
            .filter(|w| w.state.ejection.is_ejected())
            .count();
        assert_eq!(ejected, 2);
    }

    #[test]
    fn a_success_ends_the_streak() {
        let p = pool(2);
        let cfg = EjectionConfig {
            consecutive_failures: 2,
            ..EjectionConfig::default()
        };
        record(&p.workers[0], Outcome::Timeout, &cfg, &p);
        record(&p.workers[0], Outcome::OK, &cfg, &p);
        record(&p.workers[0], Outcome::Timeout, &cfg, &p);
        assert!(!p.workers[0].state.ejection.is_ejected());
    }
}
