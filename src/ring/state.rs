//! Per-worker state that outlives snapshots: in-flight count, active health, passive
//! ejection, slow start, drain, and a slot for what other layers keep per worker (the idle
//! connections of `upstream`). Keyed by `workers.id` through [`WorkerState`], so a reweight
//! never resets it, and the ring is never rebuilt for it: these cells are read at pick
//! time. They are plain cells with their own small arithmetic (streaks, growing ejection
//! lengths, ramps); what to do with them — skip, fail open, eject or not — is `balance`'s.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::Worker;
use super::tally::Tally;

/// State that belongs to one backend for as long as its id and address stay the same.
#[derive(Debug, Default)]
pub struct WorkerState {
    /// Requests (HTTP) or connections (TCP) currently being served by this backend.
    pub in_flight: AtomicU64,
    /// Active health checks' verdict.
    pub health: Health,
    /// Passive ejection after failures of real traffic.
    pub ejection: Ejection,
    /// Slow start after being added, recovering or getting a higher weight.
    pub ramp: Ramp,
    /// Weight 0, deleted or re-addressed: nothing new goes here; in-flight work may finish
    /// until the pool's drain timeout, and idle connections are closed.
    pub drain: Drain,
    /// Throttles per-request failure logs about this worker.
    pub log_gate: LogGate,
    /// What it served: read by `/metrics` and `worker_status`.
    pub tally: Tally,
    /// What the layer that talks to backends keeps per worker (its idle connections). Typed
    /// by that layer: the ring holds it so it lives and dies with the worker, without
    /// knowing what a connection is.
    pub attached: Attached,
}

/// A value of one type per worker, made on first use and dropped with the worker's state.
#[derive(Default)]
pub struct Attached(OnceLock<Box<dyn Any + Send + Sync>>);

impl Attached {
    /// The attached `T`, made with `T::default()` on the first call. One type per process
    /// uses this slot (upstream's idle store); another type would be a programming error.
    #[inline]
    pub fn get<T: Any + Send + Sync + Default>(&self) -> &T {
        self.0
            .get_or_init(|| Box::new(T::default()))
            .downcast_ref()
            .expect("one type is attached to workers")
    }

    /// The attached `T`, if it was ever made.
    pub fn peek<T: Any>(&self) -> Option<&T> {
        self.0.get().and_then(|b| b.downcast_ref())
    }
}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Attached(..)"
        } else {
            "Attached(-)"
        })
    }
}

/// Counts one request (HTTP) or connection (TCP) in flight on a worker until dropped. It
/// holds the worker itself, so a request outlives its worker's removal from the ring: that
/// is how a drain lets in-flight work finish.
#[derive(Debug)]
pub struct InFlight(Arc<Worker>);

impl InFlight {
    pub fn new(worker: Arc<Worker>) -> InFlight {
        worker.state.in_flight.fetch_add(1, Ordering::Relaxed);
        worker.pool_load.fetch_add(1, Ordering::Relaxed);
        InFlight(worker)
    }

    pub fn worker(&self) -> &Arc<Worker> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.pool_load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since the process started: a cheap clock for deadlines and idle stamps
/// kept in atomics, compared only with each other. Never 0, so 0 can mean "not set".
///
/// The coarse monotonic clock: the kernel's last tick, read without the timestamp counter,
/// a few milliseconds behind at most. The request path reads it several times per request,
/// and its timeouts are counted in seconds.
pub fn now_ms() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let ms = t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000;
    ms.saturating_sub(*START.get_or_init(|| ms)) + 1
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

/// Drain: weight 0, deleted or re-addressed. Nothing new is sent to a drained worker, its
/// idle connections are closed, and connections still in use are cut once the pool's
/// `drain_timeout` has passed; this is what they wait on.
#[derive(Debug)]
pub struct Drain {
    /// The same as the watch's value, for the per-request check without the watch's lock.
    drained: AtomicBool,
    watch: tokio::sync::watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            drained: AtomicBool::new(false),
            watch: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Drain {
    pub fn set(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
        self.watch
            .send_if_modified(|d| std::mem::replace(d, drained) != drained);
    }

    #[inline]
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// A watch on the drain that does not keep the worker alive (a connection's watcher
    /// holds it while the connection sits in the worker's own idle store).
    pub fn watch(&self) -> DrainWatch {
        DrainWatch(self.watch.subscribe())
    }
}

/// See [`Drain::watch`].
#[derive(Debug)]
pub struct DrainWatch(tokio::sync::watch::Receiver<bool>);

impl DrainWatch {
    /// Resolves once the worker has been drained for `timeout` without interruption. Never
    /// resolves once the worker's state is gone (nothing is left to cut for it).
    pub async fn expired(&mut self, timeout: Duration) {
        loop {
            if self.0.wait_for(|d| *d).await.is_err() {
                return std::future::pending().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(timeout) => return,
                // Undrained (weight back above 0) before the deadline: wait again.
                _ = self.0.wait_for(|d| !*d) => {}
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
