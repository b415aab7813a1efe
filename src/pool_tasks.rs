//! The background tasks of each served pool: its active health checker (when it has
//! `[pools.NAME.health_check]`) and the reaper of its idle connections to workers. One set
//! per pool, shared by every listener of the pool, started with the pool's settings and
//! restarted when a reload changes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, PoolConfig};
use crate::metrics::Metrics;
use crate::ring::Ring;
use crate::{balance, upstream};

/// The pools whose tasks run, with the settings they run with.
pub struct PoolTasks {
    ring: Arc<Ring>,
    /// The process's drain: every pool's stop token is a child of it.
    drain: CancellationToken,
    running: BTreeMap<String, Started>,
}

/// One pool's tasks.
struct Started {
    settings: PoolConfig,
    /// Stops both tasks: cancelled when the pool's settings change or no listener serves it.
    stop: CancellationToken,
}

impl PoolTasks {
    pub fn new(ring: Arc<Ring>, drain: CancellationToken) -> PoolTasks {
        PoolTasks {
            ring,
            drain,
            running: BTreeMap::new(),
        }
    }

    /// Makes the tasks match `config`: pools new to it, or whose settings changed, get
    /// (new) tasks; pools no listener serves any more stop theirs; the others keep running
    /// undisturbed (a health checker's rise and fall counts survive a reload that did not
    /// touch its pool). Returns the names of the pools whose tasks started or stopped.
    /// Every served pool must be configured in the ring.
    pub fn apply(&mut self, config: &Config, metrics: &Metrics) -> Vec<String> {
        let mut served: Vec<&str> = config.listeners.iter().map(|l| l.pool.as_str()).collect();
        served.sort_unstable();
        served.dedup();
        let mut changed = Vec::new();
        self.running.retain(|name, started| {
            let keep = served.contains(&name.as_str());
            if !keep {
                started.stop.cancel();
                changed.push(name.clone());
            }
            keep
        });
        for name in served {
            let settings = config.pool(name);
            // Read by the scrape for warming workers' effective weights.
            let slow_start = settings.slow_start.as_millis() as u64;
            (metrics.pool(name).slow_start_ms).store(slow_start, Ordering::Relaxed);
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
            .expect("served pools are configured in the ring");
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
