//! The listener task: the only writer of the ring.
//!
//! It owns one plain tokio-postgres connection, driven through `Connection::poll_message`
//! (a deadpool connection would swallow notifications, and recycling runs UNLISTEN). On
//! every (re)connect it LISTENs first, then reads a full snapshot, then applies events
//! idempotently, so nothing committed in between is lost. Row events are collected until the
//! statement's END marker and published as one snapshot. A lost connection is retried with
//! capped exponential backoff and jitter while the proxy keeps serving the last ring.

use std::future::poll_fn;
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::event::Event;
use super::{CHANNEL, Db, SnapshotError};
use crate::ring::{Applied, Change, Membership};

/// How often an idle listener proves its connection alive with a query.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A heartbeat unanswered for this long means the server is gone.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
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
/// Above this many changes in one publish, changes are logged at debug with one info summary.
const LOG_EACH_UP_TO: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("connect: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("LISTEN: {0}")]
    Listen(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("heartbeat unanswered for {0:?}")]
    Heartbeat(Duration),
}

pub struct Listener {
    db: Db,
    membership: Membership,
    shutdown: CancellationToken,
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

impl Listener {
    pub fn new(db: Db, membership: Membership, shutdown: CancellationToken) -> Listener {
        Listener {
            db,
            membership,
            shutdown,
        }
    }

    /// Connects, LISTENs, and resets the ring from a fresh snapshot.
    pub async fn connect(&mut self, reason: &str) -> Result<Session, ListenerError> {
        let (client, connection) = self
            .db
            .config
            .connect(NoTls)
            .await
            .map_err(ListenerError::Connect)?;
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
            .map_err(ListenerError::Listen)?;
        self.resync(reason).await?;
        Ok(session)
    }

    /// Reads the whole table and publishes it as the ring (only if anything differs).
    async fn resync(&mut self, reason: &str) -> Result<(), ListenerError> {
        let started = Instant::now();
        let rows = self.db.snapshot().await?;
        let count = rows.len();
        let applied = self.membership.reset(rows);
        tracing::info!(
            reason,
            rows = count,
            changes = applied.changes.len(),
            generation = ?applied.generation,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "ring synced from workers table"
        );
        Ok(())
    }

    /// Follows the table until shutdown, reconnecting whenever the connection is lost.
    /// `session` is the one made at startup, if any.
    pub async fn run(mut self, mut session: Option<Session>) {
        let mut delay = BACKOFF_FIRST;
        loop {
            let live = match session.take() {
                Some(s) => s,
                None => match self.connect("reconnect").await {
                    Ok(s) => {
                        tracing::info!("database listener reconnected");
                        delay = BACKOFF_FIRST;
                        s
                    }
                    Err(e) => {
                        let wait = jitter(delay);
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                            "database listener cannot reconnect; serving the last ring");
                        delay = (delay * 2).min(BACKOFF_CAP);
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
                    tracing::warn!(error = %e,
                        "database listener lost its connection; serving the last ring while reconnecting");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(jitter(BACKOFF_FIRST)) => {}
                    }
                }
            }
        }
    }

    /// Applies events from one session until shutdown (`Ok`) or the connection fails.
    async fn follow(&mut self, mut session: Session) -> Result<(), ListenerError> {
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Batch::default();
        loop {
            let quiet = batch.last.map(|t| (t + QUIET_FLUSH).into());
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    session.close().await;
                    return Ok(());
                }
                message = session.messages.recv() => match message {
                    Some(Message::Notification { payload, at }) => match Event::parse(&payload) {
                        Ok(Event::Change(change)) => batch.push(change, at),
                        // One statement's events are complete. More may already be queued
                        // (the next statements of its transaction): take them into this batch
                        // unless it has waited long enough.
                        Ok(Event::End) => {
                            let waited = batch.first.is_some_and(|t| t.elapsed() >= MAX_BATCH_DELAY);
                            if session.messages.is_empty() || waited {
                                self.publish(&mut batch);
                            }
                        }
                        Ok(Event::Truncate) => {
                            batch = Batch::default();
                            self.resync("truncate").await?;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "resyncing after a payload it cannot use");
                            batch = Batch::default();
                            self.resync("unparsable payload").await?;
                        }
                    },
                    Some(Message::Closed(reason)) => return Err(ListenerError::Lost(reason)),
                    None => return Err(ListenerError::Lost("driver stopped".into())),
                },
                _ = sleep_until(quiet), if quiet.is_some() => {
                    tracing::warn!(changes = batch.changes.len(),
                        "row events without an END marker; is the workers_notify_statement trigger disabled?");
                    self.publish(&mut batch);
                }
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(HEARTBEAT_TIMEOUT, session.client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(ListenerError::Lost(e.to_string())),
                        Err(_) => return Err(ListenerError::Heartbeat(HEARTBEAT_TIMEOUT)),
                    }
                }
            }
        }
    }

    fn publish(&mut self, batch: &mut Batch) {
        let Batch { changes, first, .. } = std::mem::take(batch);
        if changes.is_empty() {
            return;
        }
        let received = changes.len();
        let applied = self.membership.apply(changes);
        let latency_us = first.map_or(0, |t| t.elapsed().as_micros() as u64);
        log_applied(&applied, received, latency_us);
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
    changes: Vec<Change>,
    /// When the first of them arrived: the start of the NOTIFY → publish latency.
    first: Option<Instant>,
    /// When the latest arrived, for the quiet-time safety net.
    last: Option<Instant>,
}

impl Batch {
    fn push(&mut self, change: Change, at: Instant) {
        self.first.get_or_insert(at);
        self.last = Some(at);
        self.changes.push(change);
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
    let each = applied.changes.len() <= LOG_EACH_UP_TO;
    for change in &applied.changes {
        let (op, row) = match change {
            Change::Upsert(r) => ("upsert", r),
            Change::Delete(r) => ("delete", r),
        };
        if each {
            tracing::info!(pool = %row.pool, op, worker = row.id, address = %row.address,
                weight = row.weight, version = row.version, generation,
                notify_to_publish_us = latency_us, "ring change applied");
        } else {
            tracing::debug!(pool = %row.pool, op, worker = row.id, address = %row.address,
                weight = row.weight, version = row.version, generation, "ring change applied");
        }
    }
    if !each {
        tracing::info!(
            changes = applied.changes.len(),
            stale = applied.stale,
            generation,
            notify_to_publish_us = latency_us,
            "ring batch applied"
        );
    }
}
