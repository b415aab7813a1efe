//! Membership: turns table rows and change events into published snapshots.
//!
//! Owned by the database subscriber, the ring's only publisher. It keeps the last known version of
//! every row of both tables (`workers` and `routes`), applies changes idempotently (a change
//! whose version is not newer than the known one is dropped, which makes the overlap between
//! LISTEN and the snapshot harmless), rebuilds only the pools a batch touched, recompiles the
//! routes only when a route changed, and publishes it all as one snapshot. A full
//! [`Membership::reset`] from a fresh read of both tables is the recovery path for anything
//! unexpected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::routes::{RouteRow, Routes};
use super::{Address, Pool, Ring, Worker, WorkerState};

/// A row of `workers` as read from the table or carried by a change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub address: String,
    pub weight: u32,
    pub pool: String,
    pub version: i64,
}

/// A row of either table: what idempotent application needs of it.
pub trait Versioned {
    fn id(&self) -> i64;
    /// Bumped by the table's trigger on every change; orders the events of one row.
    fn version(&self) -> i64;
}

impl Versioned for Row {
    fn id(&self) -> i64 {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
}

impl Versioned for RouteRow {
    fn id(&self) -> i64 {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
}

/// One change to a table (`workers` unless said otherwise), from a NOTIFY payload (or from
/// a resync's diff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<R = Row> {
    /// The row as inserted.
    Insert(R),
    /// The row as it is now, and the version it had before: a known row whose version is
    /// older than `prev` missed a change, which is evidence that events were lost.
    Update { row: R, prev: i64 },
    /// The row as it was.
    Delete(R),
}

impl<R> Change<R> {
    pub fn row(&self) -> &R {
        match self {
            Change::Insert(r) | Change::Update { row: r, .. } | Change::Delete(r) => r,
        }
    }

    pub fn op(&self) -> &'static str {
        match self {
            Change::Insert(_) => "insert",
            Change::Update { .. } => "update",
            Change::Delete(_) => "delete",
        }
    }
}

impl<R: Versioned> Change<R> {
    /// Judges the change against the version `known` for its row (`None`: no such row):
    /// (whether it is new, whether it shows that an event was lost). An insert or update
    /// is new if its version is newer; a delete if it is at least the known one (a row's
    /// last event and its delete carry the same version). An update whose previous version
    /// is newer than the known one skipped an event.
    fn judge(&self, known: Option<i64>) -> (bool, bool) {
        let version = self.row().version();
        let gap = matches!((self, known), (Change::Update { prev, .. }, Some(v)) if v < *prev);
        let fresh = match (self, known) {
            (Change::Delete(_), Some(v)) => version >= v,
            (Change::Delete(_), None) => false,
            (_, Some(v)) => version > v,
            (_, None) => true,
        };
        (fresh, gap)
    }
}

/// A batch of changes to both tables, published as one snapshot. Within each table the
/// changes are in the order they happened; the tables are independent of each other.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub workers: Vec<Change>,
    pub routes: Vec<Change<RouteRow>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty() && self.routes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.workers.len() + self.routes.len()
    }
}

/// A batch of `workers` changes alone.
impl From<Vec<Change>> for Changes {
    fn from(workers: Vec<Change>) -> Changes {
        Changes {
            workers,
            routes: Vec::new(),
        }
    }
}

/// A batch of `routes` changes alone.
impl From<Vec<Change<RouteRow>>> for Changes {
    fn from(routes: Vec<Change<RouteRow>>) -> Changes {
        Changes {
            workers: Vec::new(),
            routes,
        }
    }
}

/// The whole content of both tables, read in one transaction (or from the ring cache).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tables {
    pub workers: Vec<Row>,
    pub routes: Vec<RouteRow>,
}

/// `workers` rows and no route at all.
impl From<Vec<Row>> for Tables {
    fn from(workers: Vec<Row>) -> Tables {
        Tables {
            workers,
            routes: Vec::new(),
        }
    }
}

/// What a batch or reset did, for the log line.
#[derive(Debug, Default)]
pub struct Applied {
    /// Changes to `workers` that were newer than what was known and went into the ring.
    pub changes: Vec<Change>,
    /// The same for `routes`.
    pub routes: Vec<Change<RouteRow>>,
    /// Changes dropped as not newer than the known row version.
    pub stale: usize,
    /// An update arrived for a row whose known version is older than the update's previous
    /// version: some event was lost, and the table should be reread.
    pub gap: bool,
    /// The generation published, if anything changed.
    pub generation: Option<u64>,
}

#[derive(Debug)]
pub struct Membership {
    ring: Arc<Ring>,
    /// Every known row, by id.
    workers: HashMap<i64, Arc<Worker>>,
    /// Pool name → ids of its workers, and the highest version applied to the pool.
    pools: BTreeMap<Arc<str>, PoolMembers>,
    /// Every known row of `routes`, by id.
    routes: HashMap<i64, RouteRow>,
    /// Whether a route changed since the routes were last compiled.
    routes_dirty: bool,
}

#[derive(Debug, Default)]
struct PoolMembers {
    ids: HashSet<i64>,
    version: i64,
    /// The pool's in-flight count, kept for as long as the pool is known (see `Pool::load`).
    load: Arc<AtomicU64>,
    /// Whether the pool changed since it was last published.
    dirty: bool,
}

impl Membership {
    pub fn new(ring: Arc<Ring>) -> Membership {
        let pools = ring
            .configured_pools()
            .iter()
            .map(|n| (n.clone(), PoolMembers::default()))
            .collect();
        Membership {
            ring,
            workers: HashMap::new(),
            pools,
            routes: HashMap::new(),
            routes_dirty: false,
        }
    }

    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// Applies a batch of changes (to either table, see [`Changes`]) and publishes one
    /// snapshot if any of them was new.
    pub fn apply(&mut self, changes: impl Into<Changes>) -> Applied {
        let Changes { workers, routes } = changes.into();
        let mut applied = Applied::default();
        for change in workers {
            let (fresh, gap) = change.judge(self.workers.get(&change.row().id).map(|w| w.version));
            applied.gap |= gap;
            if !fresh {
                applied.stale += 1;
                continue;
            }
            match &change {
                Change::Delete(row) => self.remove(row.id, row.version),
                Change::Insert(row) | Change::Update { row, .. } => self.upsert(row, true),
            }
            applied.changes.push(change);
        }
        for change in routes {
            let (fresh, gap) = change.judge(self.routes.get(&change.row().id).map(|r| r.version));
            applied.gap |= gap;
            if !fresh {
                applied.stale += 1;
                continue;
            }
            match &change {
                Change::Delete(row) => self.routes.remove(&row.id),
                Change::Insert(row) | Change::Update { row, .. } => {
                    self.routes.insert(row.id, row.clone())
                }
            };
            self.routes_dirty = true;
            applied.routes.push(change);
        }
        if !applied.changes.is_empty() || !applied.routes.is_empty() {
            applied.generation = Some(self.publish());
        }
        applied
    }

    /// [`Membership::reset_tables`] to `workers` and no route at all.
    pub fn reset(&mut self, workers: Vec<Row>) -> Applied {
        self.reset_tables(Tables::from(workers))
    }

    /// Replaces everything with `tables` (a full read of both tables) and publishes;
    /// per-worker state is kept for every id whose address did not change. Publishes when
    /// anything differs or nothing was ever published.
    pub fn reset_tables(&mut self, tables: Tables) -> Applied {
        let Tables {
            workers: rows,
            routes,
        } = tables;
        let mut applied = Applied::default();
        let incoming: HashSet<i64> = rows.iter().map(|r| r.id).collect();
        let gone: Vec<Arc<Worker>> = self
            .workers
            .values()
            .filter(|w| !incoming.contains(&w.id))
            .cloned()
            .collect();
        for w in gone {
            self.remove(w.id, w.version);
            applied.changes.push(Change::Delete(row_of(&w)));
        }
        // The first sync of a process is its starting point, not news: no slow start.
        let news = self.ring.load().generation > 0;
        for row in rows {
            let change = match self.workers.get(&row.id) {
                Some(w) if is_row(w, &row) => continue,
                Some(w) => Change::Update {
                    prev: w.version,
                    row,
                },
                None => Change::Insert(row),
            };
            self.upsert(change.row(), news);
            applied.changes.push(change);
        }

        let mut routes: HashMap<i64, RouteRow> = routes.into_iter().map(|r| (r.id, r)).collect();
        for (id, old) in &self.routes {
            if !routes.contains_key(id) {
                applied.routes.push(Change::Delete(old.clone()));
            }
        }
        for row in routes.values() {
            match self.routes.get(&row.id) {
                Some(old) if old == row => {}
                Some(old) => applied.routes.push(Change::Update {
                    prev: old.version,
                    row: row.clone(),
                }),
                None => applied.routes.push(Change::Insert(row.clone())),
            }
        }
        if !applied.routes.is_empty() {
            std::mem::swap(&mut self.routes, &mut routes);
            self.routes_dirty = true;
        }

        if !applied.changes.is_empty()
            || !applied.routes.is_empty()
            || self.ring.load().generation == 0
        {
            applied.generation = Some(self.publish());
        }
        applied
    }

    /// Adds or replaces a worker. `ramp`: start slow start if it is new (or has a new
    /// address) or its weight went up, from the share it had.
    fn upsert(&mut self, row: &Row, ramp: bool) {
        let old = self.workers.get(&row.id).cloned();
        // Same id and address: the same backend, so health, counters and pooled
        // connections carry over. A new address is a new backend.
        let (state, old_weight) = match &old {
            Some(w) if *w.address.text == *row.address => (w.state.clone(), w.weight),
            Some(w) => {
                // The old address is drained like a deleted worker: whoever holds its
                // connections closes them on seeing that.
                w.state.drain.set(true);
                (Arc::new(WorkerState::default()), 0)
            }
            None => (Arc::new(WorkerState::default()), 0),
        };
        if ramp && row.weight > old_weight {
            state
                .ramp
                .begin(f64::from(old_weight) / f64::from(row.weight));
        }
        state.drain.set(row.weight == 0);
        if let Some(old) = &old
            && *old.pool != *row.pool
        {
            self.leave_pool(old.id, &old.pool, row.version);
        }
        let members = self.pools.entry(row.pool.as_str().into()).or_default();
        members.ids.insert(row.id);
        members.version = members.version.max(row.version);
        members.dirty = true;
        let (pool, members) = self
            .pools
            .get_key_value(row.pool.as_str())
            .expect("just inserted");
        let (pool, pool_load) = (pool.clone(), members.load.clone());
        self.workers.insert(
            row.id,
            Arc::new(Worker {
                id: row.id,
                address: Address::new(&row.address),
                weight: row.weight,
                pool,
                version: row.version,
                state,
                pool_load,
            }),
        );
    }

    fn remove(&mut self, id: i64, version: i64) {
        if let Some(old) = self.workers.remove(&id) {
            self.leave_pool(id, &old.pool, version);
            // Requests in flight hold the worker and finish; its idle connections go with
            // its state (see `WorkerState::attached`), or are closed by whoever sees the drain.
            old.state.drain.set(true);
        }
    }

    fn leave_pool(&mut self, id: i64, pool: &str, version: i64) {
        if let Some(members) = self.pools.get_mut(pool) {
            members.ids.remove(&id);
            members.version = members.version.max(version);
            members.dirty = true;
        }
    }

    /// Builds the dirty pools, reuses the others, compiles the routes if they changed
    /// (reuses them otherwise), and publishes one snapshot.
    fn publish(&mut self) -> u64 {
        let current = self.ring.load_full();
        // Compiled first: it registers the pools routes name, which then take their fixed
        // indices in this very snapshot (empty if no worker is in them).
        let routes = if self.routes_dirty {
            let ring = &self.ring;
            let rows = self.routes.values().cloned();
            Arc::new(Routes::compile(rows, |pool| ring.register(pool)))
        } else {
            current.routes.clone()
        };
        self.routes_dirty = false;
        let configured = self.ring.configured_pools();
        // Pools nobody serves and no row uses any more are forgotten.
        self.pools
            .retain(|name, m| !m.ids.is_empty() || configured.contains(name));
        let order = configured.iter().cloned().chain(
            self.pools
                .keys()
                .filter(|n| !configured.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut pools = Vec::with_capacity(self.pools.len());
        for name in order {
            // A pool configured by a reload may have no row yet.
            let members = self.pools.entry(name.clone()).or_default();
            let previous = current.pools.iter().find(|p| p.name == name);
            let pool = match previous {
                Some(p) if !members.dirty => p.clone(),
                _ => {
                    let workers = members.ids.iter().map(|id| self.workers[id].clone());
                    let load = members.load.clone();
                    Arc::new(Pool::new(name, members.version, workers.collect(), load))
                }
            };
            members.dirty = false;
            pools.push(pool);
        }
        self.ring.publish(pools, routes)
    }
}

/// Whether `w` was built from exactly `row` (compared in place: a resync of 10,000 rows
/// should not allocate to find that nothing changed).
fn is_row(w: &Worker, row: &Row) -> bool {
    w.id == row.id
        && w.version == row.version
        && w.weight == row.weight
        && *w.address.text == *row.address
        && *w.pool == *row.pool
}

fn row_of(w: &Worker) -> Row {
    Row {
        id: w.id,
        address: w.address.text.to_string(),
        weight: w.weight,
        pool: w.pool.to_string(),
        version: w.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn row(id: i64, address: &str, weight: u32, pool: &str, version: i64) -> Row {
        Row {
            id,
            address: address.into(),
            weight,
            pool: pool.into(),
            version,
        }
    }

    fn weights(m: &Membership, pool: &str) -> Vec<(i64, u32)> {
        let snap = m.ring().load();
        snap.pool_named(pool)
            .map(|p| p.workers.iter().map(|w| (w.id, w.weight)).collect())
            .unwrap_or_default()
    }

    #[test]
    fn reset_then_changes_publish_once_per_batch() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        let a = m.reset(vec![row(1, "127.0.0.1:1", 1, "default", 10)]);
        assert_eq!(a.generation, Some(1));
        let a = m.apply(vec![
            Change::Insert(row(2, "127.0.0.1:2", 3, "default", 11)),
            Change::Insert(row(1, "127.0.0.1:1", 5, "default", 12)),
        ]);
        assert_eq!(a.generation, Some(2));
        assert_eq!(weights(&m, "default"), vec![(1, 5), (2, 3)]);
        assert_eq!(m.ring().load().pool(0).version, 12);
    }

    #[test]
    fn stale_and_duplicate_events_are_dropped() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        m.reset(vec![row(1, "127.0.0.1:1", 2, "default", 10)]);
        // Committed before the snapshot, delivered after it: already known.
        let a = m.apply(vec![
            Change::Insert(row(1, "127.0.0.1:1", 7, "default", 9)),
            Change::Insert(row(1, "127.0.0.1:1", 2, "default", 10)),
            Change::Delete(row(5, "127.0.0.1:5", 1, "default", 8)),
        ]);
        assert_eq!((a.stale, a.generation), (3, None));
        assert_eq!(weights(&m, "default"), vec![(1, 2)]);
    }

    #[test]
    fn reweight_keeps_state_new_address_does_not() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        m.reset(vec![row(1, "127.0.0.1:1", 1, "default", 1)]);
        let state = m.ring().load().pool(0).workers[0].state.clone();
        state.in_flight.store(7, Ordering::Relaxed);
        m.apply(vec![Change::Insert(row(1, "127.0.0.1:1", 9, "default", 2))]);
        assert!(Arc::ptr_eq(
            &state,
            &m.ring().load().pool(0).workers[0].state
        ));
        m.apply(vec![Change::Insert(row(1, "127.0.0.1:2", 9, "default", 3))]);
        assert!(!Arc::ptr_eq(
            &state,
            &m.ring().load().pool(0).workers[0].state
        ));
    }

    #[test]
    fn moves_between_pools_and_untouched_pools_are_reused() {
        let mut m = Membership::new(Ring::new(&["a".into(), "b".into()]));
        m.reset(vec![
            row(1, "127.0.0.1:1", 1, "a", 1),
            row(2, "127.0.0.1:2", 1, "b", 2),
        ]);
        let b_before = m.ring().load().pools[1].clone();
        m.apply(vec![Change::Insert(row(1, "127.0.0.1:1", 1, "c", 3))]);
        let snap = m.ring().load();
        assert!(
            snap.pool(0).workers.is_empty(),
            "configured pool stays, empty"
        );
        assert!(
            Arc::ptr_eq(&b_before, &snap.pools[1]),
            "untouched pool reused"
        );
        assert_eq!(weights(&m, "c"), vec![(1, 1)]);
        drop(snap);
        // An unconfigured pool that empties is forgotten.
        m.apply(vec![Change::Delete(row(1, "127.0.0.1:1", 1, "c", 3))]);
        assert!(m.ring().load().pool_named("c").is_none());
    }

    #[test]
    fn reset_diffs_and_skips_publish_when_nothing_changed() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        let rows = vec![
            row(1, "127.0.0.1:1", 1, "default", 1),
            row(2, "127.0.0.1:2", 1, "default", 2),
        ];
        assert_eq!(m.reset(rows.clone()).generation, Some(1));
        assert_eq!(m.reset(rows).generation, None);
        let a = m.reset(vec![row(2, "127.0.0.1:2", 4, "default", 5)]);
        assert_eq!((a.changes.len(), a.generation), (2, Some(2)));
        assert_eq!(weights(&m, "default"), vec![(2, 4)]);
    }

    #[test]
    fn an_update_past_a_missed_version_reports_a_gap() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        m.reset(vec![row(1, "127.0.0.1:1", 1, "default", 5)]);
        let in_order = m.apply(vec![Change::Update {
            row: row(1, "127.0.0.1:1", 2, "default", 6),
            prev: 5,
        }]);
        assert!(!in_order.gap);
        // Version 7 (prev of 8) was never seen: something was lost. The row is still applied.
        let skipped = m.apply(vec![Change::Update {
            row: row(1, "127.0.0.1:1", 3, "default", 8),
            prev: 7,
        }]);
        assert!(skipped.gap);
        assert_eq!(weights(&m, "default"), vec![(1, 3)]);
        // An old update (prev below what is known) is stale, not a gap.
        let stale = m.apply(vec![Change::Update {
            row: row(1, "127.0.0.1:1", 9, "default", 6),
            prev: 5,
        }]);
        assert!(!stale.gap && stale.stale == 1);
    }

    fn route(id: i64, path: &str, pool: &str, version: i64) -> RouteRow {
        RouteRow {
            id,
            version,
            host: None,
            path_prefix: path.into(),
            pool: pool.into(),
            priority: 0,
            listener: None,
        }
    }

    /// The pool (by name) that `path` routes to in the current snapshot, checked against
    /// the snapshot's pool at the route's index.
    fn routed(m: &Membership, path: &str) -> Option<String> {
        let snap = m.ring().load();
        let r = snap.routes.lookup(None, None, path.as_bytes())?;
        assert_eq!(
            snap.pool(r.pool).name,
            r.pool_name,
            "the index holds the pool"
        );
        Some(r.pool_name.to_string())
    }

    #[test]
    fn a_batch_of_workers_and_routes_publishes_one_snapshot() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        m.reset(vec![row(1, "127.0.0.1:1", 1, "default", 1)]);
        let a = m.apply(Changes {
            workers: vec![Change::Insert(row(2, "127.0.0.1:2", 1, "api", 2))],
            routes: vec![Change::Insert(route(1, "/api", "api", 1))],
        });
        assert_eq!((a.changes.len(), a.routes.len()), (1, 1));
        assert_eq!(a.generation, Some(2), "one publish for both");
        assert_eq!(routed(&m, "/api/x").as_deref(), Some("api"));
        assert_eq!(m.ring().pool_index("api"), Some(1));
        assert_eq!(weights(&m, "api"), vec![(2, 1)]);
    }

    #[test]
    fn a_pool_only_a_route_names_is_there_empty_and_keeps_its_index() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        m.reset(vec![row(1, "127.0.0.1:1", 1, "other", 1)]);
        m.apply(vec![Change::Insert(route(1, "/", "routed", 1))]);
        let snap = m.ring().load_full();
        let index = m.ring().pool_index("routed").expect("registered");
        assert_eq!(
            index, 1,
            "after the configured pool, before unconfigured ones"
        );
        assert!(snap.pool(index).workers.is_empty());
        assert_eq!(routed(&m, "/").as_deref(), Some("routed"));
        // Its route gone, the pool keeps its index (an index is never taken back).
        m.apply(vec![Change::Delete(route(1, "/", "routed", 1))]);
        assert!(m.ring().load().routes.is_empty());
        assert_eq!(m.ring().pool_index("routed"), Some(1));
        assert_eq!(m.ring().load().pool(1).name.as_ref(), "routed");
        // Workers arriving later land at that index.
        m.apply(vec![Change::Insert(row(2, "127.0.0.1:2", 1, "routed", 2))]);
        assert_eq!(m.ring().load().pool(1).workers[0].id, 2);
    }

    #[test]
    fn routes_are_compiled_only_when_a_route_changed() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        m.reset_tables(Tables {
            workers: vec![row(1, "127.0.0.1:1", 1, "default", 1)],
            routes: vec![route(1, "/", "default", 1)],
        });
        let before = m.ring().load().routes.clone();
        m.apply(vec![Change::Insert(row(1, "127.0.0.1:1", 5, "default", 2))]);
        assert!(Arc::ptr_eq(&before, &m.ring().load().routes), "reused");
        m.apply(vec![Change::Update {
            row: route(1, "/x", "default", 2),
            prev: 1,
        }]);
        assert!(!Arc::ptr_eq(&before, &m.ring().load().routes), "recompiled");
        assert_eq!(routed(&m, "/x").as_deref(), Some("default"));
        assert_eq!(routed(&m, "/"), None);
    }

    #[test]
    fn route_events_are_applied_idempotently() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        m.reset_tables(Tables {
            workers: vec![],
            routes: vec![route(1, "/a", "default", 5)],
        });
        // Already known (the snapshot overtook them), or about a row never seen.
        let a = m.apply(vec![
            Change::Insert(route(1, "/old", "default", 4)),
            Change::Insert(route(1, "/a", "default", 5)),
            Change::Delete(route(9, "/z", "default", 3)),
        ]);
        assert_eq!((a.stale, a.generation, a.gap), (3, None, false));
        // An update past a version never seen: applied, and reported as a gap.
        let a = m.apply(vec![Change::Update {
            row: route(1, "/b", "default", 8),
            prev: 7,
        }]);
        assert!(a.gap);
        assert_eq!(routed(&m, "/b").as_deref(), Some("default"));
        // A delete carries the row's last version: at least the known one removes it.
        let a = m.apply(vec![Change::Delete(route(1, "/b", "default", 7))]);
        assert_eq!(a.stale, 1, "older than the known version");
        let a = m.apply(vec![Change::Delete(route(1, "/b", "default", 8))]);
        assert_eq!(a.routes.len(), 1);
        assert!(m.ring().load().routes.is_empty());
    }

    #[test]
    fn reset_diffs_routes_too() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        let tables = Tables {
            workers: vec![row(1, "127.0.0.1:1", 1, "default", 1)],
            routes: vec![route(1, "/a", "default", 1), route(2, "/b", "default", 2)],
        };
        assert_eq!(m.reset_tables(tables.clone()).generation, Some(1));
        assert_eq!(
            m.reset_tables(tables.clone()).generation,
            None,
            "nothing new"
        );
        let a = m.reset_tables(Tables {
            workers: tables.workers.clone(),
            routes: vec![route(2, "/c", "default", 3), route(3, "/d", "default", 4)],
        });
        let ops: Vec<(i64, &str)> = {
            let mut ops: Vec<_> = a.routes.iter().map(|c| (c.row().id, c.op())).collect();
            ops.sort();
            ops
        };
        assert_eq!(ops, [(1, "delete"), (2, "update"), (3, "insert")]);
        assert_eq!((a.changes.len(), a.generation), (0, Some(2)));
        let ids: Vec<i64> = m.ring().load().routes.rows().iter().map(|r| r.id).collect();
        assert_eq!(ids, [2, 3]);
        // A reset to workers alone drops every route.
        m.reset(tables.workers);
        assert!(m.ring().load().routes.is_empty());
    }

    #[test]
    fn deleted_then_reinserted_is_a_new_worker() {
        let mut m = Membership::new(Ring::new(&["default".into()]));
        m.reset(vec![row(1, "127.0.0.1:1", 1, "default", 1)]);
        m.apply(vec![
            Change::Delete(row(1, "127.0.0.1:1", 1, "default", 1)),
            Change::Insert(row(2, "127.0.0.1:1", 1, "default", 2)),
        ]);
        assert_eq!(weights(&m, "default"), vec![(2, 1)]);
    }
}
