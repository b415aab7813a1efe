//! The writer: a thread of its own per access log that takes entries off the queue, formats
//! them and writes them out. A thread, not a tokio task, because writing a file is a blocking
//! system call that would stall a runtime worker (and every request on it) whenever the disk
//! is slow; one idle thread per logging listener costs nothing that matters.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::AccessLogFormat;

use super::format::write_line;
use super::{Message, Shared};

/// Write failures are logged at most this often: a full disk fails every write, and the
/// proxy's own log must not fill with one message.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Buffered output: lines accumulate here and go out in one write when the queue is empty
/// or the buffer is full. `BufWriter` writes its buffer out before a line that would not
/// fit, so a write never splits a line: two listeners appending to one file interleave
/// whole lines.
const BUFFER: usize = 64 * 1024;

/// Where lines go.
pub(super) enum Destination {
    Stdout,
    /// Appended to; reopened by path on request (log rotation).
    File(PathBuf),
}

pub(super) struct Writer {
    /// Names the listener in JSON lines and in this writer's own error messages.
    listener: String,
    format: AccessLogFormat,
    destination: Destination,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The line being formatted, reused so a line costs no allocation once it has grown.
    line: Vec<u8>,
    /// The reopen request flag (set by `AccessLog::reopen`).
    shared: Arc<Shared>,
    trouble: Trouble,
}

impl Writer {
    /// Opens the destination now, so that a file that cannot be opened is an error at
    /// start (or reload), not a silent loss later.
    pub fn open(
        listener: &str,
        format: AccessLogFormat,
        destination: Destination,
        shared: Arc<Shared>,
    ) -> io::Result<Writer> {
        let sink: Box<dyn Write + Send> = match &destination {
            Destination::Stdout => Box::new(io::stdout()),
            Destination::File(path) => Box::new(append(path)?),
        };
        Ok(Writer {
            listener: listener.to_string(),
            format,
            destination,
            out: BufWriter::with_capacity(BUFFER, sink),
            line: Vec::with_capacity(512),
            shared,
            trouble: Trouble::default(),
        })
    }

    pub fn spawn(self, queue: mpsc::Receiver<Message>) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || self.run(queue))
    }

    /// Writes until every `AccessLog` handle is gone (the queue then closes), flushing
    /// whenever the queue is empty so lines appear promptly, and once more at the end.
    fn run(mut self, mut queue: mpsc::Receiver<Message>) {
        while let Some(message) = queue.blocking_recv() {
            self.handle(message);
            while let Ok(message) = queue.try_recv() {
                self.handle(message);
            }
            self.flush();
        }
        self.flush();
    }

    fn handle(&mut self, message: Message) {
        // A reopen asked for while the queue was full could not be queued: it is seen here,
        // at the next message.
        if self.shared.reopen.swap(false, Ordering::AcqRel) {
            self.reopen();
        }
        match message {
            Message::Entry(entry) => {
                self.line.clear();
                write_line(self.format, &self.listener, &entry, &mut self.line);
                if let Err(e) = self.out.write_all(&self.line) {
                    self.failed("write", &e);
                }
            }
            Message::Reopen => self.reopen(),
        }
    }

    fn flush(&mut self) {
        match self.out.flush() {
            Ok(()) => self.trouble.recovered(&self.listener, &self.destination),
            Err(e) => self.failed("write", &e),
        }
    }

    /// Lines so far go to the file as it was; lines from now on to a file opened afresh at
    /// the same path (after a rotation renamed the old one away). If the new one cannot be
    /// opened, writing carries on into the old one: late lines beat lost lines.
    fn reopen(&mut self) {
        let Destination::File(path) = &self.destination else {
            return;
        };
        // Owned: flushing needs the writer mutably. A reopen is rare; the copy costs nothing.
        let path = path.clone();
        self.flush();
        match append(&path) {
            Ok(file) => {
                let fresh: Box<dyn Write + Send> = Box::new(file);
                self.out = BufWriter::with_capacity(BUFFER, fresh);
            }
            Err(e) => self.failed("reopen", &e),
        }
    }

    fn failed(&mut self, what: &'static str, error: &io::Error) {
        self.trouble
            .failed(&self.listener, &self.destination, what, error);
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Destination {
    fn name(&self) -> String {
        match self {
            Destination::Stdout => "stdout".into(),
            Destination::File(path) => path.display().to_string(),
        }
    }
}

/// Rate-limited reporting of write failures. The writer never stops and never panics on
/// one: the next flush may work again (space freed, directory recreated).
#[derive(Default)]
struct Trouble {
    /// When the last failure was reported; `None` while everything works.
    reported: Option<Instant>,
    /// Failures since that report, shown with the next one.
    unreported: u64,
}

impl Trouble {
    fn failed(
        &mut self,
        listener: &str,
        destination: &Destination,
        what: &'static str,
        error: &io::Error,
    ) {
        self.unreported += 1;
        if self.reported.is_some_and(|at| at.elapsed() < REPORT_EVERY) {
            return;
        }
        tracing::error!(listener, access_log = %destination.name(), error = %error,
            failures = self.unreported,
            "access log {what} failed: its lines are lost until it works again");
        self.reported = Some(Instant::now());
        self.unreported = 0;
    }

    fn recovered(&mut self, listener: &str, destination: &Destination) {
        if self.reported.take().is_some() {
            tracing::info!(listener, access_log = %destination.name(), "access log writes again");
            self.unreported = 0;
        }
    }
}
