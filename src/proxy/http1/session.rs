//! One HTTP/1.x client connection: a task reads each request, picks a worker for it afresh,
//! forwards it on one of that worker's keep-alive connections and relays the response back.
//!
//! It is the hot path, so it is written for it: the task drives both sockets itself (no
//! hand-off to a connection task), heads are parsed in place and written once straight into
//! the buffer that goes out (`request`, `response`), bodies are relayed as they come (a
//! chunked request body's size lines written plainly by `chunked`, everything else as it
//! came), and a request's head and the body bytes already read leave in one write, as does
//! a response's. An idle client connection holds no buffer.
//!
//! What is refused, what the proxy answers itself and when a request goes to another worker
//! are the forwarding policy's (`forward`): always when nothing was sent (connect failure);
//! for idempotent requests whose body was read whole, when the worker failed before
//! answering or answered 502/503/504, within the retry budget; never once the response has
//! started. An upgrade (WebSocket) becomes a tunnel after the backend's 101.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::body::{BodyLeft, reserved};
use super::chunked::{ChunkError, Output};
use super::head::put;
use super::request::{RequestHead, rewrite_request};
use super::response::{Malformed, ResponseHead, rewrite_response};
use super::to_h2;
use crate::access_log::Ended as LogEnded;
use crate::balance::{Affinity, Attempts, NoWorker, Outcome};
use crate::config::UpstreamProtocol;
use crate::db::SyncStatus;
use crate::proxy::forward::affinity::{self, split_target};
use crate::proxy::forward::checks::MAX_FIELDS;
use crate::proxy::forward::headers::Client;
use crate::proxy::forward::retry::{self, Failure};
use crate::proxy::forward::{Canned, Reject, checks};
use crate::proxy::report::{self, Report};
use crate::proxy::stamped::Stamped;
use crate::proxy::stream::ClientStream;
use crate::proxy::target::Target;
use crate::proxy::to_h2::{Call, WorkerRequest, forward as forward_h2};
use crate::proxy::{ClientLimits, HttpProxy};
use crate::ring::state::now_ms;
use crate::ring::{InFlight, Worker};
use crate::shutdown::{Shutdown, Signal};
use crate::upstream::{ConnectError, IdleConns, PrivateConns, Upstream, connect_upstream};

/// First read sizes: most heads (and small bodies) fit. Reads grow while they fill the
/// buffer, up to `MAX_READ`: large bodies stream in large pieces, while ten thousand
/// connections with a request in flight do not hold 16 KiB each.
const CLIENT_READ: usize = 2048;
const BACKEND_READ: usize = 4096;
const MAX_READ: usize = 64 * 1024;
/// A lingering close reads at most this much, for at most this long.
const LINGER_BYTES: usize = 1 << 20;
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a clean close may wait to hand the TLS close_notify to a client that does not
/// read: an alert is a few dozen bytes, so only a client with a full receive window waits.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);
// The HTTP/2 connection preface (RFC 9113 §3.4): a client that starts with it goes to the
// HTTP/2 transport (`proxy::http2`).
use crate::codec::frame::PREFACE as H2_PREFACE;

/// How a client connection left this path.
pub enum Ended {
    /// Closed (cleanly or not: the reason was logged).
    Closed,
    /// The client opened with the HTTP/2 preface: serve it with hyper, these bytes first.
    Http2(ClientStream, BytesMut),
}

/// Why a connection is given up.
#[derive(Debug, thiserror::Error)]
enum Abort {
    #[error("client: {0}")]
    Client(io::Error),
    #[error("client: {0}")]
    ClientBody(ChunkError),
    #[error("client closed the connection mid-request")]
    ClientGone,
    #[error("backend {0}: {1}")]
    Backend(Arc<str>, BackendError),
}

#[derive(Debug, thiserror::Error)]
enum BackendError {
    #[error("{0}")]
    Io(io::Error),
    #[error("closed the connection mid-response")]
    Eof,
    #[error("{0}")]
    Chunk(ChunkError),
    #[error("{0}")]
    Malformed(Malformed),
    #[error("no response headers in time")]
    Timeout,
    #[error("response head larger than the limit")]
    TooLarge,
}

impl BackendError {
    /// What passive ejection makes of it.
    fn outcome(&self) -> Outcome {
        match self {
            BackendError::Io(_) | BackendError::Eof => Outcome::Reset,
            BackendError::Timeout => Outcome::Timeout,
            BackendError::Chunk(_) | BackendError::Malformed(_) | BackendError::TooLarge => {
                Outcome::Protocol
            }
        }
    }
}

/// One client connection.
struct Session<'a> {
    proxy: &'a HttpProxy,
    /// The pool the current request goes to (see `Targets::route`): the listener's own
    /// until a route says otherwise.
    target: Arc<Target>,
    /// Whether the response to the current request sets the sticky cookie: the pool has
    /// one, and the worker is not the one the request's cookie named.
    restick: bool,
    /// The database subscriber's state, for a 503 before the ring was ever loaded.
    sync: &'a SyncStatus,
    limits: &'a ClientLimits,
    shutdown: &'a Shutdown,
    /// The request being served.
    report: Report,
    client: ClientStream,
    /// The client's address (from a PROXY header, when the listener takes them).
    peer: Client,
    /// Idle worker connections that carried this client's PROXY header (`send_proxy`):
    /// reused for this client only.
    private: PrivateConns,
    /// Bytes from the client not yet forwarded.
    inbuf: BytesMut,
    /// Bytes from the backend not yet forwarded.
    rbuf: BytesMut,
    /// The request as it goes to the backend (kept until answered, to send it again).
    req_out: Vec<u8>,
    /// What goes to the client next.
    res_out: Vec<u8>,
    /// The header-read and the response timeouts, one at a time: moved, never re-created.
    timer: Pin<Box<Sleep>>,
    /// The shutdown's drain, waited on between requests; made once per connection.
    drain: Signal<'a>,
}

pub async fn serve(
    proxy: &HttpProxy,
    shutdown: &Shutdown,
    client: ClientStream,
    peer: std::net::SocketAddr,
) -> Ended {
    let limits = &proxy.limits;
    let own = &proxy.targets.own;
    let mut session = Session {
        proxy,
        report: own.reports.idle(peer),
        target: own.clone(),
        restick: false,
        sync: &proxy.sync,
        limits,
        shutdown,
        peer: Client::new(peer).with_tls(client.is_tls()),
        client,
        private: PrivateConns::default(),
        inbuf: BytesMut::new(),
        rbuf: BytesMut::new(),
        req_out: Vec::new(),
        res_out: Vec::new(),
        timer: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
        drain: shutdown.drain_signal(),
    };
    let result = tokio::select! {
        biased;
        r = session.run() => r,
        _ = shutdown.cut_signal() => {
            // The grace ran out mid-request: the request is reported as cut.
            session.report.ended(LogEnded::Cut);
            session.target.reports.finish(&mut session.report);
            Ok(false)
        }
    };
    match result {
        Ok(true) => Ended::Http2(session.client, session.inbuf),
        Ok(false) => {
            // A TLS client is told the close is deliberate (close_notify): without it, a
            // response delimited by the close looks truncated, and clients report an
            // error. Plain TCP's FIN says as much when the socket is dropped.
            if session.client.is_tls() {
                let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, session.client.shutdown()).await;
            }
            Ended::Closed
        }
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
            Ended::Closed
        }
    }
}

/// What `read_request` found.
enum Next {
    Request(RequestHead),
    Http2,
    Closed,
}

/// The outcome of trying one worker.
enum Tried {
    /// The response went out: the client connection continues if `true`.
    Answered(bool),
    /// The worker failed before answering; `retry`: another worker may be tried (within
    /// `retries`; the retry budget was already charged when it applies).
    Failed { retry: bool },
    /// Our own answer instead of the backend's (504).
    Own(Canned),
}

/// How a response's relay ended.
struct End {
    /// The backend connection can serve another request.
    reusable: bool,
    client_close: bool,
    /// Body bytes sent to the client.
    body_bytes: u64,
}

/// Where relaying a response failed.
enum Down {
    /// No response head: nothing but interim responses reached the client.
    Head(BackendError),
    /// The body broke off after the head went out: the client connection must close.
    Body(BackendError),
    Client(io::Error),
}

impl Session<'_> {
    /// Serves requests until the client leaves. `Ok(true)`: an HTTP/2 client, handed over.
    async fn run(&mut self) -> Result<bool, Abort> {
        let mut first = true;
        loop {
            let head = match self.read_request(first).await? {
                Next::Request(h) => h,
                Next::Http2 => return Ok(true),
                Next::Closed => return Ok(false),
            };
            first = false;
            if !self.exchange(head).await? {
                return Ok(false);
            }
        }
    }

    /// Reads until a whole request head is in `inbuf`, within the listener's
    /// `header_read_timeout` (which is also how long an idle keep-alive connection lasts).
    async fn read_request(&mut self, first: bool) -> Result<Next, Abort> {
        arm(self.timer.as_mut(), self.limits.header_read_timeout);
        loop {
            if !self.inbuf.is_empty() {
                let start = &self.inbuf[..self.inbuf.len().min(H2_PREFACE.len())];
                if first && H2_PREFACE.starts_with(start) {
                    if start.len() == H2_PREFACE.len() {
                        return Ok(Next::Http2);
                    }
                } else {
                    match rewrite_request(&self.inbuf, &self.peer, &mut self.req_out) {
                        // A head that arrived whole in the read that crossed the limit.
                        Ok(Some(head)) if head.len > self.limits.max_header_size => {
                            self.refuse_head(Reject::TooLarge.canned()).await;
                            return Ok(Next::Closed);
                        }
                        Ok(Some(head)) => return Ok(Next::Request(head)),
                        Ok(None) if self.inbuf.len() >= self.limits.max_header_size => {
                            let reject = checks::head_over_limit(&self.inbuf);
                            self.refuse_head(reject.canned()).await;
                            return Ok(Next::Closed);
                        }
                        Ok(None) => {}
                        Err(r) => {
                            if let Reject::BadRequest(why) = r {
                                tracing::debug!(why, "bad request");
                            }
                            self.refuse_head(r.canned()).await;
                            return Ok(Next::Closed);
                        }
                    }
                }
            }
            let idle = self.inbuf.is_empty();
            if idle {
                // Between requests no buffer is held while the client thinks: 10,000 idle
                // keep-alive connections cost their sockets, not 200 MB of buffers.
                self.inbuf = BytesMut::new();
                self.rbuf = BytesMut::new();
                for out in [&mut self.req_out, &mut self.res_out] {
                    if out.capacity() > 4096 {
                        *out = Vec::new();
                    }
                }
                tokio::select! {
                    biased;
                    r = self.client.readable() => r.map_err(Abort::Client)?,
                    _ = self.timer.as_mut() => return Ok(Next::Closed),
                    _ = &mut self.drain => return Ok(Next::Closed),
                }
            }
            // `read_buf`, not `try_read_buf`: a short read tells tokio the socket is drained,
            // which saves a read that would only say "nothing more" before the next wait.
            let read = tokio::select! {
                biased;
                r = self.client.read_buf(reserved(&mut self.inbuf, CLIENT_READ)) => r,
                _ = self.timer.as_mut() => {
                    if !idle {
                        self.refuse_head(Canned::REQUEST_TIMEOUT).await;
                    }
                    return Ok(Next::Closed);
                }
            };
            match read {
                Ok(0) if idle => return Ok(Next::Closed),
                Ok(0) => return Err(Abort::ClientGone),
                Ok(_) => {}
                Err(e) => return Err(Abort::Client(e)),
            }
        }
    }

    /// A request refused before its head was whole: answered, counted, and the connection
    /// closes.
    async fn refuse_head(&mut self, answer: Canned) {
        self.report.begin();
        self.send_own(&answer, true).await;
        // No head, no route: counted for the listener's own pool, whatever the previous
        // request on this connection was routed to.
        self.proxy.targets.own.reports.finish(&mut self.report);
    }

    /// Forwards one request and its response, and reports it. Returns whether the
    /// connection goes on.
    async fn exchange(&mut self, head: RequestHead) -> Result<bool, Abort> {
        self.route(&head);
        self.report.begin();
        if self.target.reports.detailed() {
            let request = report::h1_request(&self.inbuf[..head.len]);
            self.report.detail(|d| d.request = request);
        }
        let result = if self.target.balancer.settings.protocol == UpstreamProtocol::H2 {
            self.forward_to_h2(head).await
        } else {
            self.forward(head).await
        };
        if let Err(abort) = &result {
            self.report.ended(match abort {
                Abort::Client(_) | Abort::ClientGone => LogEnded::ClientClosed,
                Abort::ClientBody(_) => LogEnded::Refused,
                Abort::Backend(..) => LogEnded::BackendFailed,
            });
        }
        self.target.reports.finish(&mut self.report);
        result
    }

    async fn forward(&mut self, head: RequestHead) -> Result<bool, Abort> {
        self.target.balancer.count_request();
        let affinity = self.affinity(&head);
        self.inbuf.advance(head.len);
        // The body bytes already read leave with the head.
        let mut body = BodyLeft::of(head.framing, Output::Normalised);
        let head_out = self.req_out.len();
        let taken = body.take(&mut self.inbuf, &mut self.req_out);
        let body_bytes = (self.req_out.len() - head_out) as u64;
        self.report.detail(|d| d.bytes_in = body_bytes);
        if let Err(e) = taken {
            // Nothing went to a backend yet.
            self.refuse_body(e).await;
            return Ok(false);
        }
        let whole = body.done();

        let mut attempts = Attempts::default();
        loop {
            let (worker, may_retry) = match attempts.next(&self.target.balancer, &affinity) {
                Ok(next) => next,
                Err(NoWorker::Exhausted) => return Ok(self.bad_gateway(&head, whole).await),
                Err(none) => {
                    let answer = Canned::no_worker(none, &self.target.balancer, self.sync);
                    return Ok(self.own_after(&head, whole, &answer).await);
                }
            };
            self.restick = !attempts.stuck;
            let tried = self
                .try_worker(&worker, &head, &mut body, whole, may_retry)
                .await;
            self.report.tried(worker);
            match tried? {
                Tried::Answered(keep) => return Ok(keep),
                Tried::Own(answer) => return Ok(self.own_after(&head, whole, &answer).await),
                Tried::Failed { retry: true } => {}
                Tried::Failed { .. } => return Ok(self.bad_gateway(&head, whole).await),
            }
        }
    }

    /// Forwards a request to an h2 pool: sent as a stream by `proxy::to_h2` (the path both
    /// transports take to h2 workers), its body streamed from this connection while the
    /// response comes back as HTTP/1.1 (`http1::to_h2` has the pieces).
    async fn forward_to_h2(&mut self, head: RequestHead) -> Result<bool, Abort> {
        self.target.balancer.count_request();
        let tls = self.target.connector.tls.is_some();
        let Some(mut parts) = to_h2::parts_of(&self.req_out[..], tls) else {
            return Ok(self.own_after(&head, false, &Canned::BAD_REQUEST).await);
        };
        self.inbuf.advance(head.len);
        if head.expect_continue {
            // HTTP/2 has no use for it: the client is told to go on, and its body streams.
            parts.headers.remove(hyper::header::EXPECT);
            let go_on = b"HTTP/1.1 100 Continue\r\n\r\n";
            self.client.write_all(go_on).await.map_err(Abort::Client)?;
        }
        let call = Call::of(&parts.headers);
        let (tx, body) = to_h2::ChannelBody::new(head.framing);
        let mut left = BodyLeft::of(head.framing, Output::Data);
        let target = self.target.clone();
        let close = !head.keep_alive || self.shutdown.is_draining();
        let (proxy, peer, report, out) =
            (self.proxy, &self.peer, &mut self.report, &mut self.res_out);
        let (mut rd, mut wr) = self.client.split();
        let pump = to_h2::pump(&mut rd, &mut self.inbuf, &mut left, tx);
        let exchange = async {
            // Its fields carry the forwarding ones: they were parsed from the head the
            // HTTP/1 path wrote for the worker.
            let request = WorkerRequest {
                parts,
                forwarding: None,
            };
            let answer = forward_h2(proxy, &target, request, body, peer, call, report).await;
            let response = answer.into_http();
            let written =
                to_h2::write_response(&mut wr, response, out, head.head, head.http10, close).await;
            (written, report)
        };
        tokio::pin!(pump, exchange);
        let mut pumped = None;
        let (written, report) = loop {
            tokio::select! {
                w = &mut exchange => break w,
                p = &mut pump, if pumped.is_none() => pumped = Some(p),
            }
        };
        let written = written.map_err(Abort::Client)?;
        report.detail(|d| d.bytes_out = written.body_bytes);
        // The connection goes on only if the request's body was read whole and the
        // response ended as its framing said.
        Ok(matches!(pumped, Some(to_h2::Pumped::Done))
            && written.clean
            && !written.close_delimited
            && !close)
    }

    /// Points `target` at the pool the request in `inbuf` goes to (see `Targets::route`).
    fn route(&mut self, head: &RequestHead) {
        let targets = &self.proxy.targets;
        let snapshot = targets.ring().load();
        let buf = &self.inbuf[..head.len];
        let (path, _) = split_target(head.target.of_head(buf));
        let host = head.host.map(|h| h.of_head(buf));
        targets.route(&snapshot, host, path, &mut self.target);
    }

    /// What of the request in `inbuf` pins it to a worker of the target's pool. The fields
    /// are read again only for a key that is a field or a cookie: the head was checked
    /// whole already, so this parse cannot fail on anything the first one took.
    fn affinity(&self, head: &RequestHead) -> Affinity {
        let balancer = &self.target.balancer;
        let key = &self.proxy.hash_key;
        let by_field = balancer.hashes()
            && matches!(
                key,
                crate::config::HashKey::Header(_) | crate::config::HashKey::Cookie(_)
            );
        if !by_field && balancer.sticky_cookie().is_none() {
            if !balancer.hashes() {
                return Affinity::default();
            }
            let no_fields: &[httparse::Header] = &[];
            let target = head.target.of_head(&self.inbuf);
            return affinity::of(balancer, key, self.peer.address.ip(), target, no_fields);
        }
        let buf = &self.inbuf[..head.len];
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut request = httparse::Request::new(&mut fields);
        let _ = request.parse(buf);
        let target = head.target.of_head(buf);
        affinity::of(
            balancer,
            key,
            self.peer.address.ip(),
            target,
            &*request.headers,
        )
    }

    /// The sticky cookie for `worker`'s response, when it must be set (see `restick`).
    fn sticky_cookie(&self, worker: &Worker) -> Option<String> {
        if !self.restick {
            return None;
        }
        self.target.balancer.stick(worker)
    }

    /// Sends the request to `worker` and relays its answer.
    async fn try_worker(
        &mut self,
        worker: &Arc<Worker>,
        head: &RequestHead,
        body: &mut BodyLeft,
        whole: bool,
        may_retry: bool,
    ) -> Result<Tried, Abort> {
        // A body that was read whole can be sent again; a streamed one cannot.
        let replayable = whole && head.idempotent && !head.upgrade;
        let _in_flight = InFlight::new(worker.clone());
        loop {
            let (mut up, pooled) = match self.connection(worker).await {
                Ok(c) => c,
                Err(error) => {
                    self.target.balancer.record(worker, Outcome::Connect);
                    if let Some(suppressed) = worker.state.log_gate.allow() {
                        tracing::warn!(backend = %worker.address.text, worker = worker.id,
                            %error, suppressed, "connect failed");
                    }
                    return Ok(self.failed(Failure::NotSent, replayable, may_retry));
                }
            };
            let sent = up.stream.write_all(&self.req_out).await;
            if !whole {
                if let Err(e) = sent {
                    self.backend_failed(worker, &BackendError::Io(e));
                    return Ok(Tried::Failed { retry: false });
                }
                // Boxed, as is the tunnel: rare paths whose futures would otherwise make
                // every connection's task larger.
                return Box::pin(self.stream_exchange(worker, up, head, body)).await;
            }
            arm(
                self.timer.as_mut(),
                self.target.balancer.settings.response_timeout,
            );
            let draining = self.shutdown.is_draining();
            let answer = match sent {
                Ok(()) => {
                    read_head(
                        &mut up.stream,
                        &mut self.rbuf,
                        &mut self.client,
                        head,
                        draining,
                        &mut self.res_out,
                        self.timer.as_mut(),
                        self.limits.max_header_size,
                        None,
                    )
                    .await
                }
                Err(e) => Err(Down::Head(BackendError::Io(e))),
            };
            let response = match answer {
                Ok(r) => r,
                Err(Down::Client(e)) => return Err(Abort::Client(e)),
                Err(Down::Head(e) | Down::Body(e)) => {
                    // An idle connection the backend had just closed: nothing came back, so
                    // the request goes out again on another connection (not the worker's
                    // fault).
                    let stale = pooled && self.rbuf.is_empty() && replayable;
                    self.rbuf.clear();
                    match e {
                        BackendError::Io(_) | BackendError::Eof if stale => continue,
                        e => return Ok(self.no_head(worker, e, replayable, may_retry)),
                    }
                }
            };
            return self
                .answered(worker, up, response, replayable, may_retry)
                .await;
        }
    }

    /// A connection to `worker`: an idle one (`true`), or a new one.
    async fn connection(&mut self, worker: &Worker) -> Result<(Upstream, bool), ConnectError> {
        let settings = &self.target.balancer.settings;
        let idle = if self.target.connector.shares_connections() {
            IdleConns::of(worker).take_upstream(settings.idle_timeout)
        } else {
            self.private.take(worker, settings.idle_timeout)
        };
        if let Some(up) = idle {
            return Ok((up, true));
        }
        let dialled = self.target.reports.detailed().then(std::time::Instant::now);
        let up = connect_upstream(worker, &self.target.connector, self.peer.address).await?;
        if let Some(t) = dialled {
            self.report.detail(|d| d.connect = Some(t.elapsed()));
        }
        Ok((up, false))
    }

    /// Keeps a connection whose exchange ended cleanly for the next request: in the
    /// worker's shared store, or for this client alone if it carried its PROXY header.
    fn keep(&mut self, worker: &Worker, up: Upstream) {
        if up.private {
            self.private.put(worker, up);
        } else {
            IdleConns::put_upstream(worker, up);
        }
    }

    /// The worker failed before a response head: 504 for a timeout, otherwise another
    /// worker when the policy allows.
    fn no_head(
        &self,
        worker: &Worker,
        e: BackendError,
        replayable: bool,
        may_retry: bool,
    ) -> Tried {
        if let BackendError::Timeout = e {
            self.target.balancer.record(worker, Outcome::Timeout);
            if let Some(suppressed) = worker.state.log_gate.allow() {
                tracing::warn!(backend = %worker.address.text, worker = worker.id,
                    timeout_ms = self.target.balancer.settings.response_timeout.as_millis() as u64,
                    suppressed, "no response headers in time");
            }
            return Tried::Own(Canned::GATEWAY_TIMEOUT);
        }
        self.backend_failed(worker, &e);
        self.failed(Failure::Broken, replayable, may_retry)
    }

    /// Whether `failure` sends the request to another worker (see `forward::retry`).
    fn failed(&self, failure: Failure, replayable: bool, may_retry: bool) -> Tried {
        let retry =
            retry::should_retry(failure, replayable, may_retry, &self.target.balancer.budget);
        Tried::Failed { retry }
    }

    /// The worker answered with `response` (its head in `res_out`): retried elsewhere for
    /// 502–504 when the policy allows, a tunnel after 101, otherwise relayed.
    async fn answered(
        &mut self,
        worker: &Arc<Worker>,
        mut up: Upstream,
        response: ResponseHead,
        replayable: bool,
        may_retry: bool,
    ) -> Result<Tried, Abort> {
        let status = response.status;
        self.target.balancer.record(worker, Outcome::Status(status));
        if matches!(status, 502..=504) {
            let retry = self.failed(Failure::GatewayStatus, replayable, may_retry);
            if let Tried::Failed { retry: true } = retry {
                tracing::info!(backend = %worker.address.text, status, "retrying on another worker");
                self.rbuf.clear();
                return Ok(retry);
            }
        }
        self.report.answered(status);
        if status == 101 {
            Box::pin(self.tunnel(up)).await;
            return Ok(Tried::Answered(false));
        }
        if let Some(cookie) = self.sticky_cookie(worker) {
            add_field(&mut self.res_out, b"Set-Cookie", cookie.as_bytes());
        }
        let relayed = relay_response(
            &mut up.stream,
            &mut self.rbuf,
            &mut self.client,
            &mut self.res_out,
            response,
        )
        .await;
        match relayed {
            Ok(end) => {
                self.report.detail(|d| d.bytes_out = end.body_bytes);
                if end.reusable {
                    self.keep(worker, up);
                }
                Ok(Tried::Answered(!end.client_close))
            }
            Err(down) => self.relay_failed(worker, down).await,
        }
    }

    /// A request whose body is still arriving: it streams to the backend while the
    /// response is read, since a backend may answer (and stop reading) before the end.
    async fn stream_exchange(
        &mut self,
        worker: &Arc<Worker>,
        mut up: Upstream,
        head: &RequestHead,
        body: &mut BodyLeft,
    ) -> Result<Tried, Abort> {
        if head.expect_continue {
            self.client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(Abort::Client)?;
        }
        let response_timeout = self.target.balancer.settings.response_timeout;
        let cookie = self.sticky_cookie(worker);
        arm(self.timer.as_mut(), response_timeout);
        let draining = self.shutdown.is_draining();
        let max = self.limits.max_header_size;
        // When the client last sent body bytes: the response timeout runs from there, so a
        // slow upload is not the worker's failure.
        let uploading = AtomicU64::new(now_ms());
        // Whether the response head may have reached the client: after that, nothing but
        // closing is left to say.
        let mut answering = false;
        let mut upload_bytes = 0;
        let (uploaded, downloaded) = {
            let (cr, mut cw) = self.client.split();
            let mut cr = Stamped::new(cr, &uploading);
            let (mut br, mut bw) = up.stream.split();
            let mut scratch = Vec::new();
            let upload = relay(
                &mut cr,
                &mut self.inbuf,
                &mut bw,
                &mut scratch,
                body,
                CLIENT_READ,
                &mut upload_bytes,
            );
            let rbuf = &mut self.rbuf;
            let res_out = &mut self.res_out;
            let timer = self.timer.as_mut();
            let uploading = Some((&uploading, response_timeout));
            let download = async {
                let response = read_head(
                    &mut br, rbuf, &mut cw, head, draining, res_out, timer, max, uploading,
                )
                .await?;
                if response.status == 101 {
                    return Err(Down::Head(BackendError::Malformed(
                        Malformed::UnaskedUpgrade,
                    )));
                }
                let status = response.status;
                if let Some(cookie) = &cookie {
                    add_field(res_out, b"Set-Cookie", cookie.as_bytes());
                }
                answering = true;
                let end = relay_response(&mut br, rbuf, &mut cw, res_out, response).await?;
                Ok((status, end))
            };
            tokio::pin!(upload, download);
            let mut uploaded = None;
            let downloaded = loop {
                tokio::select! {
                    biased;
                    r = &mut download => break Ok(r),
                    r = &mut upload, if uploaded.is_none() => match r {
                        Ok(()) => uploaded = Some(true),
                        Err(RelayError::Read(e)) => return Err(Abort::Client(e)),
                        Err(RelayError::Eof) => return Err(Abort::ClientGone),
                        Err(RelayError::Chunk(e)) => break Err(e),
                        // The backend stopped reading: its answer, if any, still comes.
                        Err(RelayError::Write(_)) => uploaded = Some(false),
                    },
                }
            };
            (uploaded, downloaded)
        };
        self.rbuf.clear();
        let downloaded = match downloaded {
            Ok(downloaded) => downloaded,
            Err(bad) => {
                // The backend has part of a request that will never end: its connection
                // closes now (not after the linger), and is never pooled.
                drop(up);
                if answering {
                    return Err(Abort::ClientBody(bad));
                }
                self.refuse_body(bad).await;
                return Ok(Tried::Answered(false));
            }
        };
        match downloaded {
            Ok((status, end)) => {
                self.target.balancer.record(worker, Outcome::Status(status));
                self.report.answered(status);
                self.report.detail(|d| {
                    d.bytes_out = end.body_bytes;
                    d.bytes_in += upload_bytes;
                });
                // Answered before the body ended: neither connection's framing can be
                // trusted to continue.
                let complete = uploaded == Some(true);
                if end.reusable && complete {
                    self.keep(worker, up);
                }
                Ok(Tried::Answered(!end.client_close && complete))
            }
            // The client sent no body byte for the whole timeout: its failure, not the
            // worker's, and nothing is recorded against the worker.
            Err(Down::Head(BackendError::Timeout)) if uploaded.is_none() => {
                self.send_own(&Canned::REQUEST_TIMEOUT, true).await;
                Ok(Tried::Answered(false))
            }
            Err(Down::Head(BackendError::Timeout)) => {
                self.target.balancer.record(worker, Outcome::Timeout);
                // The rest of the body is unread: the connection closes after the 504.
                self.send_own(&Canned::GATEWAY_TIMEOUT, true).await;
                Ok(Tried::Answered(false))
            }
            Err(down) => self.relay_failed(worker, down).await,
        }
    }

    /// After the backend's 101: the head goes to the client, then both connections are
    /// joined, with whatever either side sent early passed on first.
    async fn tunnel(&mut self, mut up: Upstream) {
        let res_out = std::mem::take(&mut self.res_out);
        let result = async {
            self.client.write_all(&res_out).await?;
            self.client.write_all(&self.rbuf).await?;
            up.stream.write_all(&self.inbuf).await?;
            self.rbuf.clear();
            self.inbuf.clear();
            tokio::io::copy_bidirectional(&mut self.client, &mut up.stream).await
        }
        .await;
        match result {
            Ok((bytes_in, bytes_out)) => self.report.detail(|d| {
                d.bytes_in = bytes_in;
                d.bytes_out = bytes_out;
            }),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
    }

    /// A response's relay broke: before its head reached the client the proxy can still
    /// answer 502; after, the client connection just closes.
    async fn relay_failed(&mut self, worker: &Worker, down: Down) -> Result<Tried, Abort> {
        match down {
            Down::Client(e) => Err(Abort::Client(e)),
            Down::Head(e) => {
                self.backend_failed(worker, &e);
                self.send_own(&Canned::BAD_GATEWAY, true).await;
                Ok(Tried::Answered(false))
            }
            Down::Body(e) => {
                self.backend_failed(worker, &e);
                Err(Abort::Backend(worker.address.text.clone(), e))
            }
        }
    }

    fn backend_failed(&self, worker: &Worker, error: &BackendError) {
        self.target.balancer.record(worker, error.outcome());
        if let Some(suppressed) = worker.state.log_gate.allow() {
            tracing::warn!(backend = %worker.address.text, worker = worker.id, %error,
                suppressed, "backend failed");
        }
    }

    /// Our own answer to a request whose body was read `whole` (or not: then the
    /// connection closes, as the rest of the body cannot be told from the next request).
    async fn own_after(&mut self, head: &RequestHead, whole: bool, answer: &Canned) -> bool {
        let keep = whole && head.keep_alive && !self.shutdown.is_draining();
        self.send_own(answer, !keep).await && keep
    }

    /// The details (addresses, errors) are logged where the failure happened, not shown
    /// to clients.
    async fn bad_gateway(&mut self, head: &RequestHead, whole: bool) -> bool {
        self.own_after(head, whole, &Canned::BAD_GATEWAY).await
    }

    /// The answer to a client whose chunked body breaks the rules: 400, or 431 for trailers
    /// over the limits, then a lingering close (the rest of the body cannot be told from a
    /// next request).
    async fn refuse_body(&mut self, error: ChunkError) {
        tracing::debug!(%error, "refused a chunked request body");
        self.reject(match error {
            ChunkError::Malformed(why) => Reject::BadRequest(why),
            ChunkError::LineTooLong => Reject::BadRequest("chunk-size line too long"),
            ChunkError::TrailersTooLarge | ChunkError::TooManyTrailers => Reject::TooLarge,
        })
        .await;
    }

    /// Refuses a request the forwarding policy does not let through, and closes.
    async fn reject(&mut self, reject: Reject) {
        if let Reject::BadRequest(why) = reject {
            tracing::debug!(why, "bad request");
        }
        self.send_own(&reject.canned(), true).await;
    }

    /// Writes one of our own responses; whether it went out. With `close`, the client's
    /// unread bytes are drained for a moment after it (a lingering close): closing a socket
    /// with unread input resets it, and the client could lose the answer.
    async fn send_own(&mut self, answer: &Canned, close: bool) -> bool {
        self.report.answered_own(answer.status);
        answer.write_h1(&mut self.res_out, close);
        let sent = self.client.write_all(&self.res_out).await.is_ok();
        if sent && close {
            let _ = self.client.shutdown().await;
            self.inbuf.clear();
            let linger = async {
                let mut drained = 0;
                while drained < LINGER_BYTES {
                    match self
                        .client
                        .read_buf(reserved(&mut self.inbuf, CLIENT_READ))
                        .await
                    {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                    self.inbuf.clear();
                }
            };
            let _ = tokio::time::timeout(LINGER, linger).await;
        }
        sent
    }
}

/// Sets the session's timer to `timeout` from now. A deadline already set up to 1/64 of the
/// timeout earlier than that is kept: moving a timer costs about as much as parsing a
/// head, and a 30 s timeout that fires half a second early is still a 30 s timeout to
/// anyone watching. A deadline set later (a longer timeout) is always brought forward.
fn arm(timer: Pin<&mut Sleep>, timeout: std::time::Duration) {
    let want = Instant::now() + timeout;
    let current = timer.deadline();
    if current <= want && current + timeout / 64 >= want {
        return;
    }
    timer.reset(want);
}

/// Reads a response head into `rbuf` (then holding what follows it) and writes the
/// client's version to `out`. Interim responses (100, 103) go to the client on the way.
#[allow(clippy::too_many_arguments)]
async fn read_head<R, W>(
    br: &mut R,
    rbuf: &mut BytesMut,
    cw: &mut W,
    request: &RequestHead,
    draining: bool,
    out: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
    max: usize,
    uploading: Option<(&AtomicU64, Duration)>,
) -> Result<ResponseHead, Down>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !rbuf.is_empty() {
            match rewrite_response(rbuf, request, draining, out) {
                Ok(Some(head)) if head.interim() => {
                    rbuf.advance(head.len);
                    cw.write_all(out).await.map_err(Down::Client)?;
                    continue;
                }
                Ok(Some(head)) => {
                    rbuf.advance(head.len);
                    return Ok(head);
                }
                Ok(None) if rbuf.len() >= max => return Err(Down::Head(BackendError::TooLarge)),
                Ok(None) => {}
                Err(e) => return Err(Down::Head(BackendError::Malformed(e))),
            }
        }
        let read = tokio::select! {
            biased;
            r = br.read_buf(reserved(rbuf, BACKEND_READ)) => r,
            _ = timer.as_mut() => {
                // While a body is still arriving, the timeout counts from its last byte.
                if let Some((last, timeout)) = uploading {
                    let since = Duration::from_millis(
                        now_ms().saturating_sub(last.load(Ordering::Relaxed)),
                    );
                    if since < timeout {
                        timer.as_mut().reset(Instant::now() + (timeout - since));
                        continue;
                    }
                }
                return Err(Down::Head(BackendError::Timeout));
            }
        };
        match read {
            Ok(0) => return Err(Down::Head(BackendError::Eof)),
            Ok(_) => {}
            Err(e) => return Err(Down::Head(BackendError::Io(e))),
        }
    }
}

/// Sends the response head in `out` and the body after it.
async fn relay_response<R, W>(
    br: &mut R,
    rbuf: &mut BytesMut,
    cw: &mut W,
    out: &mut Vec<u8>,
    response: ResponseHead,
) -> Result<End, Down>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let output = if response.dechunk {
        Output::Data
    } else {
        Output::AsReceived
    };
    let mut left = BodyLeft::of(response.framing, output);
    let head_len = out.len() as u64;
    // A body already broken in the bytes that came with the head: the head is still held
    // back, so the client can be told (502) instead of getting half a response.
    if let Err(e) = left.take(rbuf, out) {
        return Err(Down::Head(BackendError::Chunk(e)));
    }
    let mut sent = 0;
    match relay(br, rbuf, cw, out, &mut left, BACKEND_READ, &mut sent).await {
        Ok(()) => Ok(End {
            // Bytes after the response were not asked for: that connection is not reused.
            reusable: response.reusable && rbuf.is_empty(),
            client_close: response.client_close,
            body_bytes: sent.saturating_sub(head_len),
        }),
        Err(RelayError::Write(e)) => Err(Down::Client(e)),
        Err(RelayError::Read(e)) => Err(Down::Body(BackendError::Io(e))),
        Err(RelayError::Eof) => Err(Down::Body(BackendError::Eof)),
        Err(RelayError::Chunk(e)) => Err(Down::Body(BackendError::Chunk(e))),
    }
}

#[derive(Debug)]
enum RelayError {
    Read(io::Error),
    /// The sender closed before the body ended.
    Eof,
    Chunk(ChunkError),
    Write(io::Error),
}

/// Sends `out` (a head, possibly empty) and then the body from `src` to `dst`, counting in
/// `sent` the bytes written.
async fn relay<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    out: &mut Vec<u8>,
    left: &mut BodyLeft,
    read_size: usize,
    sent: &mut u64,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut read_size = read_size;
    loop {
        left.take(buf, out).map_err(RelayError::Chunk)?;
        if !out.is_empty() {
            dst.write_all(out).await.map_err(RelayError::Write)?;
            *sent += out.len() as u64;
            out.clear();
        }
        if left.done() {
            return Ok(());
        }
        let room = reserved(buf, read_size);
        let spare = room.capacity() - room.len();
        match src.read_buf(room).await {
            Ok(0) if matches!(left, BodyLeft::Close) => {
                *left = BodyLeft::Done;
                return Ok(());
            }
            Ok(0) => return Err(RelayError::Eof),
            Ok(n) if n == spare => read_size = (read_size * 2).min(MAX_READ),
            Ok(_) => {}
            Err(e) => return Err(RelayError::Read(e)),
        }
    }
}

/// Adds a field to the head in `out` (which ends with its empty line).
fn add_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    debug_assert!(out.ends_with(b"\r\n\r\n"));
    out.truncate(out.len() - 2);
    put(out, name, value);
    out.extend_from_slice(b"\r\n");
}
