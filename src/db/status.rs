//! The status reporter: this instance's view of every worker, kept in `worker_status` so
//! that anyone can read the health of the fleet with `SELECT` (and the view
//! `worker_health`), and `LISTEN worker_health` for its transitions.
//!
//! One task per instance. Every [`TICK`] it compares each worker of the current snapshot
//! with what it last wrote; what changed (health, ejection, drain, weight or address, a
//! drained worker's last request ending, a new worker) is written at once, in one statement,
//! with a `NOTIFY worker_health` for each health or ejection transition in that same
//! statement. Every `[status] interval` it writes every row instead, which refreshes
//! `updated_at` (freshness) and the counters, and deletes its rows of workers it no longer
//! has. So an instance issues at most one statement per tick, and one per interval when
//! nothing happens, whatever the number of workers: rows travel as arrays.
//!
//! It writes through a pooled connection of its own `Db` (never the subscriber's, whose
//! connection only listens), and a database that is down costs the proxy nothing: a failed
//! write is logged once per outage, retried after an interval, and the hot path never waits
//! for this task. On a clean shutdown it deletes its rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::Object;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Db, StartupError};
use crate::config::StatusConfig;
use crate::ring::{Ring, Worker};

/// The NOTIFY channel of health and ejection transitions.
pub const CHANNEL: &str = "worker_health";

/// How often the snapshot is compared with what was written: the most a transition waits,
/// and the rate limit of transition writes (at most one statement per tick).
const TICK: Duration = Duration::from_millis(250);
/// A write that takes longer is abandoned with its connection (a server that vanished).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The delete at shutdown may not hold the shutdown up longer than this.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

/// One statement for every write, prepared once per connection. `batch` is the rows to
/// write; `$3` says whether they are all of this instance's rows (the interval's write), in
/// which case its other rows belong to workers it no longer has and go. `transition` marks
/// the rows whose health or ejection changed: each sends one NOTIFY, delivered at commit.
const WRITE: &str = "
WITH batch AS (
    SELECT * FROM unnest($4::bigint[], $5::text[], $6::text[], $7::bool[], $8::bool[],
                         $9::bool[], $10::int[], $11::int[], $12::bigint[], $13::bigint[],
                         $14::bool[])
        AS b(worker_id, pool, worker_address, healthy, ejected, drained, weight, in_flight,
             requests, failures, transition)
), written AS (
    INSERT INTO worker_status AS s (instance, worker_id, pool, worker_address, healthy,
        ejected, drained, weight, in_flight, requests, failures, interval_ms, updated_at)
    SELECT $1, worker_id, pool, worker_address, healthy, ejected, drained, weight, in_flight,
           requests, failures, $2, now()
    FROM batch
    ON CONFLICT (instance, worker_id) DO UPDATE SET
        pool = excluded.pool, worker_address = excluded.worker_address,
        healthy = excluded.healthy, ejected = excluded.ejected, drained = excluded.drained,
        weight = excluded.weight, in_flight = excluded.in_flight,
        requests = excluded.requests, failures = excluded.failures,
        interval_ms = excluded.interval_ms, updated_at = excluded.updated_at
    RETURNING 1
), forgotten AS (
    DELETE FROM worker_status
    WHERE $3 AND instance = $1 AND worker_id NOT IN (SELECT worker_id FROM batch)
    RETURNING 1
), notified AS (
    SELECT pg_notify('worker_health', json_build_object(
        'instance', $1::text, 'worker_id', worker_id, 'address', worker_address,
        'pool', pool, 'healthy', healthy, 'ejected', ejected)::text)
    FROM batch WHERE transition
)
SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM forgotten),
       (SELECT count(*) FROM notified)";

/// Starts the reporter of `settings` on a `Db` of its own for `url`; it runs until `stop`,
/// then deletes this instance's rows. `admin_port` (the bound one) names the instance when
/// `settings` does not.
pub fn spawn(
    url: &str,
    settings: &StatusConfig,
    ring: Arc<Ring>,
    admin_port: Option<u16>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, StartupError> {
    let db = Db::new(url)?;
    let instance = instance_name(settings.instance.as_deref(), admin_port);
    tracing::info!(instance = %instance, interval_ms = settings.interval.as_millis() as u64,
        "reporting worker status to worker_status");
    let reporter = Reporter::new(db, ring, instance, settings.interval);
    Ok(tokio::spawn(reporter.run(stop)))
}

/// The `instance` column: `configured`, or `HOSTNAME:admin-port`, or `HOSTNAME:pid` when
/// there is no admin endpoint. Both defaults are unique on one host at a time.
pub fn instance_name(configured: Option<&str>, admin_port: Option<u16>) -> String {
    if let Some(name) = configured {
        return name.to_string();
    }
    match admin_port {
        Some(port) => format!("{}:{port}", hostname()),
        None => format!("{}:{}", hostname(), std::process::id()),
    }
}

/// `HOSTNAME` when set (containers set it; shells do not export it), else the kernel's
/// (read from /proc: no unsafe `gethostname` call, and no crate for one line).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// What was last written of one worker: a difference from now is a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The row's version: any change of weight, address or pool changes it.
    version: i64,
    healthy: bool,
    ejected: bool,
    drained: bool,
    /// Drained and nothing in flight any more: what `workers drain --wait` waits for.
    settled: bool,
}

impl Seen {
    fn of(worker: &Worker) -> Seen {
        let state = &worker.state;
        let drained = state.drain.is_drained();
        Seen {
            version: worker.version,
            healthy: state.health.is_healthy(),
            ejected: state.ejection.is_ejected(),
            drained,
            settled: drained && state.in_flight.load(Ordering::Relaxed) == 0,
        }
    }
}

/// Rows to write, as the statement's arrays (borrowed from the snapshot being written).
#[derive(Default)]
struct Batch<'a> {
    ids: Vec<i64>,
    pools: Vec<&'a str>,
    addresses: Vec<&'a str>,
    healthy: Vec<bool>,
    ejected: Vec<bool>,
    drained: Vec<bool>,
    weights: Vec<i32>,
    in_flight: Vec<i32>,
    requests: Vec<i64>,
    failures: Vec<i64>,
    transitions: Vec<bool>,
    /// What each row says, remembered once the write has committed.
    seen: Vec<Seen>,
}

impl<'a> Batch<'a> {
    fn push(&mut self, worker: &'a Worker, seen: Seen, transition: bool) {
        let state = &worker.state;
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.ids.push(worker.id);
        self.pools.push(&worker.pool);
        self.addresses.push(&worker.address.text);
        self.healthy.push(seen.healthy);
        self.ejected.push(seen.ejected);
        self.drained.push(seen.drained);
        self.weights
            .push(i32::try_from(worker.weight).unwrap_or(i32::MAX));
        let in_flight = state.in_flight.load(Ordering::Relaxed);
        self.in_flight
            .push(i32::try_from(in_flight).unwrap_or(i32::MAX));
        self.requests.push(clamp(state.tally.requests()));
        self.failures.push(clamp(state.tally.failures()));
        self.transitions.push(transition);
        self.seen.push(seen);
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// What one write did, for the debug log.
struct Written {
    rows: i64,
    forgotten: i64,
    notified: i64,
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("no answer within {WRITE_TIMEOUT:?}")]
    Timeout,
}

/// The task's state between ticks.
struct Reporter {
    db: Db,
    ring: Arc<Ring>,
    instance: String,
    interval: Duration,
    /// Held between writes, so a write is one round trip: no checkout (whose recycling
    /// check is a query of its own) and a statement prepared once. Dropped on any error.
    client: Option<Object>,
    /// What the last committed write said of each worker.
    reported: HashMap<i64, Seen>,
    /// When every row is written next.
    next_full: Instant,
    /// No write before this: a failed write waits an interval before the next try.
    retry_at: Instant,
    /// Since when writes fail: the outage is logged once, when it starts, and when it ends.
    down_since: Option<Instant>,
}

impl Reporter {
    fn new(db: Db, ring: Arc<Ring>, instance: String, interval: Duration) -> Reporter {
        let now = Instant::now();
        Reporter {
            db,
            ring,
            instance,
            interval,
            client: None,
            reported: HashMap::new(),
            next_full: now,
            retry_at: now,
            down_since: None,
        }
    }

    /// Ticks until `stop`, then deletes this instance's rows.
    async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(TICK.min(self.interval));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = tokio::select! {
                _ = stop.cancelled() => break,
                scheduled = ticks.tick() => scheduled,
            };
            // A write stuck on a vanished server must not hold the shutdown up.
            let stopped = tokio::select! {
                _ = stop.cancelled() => true,
                _ = self.tick(now) => false,
            };
            if stopped {
                self.client = None;
                break;
            }
        }
        self.goodbye().await;
    }

    /// Writes what changed, or everything when the interval is up. `now` is the tick's
    /// scheduled instant, not the clock: the next full write then falls exactly on a tick
    /// (an interval later), instead of one tick late whenever the task woke a little late.
    async fn tick(&mut self, now: Instant) {
        if now < self.retry_at {
            return;
        }
        let snapshot = self.ring.load_full();
        // Generation 0 is the empty ring before the first sync: it says nothing of the
        // workers, and writing it would delete this instance's rows.
        if snapshot.generation == 0 {
            return;
        }
        let full = now >= self.next_full;
        let mut batch = Batch::default();
        for worker in snapshot.pools.iter().flat_map(|p| p.workers.iter()) {
            let seen = Seen::of(worker);
            let before = self.reported.get(&worker.id);
            if full || before != Some(&seen) {
                let transition =
                    before.is_some_and(|b| b.healthy != seen.healthy || b.ejected != seen.ejected);
                batch.push(worker, seen, transition);
            }
        }
        if batch.len() == 0 && !full {
            return;
        }
        let started = Instant::now();
        match self.write(&batch, full).await {
            Ok(written) => {
                tracing::debug!(instance = %self.instance, full, rows = written.rows,
                    forgotten = written.forgotten, notified = written.notified,
                    took_ms = started.elapsed().as_secs_f64() * 1000.0, "worker_status written");
                if full {
                    self.reported.clear();
                    self.next_full = now + self.interval;
                }
                self.reported
                    .extend(batch.ids.iter().copied().zip(batch.seen.iter().copied()));
                if let Some(since) = self.down_since.take() {
                    tracing::info!(instance = %self.instance,
                        down_s = since.elapsed().as_secs(), "worker_status: writing again");
                }
            }
            Err(e) => {
                // Detached from the pool, so it closes instead of being handed out again.
                if let Some(broken) = self.client.take() {
                    drop(Object::take(broken));
                }
                // Everything is written at the next try: rows may have gone stale meanwhile.
                self.retry_at = now + self.interval.max(Duration::from_secs(1));
                self.next_full = self.retry_at;
                if self.down_since.is_none() {
                    self.down_since = Some(now);
                    tracing::warn!(instance = %self.instance, error = %e,
                        "worker_status: cannot write; retrying (logged once per outage)");
                } else {
                    tracing::debug!(error = %e, "worker_status: still cannot write");
                }
            }
        }
    }

    async fn write(&mut self, batch: &Batch<'_>, full: bool) -> Result<Written, WriteError> {
        let interval_ms = i32::try_from(self.interval.as_millis()).unwrap_or(i32::MAX);
        let write = async {
            if self.client.is_none() {
                self.client = Some(self.db.connections.get().await?);
            }
            let client = self.client.as_ref().expect("connected above");
            let statement = client.prepare_cached(WRITE).await?;
            let row = client
                .query_one(
                    &statement,
                    &[
                        &self.instance,
                        &interval_ms,
                        &full,
                        &batch.ids,
                        &batch.pools,
                        &batch.addresses,
                        &batch.healthy,
                        &batch.ejected,
                        &batch.drained,
                        &batch.weights,
                        &batch.in_flight,
                        &batch.requests,
                        &batch.failures,
                        &batch.transitions,
                    ],
                )
                .await?;
            Ok(Written {
                rows: row.try_get(0)?,
                forgotten: row.try_get(1)?,
                notified: row.try_get(2)?,
            })
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .unwrap_or(Err(WriteError::Timeout))
    }

    /// Deletes this instance's rows: a stopped instance serves nothing, and `worker_health`
    /// must not count it while its rows would still look fresh.
    async fn goodbye(mut self) {
        let instance = self.instance.clone();
        let delete = async {
            let client = match self.client.take() {
                Some(c) => c,
                None => self.db.connections.get().await?,
            };
            let n = client
                .execute(
                    "DELETE FROM worker_status WHERE instance = $1",
                    &[&instance],
                )
                .await?;
            Ok::<u64, WriteError>(n)
        };
        match tokio::time::timeout(GOODBYE_TIMEOUT, delete).await {
            Ok(Ok(rows)) => {
                tracing::info!(instance = %instance, rows, "worker_status: removed this instance's rows");
            }
            Ok(Err(e)) => tracing::warn!(instance = %instance, error = %e,
                "worker_status: cannot remove this instance's rows; they go stale after 3 intervals"),
            Err(_) => tracing::warn!(instance = %instance,
                "worker_status: no answer to removing this instance's rows; they go stale after 3 intervals"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        assert_eq!(instance_name(Some("lb-a"), Some(9901)), "lb-a");
        let host = hostname();
        assert!(!host.is_empty());
        assert_eq!(instance_name(None, Some(9901)), format!("{host}:9901"));
        assert_eq!(
            instance_name(None, None),
            format!("{host}:{}", std::process::id())
        );
    }
}
