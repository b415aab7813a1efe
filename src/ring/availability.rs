//! Whether a worker should take new traffic right now, beyond its weight: active health,
//! passive ejection, slow start and drain. The state lives in `WorkerState`, keyed by
//! `workers.id`, so a reweight never resets it; the ring is never rebuilt for it: the
//! proxy filters at pick time.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the process started: a cheap clock for deadlines kept in atomics.
/// Never 0, so 0 can mean "not set".
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Active health: rise/fall thresholds over consecutive check results. A new worker is
/// healthy until checks say otherwise (as in Envoy and HAProxy).
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    /// Consecutive passes (> 0) or failures (< 0) so far.
    streak: AtomicI32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            streak: AtomicI32::new(0),
        }
    }
}

impl Health {
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one check result (one checker per worker writes); returns the new state
    /// when it changed.
    pub fn record(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let streak = self.streak.load(Ordering::Relaxed);
        let streak = match (passed, streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        self.streak.store(streak, Ordering::Relaxed);
        let healthy = self.is_healthy();
        let flip = if healthy {
            streak <= -(fall as i32)
        } else {
            streak >= rise as i32
        };
        if flip {
            self.healthy.store(!healthy, Ordering::Relaxed);
            Some(!healthy)
        } else {
            None
        }
    }
}

/// Passive ejection: consecutive failures of real traffic take a worker out for a while,
/// longer on each repeat offence.
#[derive(Debug, Default)]
pub struct Ejection {
    failures: AtomicU32,
    /// Ejected until this `now_ms()`; 0: not ejected.
    until_ms: AtomicU64,
    /// Ejections so far, which lengthen the next one.
    count: AtomicU32,
}

impl Ejection {
    #[inline]
    pub fn is_ejected(&self) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        // Reading the clock only for workers that were ever ejected.
        until != 0 && until > now_ms()
    }

    /// A request succeeded: the failure streak ends.
    #[inline]
    pub fn success(&self) {
        // Skips the write (and the cache-line traffic) in the common case.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed; true when the streak reached `threshold` (0: never).
    pub fn failure(&self, threshold: u32) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        threshold > 0 && n >= threshold
    }

    /// Ejects for `base` × (previous ejections + 1), at most `max`; returns for how long.
    pub fn eject(&self, base: Duration, max: Duration) -> Duration {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let length = base.saturating_mul(count).min(max);
        self.until_ms
            .store(now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        length
    }
}

/// Slow start: after it begins, a worker's share of picks grows linearly from `from` to
/// all of it over the pool's `slow_start`.
#[derive(Debug, Default)]
pub struct Ramp {
    /// When the ramp began (`now_ms()`); 0: not ramping.
    start_ms: AtomicU64,
    /// The share at the start, in thousandths.
    from_permille: AtomicU32,
}

impl Ramp {
    /// Starts a ramp from `from` (0.0: a new or recovered worker; old/new weight on a raise).
    pub fn begin(&self, from: f64) {
        let from = (from.clamp(0.0, 1.0) * 1000.0) as u32;
        self.from_permille.store(from, Ordering::Relaxed);
        self.start_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The share of picks this worker should accept now, in 0.0..=1.0.
    #[inline]
    pub fn share(&self, slow_start: Duration) -> f64 {
        let start = self.start_ms.load(Ordering::Relaxed);
        if start == 0 || slow_start.is_zero() {
            return 1.0;
        }
        let elapsed = now_ms().saturating_sub(start) as f64;
        let progress = elapsed / slow_start.as_millis() as f64;
        if progress >= 1.0 {
            // Done: later picks skip the clock.
            self.start_ms.store(0, Ordering::Relaxed);
            return 1.0;
        }
        let from = f64::from(self.from_permille.load(Ordering::Relaxed)) / 1000.0;
        from + (1.0 - from) * progress
    }
}

/// At most one log line a second per worker for failures of single requests: a dead or
/// overloaded backend fails thousands of requests a second, and a line each would flood the
/// log (and cost CPU when it matters most).
#[derive(Debug, Default)]
pub struct LogGate {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    /// `Some(n)`: log now; `n` lines were suppressed since the last one. `None`: stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Drain: weight 0 or deleted. Connections to a drained worker are cut once the pool's
/// `drain_timeout` has passed; this is what they wait on.
#[derive(Debug)]
pub struct Drain(tokio::sync::watch::Sender<bool>);

impl Default for Drain {
    fn default() -> Self {
        Drain(tokio::sync::watch::Sender::new(false))
    }
}

impl Drain {
    pub fn set(&self, drained: bool) {
        self.0
            .send_if_modified(|d| std::mem::replace(d, drained) != drained);
    }

    /// Resolves once the worker has been drained for `timeout` without interruption.
    pub async fn expired(&self, timeout: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            if rx.wait_for(|d| *d).await.is_err() {
                return std::future::pending().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(timeout) => return,
                // Undrained (weight back above 0) before the deadline: wait again.
                _ = rx.wait_for(|d| !*d) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_fall_failures_then_rise_passes() {
        let h = Health::default();
        assert!(h.is_healthy());
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(
            h.record(true, 2, 3),
            None,
            "a pass resets the failure streak"
        );
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
        assert!(h.is_healthy());
    }

    #[test]
    fn ejection_grows_with_repeat_offences() {
        let e = Ejection::default();
        assert!(!e.failure(3) && !e.failure(3));
        e.success();
        assert!(!e.failure(3) && !e.failure(3) && e.failure(3));
        let base = Duration::from_secs(10);
        assert_eq!(e.eject(base, Duration::from_secs(25)), base);
        assert!(e.is_ejected());
        assert_eq!(e.eject(base, Duration::from_secs(25)), 2 * base);
        assert_eq!(
            e.eject(base, Duration::from_secs(25)),
            Duration::from_secs(25)
        );
        assert!(!Ejection::default().failure(0), "threshold 0 never ejects");
    }

    #[test]
    fn log_gate_lets_one_line_a_second_through() {
        let g = LogGate::default();
        assert_eq!(g.allow(), Some(0));
        assert_eq!(g.allow(), None);
        assert_eq!(g.allow(), None);
        // The next line allowed reports the two it replaced.
        g.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(g.allow(), Some(2));
    }

    #[test]
    fn ramp_grows_from_its_start_share() {
        let r = Ramp::default();
        let slow = Duration::from_secs(100);
        assert_eq!(r.share(slow), 1.0, "not ramping");
        r.begin(0.25);
        let s = r.share(slow);
        assert!((0.25..0.27).contains(&s), "{s}");
        assert_eq!(r.share(Duration::ZERO), 1.0, "slow start off");
    }
}
