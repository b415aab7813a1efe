//! Connections to one worker kept for reuse.
//!
//! Each worker's [`IdleConns`] holds idle HTTP/1.1 connections ([`Upstream`]) in a
//! lock-free queue, for both HTTP transports, and the HTTP/2 connections of an h2 pool
//! (`h2/`), which many requests share at once. A request takes one (or dials a new one)
//! and gives it back only once the response has ended cleanly; a connection in any other
//! state is dropped, never reused. The store hangs off the worker's state in the ring
//! (`WorkerState::attached`), so a reweight keeps the warm connections and a removed worker
//! takes its idle connections with it.
//!
//! Whether a connection may be kept is read from the worker's state, never pushed by the
//! ring: a drained worker's connection is closed when it comes back, and [`reap`] closes
//! connections idle longer than the pool's `idle_timeout` and those of drained workers,
//! without waiting for a request.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio_util::sync::CancellationToken;

use super::Upstream;
use super::h2::Multiplexed;
use crate::ring::state::now_ms;
use crate::ring::{Ring, Worker};

/// A connection that can tell whether its backend has closed it.
trait Reusable {
    fn is_closed(&self) -> bool;
}

impl Reusable for Upstream {
    /// An idle connection becomes readable only when the backend closes it (or, wrongly,
    /// sends something unasked).
    fn is_closed(&self) -> bool {
        self.stream.is_closed()
    }
}

/// An idle connection and when it went idle (`now_ms()`).
struct Idle<T>(T, u64);

/// Idle connections kept per backend and kind; more are closed when returned.
const MAX_IDLE: usize = 256;

/// One queue of idle connections, allocated on the first one returned: a queue is a few
/// kilobytes, and a pool of 10,000 workers (most never used by a given instance) must not
/// cost tens of megabytes.
struct Queue<T>(OnceLock<ArrayQueue<Idle<T>>>);

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue(OnceLock::new())
    }
}

impl<T: Reusable> Queue<T> {
    fn take(&self, max_idle: Duration) -> Option<T> {
        let idle = self.0.get()?;
        let oldest = now_ms().saturating_sub(max_idle.as_millis() as u64);
        while let Some(Idle(c, since)) = idle.pop() {
            if since >= oldest && !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: T) {
        let _ = self
            .0
            .get_or_init(|| ArrayQueue::new(MAX_IDLE))
            .push(Idle(c, now_ms()));
    }

    /// Closes the connections idle since before `oldest` (a `now_ms()`), or closed by the
    /// backend; returns how many. Takers may interleave: a fresh connection they miss
    /// while it is out of the queue here is only missed for that moment.
    fn expire(&self, oldest: u64) -> usize {
        let Some(idle) = self.0.get() else { return 0 };
        let mut closed = 0;
        for _ in 0..idle.len() {
            let Some(entry) = idle.pop() else { break };
            if entry.1 >= oldest && !entry.0.is_closed() {
                // Full only if takers returned more meanwhile: then this one closes.
                closed += usize::from(idle.push(entry).is_err());
            } else {
                closed += 1;
            }
        }
        closed
    }

    fn len(&self) -> usize {
        self.0.get().map_or(0, ArrayQueue::len)
    }
}

/// The idle connections of one worker.
#[derive(Default)]
pub struct IdleConns {
    h1: Queue<Upstream>,
    /// A `protocol = "h2"` worker's connections (empty for other workers).
    pub h2: Multiplexed,
}

impl fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleConns")
            .field("idle", &self.len())
            .finish()
    }
}

impl IdleConns {
    /// The store of `worker`, made on first use.
    #[inline]
    pub fn of(worker: &Worker) -> &IdleConns {
        worker.state.attached.get()
    }

    /// Idle connections of `worker` now (0 if it never had any).
    pub fn count(worker: &Worker) -> usize {
        worker
            .state
            .attached
            .peek::<IdleConns>()
            .map_or(0, IdleConns::len)
    }

    /// An idle connection that is still open and was idle less than
    /// `max_idle` (older ones are closed).
    pub fn take_upstream(&self, max_idle: Duration) -> Option<Upstream> {
        self.h1.take(max_idle)
    }

    /// Returns a connection whose last response ended cleanly to `worker`'s store, unless
    /// the worker is drained (weight 0, deleted or re-addressed): then it closes now.
    /// A private connection (one that carried a client's PROXY header) is closed too: any
    /// other client would be taken for that one.
    pub fn put_upstream(worker: &Worker, c: Upstream) {
        if c.private || worker.state.drain.is_drained() {
            return;
        }
        let idle = IdleConns::of(worker);
        idle.h1.put(c);
        // Drained meanwhile (a removed worker is no longer visited by the reaper): close
        // what was just kept.
        if worker.state.drain.is_drained() {
            idle.expire(u64::MAX);
        }
    }

    /// Closes the connections idle since before `oldest` (every one when `oldest` is
    /// `u64::MAX`); returns how many.
    fn expire(&self, oldest: u64) -> usize {
        self.h1.expire(oldest) + self.h2.expire(oldest)
    }

    pub fn len(&self) -> usize {
        self.h1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How often [`reap`] looks: a fraction of the timeout, so a connection is closed at most
/// that much after its `idle_timeout`, and at least once a second for drained workers.
fn reap_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Closes, for the workers of `pool`, connections idle longer than `idle_timeout` and every
/// idle connection of a drained worker, until `stop`. Takers already skip such connections;
/// this closes them when no request comes (a quiet pool held them open for ever before).
pub async fn reap(ring: Arc<Ring>, pool: usize, idle_timeout: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(reap_interval(idle_timeout));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let snapshot = ring.load_full();
        let oldest = now_ms().saturating_sub(idle_timeout.as_millis() as u64);
        for worker in &snapshot.pool(pool).workers {
            let Some(idle) = worker.state.attached.peek::<IdleConns>() else {
                continue;
            };
            let cutoff = if worker.state.drain.is_drained() {
                u64::MAX
            } else {
                oldest
            };
            let closed = idle.expire(cutoff);
            if closed > 0 {
                tracing::debug!(backend = %worker.address.text, worker = worker.id, closed,
                    "closed idle connections");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Address, WorkerState};
    use crate::upstream::connect_upstream;

    async fn worker_and_listener() -> (Arc<Worker>, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let worker = Arc::new(Worker {
            id: 1,
            address: Address::new(&address),
            pool_load: Default::default(),
            weight: 1,
            pool: "p".into(),
            version: 1,
            state: Arc::new(WorkerState::default()),
        });
        (worker, listener)
    }

    async fn connection(worker: &Worker) -> Upstream {
        let connector = super::super::Connector::new(&crate::config::PoolConfig::default());
        let client = "127.0.0.1:1".parse().unwrap();
        connect_upstream(worker, &connector, client).await.unwrap()
    }

    #[tokio::test]
    async fn a_drained_workers_connection_is_closed_when_it_comes_back() {
        let (worker, _listener) = worker_and_listener().await;
        IdleConns::put_upstream(&worker, connection(&worker).await);
        assert_eq!(IdleConns::count(&worker), 1);
        worker.state.drain.set(true);
        IdleConns::put_upstream(&worker, connection(&worker).await);
        assert_eq!(
            IdleConns::count(&worker),
            1,
            "not kept for a drained worker"
        );
    }

    #[tokio::test]
    async fn expire_closes_connections_idle_since_before_the_cutoff() {
        let (worker, _listener) = worker_and_listener().await;
        IdleConns::put_upstream(&worker, connection(&worker).await);
        IdleConns::put_upstream(&worker, connection(&worker).await);
        let idle = IdleConns::of(&worker);
        assert_eq!(
            idle.expire(0),
            0,
            "none idle since before the start of time"
        );
        assert_eq!(
            idle.expire(u64::MAX),
            2,
            "every one idle since before the end of it"
        );
        assert!(idle.is_empty());
    }

    #[test]
    fn reap_interval_is_a_fraction_of_the_timeout_within_bounds() {
        assert_eq!(
            reap_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            reap_interval(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            reap_interval(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }
}
