//! The in-memory ring: membership and the snapshots the proxy picks backends from.
//!
//! One immutable [`Snapshot`] holds every pool; it is published through one `ArcSwap` by the
//! database subscriber alone and read by the hot path with one atomic load: no lock, no
//! await, no database I/O. Per-backend state that must outlive a snapshot (in-flight
//! counters, health, drain) lives in [`WorkerState`], shared by `Arc` between successive
//! snapshots and keyed by `workers.id`, so a reweight never resets it.
//!
//! The ring knows nothing of sockets or HTTP: it says what the workers are and what state
//! they are in; `balance` decides what to do with that, `upstream` holds the connections.

pub mod maglev;
mod membership;
pub mod routes;
mod schedule;
pub mod state;
pub mod tally;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use membership::{Applied, Change, Changes, Membership, Row, Tables, Versioned};
pub use routes::{Route, RouteRow, Routes};
pub use state::{InFlight, WorkerState};

/// One backend as the ring sees it: a row of `workers`, plus its long-lived state.
///
/// `repr(C)` keeps `state` and `id` first, next to the `Arc`'s reference count: a request
/// clones the worker it picked and then counts itself in `state`, and in a large pool the
/// worker is not in cache, so all three in one cache line cost one miss instead of two.
#[derive(Debug)]
#[repr(C)]
pub struct Worker {
    pub state: Arc<WorkerState>,
    pub id: i64,
    /// The row's version when this value was built; events not newer than it are stale.
    pub version: i64,
    pub weight: u32,
    pub pool: Arc<str>,
    pub address: Address,
    /// The in-flight count of the whole pool (the same cell as its [`Pool::load`]), counted
    /// with the worker's own by [`InFlight`], for bounded loads' average.
    pub pool_load: Arc<AtomicU64>,
}

/// A backend address as written in `worker_address`: resolved once if it is a literal IP,
/// otherwise looked up on each new connection (e.g. `backend-1:8000` in Docker Compose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub text: Arc<str>,
    pub ip: Option<SocketAddr>,
}

impl Address {
    pub fn new(text: &str) -> Address {
        Address {
            text: text.into(),
            ip: text.parse().ok(),
        }
    }
}

/// One pool's workers and the tables the algorithms pick from, built once per change.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    /// Highest row version applied to this pool (monotonic: versions come from one sequence).
    pub version: i64,
    /// All workers of the pool, by id, including drained ones (weight 0).
    pub workers: Vec<Arc<Worker>>,
    /// What a pick reads of each worker, indexed like `workers` (see [`Slot`]).
    pub slots: Box<[Slot]>,
    /// Indices into `workers` of those that take new traffic (weight > 0).
    pub active: Box<[u32]>,
    /// Smooth weighted round-robin order of indices into `workers` (see `schedule.rs`).
    pub schedule: Box<[u32]>,
    /// `consistent_hash`'s table: a key's slot → index into `workers` (see `maglev.rs`).
    /// Built only for the pools a `consistent_hash` balancer picks from
    /// ([`Ring::hash_pool`]): a table costs a millisecond or more to build, at every change
    /// of its pool.
    pub maglev: Option<maglev::Table>,
    /// The sum of the weights in `active`.
    pub total_weight: u64,
    /// Requests (HTTP) or connections (TCP) in flight on the pool's workers: one cell for
    /// the pool's life, shared by every snapshot of it and held by each of its workers.
    pub load: Arc<AtomicU64>,
    /// The weight of the workers that are up, summed now and then by `balance` (bounded
    /// loads): health and ejection change between snapshots.
    pub usable_weight: Refreshed,
    /// When this pool last changed (it is rebuilt only when it changes).
    pub changed_at: SystemTime,
}

impl Pool {
    /// The pool of `workers`, whose `pool_load` is `load`.
    pub fn new(
        name: Arc<str>,
        version: i64,
        mut workers: Vec<Arc<Worker>>,
        load: Arc<AtomicU64>,
    ) -> Pool {
        workers.sort_by_key(|w| w.id);
        let active: Box<[u32]> = (0..workers.len() as u32)
            .filter(|&i| workers[i as usize].weight > 0)
            .collect();
        let weights: Vec<u32> = workers.iter().map(|w| w.weight).collect();
        let slots = workers
            .iter()
            .map(|w| Slot {
                worker: w.clone(),
                state: w.state.clone(),
                id: w.id,
                weight: w.weight,
            })
            .collect();
        Pool {
            name,
            version,
            schedule: schedule::smooth_weighted(&weights).into(),
            maglev: None,
            total_weight: weights.iter().map(|&w| u64::from(w)).sum(),
            load,
            usable_weight: Refreshed::default(),
            active,
            slots,
            workers,
            changed_at: SystemTime::now(),
        }
    }

    pub fn empty(name: Arc<str>) -> Pool {
        Pool::new(name, 0, Vec::new(), Arc::default())
    }

    /// The same pool, with its Maglev table.
    fn with_table(&self) -> Pool {
        let placed: Vec<(&str, u32)> = (self.workers.iter())
            .map(|w| (&*w.address.text, w.weight))
            .collect();
        Pool {
            name: self.name.clone(),
            version: self.version,
            workers: self.workers.clone(),
            slots: self.slots.clone(),
            active: self.active.clone(),
            schedule: self.schedule.clone(),
            maglev: Some(maglev::Table::build(&placed)),
            total_weight: self.total_weight,
            load: self.load.clone(),
            usable_weight: Refreshed::default(),
            changed_at: self.changed_at,
        }
    }
}

/// A number computed from state cells, recomputed by whoever reads it when it is older than
/// the reader allows: lock-free, one reader recomputes while the others use the last value.
#[derive(Debug, Default)]
pub struct Refreshed {
    value: AtomicU64,
    /// `state::now_ms()` when computed; 0: never.
    at_ms: AtomicU64,
}

impl Refreshed {
    /// The value, recomputed with `compute` if it is older than `every_ms`. 0 while the
    /// first computation is under way on another thread.
    pub fn get(&self, every_ms: u64, compute: impl FnOnce() -> u64) -> u64 {
        let now = state::now_ms();
        let at = self.at_ms.load(Ordering::Relaxed);
        if at != 0 && now.saturating_sub(at) < every_ms {
            return self.value.load(Ordering::Relaxed);
        }
        if (self.at_ms)
            .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let value = compute();
            self.value.store(value, Ordering::Relaxed);
            return value;
        }
        self.value.load(Ordering::Relaxed)
    }
}

/// One worker as a pick sees it, packed with its neighbours in [`Pool::slots`].
///
/// A pick in a large pool lands on a worker whose memory is not in cache. Reaching the
/// state through `Worker::state` makes that two misses in a row (the worker, then its state);
/// with both pointers (and the id and weight the algorithms compare) in one dense array, the
/// pick reads one slot and then fetches the worker's reference count and its state in
/// parallel.
#[derive(Debug, Clone)]
pub struct Slot {
    pub worker: Arc<Worker>,
    /// The same as `worker.state`.
    pub state: Arc<WorkerState>,
    pub id: i64,
    pub weight: u32,
}

/// Every pool at one instant. Immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    /// Counts publishes: 0 is the empty ring before the first sync.
    pub generation: u64,
    /// Pools in a stable order: the configured pools first, at the indices
    /// [`Ring::pool_index`] handed out, then any other pool found in the table.
    pub pools: Vec<Arc<Pool>>,
    /// The `routes` table, compiled; its pools have fixed indices in `pools`.
    pub routes: Arc<routes::Routes>,
}

impl Snapshot {
    pub fn pool(&self, index: usize) -> &Pool {
        &self.pools[index]
    }

    pub fn pool_named(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| &*p.name == name).map(|p| &**p)
    }

    /// The fingerprint of every pool that has workers and of the routes, comparable with
    /// those the database subscriber reads from the tables (`Db::fingerprints`).
    pub fn fingerprints(&self) -> Fingerprints {
        use md5::Digest;
        let hex = |md5: md5::Md5| md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let pools = self
            .pools
            .iter()
            .filter(|p| !p.workers.is_empty())
            .map(|p| {
                // Workers are sorted by id, as the SQL's ORDER BY id.
                let mut md5 = md5::Md5::new();
                for (i, w) in p.workers.iter().enumerate() {
                    if i > 0 {
                        md5.update(b";");
                    }
                    md5.update(format!(
                        "{}:{}:{}:{}",
                        w.id, w.version, w.weight, w.address.text
                    ));
                }
                let count = p.workers.len() as u64;
                (
                    p.name.to_string(),
                    Fingerprint {
                        count,
                        digest: hex(md5),
                    },
                )
            })
            .collect();
        let rows = self.routes.rows();
        let routes = if rows.is_empty() {
            // The SQL's md5 of no row at all is NULL, which it turns into ''.
            Fingerprint::default()
        } else {
            // Rows are sorted by id. Each text column is its byte length, ':' and itself,
            // or '~' for NULL: no value can pass for another, nor NULL for a value.
            let text = |v: Option<&str>| v.map_or("~".to_string(), |v| format!("{}:{v}", v.len()));
            let mut md5 = md5::Md5::new();
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    md5.update(b";");
                }
                md5.update(format!(
                    "{}:{}:{}:{}{}{}{}",
                    r.id,
                    r.version,
                    r.priority,
                    text(r.host.as_deref()),
                    text(Some(&r.path_prefix)),
                    text(Some(&r.pool)),
                    text(r.listener.as_deref()),
                ));
            }
            Fingerprint {
                count: rows.len() as u64,
                digest: hex(md5),
            }
        };
        Fingerprints { pools, routes }
    }
}

/// A summary of a pool's rows, compared with the table's to detect drift: the row count and
/// the MD5 of every row's id, version, weight and address in id order. Any difference in
/// content shows, even a change made with the triggers bypassed. For `routes`, the same of
/// the whole table, over every column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub count: u64,
    pub digest: String,
}

/// The fingerprints of both tables, from the ring or from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprints {
    /// Per pool that has workers.
    pub pools: BTreeMap<String, Fingerprint>,
    /// Of the whole `routes` table (count 0 and an empty digest when it is empty).
    pub routes: Fingerprint,
}

impl Fingerprints {
    /// What differs from `other`, for a log line: `pool NAME` (the first, by name) or
    /// `routes`.
    pub fn difference(&self, other: &Fingerprints) -> Option<String> {
        let pools: std::collections::BTreeSet<&String> =
            self.pools.keys().chain(other.pools.keys()).collect();
        pools
            .into_iter()
            .find(|p| self.pools.get(*p) != other.pools.get(*p))
            .map(|p| format!("pool {p}"))
            .or_else(|| (self.routes != other.routes).then(|| "routes".to_string()))
    }
}

/// The shared handle: the database subscriber publishes, everyone else loads.
#[derive(Debug)]
pub struct Ring {
    current: ArcSwap<Snapshot>,
    /// Pool names whose index in every snapshot is fixed, so the hot path indexes a Vec
    /// instead of hashing a string: the pools listeners serve, and those routes name. Only
    /// ever appended to (a reload that serves a new pool adds it, so does a route naming
    /// one), so an index once handed out stays right for as long as the ring lives. The
    /// lock also serialises publishes with that append; the hot path never takes it.
    configured: Mutex<Vec<Arc<str>>>,
    /// Pools whose snapshots carry a Maglev table (see [`Ring::hash_pool`]). Only ever
    /// added to; read under the lock of `configured`, which serialises every store.
    hashed: Mutex<HashSet<Arc<str>>>,
    /// Whether every pool a route names is hashed too (see [`Ring::hash_routed_pools`]).
    hash_routed: AtomicBool,
    /// Tells waiters (tests, startup) that a new generation was published.
    published: watch::Sender<u64>,
}

impl Ring {
    /// A ring with an empty snapshot in which `configured` pools exist (empty) at fixed indices.
    pub fn new(configured: &[String]) -> Arc<Ring> {
        let mut names: Vec<Arc<str>> = Vec::new();
        for n in configured {
            if !names.iter().any(|m| **m == **n) {
                names.push(n.as_str().into());
            }
        }
        let pools = names
            .iter()
            .map(|n| Arc::new(Pool::empty(n.clone())))
            .collect();
        Arc::new(Ring {
            current: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                pools,
                routes: Arc::default(),
            }),
            configured: Mutex::new(names),
            hashed: Mutex::default(),
            hash_routed: AtomicBool::new(false),
            published: watch::channel(0).0,
        })
    }

    /// The fixed index of a configured pool in every snapshot.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.configured().iter().position(|n| &**n == name)
    }

    pub fn configured_pools(&self) -> Vec<Arc<str>> {
        self.configured().clone()
    }

    /// Gives pool `name` a fixed index, if it has none yet, and publishes a snapshot that
    /// has it there (with the workers the table already gave it, if any). A reload calls it
    /// before building a listener for a pool the ring did not serve.
    pub fn configure(&self, name: &str) -> usize {
        let mut configured = self.configured();
        let (index, _) = register(&mut configured, name);
        // Also when it was registered already, by a routes compile whose snapshot is not
        // published yet: the caller is about to use the index.
        let current = self.current.load();
        if current.pools.get(index).is_none_or(|p| &*p.name != name) {
            self.store(
                &configured,
                current.pools.clone(),
                current.routes.clone(),
                false,
            );
        }
        index
    }

    /// Gives pool `name` a fixed index, if it has none yet, without publishing: the next
    /// snapshot published has it there (empty if it has no worker). The routes compiler
    /// calls it for every pool a route names, so that the snapshot carrying the route has
    /// the pool at the index the route holds.
    pub fn register(&self, name: &str) -> usize {
        register(&mut self.configured(), name).0
    }

    /// Makes every snapshot from now on carry a Maglev table for pool `name` (a
    /// `consistent_hash` balancer picks from it), publishing one at once if the current
    /// snapshot's pool has none. The pool must be configured.
    pub fn hash_pool(&self, name: &str) {
        let configured = self.configured();
        let added = lock(&self.hashed).insert(name.into());
        let current = self.current.load();
        let missing = current.pool_named(name).is_some_and(|p| p.maglev.is_none());
        if added && missing {
            let (pools, routes) = (current.pools.clone(), current.routes.clone());
            drop(current);
            self.store(&configured, pools, routes, false);
        }
    }

    /// Makes every pool a route names carry a Maglev table from now on, as [`hash_pool`]
    /// does for one pool: called when a `consistent_hash` listener is built, so that the
    /// subscriber builds a routed pool's table when it publishes the route, and the first
    /// request routed there finds it ready instead of building it itself.
    ///
    /// [`hash_pool`]: Ring::hash_pool
    pub fn hash_routed_pools(&self) {
        let configured = self.configured();
        if self.hash_routed.swap(true, Ordering::Relaxed) {
            return;
        }
        let current = self.current.load();
        let routed = routed_pools(&current.routes);
        let missing =
            (current.pools.iter()).any(|p| p.maglev.is_none() && routed.contains(&*p.name));
        if missing {
            let (pools, routes) = (current.pools.clone(), current.routes.clone());
            drop(current);
            self.store(&configured, pools, routes, false);
        }
    }

    /// The current snapshot: one atomic load, no lock. Do not hold it across an await.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// An owned reference to the current snapshot, for code that awaits while using it.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes `pools` and `routes` as the next generation, in one store. Only the
    /// database subscriber calls this (and [`Ring::configure`]).
    pub fn publish(&self, pools: Vec<Arc<Pool>>, routes: Arc<routes::Routes>) -> u64 {
        let configured = self.configured();
        self.store(&configured, pools, routes, true)
    }

    /// Stores `pools` with the configured ones at their indices. The subscriber lists them
    /// there already, unless a pool was configured while it built the snapshot: that pool
    /// then comes after the others, or not at all if it has no workers yet.
    ///
    /// `news`: the table's contents (a publish), rather than a change of structure (a pool
    /// configured, a table to build). A structural store before the first publish keeps
    /// generation 0, which says "never loaded" to `/readyz`, to 503s and to slow start.
    fn store(
        &self,
        configured: &[Arc<str>],
        mut pools: Vec<Arc<Pool>>,
        routes: Arc<routes::Routes>,
        news: bool,
    ) -> u64 {
        let in_place = configured
            .iter()
            .enumerate()
            .all(|(i, n)| pools.get(i).is_some_and(|p| p.name == *n));
        if !in_place {
            let mut others = std::mem::take(&mut pools);
            for name in configured {
                let pool = match others.iter().position(|p| p.name == *name) {
                    Some(i) => others.remove(i),
                    None => Arc::new(Pool::empty(name.clone())),
                };
                pools.push(pool);
            }
            pools.append(&mut others);
        }
        // Built here, where every snapshot passes: a pool rebuilt by the subscriber, or one
        // a `hash_pool` racing with it published, gets its table either way.
        let hashed = lock(&self.hashed);
        let routed = if self.hash_routed.load(Ordering::Relaxed) {
            routed_pools(&routes)
        } else {
            HashSet::new()
        };
        for pool in &mut pools {
            let wanted = hashed.contains(&pool.name) || routed.contains(&*pool.name);
            if pool.maglev.is_none() && wanted {
                *pool = Arc::new(pool.with_table());
            }
        }
        drop(hashed);
        let current = self.current.load().generation;
        let generation = if news || current > 0 {
            current + 1
        } else {
            current
        };
        self.current.store(Arc::new(Snapshot {
            generation,
            pools,
            routes,
        }));
        if generation != current {
            self.published.send_replace(generation);
        }
        generation
    }

    /// Receives the generation number after each publish.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// A poisoned lock only means a publisher panicked; the names are still good.
    fn configured(&self) -> std::sync::MutexGuard<'_, Vec<Arc<str>>> {
        lock(&self.configured)
    }
}

/// The names of the pools `routes` send requests to.
fn routed_pools(routes: &routes::Routes) -> HashSet<&str> {
    routes.rows().iter().map(|r| r.pool.as_str()).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The index of `name` in `configured`, appended if it is not there: (index, appended).
fn register(configured: &mut Vec<Arc<str>>, name: &str) -> (usize, bool) {
    match configured.iter().position(|n| &**n == name) {
        Some(index) => (index, false),
        None => {
            configured.push(name.into());
            (configured.len() - 1, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::membership::{Change, Membership, Row};

    fn names(ring: &Ring) -> Vec<String> {
        ring.load()
            .pools
            .iter()
            .map(|p| p.name.to_string())
            .collect()
    }

    #[test]
    fn a_pool_configured_later_gets_the_next_index_and_keeps_its_workers() {
        let ring = Ring::new(&["web".to_string()]);
        let worker = Arc::new(Worker {
            state: Arc::new(WorkerState::default()),
            id: 7,
            version: 1,
            weight: 1,
            pool: "api".into(),
            address: Address::new("127.0.0.1:9"),
            pool_load: Arc::default(),
        });
        let api = Arc::new(Pool::new("api".into(), 1, vec![worker], Arc::default()));
        ring.publish(
            vec![Arc::new(Pool::empty("web".into())), api],
            Arc::default(),
        );

        assert_eq!(ring.configure("api"), 1);
        assert_eq!(ring.configure("web"), 0, "known pools keep their index");
        assert_eq!(ring.configure("new"), 2);
        assert_eq!(names(&ring), ["web", "api", "new"]);
        assert_eq!(ring.load().pool(1).workers[0].id, 7);

        // A snapshot built before "new" was configured (the subscriber's race) is put right.
        ring.publish(vec![Arc::new(Pool::empty("web".into()))], Arc::default());
        assert_eq!(names(&ring), ["web", "api", "new"]);
    }

    #[test]
    fn only_hashed_pools_carry_a_maglev_table_and_every_rebuild_keeps_it() {
        let ring = Ring::new(&["web".to_string(), "cache".to_string()]);
        let mut m = Membership::new(ring.clone());
        let row = |id: i64, pool: &str, version: i64| Row {
            id,
            address: format!("127.0.0.1:{}", 9000 + id),
            weight: 1,
            pool: pool.into(),
            version,
        };
        m.reset(vec![row(1, "web", 1), row(2, "cache", 2)]);
        assert!(ring.load().pools.iter().all(|p| p.maglev.is_none()));

        let before = ring.load().generation;
        ring.hash_pool("cache");
        let snapshot = ring.load();
        assert_eq!(snapshot.generation, before + 1, "published at once");
        assert!(snapshot.pool_named("cache").unwrap().maglev.is_some());
        assert!(snapshot.pool_named("web").unwrap().maglev.is_none());

        // The subscriber rebuilds the pool on a change: the table comes with it.
        m.apply(vec![Change::Insert(row(3, "cache", 3))]);
        let table = ring
            .load()
            .pool_named("cache")
            .unwrap()
            .maglev
            .as_ref()
            .map(|t| t.get(7));
        assert!(matches!(table, Some(Some(0 | 1))), "{table:?}");
        ring.hash_pool("cache");
        assert_eq!(
            ring.load().generation,
            before + 2,
            "already hashed: nothing to publish"
        );
    }

    #[test]
    fn structure_before_the_first_publish_leaves_the_ring_unloaded() {
        // A consistent_hash listener built while the database is down: its pool gets a
        // table, but the ring is still "never loaded" (503s say why, /readyz waits, and
        // the first sync is not news for slow start).
        let ring = Ring::new(&["p".to_string()]);
        let published = ring.subscribe();
        ring.hash_pool("p");
        ring.configure("q");
        let snapshot = ring.load();
        assert_eq!(snapshot.generation, 0);
        assert!(snapshot.pool_named("p").unwrap().maglev.is_some());
        assert!(snapshot.pool_named("q").is_some());
        assert!(
            !published.has_changed().unwrap(),
            "no publish was announced"
        );
    }

    #[test]
    fn a_registered_pool_waits_for_the_next_publish_at_its_index() {
        let ring = Ring::new(&["web".to_string()]);
        assert_eq!(ring.register("web"), 0);
        assert_eq!(ring.register("routed"), 1);
        assert_eq!(ring.register("routed"), 1);
        assert_eq!(ring.load().generation, 0, "registering publishes nothing");
        assert_eq!(names(&ring), ["web"]);
        ring.publish(vec![Arc::new(Pool::empty("web".into()))], Arc::default());
        assert_eq!(names(&ring), ["web", "routed"]);
        assert_eq!(ring.register("late"), 2);
        assert_eq!(ring.configure("late"), 2);
        assert_eq!(
            names(&ring),
            ["web", "routed", "late"],
            "configure publishes it"
        );
        assert_eq!(ring.load().generation, 2);
    }
}
