//! A request's exchange with a `protocol = "h2"` worker, for both client transports: one
//! stream on a connection the worker's other requests share (`upstream::h2`), picked
//! afresh for each request, so one client connection — a gRPC channel — spreads over every
//! worker by weight. `http2` hands it the client's streams, `http1` the requests it parsed
//! itself (`http1::to_h2`); both send back what `forward` returns.
//!
//! The request goes with its fields as the client sent them, rewritten for the worker
//! (`headers::rewrite_for_h2_worker`); bodies and trailers stream both ways, unbuffered, on
//! `upstream::h2`'s streams (a request body from a task of its own, `pipe`). It goes to
//! another worker only when the first did not process it: a failed
//! connect, a refused stream, a stream above a GOAWAY's last stream id (its body comes back
//! for that, `replay`); or, as on the HTTP/1 path, a bodiless idempotent request that is not
//! a gRPC call, after a broken stream or a 502–504.
//!
//! A gRPC call's `grpc-timeout` bounds the whole call: before its response head the proxy
//! answers `DEADLINE_EXCEEDED` itself, after it the response ends with that status in its
//! trailers and the worker's stream is reset. A gRPC response that breaks off (the worker
//! went, the drain deadline cut it) ends with `UNAVAILABLE` rather than a reset stream.

mod replay;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode, Uri};
use tokio::time::{Instant, Sleep};

use crate::access_log::Ended;
use crate::balance::{Affinity, Attempts, Balancer, NoWorker, Outcome};
use crate::codec::frame::Code as H2Code;
use crate::codec::message::Head;
use crate::proxy::HttpProxy;
use crate::proxy::forward::grpc::{self, Code};
use crate::proxy::forward::headers::{Client, Forwarding};
use crate::proxy::forward::retry::{self, Failure};
use crate::proxy::forward::{Canned, affinity};
use crate::proxy::report::Report;
use crate::proxy::target::Target;
use crate::ring::state::now_ms;
use crate::ring::{InFlight, Worker};
use crate::upstream::IdleConns;
use crate::upstream::h2::{Cut, RecvStream, ResponseFuture, SendStream, Slot, Unprocessed};
pub use replay::Source;
use replay::{Progress, Replay, Upload};

/// What `forward` answers with: a worker's response, or the proxy's own.
pub enum Answer {
    Worker(WorkerResponse),
    Own(Response<Full<Bytes>>),
}

impl Answer {
    /// As `http` holds it, for a client's writer that reads a `Response`.
    pub fn into_http(self) -> Response<Either<H2Body, Full<Bytes>>> {
        match self {
            Answer::Worker(w) => w.into_http().map(Either::Left),
            Answer::Own(own) => own.map(Either::Right),
        }
    }
}

/// A worker's response on its way to the client: its head as the worker sent it (checked
/// by the codec, and fit for `http`), the one field the proxy adds (the sticky cookie),
/// and the body streaming behind. An HTTP/2 client's head is encoded from it as it is:
/// no `HeaderMap` is built and dropped for each response.
pub struct WorkerResponse {
    pub status: u16,
    head: Head,
    set_cookie: Option<HeaderValue>,
    pub body: H2Body,
}

impl WorkerResponse {
    /// The fields as they go to the client: the worker's, in order, then the proxy's.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let worker = self.head.fields().map(|f| (f.name, f.value));
        let cookie = self.set_cookie.iter();
        worker.chain(cookie.map(|v| (header::SET_COOKIE.as_str().as_bytes(), v.as_bytes())))
    }

    /// As `http` holds it.
    pub fn into_http(self) -> Response<H2Body> {
        let mut response = Response::new(self.body);
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        // Never `None`: a head `http` could not hold was refused as it came
        // (`Head::fits_http`).
        let mut headers = self.head.header_map(1).unwrap_or_default();
        if let Some(cookie) = self.set_cookie {
            headers.append(header::SET_COOKIE, cookie);
        }
        *response.headers_mut() = headers;
        response
    }
}

/// A request head as it goes to an h2 worker: checked and rewritten, its URI absolute.
pub struct WorkerRequest {
    pub parts: Parts,
    /// The forwarding fields sent after `parts`' (an HTTP/2 client's request); `None`
    /// when `parts` carry them already (an HTTP/1 client's, parsed from the head written
    /// for the worker).
    pub forwarding: Option<Forwarding>,
}

/// What is known of the call before it goes out.
pub struct Call {
    /// Its content type says gRPC: answers and cuts are said with `grpc-status`.
    pub grpc: bool,
    /// When a gRPC call's `grpc-timeout` runs out.
    pub deadline: Option<Instant>,
}

impl Call {
    pub fn of(headers: &hyper::HeaderMap) -> Call {
        let grpc = grpc::is_call(headers);
        let deadline = grpc
            .then(|| grpc::timeout(headers))
            .flatten()
            .map(|t| Instant::now() + t);
        Call { grpc, deadline }
    }

    /// One of the proxy's own answers, as this call's client reads it.
    pub fn own(&self, report: &mut Report, answer: &Canned) -> Response<Full<Bytes>> {
        own(report, answer, self.grpc)
    }
}

/// Forwards a request to a worker of `target`'s pool, picking again when the policy
/// allows.
pub async fn forward<B: Source>(
    proxy: &HttpProxy,
    target: &Target,
    request: WorkerRequest,
    body: B,
    client: &Client,
    call: Call,
    report: &mut Report,
) -> Answer {
    let balancer = &target.balancer;
    let parts = &request.parts;
    let bodiless = body.is_end_stream();
    // Sent again after a broken stream only as HTTP/1 would: no body, idempotent, and
    // not a gRPC call (whose outcome the worker may already have acted on).
    let replayable = bodiless && !call.grpc && retry::idempotent(parts.method.as_str().as_bytes());
    let uploaded = target.reports.detailed().then(Arc::default);
    let mut upload = Upload::new(body, uploaded.clone());
    let affinity = affinity_of(proxy, balancer, client, parts);
    let mut attempts = Attempts::default();
    loop {
        let (worker, may_retry) = match attempts.next(balancer, &affinity) {
            Ok(next) => next,
            Err(NoWorker::Exhausted) => return Answer::Own(call.own(report, &Canned::BAD_GATEWAY)),
            Err(none) => {
                let answer = Canned::no_worker(none, balancer, &proxy.sync);
                return Answer::Own(call.own(report, &answer));
            }
        };
        report.tried(worker.clone());
        let exchanged = exchange(
            &worker,
            target,
            &request,
            &mut upload,
            client,
            &call,
            report,
        );
        let failure = match exchanged.await {
            Exchanged::Answered(mut response) => {
                let status = response.status;
                if matches!(status, 502..=504)
                    && retry::should_retry(
                        Failure::GatewayStatus,
                        replayable,
                        may_retry,
                        &balancer.budget,
                    )
                {
                    tracing::info!(backend = %worker.address.text, status,
                        "retrying on another worker");
                    continue;
                }
                report.answered(status);
                if let Some(uploaded) = uploaded {
                    report.detail(|d| d.uploading = Some(uploaded));
                }
                response.set_cookie = sticky_cookie(balancer, &worker, &attempts);
                return Answer::Worker(response);
            }
            Exchanged::Own(answer) => return Answer::Own(call.own(report, &answer)),
            Exchanged::Failed(failure) => failure,
        };
        let replayable = failure == Failure::NotSent || replayable;
        if !retry::should_retry(failure, replayable, may_retry, &balancer.budget) {
            return Answer::Own(call.own(report, &Canned::BAD_GATEWAY));
        }
    }
}

/// How one worker's exchange ended.
enum Exchanged {
    /// Its response head, the body streaming behind it.
    Answered(WorkerResponse),
    /// The proxy answers (a timeout, a stalled client).
    Own(Canned),
    /// No response; another worker may be tried if `Failure` allows it (its body is
    /// back in the upload whenever it can go again).
    Failed(Failure),
}

/// Connections of one worker a request may go through when each says GOAWAY before the
/// request is processed: a worker that recycles its connections (nginx after
/// `http2_max_requests`, for one) is not failing, and the request stays with it.
const RESENDS: u32 = 2;

/// Sends the request to `worker` and waits for its response head.
async fn exchange<B: Source>(
    worker: &Arc<Worker>,
    target: &Target,
    request: &WorkerRequest,
    upload: &mut Upload<B>,
    client: &Client,
    call: &Call,
    report: &mut Report,
) -> Exchanged {
    let balancer = &target.balancer;
    let settings = &balancer.settings;
    let mut resends = 0;
    loop {
        // Counted before the connection is made, as the HTTP/1 path does: picks that
        // respect `max_connections` see requests still connecting.
        let in_flight = InFlight::new(worker.clone());
        let store = IdleConns::of(worker);
        // Most requests find room on an open connection; dialling is rare, and its boxed
        // future keeps its state out of every request's.
        let connected = match store.h2.open_slot() {
            Some(slot) => Ok((slot, None)),
            None => {
                let dial = store
                    .h2
                    .stream(worker, &target.connector, settings, client.address);
                Box::pin(dial).await
            }
        };
        let slot = match connected {
            Ok((slot, dialled)) => {
                report.detail(|d| d.connect = dialled);
                slot
            }
            Err(e) => {
                balancer.record(worker, Outcome::Connect);
                if let Some(suppressed) = worker.state.log_gate.allow() {
                    tracing::warn!(backend = %worker.address.text, worker = worker.id,
                        error = %e, suppressed, "backend failed");
                }
                // Nothing went out: the body is still whole.
                return Exchanged::Failed(Failure::NotSent);
            }
        };
        let forwarding = request.forwarding.as_ref().map(Forwarding::fields);
        let added = forwarding.as_ref().map_or(&[][..], |f| &f[..]);
        let (response, returned) = match slot.send_request(&request.parts, added, upload.bodiless) {
            // A body streams from a task of its own (it may go on after the response head,
            // a bidirectional call's does), and comes back from it when it can go again.
            Ok((response, Some(stream))) => {
                let Some((body, returned)) = upload.attempt() else {
                    return Exchanged::Own(Canned::BAD_GATEWAY);
                };
                tokio::spawn(pipe(body, stream));
                (Ok(response), Some(returned))
            }
            Ok((response, None)) => (Ok(response), None),
            Err(e) => (Err(e), None),
        };
        let waited = match response {
            Ok(response) => {
                let timeout = settings.response_timeout;
                match call.deadline {
                    None => wait_head(response, timeout, &upload.progress).await,
                    Some(deadline) => {
                        wait_head_until(response, timeout, &upload.progress, deadline).await
                    }
                }
            }
            Err(e) => Err(Waited::Failed(e)),
        };
        let error = match waited {
            Ok((head, body)) => {
                let status = head.status().expect("a response head has its :status");
                balancer.record(worker, Outcome::Status(status));
                return Exchanged::Answered(WorkerResponse {
                    status,
                    head,
                    set_cookie: None,
                    body: H2Body::new(body, slot, in_flight, call),
                });
            }
            Err(Waited::Deadline) => return Exchanged::Own(Canned::GATEWAY_TIMEOUT),
            Err(Waited::Timeout) => {
                balancer.record(worker, Outcome::Timeout);
                if let Some(suppressed) = worker.state.log_gate.allow() {
                    tracing::warn!(backend = %worker.address.text, worker = worker.id,
                        timeout_ms = settings.response_timeout.as_millis() as u64,
                        suppressed, "no response headers in time");
                }
                return Exchanged::Own(Canned::GATEWAY_TIMEOUT);
            }
            Err(Waited::ClientStalled) => return Exchanged::Own(Canned::REQUEST_TIMEOUT),
            Err(Waited::Failed(e)) => e,
        };
        let Cut::Unprocessed(why) = error else {
            balancer.record(worker, Outcome::Reset);
            if let Some(suppressed) = worker.state.log_gate.allow() {
                tracing::warn!(backend = %worker.address.text, worker = worker.id,
                    error = %CutDisplay(&error), suppressed, "backend failed");
            }
            return Exchanged::Failed(Failure::Broken);
        };
        tracing::debug!(backend = %worker.address.text, ?why,
            "the worker did not process the stream");
        // Boxed: rare, and its timer would weigh on every request's future.
        if !Box::pin(upload.recover(returned)).await {
            // More of its body went out than can be sent again.
            return Exchanged::Own(Canned::BAD_GATEWAY);
        }
        if why == Unprocessed::Connection {
            slot.connection_closing();
            if resends < RESENDS {
                resends += 1;
                continue;
            }
        }
        return Exchanged::Failed(Failure::NotSent);
    }
}

/// Streams a request body into its stream as the worker's flow control allows, the end
/// with the last data (or the trailers); stops when the worker resets the stream. Dropped
/// at the end, the body goes back to its `Upload` (see `replay`).
async fn pipe<B: Source>(mut body: Replay<B>, mut stream: SendStream) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = stream.send(Bytes::new(), true).await;
                return;
            }
            Some(Ok(frame)) => frame,
            Some(Err(_)) => {
                stream.send_reset(H2Code::CANCEL);
                return;
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(&trailers);
                    return;
                }
                continue;
            }
        };
        let last = body.is_end_stream();
        if data.is_empty() && !last {
            continue;
        }
        if stream.send(data, last).await.is_err() || last {
            return;
        }
    }
}

/// One of the proxy's own answers: as gRPC says it to a gRPC call (`grpc`), plain HTTP
/// otherwise. Reported with its HTTP status either way.
pub fn own(report: &mut Report, answer: &Canned, grpc: bool) -> Response<Full<Bytes>> {
    report.answered_own(answer.status);
    if grpc {
        grpc::answer(answer)
    } else {
        answer.to_response()
    }
}

/// What of a request pins it to a worker of `balancer`'s pool (`hash_key`, the sticky
/// cookie).
pub fn affinity_of(
    proxy: &HttpProxy,
    balancer: &Balancer,
    client: &Client,
    parts: &Parts,
) -> Affinity {
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    affinity::of(
        balancer,
        &proxy.hash_key,
        client.address.ip(),
        path_and_query.as_bytes(),
        &parts.headers,
    )
}

/// Sets the sticky cookie on a worker's `response` when the pool has one and the request
/// did not already name this worker.
pub fn stick<B>(
    response: &mut Response<B>,
    balancer: &Balancer,
    worker: &Worker,
    attempts: &Attempts,
) {
    if let Some(value) = sticky_cookie(balancer, worker, attempts) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The sticky cookie a response from `worker` sets, if any (see `stick`).
fn sticky_cookie(balancer: &Balancer, worker: &Worker, attempts: &Attempts) -> Option<HeaderValue> {
    if attempts.stuck {
        return None;
    }
    HeaderValue::try_from(balancer.stick(worker)?).ok()
}

/// Why no response head came.
enum Waited {
    Failed(Cut),
    /// None within `response_timeout` of the request's last byte.
    Timeout,
    /// The client sent no body byte for `response_timeout`: not the worker's doing.
    ClientStalled,
    /// The gRPC call's deadline passed.
    Deadline,
}

/// Waits for the response head. The response timeout runs from the request's last byte
/// (a client-streaming call's response comes after its requests): the worker
/// connection's driver wakes the wait when it is due (`ResponseFuture::wake_at`), rather
/// than a timer of its own.
async fn wait_head(
    mut sent: ResponseFuture,
    response_timeout: Duration,
    progress: &Progress,
) -> Result<(Head, RecvStream), Waited> {
    let timeout_ms = response_timeout.as_millis() as u64;
    loop {
        let since = progress.last_ms.load(Ordering::Relaxed);
        let due = since + timeout_ms;
        sent.wake_at(due);
        let head = std::future::poll_fn(|cx| match Pin::new(&mut sent).poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending if now_ms() >= due => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        match head.await {
            Some(r) => return r.map_err(Waited::Failed),
            None => {
                if let Some(stalled) = stalled(progress, since) {
                    return Err(stalled);
                }
            }
        }
    }
}

/// `wait_head` for a gRPC call with a deadline, which runs from the call's start: on a
/// timer of its own, set for whichever comes first.
async fn wait_head_until(
    sent: ResponseFuture,
    response_timeout: Duration,
    progress: &Progress,
    deadline: Instant,
) -> Result<(Head, RecvStream), Waited> {
    tokio::pin!(sent);
    let timeout_ms = response_timeout.as_millis() as u64;
    loop {
        let since = progress.last_ms.load(Ordering::Relaxed);
        let left = (since + timeout_ms).saturating_sub(now_ms());
        let timeout = Instant::now() + Duration::from_millis(left);
        tokio::select! {
            r = &mut sent => return r.map_err(Waited::Failed),
            _ = tokio::time::sleep_until(deadline.min(timeout)) => {
                if deadline <= Instant::now() {
                    return Err(Waited::Deadline);
                }
                if let Some(stalled) = stalled(progress, since) {
                    return Err(stalled);
                }
            }
        }
    }
}

/// The response timeout ran out on a request whose body was last heard of at `since`:
/// `None` if more of it came since (the wait goes on); else whose doing it is, the
/// worker's when the body was whole, the client's when it was not.
fn stalled(progress: &Progress, since: u64) -> Option<Waited> {
    if progress.last_ms.load(Ordering::Relaxed) != since {
        return None;
    }
    Some(if progress.done.load(Ordering::Relaxed) {
        Waited::Timeout
    } else {
        Waited::ClientStalled
    })
}

/// An h2 worker's response body on its way to the client. It holds the stream's place on
/// its connection and its count on the worker until it ends; a gRPC call's body ends at
/// its deadline, and with `grpc-status` when it breaks off.
pub struct H2Body {
    body: RecvStream,
    _slot: Slot,
    /// Counts the stream on its worker until the body ends; says whether it is drained.
    in_flight: InFlight,
    grpc: bool,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last frame was given: nothing more comes.
    ended: bool,
    /// A gRPC call the proxy ended itself, and why, for the access log: its client got a
    /// status in trailers, not a broken stream, so nothing else would say so.
    cut: Option<Ended>,
}

impl H2Body {
    fn new(body: RecvStream, slot: Slot, in_flight: InFlight, call: &Call) -> H2Body {
        H2Body {
            body,
            _slot: slot,
            in_flight,
            grpc: call.grpc,
            deadline: call.deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            ended: false,
            cut: None,
        }
    }

    /// How the proxy ended the call early, if it did (see `cut`).
    pub fn cut(&self) -> Option<Ended> {
        self.cut
    }

    fn end_with(
        &mut self,
        code: Code,
        why: &str,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.ended = true;
        self.cut = Some(match code {
            Code::DeadlineExceeded => Ended::Timeout,
            // The drain deadline shut its connection: cut on purpose, not a failure.
            _ if self.in_flight.worker().state.drain.is_drained() => Ended::Cut,
            _ => Ended::BackendFailed,
        });
        Poll::Ready(Some(Ok(Frame::trailers(grpc::trailers(code, why)))))
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            // Dropped with this body, the worker's stream is reset: its call is cancelled.
            return self.end_with(Code::DeadlineExceeded, "deadline exceeded at the proxy");
        }
        let polled = match self.body.poll_data(cx) {
            // Handed out, its bytes went back to the worker's windows.
            Poll::Ready(Some(Ok(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(e))) => Err(e),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => match self.body.poll_trailers(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(trailers)) => Ok(trailers),
                Poll::Ready(Err(e)) => Err(e),
            },
        };
        match polled {
            Ok(Some(trailers)) => {
                self.ended = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Err(e) if self.grpc => {
                let why = format!("the worker's stream broke: {}", CutDisplay(&e));
                self.end_with(Code::Unavailable, &why)
            }
            Err(e) => {
                self.ended = true;
                Poll::Ready(Some(Err(std::io::Error::other(CutDisplay(&e).to_string()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }
}

/// A stream's failure, as logs and error messages say it.
struct CutDisplay<'a>(&'a Cut);

impl std::fmt::Display for CutDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Cut::Unprocessed(why) => write!(f, "not processed ({why:?})"),
            Cut::Reset {
                code,
                by_peer: true,
            } => write!(f, "reset by the worker (code {})", code.0),
            Cut::Reset { code, .. } => write!(f, "reset for the worker's error (code {})", code.0),
            Cut::Connection(ended) => write!(f, "{ended}"),
        }
    }
}

/// The absolute URI an h2 worker gets: the scheme of the connection to it, the client's
/// `:authority` (or `Host`), and the path.
pub fn worker_uri(uri: Uri, host: Option<&HeaderValue>, tls: bool) -> Option<Uri> {
    let scheme = if tls { "https" } else { "http" };
    // An HTTP/2 client's request is absolute already: kept as it is when its scheme is the
    // worker connection's (parsing it again is most of the cost of this function).
    if uri.authority().is_some() && uri.scheme_str() == Some(scheme) {
        return Some(uri);
    }
    let authority = match uri.authority() {
        Some(a) => a.clone(),
        None => hyper::http::uri::Authority::try_from(host?.as_bytes()).ok()?,
    };
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_uri_is_absolute_with_the_connections_scheme() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let host = HeaderValue::from_static("h.example:81");
        assert_eq!(
            worker_uri(uri("http://a.example/p?q=1"), None, false).unwrap(),
            "http://a.example/p?q=1"
        );
        assert_eq!(
            worker_uri(uri("http://a.example/p?q=1"), None, true).unwrap(),
            "https://a.example/p?q=1",
            "a TLS worker connection"
        );
        assert_eq!(
            worker_uri(uri("/p"), Some(&host), false).unwrap(),
            "http://h.example:81/p",
            "origin-form: the Host field's authority"
        );
        assert_eq!(worker_uri(uri("/p"), None, false), None);
        let bad = HeaderValue::from_static("a b");
        assert_eq!(worker_uri(uri("/p"), Some(&bad), false), None);
    }
}
