//! The database subscriber: the task that LISTENs for the NOTIFY events of the `workers`
//! and `routes` tables (one channel), and the only writer of the ring. (A "listener" in
//! this crate is a `[[listeners]]` socket that clients connect to; the database side is
//! the subscriber.)
//!
//! It owns one plain tokio-postgres connection, driven through `Connection::poll_message`
//! (a deadpool connection would swallow notifications, and recycling runs UNLISTEN). On
//! every (re)connect it LISTENs first, then reads a full snapshot, then applies events
//! idempotently, so nothing committed in between is lost. Row events are collected until the
//! statement's END marker and published as one snapshot. A lost connection is retried with
//! capped exponential backoff and jitter while the proxy keeps serving the last ring; while
//! the server accepts no connection at all the cap is half a second, so the ring resyncs
//! within a second of the database coming back (see [`UNREACHABLE_CAP`]).
//! Anti-entropy compares the ring with the tables now and then and resyncs on a difference,
//! so even an event lost for a reason nobody foresaw heals on its own. Its state is shown
//! by `/status` through [`SyncStatus`].

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::event::Event;
use super::{CHANNEL, Db, SnapshotError};
use crate::metrics::Metrics;
use crate::ring::{Applied, Change, Changes, Membership, RouteRow, Tables};

/// A heartbeat or anti-entropy query unanswered this long (at most) means the server is gone.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// After a fingerprint mismatch, look again this soon: events in flight during the first
/// look can explain it, a second mismatch cannot.
const RECHECK: Duration = Duration::from_secs(1);
/// A batch is published at the first END marker (statement boundary) at which no further
/// event is queued, or, under a steady stream of statements, at the first END after it has
/// waited this long. Batches are never split inside a statement.
const MAX_BATCH_DELAY: Duration = Duration::from_millis(20);
/// Safety net for row events without an END marker (a trigger disabled by hand): publish
/// after this much quiet.
const QUIET_FLUSH: Duration = Duration::from_millis(100);
/// Reconnect delays grow from the first to the cap, each one jittered down by up to half.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The cap instead while no server accepts the connection at all (refused, reset, closed
/// before a word, timed out): see [`SubscriberError::is_unreachable`]. Jittered to 250–500
/// ms, so the ring resyncs within a second of PostgreSQL accepting connections again.
///
/// Why a short cap on full attempts rather than a TCP probe that gates them: such an
/// attempt costs the server what a probe would (a refused SYN, or a handshake PostgreSQL
/// closes before starting a backend), and a probe answers the wrong question: the port
/// accepts while PostgreSQL is still recovering ("the database system is starting up"),
/// and a pooler, relay or NAT in front accepts while the server behind it is down, so
/// the probe would pass and the attempt fail, and the attempt must be classified anyway.
/// A login that is refused (authentication, missing database, too many clients) and
/// failures after login keep the long backoff: those cost the server a backend each, and
/// retrying faster fixes nothing.
const UNREACHABLE_CAP: Duration = Duration::from_millis(500);
/// While reconnecting, an unchanged error is logged at warn at most this often (debug
/// otherwise): fast retries must not flood the log during a long outage.
const REPEAT_WARN_EVERY: Duration = Duration::from_secs(10);
/// Above this many changes in one publish, changes are logged at debug with one info summary.
const LOG_EACH_UP_TO: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error(transparent)]
    Prepare(#[from] super::StartupError),
    /// With its causes in the message (tokio-postgres' own says only which step failed,
    /// e.g. "error performing TLS handshake"): the reconnect log line is all there is.
    #[error("connect: {}", super::chain(.0))]
    Connect(tokio_postgres::Error),
    #[error("LISTEN failed (a read replica, or a transaction-mode pooler, cannot LISTEN): {0}")]
    Listen(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("heartbeat unanswered for {0:?}")]
    Heartbeat(Duration),
}

impl SubscriberError {
    /// Whether retrying may help; otherwise an operator must act (wrong database, refused
    /// login, a server that cannot LISTEN). Only startup tells the two apart: once running,
    /// the subscriber retries everything, as the proxy must outlive a database in trouble.
    pub fn is_transient(&self) -> bool {
        match self {
            SubscriberError::Prepare(e) => e.is_transient(),
            SubscriberError::Listen(_) => false,
            _ => true,
        }
    }

    /// Whether no server accepted the connection: refused, reset, closed or timed out
    /// before PostgreSQL said a word, or PostgreSQL still starting up or recovering
    /// (57P03, the usual first answer of a restarted server). No session was started, so
    /// retrying soon costs the server nothing; see [`UNREACHABLE_CAP`]. A server that
    /// answers but whose TLS fails (it refuses TLS the URL requires, or the handshake
    /// fails) is not unreachable: that waits for an operator, at the long backoff.
    pub fn is_unreachable(&self) -> bool {
        match self {
            SubscriberError::Prepare(e) => matches!(e, super::StartupError::Unreachable { .. }),
            SubscriberError::Connect(e) => {
                super::tls::failure(e).is_none()
                    && e.code()
                        .is_none_or(|c| *c == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW)
            }
            _ => false,
        }
    }
}

/// What `/status` shows of the subscriber (under the key `"listener"`, kept for existing
/// dashboards). Written by the subscriber task, read by admin requests; never touched by
/// the hot path, so a mutex is fine.
#[derive(Debug, Default)]
pub struct SyncStatus(Mutex<SyncState>);

#[derive(Debug, Clone, Serialize)]
pub struct SyncState {
    /// "starting", "connected" or "reconnecting".
    pub state: &'static str,
    /// When the current state began (Unix milliseconds).
    pub since_unix_ms: u64,
    /// Why the connection was lost, while reconnecting.
    pub last_error: Option<String>,
    /// Full rereads of the tables since start (startup and reconnects included).
    pub resyncs: u64,
    pub last_resync_reason: Option<String>,
    pub last_resync_unix_ms: Option<u64>,
    /// Where the ring came from: "database", "cache" (startup without the database), or
    /// "none" (nothing yet: every request gets 503).
    pub ring_source: &'static str,
}

impl Default for SyncState {
    fn default() -> Self {
        SyncState {
            state: "starting",
            since_unix_ms: unix_ms(),
            last_error: None,
            resyncs: 0,
            last_resync_reason: None,
            last_resync_unix_ms: None,
            ring_source: "none",
        }
    }
}

impl SyncStatus {
    pub fn get(&self) -> SyncState {
        self.0
            .lock()
            .expect("never poisoned: no panics while held")
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut SyncState)) {
        f(&mut self.0.lock().expect("never poisoned: no panics while held"));
    }

    fn set_state(&self, state: &'static str, error: Option<String>) {
        self.update(|s| {
            if s.state != state {
                s.state = state;
                s.since_unix_ms = unix_ms();
            }
            s.last_error = error;
        });
    }

    /// The first connection failed at startup: the subscriber is reconnecting from now on
    /// (so a 503 can say since when the database is unreachable, from the first request).
    pub fn set_unreachable(&self, error: &SubscriberError) {
        self.set_state("reconnecting", Some(error.to_string()));
    }

    pub fn set_source(&self, source: &'static str) {
        self.update(|s| s.ring_source = source);
    }
}

/// A duration for a log line: milliseconds to three decimals (7.885, not 7.8845670000000005).
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Timings of the subscriber, from `[database]`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub anti_entropy: Duration,
}

pub struct Subscriber {
    db: Db,
    membership: Membership,
    shutdown: CancellationToken,
    status: Arc<SyncStatus>,
    timing: Timing,
    /// Resyncs by reason, and how long a NOTIFY takes to reach the ring.
    metrics: Arc<Metrics>,
    /// Migrations run on the first successful connection, which may come long after
    /// startup if the proxy started without its database.
    migrated: bool,
}

/// One live connection with LISTEN active.
pub struct Session {
    client: tokio_postgres::Client,
    /// Notifications and the connection's end, from the task that drives the connection.
    messages: mpsc::UnboundedReceiver<Message>,
    driver: JoinHandle<()>,
}

enum Message {
    Notification { payload: String, at: Instant },
    Closed(String),
}

impl Subscriber {
    pub fn new(
        db: Db,
        membership: Membership,
        shutdown: CancellationToken,
        status: Arc<SyncStatus>,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> Subscriber {
        Subscriber {
            db,
            membership,
            shutdown,
            status,
            timing,
            metrics,
            migrated: false,
        }
    }

    /// Seeds the ring from cached rows, for serving while the database is unreachable.
    pub fn restore(&mut self, tables: Tables) {
        let (workers, routes) = (tables.workers.len(), tables.routes.len());
        self.membership.reset_tables(tables);
        self.status.set_source("cache");
        tracing::warn!(
            workers,
            routes,
            "serving the cached ring until the database answers"
        );
    }

    /// Migrates (first time only), connects, LISTENs, and resets the ring from a fresh
    /// snapshot.
    pub async fn connect(&mut self, reason: &str) -> Result<Session, SubscriberError> {
        if !self.migrated {
            self.db.migrate().await?;
            self.migrated = true;
        }
        let (client, connection) = self
            .db
            .config
            .connect(self.db.tls.clone())
            .await
            .map_err(SubscriberError::Connect)?;
        let (tx, messages) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(connection, tx));
        let session = Session {
            client,
            messages,
            driver,
        };
        session
            .client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(SubscriberError::Listen)?;
        self.resync(reason).await?;
        self.status.set_state("connected", None);
        Ok(session)
    }

    /// Reads both tables and publishes them as the ring (only if anything differs).
    async fn resync(&mut self, reason: &str) -> Result<(), SubscriberError> {
        let started = Instant::now();
        let tables = self.db.snapshot().await?;
        let (count, routes) = (tables.workers.len(), tables.routes.len());
        let applied = self.membership.reset_tables(tables);
        self.status.update(|s| {
            s.resyncs += 1;
            s.last_resync_reason = Some(reason.to_string());
            s.last_resync_unix_ms = Some(unix_ms());
            s.ring_source = "database";
        });
        self.metrics.resynced(reason);
        tracing::info!(
            reason,
            rows = count,
            routes,
            changes = applied.changes.len() + applied.routes.len(),
            generation = applied
                .generation
                .unwrap_or(self.membership.ring().load().generation),
            took_ms = millis(started.elapsed()),
            "ring synced from workers table"
        );
        Ok(())
    }

    /// Follows the tables until shutdown, reconnecting whenever the connection is lost.
    /// `session` is the one made at startup, if any.
    pub async fn run(mut self, mut session: Option<Session>) {
        let mut backoff = Backoff::default();
        // Since when the subscriber has had no session, and its failed attempts since.
        let mut lost = Instant::now();
        let mut attempts: u64 = 0;
        // The error last logged at warn, and when: an unchanged one is repeated rarely.
        let mut warned: Option<(String, Instant)> = None;
        loop {
            let live = match session.take() {
                Some(s) => s,
                None => match self.connect("reconnect").await {
                    Ok(s) => {
                        tracing::info!(
                            failed_attempts = attempts,
                            without_database_ms = lost.elapsed().as_millis() as u64,
                            "database subscriber reconnected"
                        );
                        backoff = Backoff::default();
                        attempts = 0;
                        warned = None;
                        s
                    }
                    Err(e) => {
                        attempts += 1;
                        let wait = backoff.next(&e);
                        let error = e.to_string();
                        self.status.set_state("reconnecting", Some(error.clone()));
                        let repeat = warned.as_ref().is_some_and(|(last, at)| {
                            *last == error && at.elapsed() < REPEAT_WARN_EVERY
                        });
                        let retry_in_ms = wait.as_millis() as u64;
                        if repeat {
                            tracing::debug!(
                                error,
                                retry_in_ms,
                                attempts,
                                "database subscriber cannot reconnect; serving the last ring"
                            );
                        } else {
                            tracing::warn!(
                                error,
                                retry_in_ms,
                                attempts,
                                "database subscriber cannot reconnect; serving the last ring"
                            );
                            warned = Some((error, Instant::now()));
                        }
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(wait) => continue,
                        }
                    }
                },
            };
            match self.follow(live).await {
                Ok(()) => return,
                Err(e) => {
                    lost = Instant::now();
                    self.status.set_state("reconnecting", Some(e.to_string()));
                    tracing::warn!(error = %e,
                        "database subscriber lost its connection; serving the last ring while reconnecting");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(jitter(BACKOFF_FIRST)) => {}
                    }
                }
            }
        }
    }

    /// Applies events from one session until shutdown (`Ok`) or the connection fails.
    async fn follow(&mut self, mut session: Session) -> Result<(), SubscriberError> {
        let every = |d: Duration| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        let mut heartbeat = every(self.timing.heartbeat);
        let mut anti_entropy = every(self.timing.anti_entropy);
        // Set after a fingerprint mismatch: when to look again before resyncing.
        let mut recheck: Option<tokio::time::Instant> = None;
        let mut batch = Batch::default();
        loop {
            let quiet = batch.last.map(|t| (t + QUIET_FLUSH).into());
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    session.close().await;
                    return Ok(());
                }
                message = session.messages.recv() => {
                    let message = message.unwrap_or(Message::Closed("driver stopped".into()));
                    let more = !session.messages.is_empty();
                    self.on_message(message, &mut batch, more).await?;
                }
                _ = sleep_until(quiet), if quiet.is_some() => {
                    tracing::warn!(changes = batch.changes.len(),
                        "row events without an END marker; is a workers_notify_statement or routes_notify_statement trigger disabled?");
                    self.publish(&mut batch).await?;
                }
                _ = heartbeat.tick() => {
                    let limit = self.timing.heartbeat.min(QUERY_TIMEOUT);
                    match tokio::time::timeout(limit, session.client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(SubscriberError::Lost(e.to_string())),
                        Err(_) => return Err(SubscriberError::Heartbeat(limit)),
                    }
                }
                _ = anti_entropy.tick(), if recheck.is_none() => {
                    if let Some(what) = self.drifted(&mut session, &mut batch).await? {
                        tracing::info!(differs = what, "ring differs from the tables; looking again shortly");
                        recheck = Some(tokio::time::Instant::now() + RECHECK);
                    }
                }
                _ = sleep_until(recheck), if recheck.is_some() => {
                    recheck = None;
                    if let Some(what) = self.drifted(&mut session, &mut batch).await? {
                        tracing::warn!(differs = what, "ring still differs from the tables: an event was lost; resyncing");
                        batch = Batch::default();
                        self.resync("anti-entropy").await?;
                    }
                }
            }
        }
    }

    /// Handles one message of the session; `more` says whether others are already queued.
    async fn on_message(
        &mut self,
        message: Message,
        batch: &mut Batch,
        more: bool,
    ) -> Result<(), SubscriberError> {
        let (payload, at) = match message {
            Message::Notification { payload, at } => (payload, at),
            Message::Closed(reason) => return Err(SubscriberError::Lost(reason)),
        };
        match Event::parse(&payload) {
            Ok(Event::Worker(change)) => batch.push(change, at),
            Ok(Event::Route(change)) => batch.push_route(change, at),
            // One statement's events are complete. More may already be queued (the next
            // statements of its transaction): take them into this batch unless it has
            // waited long enough.
            Ok(Event::End) => {
                let waited = batch.first.is_some_and(|t| t.elapsed() >= MAX_BATCH_DELAY);
                if !more || waited {
                    self.publish(batch).await?;
                }
            }
            Ok(Event::Truncate) => {
                *batch = Batch::default();
                self.resync("truncate").await?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "resyncing after a payload it cannot use");
                *batch = Batch::default();
                self.resync("unparsable payload").await?;
            }
        }
        Ok(())
    }

    /// Compares the ring with the tables; says what differs (`pool NAME` or `routes`), if
    /// anything. Events the query's answer overtook are applied first: PostgreSQL sends the
    /// notifications of everything committed before the query ahead of its result, so they
    /// are queued.
    async fn drifted(
        &mut self,
        session: &mut Session,
        batch: &mut Batch,
    ) -> Result<Option<String>, SubscriberError> {
        let table =
            match tokio::time::timeout(QUERY_TIMEOUT, Db::fingerprints(&session.client)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Err(SubscriberError::Lost(e.to_string())),
                Err(_) => return Err(SubscriberError::Heartbeat(QUERY_TIMEOUT)),
            };
        while let Ok(message) = session.messages.try_recv() {
            let more = !session.messages.is_empty();
            self.on_message(message, batch, more).await?;
        }
        self.publish(batch).await?;
        let ring = self.membership.ring().load().fingerprints();
        Ok(table.difference(&ring))
    }

    /// Applies and publishes the batch; resyncs if it revealed a lost event.
    async fn publish(&mut self, batch: &mut Batch) -> Result<(), SubscriberError> {
        let Batch { changes, first, .. } = std::mem::take(batch);
        if changes.is_empty() {
            return Ok(());
        }
        let received = changes.len();
        let applied = self.membership.apply(changes);
        let latency = first.map(|t| t.elapsed());
        if let (Some(latency), Some(_)) = (latency, applied.generation) {
            self.metrics.ring_apply.observe(latency);
        }
        let latency_us = latency.map_or(0, |t| t.as_micros() as u64);
        log_applied(&applied, received, latency_us);
        if applied.gap {
            tracing::warn!("an update skipped a version this ring never saw: resyncing");
            self.resync("version gap").await?;
        }
        Ok(())
    }
}

impl Session {
    /// Ends the session cleanly: dropping the client makes the connection send Terminate.
    async fn close(self) {
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.driver).await;
    }
}

/// Changes received since the last publish.
#[derive(Default)]
struct Batch {
    changes: Changes,
    /// When the first of them arrived: the start of the NOTIFY → publish latency.
    first: Option<Instant>,
    /// When the latest arrived, for the quiet-time safety net.
    last: Option<Instant>,
}

impl Batch {
    fn push(&mut self, change: Change, at: Instant) {
        self.arrived(at);
        self.changes.workers.push(change);
    }

    fn push_route(&mut self, change: Change<RouteRow>, at: Instant) {
        self.arrived(at);
        self.changes.routes.push(change);
    }

    fn arrived(&mut self, at: Instant) {
        self.first.get_or_insert(at);
        self.last = Some(at);
    }
}

/// Drives the connection, forwarding notifications; reports how it ended.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: mpsc::UnboundedSender<Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => Message::Notification {
                payload: n.payload().to_string(),
                at: Instant::now(),
            },
            Some(Ok(AsyncMessage::Notice(n))) => {
                tracing::debug!(notice = %n, "database notice");
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                let _ = tx.send(Message::Closed(e.to_string()));
                return;
            }
            None => {
                let _ = tx.send(Message::Closed("server closed the connection".into()));
                return;
            }
        };
        if tx.send(message).is_err() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The wait before each reconnect attempt: capped exponential growth, with a much lower
/// cap while the server is unreachable (see [`UNREACHABLE_CAP`]).
#[derive(Debug)]
struct Backoff {
    /// The next delay before jitter; doubles on every failure up to [`BACKOFF_CAP`].
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// How long to wait after the failed attempt `e`.
    fn next(&mut self, e: &SubscriberError) -> Duration {
        self.next_for(e.is_unreachable())
    }

    fn next_for(&mut self, unreachable: bool) -> Duration {
        let cap = if unreachable {
            UNREACHABLE_CAP
        } else {
            BACKOFF_CAP
        };
        let wait = jitter(self.delay.min(cap));
        self.delay = (self.delay * 2).min(BACKOFF_CAP);
        wait
    }
}

/// A delay between half of `d` and `d`, so many instances do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

fn log_applied(applied: &Applied, received: usize, latency_us: u64) {
    let Some(generation) = applied.generation else {
        tracing::debug!(received, stale = applied.stale, "batch held nothing new");
        return;
    };
    let each = applied.changes.len() + applied.routes.len() <= LOG_EACH_UP_TO;
    for change in &applied.changes {
        let (op, row) = (change.op(), change.row());
        if each {
            tracing::info!(pool = %row.pool, op, worker = row.id, address = %row.address,
                weight = row.weight, version = row.version, generation,
                notify_to_publish_us = latency_us, "ring change applied");
        } else {
            tracing::debug!(pool = %row.pool, op, worker = row.id, address = %row.address,
                weight = row.weight, version = row.version, generation, "ring change applied");
        }
    }
    for change in &applied.routes {
        let (op, r) = (change.op(), change.row());
        if each {
            tracing::info!(route = r.id, op, host = r.host.as_deref(), path_prefix = %r.path_prefix,
                pool = %r.pool, priority = r.priority, listener = r.listener.as_deref(),
                version = r.version, generation, notify_to_publish_us = latency_us,
                "route change applied");
        } else {
            tracing::debug!(route = r.id, op, host = r.host.as_deref(), path_prefix = %r.path_prefix,
                pool = %r.pool, priority = r.priority, listener = r.listener.as_deref(),
                version = r.version, generation, "route change applied");
        }
    }
    if !each {
        tracing::info!(
            changes = applied.changes.len() + applied.routes.len(),
            stale = applied.stale,
            generation,
            notify_to_publish_us = latency_us,
            "ring batch applied"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::NoTls;

    #[test]
    fn backoff_stays_under_a_second_while_unreachable() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..50).map(|_| backoff.next_for(true)).collect();
        assert!(waits.iter().all(|w| *w <= UNREACHABLE_CAP), "{waits:?}");
        // Capped, but not hammering: from the fourth attempt on, at least half the cap.
        assert!(
            waits[3..].iter().all(|w| *w >= UNREACHABLE_CAP / 2),
            "{waits:?}"
        );
    }

    #[test]
    fn backoff_after_a_refused_login_grows_to_the_long_cap() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..20).map(|_| backoff.next_for(false)).collect();
        assert!(waits.iter().all(|w| *w <= BACKOFF_CAP), "{waits:?}");
        assert!(
            waits[10..].iter().all(|w| *w >= BACKOFF_CAP / 2),
            "{waits:?}"
        );
        // An unreachable spell after a long one waits briefly again.
        assert!(backoff.next_for(true) <= UNREACHABLE_CAP);
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable() {
        // A port that was just free: the kernel refuses it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("postgres");
        let e = config.connect(NoTls).await.map(|_| ()).unwrap_err();
        let e = SubscriberError::Connect(e);
        assert!(e.is_unreachable(), "{e}");
        assert!(e.is_transient(), "{e}");
    }
}
