//! `GET /metrics`: the Prometheus text exposition (format 0.0.4) of the proxy's counters.
//!
//! Built on `prometheus-client`, as a [`Collector`] that reads at scrape time what the
//! proxy already keeps: the per-worker tallies and state cells of the current snapshot,
//! the listener, pool and process counters of `metrics`, and the subscriber's state. Nothing
//! is registered per worker, so a removed worker's series leave the next scrape with it, and
//! the hot path never touches the registry.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::{collector::Collector, registry::Registry};

use crate::db::SyncStatus;
use crate::metrics::{Histogram, Metrics};
use crate::ring::Ring;
use crate::ring::tally::{CODE_CLASSES, ErrorKind};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct Sources {
    pub ring: Arc<Ring>,
    pub metrics: Arc<Metrics>,
    pub sync: Arc<SyncStatus>,
}

/// The exposition of everything `sources` shows now.
pub fn render(sources: &Sources) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources.clone()));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

fn counter<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<'a, V>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, &'a Histogram)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        let (sum, count, buckets) = h.read();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn text(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

fn number(n: impl ToString) -> Cow<'static, str> {
    Cow::Owned(n.to_string())
}

impl Collector for Sources {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self.ring.load_full();
        let listeners = self.metrics.listeners();
        let pools = self.metrics.pools();
        let workers: Vec<_> = snapshot
            .pools
            .iter()
            .flat_map(|p| p.workers.iter())
            .collect();
        let listener_name = |id: u32| listeners.iter().find(|l| l.id == id);

        // lb_requests_total: each worker's per-listener counts, then the responses no
        // worker had a part in (worker="").
        let mut requests = Vec::new();
        for w in &workers {
            for t in w.state.tally.by_listener() {
                let Some(l) = listener_name(t.listener) else {
                    continue;
                };
                for (i, class) in CODE_CLASSES.iter().enumerate() {
                    let n = t.responses(i);
                    if n > 0 {
                        let labels = vec![
                            ("listener", text(&l.name)),
                            ("pool", text(&w.pool)),
                            ("worker", text(&w.address.text)),
                            ("code_class", text(class)),
                        ];
                        requests.push((labels, n));
                    }
                }
            }
        }
        for l in &listeners {
            for (i, class) in CODE_CLASSES.iter().enumerate() {
                let n = l.unserved.responses(i);
                if n > 0 {
                    let labels = vec![
                        ("listener", text(&l.name)),
                        ("pool", text(&l.pool)),
                        ("worker", text("")),
                        ("code_class", text(class)),
                    ];
                    requests.push((labels, n));
                }
            }
        }
        counter(
            &mut e,
            "lb_requests",
            "Responses sent to clients, by the worker that served them (\"\" for the proxy's own answers without one) and status class.",
            requests,
        )?;

        histogram(
            &mut e,
            "lb_request_duration_seconds",
            "Time from a request's head to the end of its response.",
            listeners.iter().filter(|l| l.http).map(|l| {
                let labels = vec![("listener", text(&l.name)), ("pool", text(&l.pool))];
                (labels, &l.duration)
            }),
        )?;

        let mut errors = Vec::new();
        for w in &workers {
            for kind in ErrorKind::ALL {
                let labels = vec![
                    ("pool", text(&w.pool)),
                    ("worker", text(&w.address.text)),
                    ("kind", text(kind.name())),
                ];
                errors.push((labels, w.state.tally.errors(kind)));
            }
        }
        counter(
            &mut e,
            "lb_upstream_errors",
            "Exchanges with a worker that failed, by how: connect, timeout, reset, protocol.",
            errors,
        )?;

        counter(
            &mut e,
            "lb_retries",
            "Requests sent to another worker after one failed.",
            pools.iter().map(|(name, p)| {
                (
                    vec![("pool", text(name))],
                    p.retries.load(Ordering::Relaxed),
                )
            }),
        )?;

        counter(
            &mut e,
            "lb_client_errors",
            "Requests the proxy refused because of the client, by the status it answered.",
            listeners.iter().filter(|l| l.http).flat_map(|l| {
                l.client_errors().map(|(status, n)| {
                    (
                        vec![("listener", text(&l.name)), ("status", number(status))],
                        n,
                    )
                })
            }),
        )?;

        let mut tcp = Vec::new();
        for w in &workers {
            for t in w.state.tally.by_listener() {
                let Some(l) = listener_name(t.listener) else {
                    continue;
                };
                if t.connections() > 0 {
                    let labels = vec![
                        ("listener", text(&l.name)),
                        ("pool", text(&w.pool)),
                        ("worker", text(&w.address.text)),
                    ];
                    tcp.push((labels, t.connections()));
                }
            }
        }
        counter(
            &mut e,
            "lb_tcp_connections",
            "TCP connections balanced to a worker.",
            tcp,
        )?;

        gauge(
            &mut e,
            "lb_client_connections",
            "Client connections open now.",
            listeners
                .iter()
                .map(|l| (vec![("listener", text(&l.name))], l.open_connections())),
        )?;

        fn worker_labels(w: &crate::ring::Worker) -> Labels<'_> {
            vec![
                ("pool", text(&w.pool)),
                ("worker", text(&w.address.text)),
                ("worker_id", number(w.id)),
            ]
        }
        let per_worker = |value: &dyn Fn(&crate::ring::Worker) -> i64| {
            workers
                .iter()
                .map(|w| (worker_labels(w), value(w)))
                .collect::<Vec<_>>()
        };
        gauge(
            &mut e,
            "lb_worker_in_flight",
            "Requests (HTTP) or connections (TCP) a worker is serving now.",
            per_worker(&|w| w.state.in_flight.load(Ordering::Relaxed) as i64),
        )?;
        gauge(
            &mut e,
            "lb_worker_healthy",
            "1 if the active health checks pass (or none are configured), else 0.",
            per_worker(&|w| i64::from(w.state.health.is_healthy())),
        )?;
        gauge(
            &mut e,
            "lb_worker_ejected",
            "1 while passive ejection keeps the worker out, else 0.",
            per_worker(&|w| i64::from(w.state.ejection.is_ejected())),
        )?;
        gauge(
            &mut e,
            "lb_worker_weight",
            "The worker's weight in the workers table.",
            per_worker(&|w| i64::from(w.weight)),
        )?;
        let slow_start = |pool: &str| {
            pools
                .iter()
                .find(|(n, _)| &**n == pool)
                .map_or(Duration::ZERO, |(_, p)| {
                    Duration::from_millis(p.slow_start_ms.load(Ordering::Relaxed))
                })
        };
        gauge(
            &mut e,
            "lb_worker_effective_weight",
            "The weight new traffic sees now: 0 while unhealthy, ejected or drained, less during slow start.",
            workers.iter().map(|w| {
                let s = &w.state;
                let out = !s.health.is_healthy() || s.ejection.is_ejected() || s.drain.is_drained();
                let weight = if out {
                    0.0
                } else {
                    f64::from(w.weight) * s.ramp.share(slow_start(&w.pool))
                };
                (worker_labels(w), weight)
            }),
        )?;

        gauge(
            &mut e,
            "lb_ring_version",
            "Highest workers.version applied to the pool's ring.",
            snapshot
                .pools
                .iter()
                .map(|p| (vec![("pool", text(&p.name))], p.version)),
        )?;
        counter(
            &mut e,
            "lb_ring_publishes",
            "Snapshots of the ring published.",
            [(Labels::new(), snapshot.generation)],
        )?;
        histogram(
            &mut e,
            "lb_ring_apply_seconds",
            "From a workers NOTIFY's arrival to the ring snapshot that applies it being published.",
            [(Labels::new(), &self.metrics.ring_apply)],
        )?;
        let connected = self.sync.get().state == "connected";
        gauge(
            &mut e,
            "lb_db_connected",
            "1 while the subscriber's connection to PostgreSQL is up, else 0.",
            [(Labels::new(), i64::from(connected))],
        )?;
        counter(
            &mut e,
            "lb_db_resyncs",
            "Reads of the whole workers table into the ring, by reason.",
            self.metrics
                .resyncs()
                .into_iter()
                .map(|(reason, n)| (vec![("reason", number(reason))], n)),
        )?;
        let (ok, error) = self.metrics.reloads();
        counter(
            &mut e,
            "lb_config_reloads",
            "Reloads of config.toml on SIGHUP, by result.",
            [
                (vec![("result", text("ok"))], ok),
                (vec![("result", text("error"))], error),
            ],
        )?;
        counter(
            &mut e,
            "lb_access_log_dropped",
            "Access-log lines dropped because the log's queue was full.",
            [(
                Labels::new(),
                self.metrics.access_log_dropped.load(Ordering::Relaxed),
            )],
        )?;
        Ok(())
    }
}
