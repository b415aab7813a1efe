//! What each worker has served, counted where it happens: plain atomics in the worker's
//! state, so the hot path adds one without a lock, a label lookup or an allocation (after
//! a listener's first request to the worker), and `/metrics` and `worker_status` read them
//! by walking the current snapshot. A removed worker's counts go with its state, so its
//! series leave the next scrape.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of one worker.
#[derive(Debug, Default)]
pub struct Tally {
    /// Exchanges that failed for the worker, by [`ErrorKind`].
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Exchanges that ended (answered or failed).
    requests: AtomicU64,
    /// Of those, the ones passive ejection counts as failures under the pool's rule.
    failures: AtomicU64,
    /// Per listener: responses by code class and TCP connections.
    listeners: OnceLock<Box<ListenerTally>>,
}

/// How an exchange with a worker failed, as `lb_upstream_errors_total{kind}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
        }
    }
}

impl Tally {
    /// One exchange ended: `error` if the worker failed it, `failure` if passive ejection
    /// counts it as one.
    #[inline]
    pub fn ended(&self, error: Option<ErrorKind>, failure: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = error {
            self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        if failure {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }

    /// The counts of listener number `listener` (see `metrics::ListenerId`), made on its
    /// first use. A worker is served by one listener or a few, so this walks a list of one
    /// or two nodes; nodes are only ever added, never removed, so no lock guards the walk.
    #[inline]
    pub fn listener(&self, listener: u32) -> &ListenerTally {
        let mut slot = &self.listeners;
        loop {
            let node = slot.get_or_init(|| Box::new(ListenerTally::new(listener)));
            if node.listener == listener {
                return node;
            }
            slot = &node.next;
        }
    }

    /// Every listener's counts made so far.
    pub fn by_listener(&self) -> impl Iterator<Item = &ListenerTally> {
        let mut next = self.listeners.get();
        std::iter::from_fn(move || {
            let node = next?;
            next = node.next.get();
            Some(&**node)
        })
    }
}

/// One worker's counts for one listener.
#[derive(Debug)]
pub struct ListenerTally {
    pub listener: u32,
    /// Responses to clients by status class: index 0 for 1xx … 4 for 5xx.
    responses: [AtomicU64; 5],
    /// TCP connections balanced to the worker.
    connections: AtomicU64,
    next: OnceLock<Box<ListenerTally>>,
}

impl ListenerTally {
    pub fn new(listener: u32) -> ListenerTally {
        ListenerTally {
            listener,
            responses: Default::default(),
            connections: AtomicU64::new(0),
            next: OnceLock::new(),
        }
    }

    /// A response with `status` went to the client.
    #[inline]
    pub fn response(&self, status: u16) {
        if let Some(class) = class_index(status) {
            self.responses[class].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Responses of class `index` (0: 1xx … 4: 5xx).
    pub fn responses(&self, index: usize) -> u64 {
        self.responses[index].load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// The code classes, as `lb_requests_total{code_class}` names them, by index.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// 0 for 1xx … 4 for 5xx; `None` outside 100..=599.
#[inline]
pub fn class_index(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some(status as usize / 100 - 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_gets_its_own_counts_and_keeps_them() {
        let t = Tally::default();
        t.listener(3).response(200);
        t.listener(7).response(503);
        t.listener(3).response(204);
        t.listener(7).connection();
        let seen: Vec<(u32, u64, u64, u64)> = t
            .by_listener()
            .map(|l| (l.listener, l.responses(1), l.responses(4), l.connections()))
            .collect();
        assert_eq!(seen, [(3, 2, 0, 0), (7, 0, 1, 1)]);
    }

    #[test]
    fn ended_counts_requests_failures_and_errors_by_kind() {
        let t = Tally::default();
        t.ended(None, false);
        t.ended(Some(ErrorKind::Connect), true);
        t.ended(Some(ErrorKind::Timeout), true);
        t.ended(None, true);
        assert_eq!((t.requests(), t.failures()), (4, 3));
        assert_eq!(t.errors(ErrorKind::Connect), 1);
        assert_eq!(t.errors(ErrorKind::Reset), 0);
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(101), Some(0));
        assert_eq!(class_index(599), Some(4));
        assert_eq!(class_index(600), None);
        assert_eq!(class_index(99), None);
    }
}
