//! Where a listener sends a request or connection: a [`Target`] is one pool as one
//! listener reaches it (its balancer, how its workers are dialled, where its reports go).
//!
//! A listener has a target for its own `pool`, made with its proxy, and one for each pool a
//! row of `routes` sends its requests to, made on the first such request (routes change
//! live, without a reload, so the pools they name are not known when the proxy is built).
//! [`Targets::route`] looks the request up in the snapshot's compiled routes; the listener's
//! own target serves whatever no route matches.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::report::Reports;
use crate::access_log::AccessLog;
use crate::balance::Balancer;
use crate::config::{AlgorithmKind, ListenerConfig, PoolConfig, Protocol};
use crate::metrics::Metrics;
use crate::ring::routes::Route;
use crate::ring::{Ring, Snapshot};
use crate::upstream::Connector;

/// One pool as one listener reaches it.
pub struct Target {
    pub balancer: Balancer,
    /// How connections to the pool's workers are made.
    pub connector: Connector,
    /// Where each request's report goes: the listener's counters with this pool's label,
    /// and the listener's access log.
    pub reports: Reports,
}

/// A listener's targets: its own pool's, and those routes led to.
pub struct Targets {
    /// The listener's own `pool`: every request no route matches.
    pub own: Arc<Target>,
    /// `[[listeners]] name`: the value of `routes.listener` that applies to this listener.
    name: Option<Box<str>>,
    /// Targets of routed pools, by the pool's fixed index in the ring; made on first use.
    routed: ArcSwap<Vec<Option<Arc<Target>>>>,
    make: Make,
}

/// What making a target takes: the listener's settings and the pools' configuration.
struct Make {
    ring: Arc<Ring>,
    metrics: Arc<Metrics>,
    /// The listener's `listener` label (its bound address).
    label: String,
    http: bool,
    algorithm: AlgorithmKind,
    balance_factor: u32,
    /// `[pools.NAME]` tables; other pools get the defaults.
    pools: HashMap<String, PoolConfig>,
    log: Option<AccessLog>,
}

impl Make {
    fn target(&self, pool: &str) -> Target {
        let settings = self.pools.get(pool).cloned().unwrap_or_default();
        let metrics = self.metrics.listener(&self.label, pool, self.http);
        Target {
            connector: Connector::new(&settings),
            balancer: Balancer::of(
                self.ring.clone(),
                pool,
                self.algorithm,
                self.balance_factor,
                settings,
            ),
            reports: Reports::new(metrics, self.log.clone()),
        }
    }
}

impl Targets {
    /// The targets of listener `entry`, labelled `label` in metrics, with the pools of
    /// `pools`. The listener's pool must be configured in the ring.
    pub fn new(
        ring: Arc<Ring>,
        metrics: Arc<Metrics>,
        entry: &ListenerConfig,
        label: String,
        pools: &HashMap<String, PoolConfig>,
        log: Option<AccessLog>,
    ) -> Targets {
        if entry.algorithm == AlgorithmKind::ConsistentHash {
            // The tables of the pools routes lead to are built by the subscriber as it
            // publishes the routes, not by the first request routed there.
            ring.hash_routed_pools();
        }
        let make = Make {
            ring,
            metrics,
            label,
            http: entry.protocol == Protocol::Http,
            algorithm: entry.algorithm,
            balance_factor: entry.hash_balance_factor,
            pools: pools.clone(),
            log,
        };
        Targets {
            own: Arc::new(make.target(&entry.pool)),
            name: entry.name.as_deref().map(Into::into),
            routed: ArcSwap::default(),
            make,
        }
    }

    /// The ring routes are looked up in.
    pub fn ring(&self) -> &Ring {
        &self.make.ring
    }

    /// Points `current` at the target of a request to `host` (as sent, `None` without one)
    /// and `path` (without the query): the pool of the best route in `snapshot`, else the
    /// listener's own. Leaves `current` alone when it is that target already, so a
    /// connection whose requests keep going to one pool touches no reference count.
    pub fn route(
        &self,
        snapshot: &Snapshot,
        host: Option<&[u8]>,
        path: &[u8],
        current: &mut Arc<Target>,
    ) {
        let route = if snapshot.routes.is_empty() {
            None
        } else {
            snapshot.routes.lookup(self.name.as_deref(), host, path)
        };
        self.point(route, current);
    }

    /// The same for a TLS connection whose ClientHello names `server` (`sni_routing`): by
    /// the routes' hosts only (see `Routes::lookup_server_name`).
    pub fn route_server_name(&self, snapshot: &Snapshot, server: &[u8], current: &mut Arc<Target>) {
        let route = snapshot
            .routes
            .lookup_server_name(self.name.as_deref(), server);
        self.point(route, current);
    }

    fn point(&self, route: Option<&Route>, current: &mut Arc<Target>) {
        let Some(route) = route else {
            if !Arc::ptr_eq(current, &self.own) {
                *current = self.own.clone();
            }
            return;
        };
        if let Some(known) = self.routed.load().get(route.pool).and_then(Option::as_ref) {
            if !Arc::ptr_eq(current, known) {
                *current = known.clone();
            }
            return;
        }
        *current = self.made(route.pool, &route.pool_name);
    }

    /// The target of pool `name` at ring index `index`, for a listener that never routed
    /// there: the listener's own when that is the pool, else a new one. Published for the
    /// next requests without a lock (a racing request may make one too; the first stored
    /// wins and the other is dropped).
    #[cold]
    fn made(&self, index: usize, name: &str) -> Arc<Target> {
        let target = if self.own.balancer.pool_index() == index {
            self.own.clone()
        } else {
            Arc::new(self.make.target(name))
        };
        let routed = self.routed.rcu(|routed| {
            let mut routed = Vec::clone(routed);
            if routed.len() <= index {
                routed.resize(index + 1, None);
            }
            routed[index].get_or_insert_with(|| target.clone());
            routed
        });
        // `rcu` returns what it replaced: look in what it stored.
        drop(routed);
        self.routed.load()[index]
            .clone()
            .expect("stored above, never removed")
    }
}
