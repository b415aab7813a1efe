//! Access logs: one line per HTTP request and per TCP connection, per listener
//! (`access_log`, `access_log_format` in `[[listeners]]`).
//!
//! Requests never wait for the log. [`AccessLog::log`] moves an [`Entry`] into a bounded
//! queue and returns: no formatting, no I/O, no await, only a few atomic operations (and a
//! wake-up when the writer is asleep). When the queue is full (the
//! disk cannot keep up) the entry is dropped and counted instead. A writer thread per log
//! takes entries off the queue, formats them (`format.rs`) and writes them through a buffer
//! flushed whenever the queue runs empty, so lines appear promptly when traffic is light and
//! in large writes when it is heavy.
//!
//! How the proxy uses it:
//! - At start (and when a reload changes a listener's log), per listener:
//!   `AccessLog::open(&name, &config.access_log, config.access_log_format, dropped)`;
//!   `Ok(None)` means `"off"`: build no entries at all. `dropped` is the listener's counter
//!   for `lb_access_log_dropped_total{listener}`: create it once per listener and pass the
//!   same one to every log that listener gets, so the counter never goes back on a reload.
//! - Once per finished request or connection: `log.log(Entry { .. })`. The `Entry` and
//!   [`Ended`] docs say what each field means.
//! - On SIGHUP: [`AccessLog::reopen`] on every open log (rotation: the file was renamed; the
//!   next lines go to a new file at the configured path). A log whose target changed is
//!   replaced instead: open the new one, drop the old.
//! - Dropping the last clone of a log ends its writer thread after it has written and
//!   flushed everything queued.
//!
//! This module is a leaf: it imports only `config` types.

mod entry;
mod format;
mod time;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::config::{AccessLogFormat, AccessLogTarget};

pub use entry::{Ended, Entry, Http, HttpVersion, Kind};
pub(crate) use time::Utc;

use writer::{Destination, Writer};

/// Entries queued at most, per log: about a second of a busy listener's traffic, enough to
/// ride out a slow disk's hiccup without dropping lines. Memory grows with use only (the
/// queue allocates in small blocks), not to this bound up front.
pub const CAPACITY: usize = 16_384;

/// A listener's access log: a handle to its queue. Cheap to clone (one atomic increment);
/// every clone feeds the same writer.
#[derive(Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<Message>,
    shared: Arc<Shared>,
}

/// What the handles and the writer share.
struct Shared {
    /// Entries dropped because the queue was full; owned by the caller, so it can outlive
    /// this log (see the module docs).
    dropped: Arc<AtomicU64>,
    /// Set by [`AccessLog::reopen`] when the queue is full and `Message::Reopen` cannot be
    /// queued; cleared by the writer when it reopens the file.
    reopen: AtomicBool,
}

/// What travels through the queue.
// Nearly every message is an entry: boxing it would cost an allocation per request to save
// space only in the rare `Reopen`.
#[allow(clippy::large_enum_variant)]
enum Message {
    Entry(Entry),
    /// Reopen the file, after the entries queued before it.
    Reopen,
}

/// Why an access log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open access log {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the access-log writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl AccessLog {
    /// Opens `target` (creating a file if need be, appending to it) and starts its writer
    /// thread; `Ok(None)` for [`AccessLogTarget::Off`]. `listener` names the listener in
    /// JSON lines and in the writer's error messages. Needs no tokio runtime.
    pub fn open(
        listener: &str,
        target: &AccessLogTarget,
        format: AccessLogFormat,
        dropped: Arc<AtomicU64>,
    ) -> Result<Option<AccessLog>, AccessLogError> {
        AccessLog::with_capacity(listener, target, format, dropped, CAPACITY)
    }

    /// [`AccessLog::open`] with a queue of `capacity` entries (at least 1).
    pub fn with_capacity(
        listener: &str,
        target: &AccessLogTarget,
        format: AccessLogFormat,
        dropped: Arc<AtomicU64>,
        capacity: usize,
    ) -> Result<Option<AccessLog>, AccessLogError> {
        Ok(start(listener, target, format, dropped, capacity)?.map(|(log, _)| log))
    }

    /// Queues `entry` for writing, or drops and counts it when the queue is full. Never
    /// blocks, never awaits, never fails.
    pub fn log(&self, entry: Entry) {
        if self.queue.try_send(Message::Entry(entry)).is_err() {
            // Full, or closed because the writer thread is gone (it ends only once every
            // handle is dropped, or if it panicked): either way the line is lost, and counted.
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Entries dropped so far because the queue was full (the value of the counter passed
    /// to [`AccessLog::open`]).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Asks the writer to reopen its file (log rotation, on SIGHUP): entries logged before
    /// this call go to the file as it was, later ones to a file opened afresh at the path.
    /// (With the queue full, the reopen is noticed at the writer's next entry instead, so a
    /// few earlier lines may land in the new file.) Does not wait; does nothing for stdout.
    pub fn reopen(&self) {
        if self.queue.try_send(Message::Reopen).is_err() {
            self.shared.reopen.store(true, Ordering::Release);
        }
    }
}

/// A log and its writer thread's handle, which tests join to see the writer finish.
fn start(
    listener: &str,
    target: &AccessLogTarget,
    format: AccessLogFormat,
    dropped: Arc<AtomicU64>,
    capacity: usize,
) -> Result<Option<(AccessLog, JoinHandle<()>)>, AccessLogError> {
    let destination = match target {
        AccessLogTarget::Off => return Ok(None),
        AccessLogTarget::Stdout => Destination::Stdout,
        AccessLogTarget::File(path) => Destination::File(path.clone()),
    };
    let (log, queue) = AccessLog::unstarted(dropped, capacity);
    let writer =
        Writer::open(listener, format, destination, log.shared.clone()).map_err(|source| {
            AccessLogError::Open {
                path: match target {
                    AccessLogTarget::File(path) => path.clone(),
                    _ => PathBuf::from("stdout"),
                },
                source,
            }
        })?;
    let thread = writer.spawn(queue).map_err(AccessLogError::Spawn)?;
    Ok(Some((log, thread)))
}

impl AccessLog {
    /// A log whose queue nobody reads yet: the writer is started on `queue` separately.
    fn unstarted(dropped: Arc<AtomicU64>, capacity: usize) -> (AccessLog, mpsc::Receiver<Message>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            dropped,
            reopen: AtomicBool::new(false),
        });
        (AccessLog { queue, shared }, receiver)
    }
}

#[cfg(test)]
mod tests;
