//! The background tasks of each served pool: its active health checker (when it has
//! `[pools.NAME.health_check]`) and the reaper of its idle connections to workers. One set
//! per pool, shared by every listener of the pool and every route to it, started with the
//! pool's settings and restarted when a reload changes them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, PoolConfig};
use crate::metrics::Metrics;
use crate::ring::Ring;
use crate::ring::routes::Routes;
use crate::{balance, upstream};

/// The pools whose tasks run: those a listener serves, and those a route names (followed
/// from the ring as routes change, without a reload).
pub struct PoolTasks {
    state: Arc<Mutex<State>>,
}

struct State {
    ring: Arc<Ring>,
    metrics: Arc<Metrics>,
    /// The process's drain: every pool's stop token is a child of it.
    drain: CancellationToken,
    /// `[pools.NAME]` tables, from the configuration being served.
    settings: HashMap<String, PoolConfig>,
    /// The pools of the `[[listeners]]`.
    listened: BTreeSet<String>,
    /// The pools rows of `routes` name.
    routed: BTreeSet<String>,
    running: BTreeMap<String, Started>,
}

/// One pool's tasks.
struct Started {
    settings: PoolConfig,
    /// Stops both tasks: cancelled when the pool's settings change or nothing serves it.
    stop: CancellationToken,
}

impl PoolTasks {
    /// No pool's tasks yet ([`PoolTasks::apply`] starts the configured ones); the pools
    /// routes name get theirs as the ring publishes them.
    pub fn new(ring: Arc<Ring>, drain: CancellationToken, metrics: Arc<Metrics>) -> PoolTasks {
        let state = Arc::new(Mutex::new(State {
            ring: ring.clone(),
            metrics,
            drain: drain.clone(),
            settings: HashMap::new(),
            listened: BTreeSet::new(),
            routed: BTreeSet::new(),
            running: BTreeMap::new(),
        }));
        tokio::spawn(follow_routes(ring, drain, state.clone()));
        PoolTasks { state }
    }

    /// Makes the tasks match `config`: pools new to it, or whose settings changed, get
    /// (new) tasks; pools nothing serves any more stop theirs; the others keep running
    /// undisturbed (a health checker's rise and fall counts survive a reload that did not
    /// touch its pool). Returns the names of the pools whose tasks started or stopped.
    /// Every listener's pool must be configured in the ring.
    pub fn apply(&self, config: &Config) -> Vec<String> {
        let mut state = lock(&self.state);
        state.settings = config.pools.clone();
        state.listened = config.listeners.iter().map(|l| l.pool.clone()).collect();
        state.sync()
    }
}

/// Starts and stops tasks as the pools named by routes change.
async fn follow_routes(ring: Arc<Ring>, drain: CancellationToken, state: Arc<Mutex<State>>) {
    let mut published = ring.subscribe();
    // Routes are compiled anew only when they change: a publish of worker changes keeps
    // the same value, and needs no look.
    let mut seen: Option<Arc<Routes>> = None;
    loop {
        let routes = ring.load().routes.clone();
        if !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &routes)) {
            let routed: BTreeSet<String> = routes.rows().iter().map(|r| r.pool.clone()).collect();
            seen = Some(routes);
            let mut state = lock(&state);
            if state.routed != routed {
                state.routed = routed;
                let changed = state.sync();
                if !changed.is_empty() {
                    tracing::info!(pools = ?changed, "routes changed the pools served: their tasks follow");
                }
            }
        }
        tokio::select! {
            _ = drain.cancelled() => return,
            changed = published.changed() => if changed.is_err() { return },
        }
    }
}

/// A poisoned lock only means a task start panicked; the bookkeeping is still good.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Starts, restarts and stops tasks so that every served pool runs them with its
    /// current settings. Returns the pools whose tasks changed.
    fn sync(&mut self) -> Vec<String> {
        let served: BTreeSet<String> = self.listened.union(&self.routed).cloned().collect();
        let mut changed = Vec::new();
        self.running.retain(|name, started| {
            let keep = served.contains(name);
            if !keep {
                started.stop.cancel();
                changed.push(name.clone());
            }
            keep
        });
        for name in &served {
            let settings = self.settings.get(name).cloned().unwrap_or_default();
            // Read by the scrape for warming workers' effective weights.
            let slow_start = settings.slow_start.as_millis() as u64;
            (self.metrics.pool(name).slow_start_ms).store(slow_start, Ordering::Relaxed);
            if self
                .running
                .get(name)
                .is_some_and(|s| s.settings == settings)
            {
                continue;
            }
            if let Some(old) = self.running.remove(name) {
                old.stop.cancel();
            }
            let stop = self.spawn(name, &settings);
            self.running
                .insert(name.to_string(), Started { settings, stop });
            changed.push(name.to_string());
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    fn spawn(&self, name: &str, settings: &PoolConfig) -> CancellationToken {
        let stop = self.drain.child_token();
        let index = self
            .ring
            .pool_index(name)
            .expect("listeners' and routes' pools are configured in the ring");
        let tls = upstream::tls::for_pool_tasks(name, settings);
        if let Some(check) = &settings.health_check {
            tokio::spawn(balance::health::run(
                self.ring.clone(),
                name.to_string(),
                check.clone(),
                Arc::new(upstream::probe::NetworkProbe {
                    tls,
                    send_proxy: settings.send_proxy,
                }),
                stop.clone(),
            ));
        }
        tokio::spawn(upstream::idle::reap(
            self.ring.clone(),
            index,
            settings.idle_timeout,
            stop.clone(),
        ));
        stop
    }
}
