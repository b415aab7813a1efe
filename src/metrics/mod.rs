//! The counters `/metrics` shows beyond each worker's tally (`ring::tally`): per listener,
//! per pool and for the process.
//!
//! Code that counts holds its handle (`Arc<ListenerMetrics>`, `Arc<PoolMetrics>`), resolved
//! once when its listener is built, and adds to plain atomics: no label lookup, no lock, no
//! allocation per request. [`Metrics`] only lists the handles for the scrape, which
//! `admin::metrics` turns into the Prometheus text exposition together with the ring's
//! per-worker counts.

mod histogram;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use histogram::{BOUNDS, Histogram};

use crate::ring::Worker;
use crate::ring::tally::ListenerTally;

/// Every handle, for the scrape, and the process's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// From a NOTIFY's arrival to the snapshot that applies it being published.
    pub ring_apply: Histogram,
    /// Access-log lines dropped because a log's queue was full.
    pub access_log_dropped: Arc<AtomicU64>,
    /// Resyncs of the ring from the table, by reason (rare: a lock is fine).
    resyncs: Mutex<BTreeMap<String, u64>>,
    reloads_ok: AtomicU64,
    reloads_error: AtomicU64,
    listeners: Mutex<Vec<Arc<ListenerMetrics>>>,
    /// Listener ids are never reused: a worker's tally for a forgotten listener's id must
    /// not become another listener's.
    next_listener: AtomicU32,
    pools: Mutex<BTreeMap<Arc<str>, Arc<PoolMetrics>>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// The handle of listener `name` serving `pool` (over HTTP if `http`, else TCP): the
    /// same one again for the same listener (a reload keeps its counts), a new one (with
    /// its own id) otherwise.
    pub fn listener(&self, name: &str, pool: &str, http: bool) -> Arc<ListenerMetrics> {
        let mut listeners = lock(&self.listeners);
        if let Some(l) = listeners
            .iter()
            .find(|l| &*l.name == name && &*l.pool == pool && l.http == http)
        {
            return l.clone();
        }
        let id = self.next_listener.fetch_add(1, Ordering::Relaxed);
        let l = Arc::new(ListenerMetrics::new(id, name, pool, http, self.pool(pool)));
        listeners.push(l.clone());
        l
    }

    /// Drops a listener's series (a reload removed it).
    pub fn forget_listener(&self, id: u32) {
        lock(&self.listeners).retain(|l| l.id != id);
    }

    pub fn listeners(&self) -> Vec<Arc<ListenerMetrics>> {
        lock(&self.listeners).clone()
    }

    /// The handle of pool `name`, shared by every listener of the pool.
    pub fn pool(&self, name: &str) -> Arc<PoolMetrics> {
        lock(&self.pools)
            .entry(name.into())
            .or_insert_with(|| Arc::new(PoolMetrics::default()))
            .clone()
    }

    pub fn pools(&self) -> Vec<(Arc<str>, Arc<PoolMetrics>)> {
        lock(&self.pools)
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    pub fn resynced(&self, reason: &str) {
        *lock(&self.resyncs).entry(reason.to_string()).or_default() += 1;
    }

    pub fn resyncs(&self) -> Vec<(String, u64)> {
        lock(&self.resyncs)
            .iter()
            .map(|(r, n)| (r.clone(), *n))
            .collect()
    }

    pub fn config_reloaded(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_error
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads so far: (ok, error).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_error.load(Ordering::Relaxed),
        )
    }
}

/// A poisoned lock only means a scrape panicked; the counts are still good.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The statuses `lb_client_errors_total` counts: the proxy's answers to requests it refused
/// because of the client (malformed, too large, too slow, not supported).
pub const CLIENT_ERRORS: [u16; 9] = [400, 405, 408, 413, 414, 417, 431, 501, 505];

/// One listener's counters.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// Which of each worker's per-listener tallies is this listener's.
    pub id: u32,
    /// The `listener` label: the address it is bound to.
    pub name: Arc<str>,
    pub pool: Arc<str>,
    /// HTTP (requests, durations, refusals) or TCP (connections only).
    pub http: bool,
    /// The counters of the pool it serves.
    pub pool_counts: Arc<PoolMetrics>,
    /// Whole requests: from the request head to the end of the response.
    pub duration: Histogram,
    /// Responses no worker had a part in (refused requests, no worker to send to).
    pub unserved: ListenerTally,
    client_errors: [AtomicU64; CLIENT_ERRORS.len()],
    connections: AtomicI64,
}

impl ListenerMetrics {
    fn new(
        id: u32,
        name: &str,
        pool: &str,
        http: bool,
        pool_counts: Arc<PoolMetrics>,
    ) -> ListenerMetrics {
        ListenerMetrics {
            id,
            name: name.into(),
            pool: pool.into(),
            http,
            pool_counts,
            duration: Histogram::default(),
            unserved: ListenerTally::new(id),
            client_errors: Default::default(),
            connections: AtomicI64::new(0),
        }
    }

    /// A response with `status` went to the client; `worker` is the last one tried, if any.
    #[inline]
    pub fn answered(&self, worker: Option<&Worker>, status: u16) {
        match worker {
            Some(w) => w.state.tally.listener(self.id).response(status),
            None => self.unserved.response(status),
        }
    }

    /// The proxy refused a request with `status` because of the client.
    pub fn refused(&self, status: u16) {
        if let Some(i) = CLIENT_ERRORS.iter().position(|&s| s == status) {
            self.client_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals so far, by status, in the order of [`CLIENT_ERRORS`].
    pub fn client_errors(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        CLIENT_ERRORS
            .iter()
            .zip(&self.client_errors)
            .map(|(&s, n)| (s, n.load(Ordering::Relaxed)))
    }

    /// Counts a client connection as open until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> ClientConnection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ClientConnection(self.clone())
    }

    pub fn open_connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// See [`ListenerMetrics::connection`].
#[derive(Debug)]
pub struct ClientConnection(Arc<ListenerMetrics>);

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One pool's counters.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    /// Requests sent to another worker after a first one failed.
    pub retries: AtomicU64,
    /// The pool's `slow_start` in ms, for the scrape to tell a warming worker's effective
    /// weight (set when a listener of the pool is built).
    pub slow_start_ms: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_listener_and_pool_keep_their_handle_and_others_get_new_ids() {
        let m = Metrics::default();
        let a = m.listener("127.0.0.1:80", "web", true);
        let b = m.listener("127.0.0.1:81", "web", true);
        assert!(Arc::ptr_eq(&a, &m.listener("127.0.0.1:80", "web", true)));
        assert_ne!(a.id, b.id);
        let c = m.listener("127.0.0.1:80", "api", true);
        assert!(c.id != a.id && c.id != b.id);
        m.forget_listener(c.id);
        assert_eq!(m.listeners().len(), 2);
        let d = m.listener("127.0.0.1:82", "web", true);
        assert!(![a.id, b.id, c.id].contains(&d.id), "ids are never reused");
        assert!(
            Arc::ptr_eq(&a.pool_counts, &b.pool_counts),
            "one pool, one handle"
        );
    }

    #[test]
    fn client_errors_count_by_status_and_connections_by_guard() {
        let m = Metrics::default();
        let l = m.listener("x", "p", true);
        l.refused(431);
        l.refused(431);
        l.refused(200); // not a client error: ignored
        assert!(l.client_errors().any(|(s, n)| s == 431 && n == 2));
        let g = l.connection();
        assert_eq!(l.open_connections(), 1);
        drop(g);
        assert_eq!(l.open_connections(), 0);
    }
}
