//! What one request came to, told once when it ends: to the listener's counters (and the
//! worker's tally) for `/metrics`.
//!
//! Each transport fills a [`Report`] as the request goes — who served it, what the client
//! got, how many workers it took — and hands it to its listener's [`Reports`] at the end.
//! A report is made on the stack and holds the worker the request held anyway: no
//! allocation, no lock.

use std::sync::Arc;
use std::time::Instant;

use crate::metrics::ListenerMetrics;
use crate::ring::Worker;

/// Where a listener's reports go.
#[derive(Debug, Clone)]
pub struct Reports {
    pub metrics: Arc<ListenerMetrics>,
}

impl Reports {
    pub fn new(metrics: Arc<ListenerMetrics>) -> Reports {
        Reports { metrics }
    }

    /// Counts what `report` says: the response by worker and class, the refusal if the
    /// proxy refused the client, the retries, and the request's whole duration.
    /// The report's worker is let go: an idle connection must not keep a removed worker.
    pub fn finish(&self, report: &mut Report) {
        let m = &self.metrics;
        if report.status != 0 {
            m.answered(report.worker.as_deref(), report.status);
        }
        if report.own {
            m.refused(report.status);
        }
        if report.retries > 0 {
            m.pool_counts.retries.fetch_add(
                u64::from(report.retries),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        m.duration.observe(report.started.elapsed());
        report.worker = None;
    }
}

/// One request, as it went.
#[derive(Debug)]
pub struct Report {
    pub started: Instant,
    /// The status the client got; 0 if it got none (it left, or the connection broke).
    pub status: u16,
    /// Whether the proxy answered itself (a refusal, 502, 503, 504) instead of a worker.
    pub own: bool,
    /// The last worker tried, if any.
    pub worker: Option<Arc<Worker>>,
    /// Workers tried after the first.
    pub retries: u32,
}

impl Report {
    pub fn start() -> Report {
        Report {
            started: Instant::now(),
            status: 0,
            own: false,
            worker: None,
            retries: 0,
        }
    }

    /// Starts over for the next request on the same connection.
    #[inline]
    pub fn begin(&mut self) {
        *self = Report::start();
    }

    /// A worker was picked for the request (again, if one was before).
    #[inline]
    pub fn tried(&mut self, worker: Arc<Worker>) {
        if self.worker.is_some() {
            self.retries += 1;
        }
        self.worker = Some(worker);
    }

    /// The proxy's own answer went out.
    #[inline]
    pub fn answered_own(&mut self, status: u16) {
        self.status = status;
        self.own = true;
    }

    /// A worker's response head went out.
    #[inline]
    pub fn answered(&mut self, status: u16) {
        self.status = status;
        self.own = false;
    }
}
