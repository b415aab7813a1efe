//! The HTTP/2 transport (prior knowledge, h2c): the codec's server side, driven over the
//! socket by `conn`, serves the client (`respond` for each stream's response, `body` for
//! the bodies both ways); each request (one stream) is checked and rewritten by the
//! forwarding policy (`forward`), picks a worker afresh and goes to it as its pool says:
//! as HTTP/1.1 (`to_http1`), on the connections the HTTP/1 transport uses too, or as a
//! stream on a shared HTTP/2 connection (`proxy::to_h2`, which the HTTP/1 transport uses
//! for h2 pools too).
//!
//! Bodies stream through without buffering, trailers included. What is refused, what the
//! proxy answers itself and when a request goes to another worker are the same as on the
//! HTTP/1 path, because both ask `forward`.

mod body;
mod conn;
mod respond;
mod rewind;
mod shared;
mod to_http1;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response};

use super::HttpProxy;
use super::forward::headers::{self, Client};
use super::forward::retry::{self, Failure};
use super::forward::{Canned, Reject, checks};
use super::http1::head::{Framing, put_length};
use super::report::Report;
use super::stamped::quiet_for;
use super::target::Target;
use super::to_h2::{self, Answer, Call, H2Body, WorkerRequest, WorkerResponse, affinity_of, stick};
use crate::access_log::{Ended, Http, HttpVersion};
use crate::balance::{Attempts, NoWorker, Outcome};
use crate::codec::server::Config;
use crate::config::UpstreamProtocol;
use crate::ring::state::now_ms;
use crate::shutdown::Shutdown;
use body::RequestBody;
use conn::{Closed, Connection, Next};
use respond::{Responder, carried};
use rewind::Activity;
pub use rewind::Rewind;
use to_http1::{Failed, Outbound, WorkerBody};

/// What a response to the client carries: an HTTP/1.1 or an h2 worker's body, or the
/// proxy's own answer.
pub type ProxyBody = Either<Either<WorkerBody, H2Body>, Full<Bytes>>;

/// A stream's answer: an h2 worker's response, whose head goes out as its codec decoded
/// it, or any other, as `http` holds it.
enum Reply {
    H2(WorkerResponse),
    Http(Response<ProxyBody>),
}

/// A client connection that opened with the HTTP/2 preface: `io` replays the bytes the
/// HTTP/1 path had already read. Its streams are served inside this one task, each a
/// future beside the connection's (no task, no channel between them). A connection with no
/// stream open and no byte moving for the listener's `header_read_timeout` is closed, as an
/// idle HTTP/1 connection is. When the drain starts, GOAWAY lets the streams in progress
/// finish; at the cut the connection just closes.
pub async fn serve(proxy: Arc<HttpProxy>, io: Rewind, peer: SocketAddr, shutdown: Shutdown) {
    let limits = &proxy.limits;
    let client = Client::new(peer).with_tls(io.is_tls());
    let activity = io.activity.clone();
    let idle = quiet_for(&activity.last_ms, limits.header_read_timeout, || {
        activity.streams.load(Ordering::Relaxed) > 0
    });
    tokio::pin!(idle);
    let mut conn = Connection::new(io, server_config(limits.max_header_size));
    let mut streams = FuturesUnordered::new();
    let mut going_away = false;
    let closed = loop {
        let served = std::future::poll_fn(|cx| {
            loop {
                // Streams first, then the connection: what every ready stream sends goes
                // out in the connection's one write.
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
                match ready!(conn.poll(cx, streams.is_empty())) {
                    Next::Request(request, respond) => {
                        streams.push(stream(&proxy, &client, &activity, request, respond));
                    }
                    Next::Closed(closed) => return Poll::Ready(closed),
                }
            }
        });
        tokio::select! {
            biased;
            closed = served => break closed,
            // No stream open and nothing moved either way for the timeout: GOAWAY first
            // (RFC 9113 §6.8), then the close.
            _ = &mut idle, if !going_away => {
                tracing::debug!(client = %peer, "idle HTTP/2 connection: closing");
                going_away = true;
                conn.goaway();
            }
            _ = shutdown.drain.cancelled(), if !going_away => {
                going_away = true;
                conn.goaway();
            }
            _ = shutdown.cut.cancelled() => return,
        }
    };
    // The streams' futures go before the connection lingers: nothing more is sent.
    drop(streams);
    match closed {
        Closed::Gone(error) => {
            if let Some(e) = error {
                tracing::debug!(client = %peer, error = %e, "client connection failed");
            }
            return;
        }
        Closed::Failed(e) => {
            tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
        }
        Closed::Graceful => {}
    }
    tokio::select! {
        _ = conn.linger() => {}
        _ = tokio::time::sleep(GOAWAY_GRACE) => {}
        _ = shutdown.cut.cancelled() => {}
    }
}

/// The client side's HTTP/2 settings and limits. Flow-control windows of 1 MiB per stream
/// and per connection bound what one client makes the proxy hold; 200 concurrent streams
/// and the codec's limit on streams reset unanswered bound the work one connection can ask
/// for; the field section is held to the listener's `max_header_size`.
fn server_config(max_header_size: usize) -> Config {
    Config {
        max_concurrent_streams: 200,
        stream_window: 1 << 20,
        connection_window: 1 << 20,
        max_frame_size: 16 * 1024,
        max_header_list_size: max_header_size as u32,
        ..Config::default()
    }
}

/// How long a closing connection waits for the client to read its last frames and close.
const GOAWAY_GRACE: Duration = Duration::from_millis(250);

/// Serves one client stream: the request is forwarded (`handle`), the response sent back,
/// its body as the client's window allows. A client that resets the stream stops both.
async fn stream(
    proxy: &HttpProxy,
    client: &Client,
    activity: &Arc<Activity>,
    request: Request<RequestBody>,
    mut respond: Responder,
) {
    let open = Stream::open(activity.clone());
    let target = route(proxy, &request);
    let mut report = target.reports.start(client.address);
    let reply = tokio::select! {
        biased;
        reply = handle(proxy, &target, request, client, &mut report) => reply,
        // The client reset the stream: nobody waits for the answer.
        _ = respond.gone() => return,
    };
    let (sent, end, body) = match reply {
        Reply::H2(worker) => {
            let end = worker.body.is_end_stream();
            let sent = respond.send_head(worker.status, worker.fields(), end);
            (sent, end, Either::Left(Either::Right(worker.body)))
        }
        Reply::Http(response) => {
            let (mut head, body) = response.into_parts();
            if let Either::Right(own) = &body
                && let Some(n) = own.size_hint().exact()
                && !head.headers.contains_key(header::CONTENT_LENGTH)
            {
                head.headers.insert(header::CONTENT_LENGTH, n.into());
            }
            let end = body.is_end_stream();
            let sent = respond.send_head(head.status.as_u16(), carried(&head.headers), end);
            (sent, end, body)
        }
    };
    let body = Counted {
        body,
        _stream: open,
        report,
        target,
    };
    match sent {
        Ok(()) if !end => body::send(body, &mut respond).await,
        Ok(()) => {}
        Err(e) => {
            tracing::debug!(client = %client.address, error = %e, "the response could not be sent")
        }
    }
}

/// One open stream, counted in `Activity::streams` until its response body is dropped.
struct Stream(Arc<Activity>);

impl Stream {
    fn open(activity: Arc<Activity>) -> Stream {
        activity.streams.fetch_add(1, Ordering::Relaxed);
        Stream(activity)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// A response body that keeps its stream counted as open while it streams, and reports
/// the request when it ends.
struct Counted {
    body: ProxyBody,
    /// Held, not read: dropped with the body, it closes the stream's count.
    _stream: Stream,
    report: Report,
    /// Where the report goes.
    target: Arc<Target>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if !self.body.is_end_stream() {
            // Dropped before its end: the client reset the stream, or the connection went.
            self.report.ended(Ended::ClientClosed);
        } else if let Either::Left(Either::Right(worker)) = &self.body
            && let Some(how) = worker.cut()
        {
            self.report.ended(how);
        }
        self.target.reports.finish(&mut self.report);
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.report.detail(|d| d.bytes_out += n);
                }
            }
            Poll::Ready(Some(Err(_))) => self.report.ended(Ended::BackendFailed),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The pool a request goes to (see `Targets::route`), by its `:authority` (else `Host`)
/// and path.
fn route(proxy: &HttpProxy, request: &Request<RequestBody>) -> Arc<Target> {
    let targets = &proxy.targets;
    let mut target = targets.own.clone();
    let snapshot = targets.ring().load();
    if snapshot.routes.is_empty() {
        return target;
    }
    let host = match request.uri().authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => request.headers().get(header::HOST).map(|h| h.as_bytes()),
    };
    let path = request.uri().path().as_bytes();
    targets.route(&snapshot, host, path, &mut target);
    target
}

/// Forwards one request (stream) to a worker of `target`'s pool picked for it.
async fn handle(
    proxy: &HttpProxy,
    target: &Target,
    request: Request<RequestBody>,
    client: &Client,
    report: &mut Report,
) -> Reply {
    let balancer = &target.balancer;
    let settings = &balancer.settings;
    balancer.count_request();
    if target.reports.detailed() {
        let logged = logged_request(&request);
        report.detail(|d| d.request = Some(logged));
    }
    let call = Call::of(request.headers());
    let grpc = call.grpc;
    if settings.protocol == UpstreamProtocol::H2 {
        return match prepare_for_h2(request, client, target.connector.tls.is_some()) {
            // Boxed, as the HTTP/1.1 worker's path below is: each is kilobytes of state,
            // which every stream's future would otherwise carry, and copy as it is made.
            Ok((request, body)) => {
                let forward = to_h2::forward(proxy, target, request, body, client, call, report);
                match Box::pin(forward).await {
                    Answer::Worker(worker) => Reply::H2(worker),
                    Answer::Own(own) => Reply::Http(own.map(Either::Right)),
                }
            }
            Err(reject) => Reply::Http(call.own(report, &rejected(reject)).map(Either::Right)),
        };
    }
    Reply::Http(
        Box::pin(to_http1_worker(
            proxy, target, request, client, grpc, report,
        ))
        .await,
    )
}

/// Forwards one request to an HTTP/1.1 worker of `target`'s pool picked for it.
async fn to_http1_worker(
    proxy: &HttpProxy,
    target: &Target,
    request: Request<RequestBody>,
    client: &Client,
    grpc: bool,
    report: &mut Report,
) -> Response<ProxyBody> {
    let balancer = &target.balancer;
    let settings = &balancer.settings;
    let (parts, length, body) = match prepare(request) {
        Ok(prepared) => prepared,
        Err(reject) => return own(report, &rejected(reject), grpc),
    };
    let Some((framing, first, body)) = body_framing(length, body).await else {
        // The client's stream broke before its body began: nobody reads an answer.
        return own(report, &Canned::BAD_REQUEST, grpc);
    };
    let mut out = Outbound {
        head: write_head(&parts, length, framing, client),
        framing,
        head_request: parts.method == Method::HEAD,
        // A body streams through once: only a request without one can be sent again.
        replayable: body.is_none() && retry::idempotent(parts.method.as_str().as_bytes()),
        first,
        client: client.address,
        uploaded: target.reports.detailed().then(Default::default),
        connect: None,
    };
    let mut body = body;
    let affinity = affinity_of(proxy, balancer, client, &parts);

    let mut attempts = Attempts::default();
    loop {
        let (worker, may_retry) = match attempts.next(balancer, &affinity) {
            Ok(next) => next,
            Err(NoWorker::Exhausted) => return own(report, &Canned::BAD_GATEWAY, grpc),
            Err(none) => {
                return own(
                    report,
                    &Canned::no_worker(none, balancer, &proxy.sync),
                    grpc,
                );
            }
        };
        report.tried(worker.clone());
        let exchanged =
            to_http1::exchange(&worker, &target.connector, settings, &mut out, &mut body).await;
        report.detail(|d| d.connect = out.connect);
        let (failure, outcome, error) = match exchanged {
            Ok(response) => {
                let status = response.status().as_u16();
                balancer.record(&worker, Outcome::Status(status));
                let retry = matches!(status, 502..=504)
                    && retry::should_retry(
                        Failure::GatewayStatus,
                        out.replayable,
                        may_retry,
                        &balancer.budget,
                    );
                if !retry {
                    report.answered(status);
                    let mut response = response;
                    stick(&mut response, balancer, &worker, &attempts);
                    if let Some(uploaded) = out.uploaded.take() {
                        report.detail(|d| d.uploading = Some(uploaded));
                    }
                    return response.map(|body| Either::Left(Either::Left(body)));
                }
                tracing::info!(backend = %worker.address.text, status, "retrying on another worker");
                continue;
            }
            Err(Failed::NotSent(e)) => (Failure::NotSent, Outcome::Connect, e),
            Err(Failed::Broken(outcome, e)) => (Failure::Broken, outcome, e),
            Err(Failed::Timeout) => {
                balancer.record(&worker, Outcome::Timeout);
                if let Some(suppressed) = worker.state.log_gate.allow() {
                    tracing::warn!(backend = %worker.address.text, worker = worker.id,
                        timeout_ms = settings.response_timeout.as_millis() as u64,
                        suppressed, "no response headers in time");
                }
                return own(report, &Canned::GATEWAY_TIMEOUT, grpc);
            }
            // The client's doing, not the worker's: nothing is recorded against it.
            Err(Failed::Refused(reject)) => return own(report, &reject.canned(), grpc),
            Err(Failed::ClientStalled) => return own(report, &Canned::REQUEST_TIMEOUT, grpc),
            Err(Failed::ClientGone) => return own(report, &Canned::BAD_REQUEST, grpc),
        };
        balancer.record(&worker, outcome);
        if let Some(suppressed) = worker.state.log_gate.allow() {
            tracing::warn!(backend = %worker.address.text, worker = worker.id, %error,
                suppressed, "backend failed");
        }
        // After a connect failure the body (if any) was not taken: the request goes on whole.
        if !retry::should_retry(failure, out.replayable, may_retry, &balancer.budget) {
            return own(report, &Canned::BAD_GATEWAY, grpc);
        }
    }
}

/// The access log's view of a request, as the client sent it.
fn logged_request(request: &Request<RequestBody>) -> Http {
    let field = |name: header::HeaderName| {
        request
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into())
    };
    Http {
        method: request.method().as_str().into(),
        authority: (request.uri().authority().map(|a| a.as_str().into()))
            .or_else(|| field(header::HOST)),
        path: request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .into(),
        version: HttpVersion::Http2,
        referer: field(header::REFERER),
        user_agent: field(header::USER_AGENT),
    }
}

/// One of the proxy's own answers, as this transport sends it: as gRPC says it to a gRPC
/// call (`grpc`), plain HTTP otherwise. Reported with its HTTP status either way.
fn own(report: &mut Report, answer: &Canned, grpc: bool) -> Response<ProxyBody> {
    to_h2::own(report, answer, grpc).map(Either::Right)
}

/// The answer to a request the policy refused.
fn rejected(reject: Reject) -> Canned {
    if let Reject::BadRequest(why) = reject {
        tracing::debug!(why, "bad request");
    }
    reject.canned()
}

/// Checks an HTTP/2 request with the rules the HTTP/1 path applies. Returns the head's
/// parts, the body's declared length (its Content-Length, which h2 holds the DATA to) and
/// the body. The fields are rewritten for the worker as its head is written (`write_head`).
fn prepare(request: Request<RequestBody>) -> Result<(Parts, Option<u64>, RequestBody), Reject> {
    let (parts, body) = request.into_parts();
    check(&parts)?;
    // One value, written once by `write_head` (h2 lets equal duplicates through, and some
    // HTTP/1 servers refuse two Content-Length lines).
    let mut length = None;
    for v in parts.headers.get_all(header::CONTENT_LENGTH) {
        let n = std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(Reject::BadRequest("invalid Content-Length"))?;
        if length.is_some_and(|m| m != n) {
            return Err(Reject::BadRequest("conflicting Content-Length"));
        }
        length = Some(n);
    }
    Ok((parts, length, body))
}

/// Checks an HTTP/2 request as `prepare` does and rewrites it for an h2 worker: fields
/// as `headers::rewrite_for_h2_worker` says, the target an absolute URI (`tls`: the
/// worker connection's scheme).
fn prepare_for_h2(
    request: Request<RequestBody>,
    client: &Client,
    tls: bool,
) -> Result<(WorkerRequest, RequestBody), Reject> {
    let (mut parts, body) = request.into_parts();
    check(&parts)?;
    let uri = std::mem::take(&mut parts.uri);
    parts.uri = to_h2::worker_uri(uri, parts.headers.get(header::HOST), tls)
        .ok_or(Reject::BadRequest("no usable authority"))?;
    let forwarding = Some(headers::rewrite_for_h2_worker(&mut parts.headers, client));
    Ok((WorkerRequest { parts, forwarding }, body))
}

/// The checks every HTTP/2 request passes, the HTTP/1 path's rules: method, field count,
/// one authority, path.
fn check(parts: &Parts) -> Result<(), Reject> {
    checks::method(parts.method.as_str().as_bytes())?;
    checks::field_count(parts.headers.len())?;
    let authority = parts.uri.authority().map(|a| a.as_str());
    // One lookup for both questions: is there a Host, and a second one.
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next().map(|h| h.as_bytes());
    if hosts.next().is_some() {
        return Err(Reject::BadRequest("more than one Host"));
    }
    match (&authority, host) {
        (None, None) => return Err(Reject::BadRequest("neither :authority nor Host")),
        // RFC 9113 §8.3.1: a Host that names another entity than :authority is malformed.
        (Some(a), Some(h)) if !a.as_bytes().eq_ignore_ascii_case(h) => {
            return Err(Reject::BadRequest(":authority and Host differ"));
        }
        (Some(a), _) => checks::host(a.as_bytes())?,
        (None, Some(h)) => checks::host(h)?,
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    checks::path(path.as_bytes())?;
    Ok(())
}

/// How the body goes to the worker: as it came when its length is known, chunked when it
/// is not. Without a length, the body's first frame is awaited: a request whose stream
/// ends with an empty DATA frame has no body (and so stays replayable, and a GET does not
/// go out chunked). `None`: the client's stream broke first.
async fn body_framing(
    length: Option<u64>,
    mut body: RequestBody,
) -> Option<(Framing, Option<Frame<Bytes>>, Option<RequestBody>)> {
    if body.is_end_stream() {
        return Some((Framing::Empty, None, None));
    }
    if let Some(n) = length {
        return Some((Framing::Length(n), None, Some(body)));
    }
    loop {
        match body.frame().await {
            None => return Some((Framing::Empty, None, None)),
            Some(Ok(frame)) if frame.data_ref().is_some_and(Bytes::is_empty) => {}
            Some(Ok(frame)) => return Some((Framing::Chunked, Some(frame), Some(body))),
            Some(Err(_)) => return None,
        }
    }
}

/// The worker's HTTP/1.1 request head: origin-form target, Host (from `:authority`, else
/// the Host field) first, as HTTP/1.1 senders do, the fields as `headers::write_h2_request`
/// rewrites them, then the framing.
fn write_head(parts: &Parts, length: Option<u64>, framing: Framing, client: &Client) -> Vec<u8> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let host = match parts.uri.authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => parts.headers.get(header::HOST).map(|h| h.as_bytes()),
    };
    headers::write_h2_request(&mut head, &parts.headers, host, client);
    match framing {
        Framing::Chunked => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Length(n) => put_length(&mut head, n),
        // A bodiless request whose method usually has a body says so, rather than leave
        // the worker to guess; a declared zero stays.
        Framing::Empty if length.is_some() || expects_body(&parts.method) => {
            put_length(&mut head, 0)
        }
        Framing::Empty | Framing::Close => {}
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}
