//! The HTTP/2 transport (prior knowledge, h2c): hyper serves the client, and each request
//! (one stream) is checked and rewritten by the forwarding policy (`forward`), picks a
//! worker afresh and goes to it as HTTP/1.1 through hyper's client, on connections kept in
//! the worker's idle store beside the HTTP/1 path's.
//!
//! Bodies stream through without buffering. What is refused, what the proxy answers itself
//! and when a request goes to another worker are the same as on the HTTP/1 path, because
//! both ask `forward`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::forward::headers::{self, Client};
use super::forward::retry::{self, Failure};
use super::forward::{Canned, Reject, checks};
use super::http::{HttpProxy, Rewind};
use crate::balance::{Attempts, NoWorker, Outcome};
use crate::ring::{InFlight, Worker};
use crate::shutdown::Shutdown;
use crate::upstream::{IdleConns, RequestBody, Sender, connect_hyper};

/// What a response to the client carries: a worker's body, or the proxy's own answer.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// Why forwarding to one worker failed.
enum Failed {
    /// No connection could be made: nothing was sent, so the request can go elsewhere.
    Connect {
        request: Box<Request<RequestBody>>,
        error: String,
    },
    /// The worker failed after the request was (at least partly) sent.
    Backend(hyper::Error),
    /// No response headers within the pool's `response_timeout`.
    Timeout,
}

/// The head of a bodiless idempotent request, kept to send it again.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn of(request: &Request<Incoming>) -> Option<Replay> {
        // A body streams through once; only a request without one can be sent again.
        let replayable = retry::idempotent(request.method().as_str().as_bytes())
            && request.body().is_end_stream();
        replayable.then(|| Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        })
    }

    fn build(&self) -> Request<RequestBody> {
        let mut r = Request::new(Either::Right(Empty::new()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// A client connection that opened with the HTTP/2 preface: `io` replays the bytes the
/// HTTP/1 path had already read. When the drain starts, GOAWAY lets the streams in progress
/// finish; at the cut the connection just closes.
pub async fn serve(proxy: Arc<HttpProxy>, io: Rewind, peer: SocketAddr, shutdown: Shutdown) {
    let limits = proxy.limits.clone();
    let client = Arc::new(Client::new(peer));
    let service = service_fn(move |request| {
        let (proxy, client) = (proxy.clone(), client.clone());
        async move { Ok::<_, Infallible>(proxy.handle_h2(request, &client).await) }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_size as u32);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cut.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

impl HttpProxy {
    async fn handle_h2(&self, request: Request<Incoming>, client: &Client) -> Response<ProxyBody> {
        let balancer = &self.balancer;
        balancer.count_request();
        let request = match prepare(request, client) {
            Ok(r) => r,
            Err(reject) => {
                if let Reject::BadRequest(why) = reject {
                    tracing::debug!(why, "bad request");
                }
                return own(&reject.canned());
            }
        };
        let replay = Replay::of(&request);
        let mut request = request.map(Either::Left);

        let mut attempts = Attempts::default();
        loop {
            let (worker, may_retry) = match attempts.next(balancer) {
                Ok(next) => next,
                Err(NoWorker::Exhausted) => return own(&Canned::BAD_GATEWAY),
                Err(none) => return own(&Canned::no_worker(none, balancer, &self.sync)),
            };
            let replayable = replay.is_some();
            let failure = match self.forward(&worker, request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    balancer.record(&worker, Outcome::Status(status));
                    if !matches!(status, 502..=504)
                        || !retry::should_retry(
                            Failure::GatewayStatus,
                            replayable,
                            may_retry,
                            &balancer.budget,
                        )
                    {
                        return response;
                    }
                    tracing::info!(backend = %worker.address.text, status, "retrying on another worker");
                    Failure::GatewayStatus
                }
                Err(Failed::Connect { request: r, error }) => {
                    balancer.record(&worker, Outcome::Connect);
                    if let Some(suppressed) = worker.state.log_gate.allow() {
                        tracing::warn!(backend = %worker.address.text, worker = worker.id, %error, suppressed, "connect failed");
                    }
                    if !retry::should_retry(
                        Failure::NotSent,
                        replayable,
                        may_retry,
                        &balancer.budget,
                    ) {
                        return own(&Canned::BAD_GATEWAY);
                    }
                    // Nothing was sent: the request itself goes on, body and all.
                    request = *r;
                    continue;
                }
                Err(Failed::Backend(e)) => {
                    balancer.record(&worker, Outcome::Reset);
                    if let Some(suppressed) = worker.state.log_gate.allow() {
                        tracing::warn!(backend = %worker.address.text, worker = worker.id, error = %e, suppressed, "backend failed");
                    }
                    if !retry::should_retry(
                        Failure::Broken,
                        replayable,
                        may_retry,
                        &balancer.budget,
                    ) {
                        return own(&Canned::BAD_GATEWAY);
                    }
                    Failure::Broken
                }
                Err(Failed::Timeout) => {
                    balancer.record(&worker, Outcome::Timeout);
                    if let Some(suppressed) = worker.state.log_gate.allow() {
                        tracing::warn!(backend = %worker.address.text, worker = worker.id,
                            timeout_ms = balancer.settings.response_timeout.as_millis() as u64,
                            suppressed, "no response headers in time");
                    }
                    return own(&Canned::GATEWAY_TIMEOUT);
                }
            };
            debug_assert!(matches!(failure, Failure::GatewayStatus | Failure::Broken));
            request = replay
                .as_ref()
                .expect("only replayable requests retry")
                .build();
        }
    }

    /// Sends `request` to `worker` on an idle connection, or a new one.
    async fn forward(
        &self,
        worker: &Arc<Worker>,
        mut request: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, Failed> {
        let settings = &self.balancer.settings;
        let mut lease = Lease::new(InFlight::new(worker.clone()));
        loop {
            let idle = IdleConns::of(worker).take_hyper(settings.idle_timeout);
            let (mut sender, pooled) = match idle {
                Some(sender) => (sender, true),
                None => {
                    let connected =
                        connect_hyper(worker, settings.connect_timeout, settings.drain_timeout);
                    match connected.await {
                        Ok(sender) => (sender, false),
                        Err(e) => {
                            return Err(Failed::Connect {
                                request: Box::new(request),
                                error: e.to_string(),
                            });
                        }
                    }
                }
            };
            if sender.ready().await.is_err() {
                if pooled {
                    continue;
                }
                return Err(Failed::Connect {
                    request: Box::new(request),
                    error: "backend closed the connection after the handshake".into(),
                });
            }
            let sent =
                tokio::time::timeout(settings.response_timeout, sender.try_send_request(request));
            match sent.await {
                Err(_) => return Err(Failed::Timeout),
                Ok(Ok(response)) => {
                    // No upgrade is asked of the worker (HTTP/2 has none), so every
                    // connection goes back to the idle store once its response has ended.
                    lease.hold(sender);
                    let (mut parts, body) = response.into_parts();
                    headers::strip_response(&mut parts.headers);
                    let body = Either::Left(PooledBody::new(body, lease));
                    return Ok(Response::from_parts(parts, body));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // An idle connection the worker had just closed: the request was not
                    // sent, so it goes out again on another connection.
                    Some(r) if pooled => request = r,
                    Some(r) => {
                        return Err(Failed::Connect {
                            request: Box::new(r),
                            error: e.into_error().to_string(),
                        });
                    }
                    None => return Err(Failed::Backend(e.into_error())),
                },
            }
        }
    }
}

/// One of the proxy's own answers, as this transport sends it.
fn own(answer: &Canned) -> Response<ProxyBody> {
    answer.to_response().map(Either::Right)
}

/// Checks an HTTP/2 request with the rules the HTTP/1 path applies, and rewrites it for an
/// HTTP/1.1 worker: origin-form target, Host from `:authority`, hop-by-hop fields removed,
/// cookies joined, forwarding fields added.
fn prepare(mut request: Request<Incoming>, client: &Client) -> Result<Request<Incoming>, Reject> {
    checks::method(request.method().as_str().as_bytes())?;
    checks::field_count(request.headers().len())?;
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(Reject::BadRequest("more than one Host"));
    }
    let host = request.headers().get(header::HOST).map(|h| h.as_bytes());
    match (&authority, host) {
        (None, None) => return Err(Reject::BadRequest("neither :authority nor Host")),
        // RFC 9113 §8.3.1: a Host that names another entity than :authority is malformed.
        (Some(a), Some(h)) if !a.as_bytes().eq_ignore_ascii_case(h) => {
            return Err(Reject::BadRequest(":authority and Host differ"));
        }
        (Some(a), _) => checks::host(a.as_bytes())?,
        (None, Some(h)) => checks::host(h)?,
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    checks::path(path.as_bytes())?;
    *request.uri_mut() = path
        .parse()
        .map_err(|_| Reject::BadRequest("invalid :path"))?;
    headers::rewrite_h2_request(request.headers_mut(), authority.as_deref(), client);
    *request.version_mut() = Version::HTTP_11;
    Ok(request)
}

/// A worker's response body on its way to the client. It owns the request's claim on the
/// worker: the in-flight count drops, and the connection goes back to the idle store, only
/// when the body has ended (or the client went away, in which case the connection closes).
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

/// A request's hold on a worker and, while the response streams, on its connection.
struct Lease {
    in_flight: InFlight,
    sender: Option<Sender>,
}

impl Lease {
    fn new(in_flight: InFlight) -> Lease {
        Lease {
            in_flight,
            sender: None,
        }
    }

    /// Keeps `sender` to return to the idle store when the response is complete.
    fn hold(&mut self, sender: Sender) {
        self.sender = Some(sender);
    }

    /// The response ended cleanly: the connection can serve another request.
    fn release(mut self) {
        if let Some(s) = self.sender.take() {
            IdleConns::put_hyper(self.in_flight.worker(), s);
        }
    }
}

impl PooledBody {
    fn new(inner: Incoming, lease: Lease) -> PooledBody {
        let mut body = PooledBody {
            inner,
            lease: Some(lease),
        };
        // A bodiless response (204, 304, HEAD, Content-Length: 0) is already complete.
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
