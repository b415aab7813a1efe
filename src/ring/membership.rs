//! Membership: turns table rows and change events into published snapshots.
//!
//! Owned by the database subscriber, the ring's only publisher. It keeps the last known version of
//! every row, applies changes idempotently (a change whose version is not newer than the
//! known one is dropped, which makes the overlap between LISTEN and the snapshot harmless),
//! rebuilds only the pools a batch touched and publishes them all as one snapshot. A full
//! [`Membership::reset`] from a fresh table read is the recovery path for anything unexpected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

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

/// One change to the table, from a NOTIFY payload (or from a resync's diff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The row as inserted.
    Insert(Row),
    /// The row as it is now, and the version it had before: a known row whose version is
    /// older than `prev` missed a change, which is evidence that events were lost.
    Update { row: Row, prev: i64 },
    /// The row as it was.
    Delete(Row),
}

impl Change {
    pub fn row(&self) -> &Row {
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

/// What a batch or reset did, for the log line.
#[derive(Debug, Default)]
pub struct Applied {
    /// Changes that were newer than what was known and went into the ring.
    pub changes: Vec<Change>,
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
        }
    }

    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// Applies a batch of changes and publishes one snapshot if any of them was new.
    pub fn apply(&mut self, changes: Vec<Change>) -> Applied {
        let mut applied = Applied::default();
        for change in changes {
            let known = self.workers.get(&change.row().id).map(|w| w.version);
            if let (Change::Update { prev, .. }, Some(v)) = (&change, known) {
                applied.gap |= v < *prev;
            }
            let fresh = match (&change, known) {
                (Change::Delete(r), Some(v)) => r.version >= v,
                (Change::Delete(_), None) => false,
                (upsert, Some(v)) => upsert.row().version > v,
                (_, None) => true,
            };
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
        if !applied.changes.is_empty() {
            applied.generation = Some(self.publish());
        }
        applied
    }

    /// Replaces everything with `rows` (a full table read) and publishes; per-worker state
    /// is kept for every id whose address did not change. Publishes when anything differs
    /// or nothing was ever published.
    pub fn reset(&mut self, rows: Vec<Row>) -> Applied {
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
        if !applied.changes.is_empty() || self.ring.load().generation == 0 {
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

    /// Builds the dirty pools, reuses the others, and publishes one snapshot.
    fn publish(&mut self) -> u64 {
        let current = self.ring.load_full();
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
        self.ring.publish(pools)
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
