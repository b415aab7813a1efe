//! What one request (or TCP connection) came to, told once when it ends: to the listener's
//! counters (and the worker's tally) for `/metrics`, and to its access log when it has one.
//!
//! Each transport fills a [`Report`] as the request goes — who served it, what the client
//! got, how many workers it took, how it ended — and hands it to its listener's [`Reports`]
//! at the end. A report lives in the connection's task and holds the worker the request
//! held anyway: for the counters, no allocation and no lock. What only the access log needs
//! (the request line, timings, bytes) is gathered only when the listener has a log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::access_log::{AccessLog, Ended, Entry, Http, HttpVersion, Kind};
use crate::metrics::ListenerMetrics;
use crate::ring::Worker;

/// Where a listener's reports go.
#[derive(Clone)]
pub struct Reports {
    pub metrics: Arc<ListenerMetrics>,
    /// `None` when the listener's `access_log` is `"off"`.
    pub log: Option<AccessLog>,
}

impl Reports {
    pub fn new(metrics: Arc<ListenerMetrics>, log: Option<AccessLog>) -> Reports {
        Reports { metrics, log }
    }

    /// Whether reports should carry what only the access log shows.
    #[inline]
    pub fn detailed(&self) -> bool {
        self.log.is_some()
    }

    /// A report for a request (or connection) from `client` starting now.
    pub fn start(&self, client: SocketAddr) -> Report {
        Report {
            open: true,
            ..self.idle(client)
        }
    }

    /// A report for a connection from `client` whose first request has not begun
    /// ([`Report::begin`] starts each): a connection cut before it sends one reports nothing.
    pub fn idle(&self, client: SocketAddr) -> Report {
        Report {
            started: Instant::now(),
            status: 0,
            own: false,
            worker: None,
            retries: 0,
            ended: None,
            open: false,
            detail: self.detailed().then(|| Box::new(Detail::new(client))),
        }
    }

    /// Counts what `report` says — the response by worker and class, a refusal of the
    /// client, the retries, the request's whole duration — and logs it. The report's worker
    /// is let go: an idle connection must not keep a removed worker alive.
    pub fn finish(&self, report: &mut Report) {
        if !report.open {
            return;
        }
        report.open = false;
        let m = &self.metrics;
        if m.http {
            if report.status != 0 {
                m.answered(report.worker.as_deref(), report.status);
            }
            if report.own {
                m.refused(report.status);
            }
            m.duration.observe(report.started.elapsed());
        }
        if report.retries > 0 {
            (m.pool_counts.retries).fetch_add(u64::from(report.retries), Ordering::Relaxed);
        }
        if let (Some(log), Some(mut detail)) = (&self.log, report.detail.take()) {
            log.log(entry(report, &mut detail, m));
            report.detail = Some(detail);
        }
        report.worker = None;
    }
}

/// One request (or TCP connection), as it went.
#[derive(Debug)]
pub struct Report {
    pub started: Instant,
    /// The status the client got; 0 if it got none (it left, the connection broke, TCP).
    pub status: u16,
    /// Whether the proxy answered itself (a refusal, 502, 503, 504) instead of a worker.
    pub own: bool,
    /// The last worker tried, if any.
    pub worker: Option<Arc<Worker>>,
    /// Workers tried after the first.
    pub retries: u32,
    /// Set where the exchange broke off; `None`: it ended as its status says.
    pub ended: Option<Ended>,
    /// Begun and not yet finished.
    open: bool,
    /// What only the access log shows; `None` without one. Boxed: most listeners have no
    /// log, and their connections' tasks stay small.
    pub detail: Option<Box<Detail>>,
}

/// The parts of a report only the access log reads.
#[derive(Debug)]
pub struct Detail {
    pub client: SocketAddr,
    pub request: Option<Http>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// How long dialling the worker took (not set for a reused connection).
    pub connect: Option<Duration>,
    /// From the start to the worker's response head.
    pub ttfb: Option<Duration>,
    /// Body bytes an upload still running elsewhere has sent so far (HTTP/2: the body goes
    /// to the worker from the exchange's own task), added to `bytes_in` at the end.
    pub uploading: Option<Arc<AtomicU64>>,
}

impl Detail {
    fn new(client: SocketAddr) -> Detail {
        Detail {
            client,
            request: None,
            bytes_in: 0,
            bytes_out: 0,
            connect: None,
            ttfb: None,
            uploading: None,
        }
    }
}

impl Report {
    /// Starts over for the next request on the same connection.
    #[inline]
    pub fn begin(&mut self) {
        self.started = Instant::now();
        self.status = 0;
        self.own = false;
        self.worker = None;
        self.retries = 0;
        self.ended = None;
        self.open = true;
        if let Some(d) = self.detail.as_deref_mut() {
            *d = Detail::new(d.client);
        }
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
        if let Some(d) = self.detail.as_deref_mut() {
            d.ttfb = Some(self.started.elapsed());
        }
    }

    /// The exchange broke off (or was cut) before it ended on its own.
    #[inline]
    pub fn ended(&mut self, how: Ended) {
        self.ended.get_or_insert(how);
    }

    /// Whether the report was begun and not finished: a connection cut mid-request.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Runs `f` on the access-log details, when there is a log.
    #[inline]
    pub fn detail(&mut self, f: impl FnOnce(&mut Detail)) {
        if let Some(d) = self.detail.as_deref_mut() {
            f(d);
        }
    }
}

/// How a request ended, from what broke it off or else from its status.
fn how_it_ended(report: &Report) -> Ended {
    if let Some(ended) = report.ended {
        return ended;
    }
    match (report.own, report.status) {
        (false, _) => Ended::Complete,
        (true, 408 | 504) => Ended::Timeout,
        (true, 502) => Ended::BackendFailed,
        (true, _) => Ended::Refused,
    }
}

fn entry(report: &Report, detail: &mut Detail, m: &ListenerMetrics) -> Entry {
    let total = report.started.elapsed();
    let kind = if m.http {
        Kind::Http(detail.request.take().unwrap_or_else(unknown_request))
    } else {
        Kind::Tcp
    };
    Entry {
        time: SystemTime::now() - total,
        client: detail.client,
        kind,
        status: report.status,
        bytes_in: detail.bytes_in
            + (detail.uploading.as_ref()).map_or(0, |n| n.load(Ordering::Relaxed)),
        bytes_out: detail.bytes_out,
        worker: report.worker.as_ref().map(|w| w.address.text.clone()),
        pool: m.pool.clone(),
        total,
        connect: detail.connect,
        ttfb: detail.ttfb,
        retries: report.retries,
        ended: how_it_ended(report),
    }
}

/// A request refused before its head could be read (too large, malformed, too slow).
fn unknown_request() -> Http {
    Http {
        method: "-".into(),
        authority: None,
        path: "-".into(),
        version: HttpVersion::Http11,
        referer: None,
        user_agent: None,
    }
}

/// The access log's view of an HTTP/1 request head (already parsed once, so it parses).
pub fn h1_request(head: &[u8]) -> Option<Http> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    req.parse(head).ok()?;
    let text = |v: &[u8]| -> Box<str> { String::from_utf8_lossy(v).into() };
    let field = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| text(h.value))
    };
    Some(Http {
        method: req.method?.into(),
        authority: field("host"),
        path: req.path?.into(),
        version: match req.version? {
            0 => HttpVersion::Http10,
            _ => HttpVersion::Http11,
        },
        referer: field("referer"),
        user_agent: field("user-agent"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http1_head_gives_the_logged_request_line_and_fields() {
        let http = h1_request(
            b"POST /a?b=1 HTTP/1.0\r\nHost: x.test\r\nUser-Agent: curl/8\r\nReferer: /r\r\n\r\n",
        )
        .unwrap();
        assert_eq!(&*http.method, "POST");
        assert_eq!(&*http.path, "/a?b=1");
        assert_eq!(http.authority.as_deref(), Some("x.test"));
        assert_eq!(http.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(http.referer.as_deref(), Some("/r"));
        assert_eq!(http.version, HttpVersion::Http10);
    }

    #[test]
    fn a_connection_cut_before_its_first_request_reports_nothing() {
        let metrics = crate::metrics::Metrics::default().listener("l", "p", true);
        let reports = Reports::new(metrics.clone(), None);
        let mut idle = reports.idle("127.0.0.1:1".parse().unwrap());
        idle.ended(Ended::Cut);
        reports.finish(&mut idle);
        assert_eq!(metrics.duration.read().1, 0, "nothing was reported");
        idle.begin();
        idle.answered_own(408);
        reports.finish(&mut idle);
        reports.finish(&mut idle);
        assert_eq!(
            metrics.duration.read().1,
            1,
            "a begun request, reported once"
        );
    }

    #[test]
    fn how_a_request_ended_follows_what_broke_it_or_its_status() {
        let metrics = crate::metrics::Metrics::default().listener("l", "p", true);
        let reports = Reports::new(metrics, None);
        let mut r = reports.start("127.0.0.1:1".parse().unwrap());
        r.answered(200);
        assert_eq!(how_it_ended(&r), Ended::Complete);
        r.answered_own(504);
        assert_eq!(how_it_ended(&r), Ended::Timeout);
        r.answered_own(502);
        assert_eq!(how_it_ended(&r), Ended::BackendFailed);
        r.answered_own(431);
        assert_eq!(how_it_ended(&r), Ended::Refused);
        r.ended(Ended::ClientClosed);
        r.ended(Ended::Cut);
        assert_eq!(
            how_it_ended(&r),
            Ended::ClientClosed,
            "the first cause stands"
        );
    }
}
