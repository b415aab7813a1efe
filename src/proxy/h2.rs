//! The HTTP/2 path (prior knowledge, h2c): hyper serves the client, and each request (one
//! stream) picks a worker afresh and goes to it as HTTP/1.1 through hyper's client, on
//! connections pooled per worker beside the HTTP/1 path's.
//!
//! Bodies stream through without buffering. Failures are retried on another worker when
//! that is safe: always when nothing was sent (connect failure), and for idempotent
//! bodiless requests when the worker reset or answered 502/503/504, within the retry
//! budget, never once the response has started.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use super::headers::{add_forwarded, strip_hop_by_hop};
use super::http::{HttpProxy, Rewind};
use super::pool::{Lease, PooledBody, RequestBody, connect};
use super::{Attempts, NoWorker, serve_http};
use crate::ring::{InFlight, Worker};
use crate::shutdown::Shutdown;

/// What a response to the client carries: a backend's body, or our own short message.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// Why forwarding to one worker failed.
enum Failed {
    /// No connection could be made: nothing was sent, so the request can go elsewhere.
    Connect {
        request: Box<Request<RequestBody>>,
        error: String,
    },
    /// The backend failed after the request was (at least partly) sent.
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
        let idempotent = matches!(
            *request.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        // A body streams through once; only a request without one can be sent again.
        (idempotent && request.body().is_end_stream()).then(|| Replay {
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
/// HTTP/1 path had already read.
pub async fn serve(proxy: Arc<HttpProxy>, io: Rewind, peer: SocketAddr, shutdown: Shutdown) {
    let limits = proxy.limits.clone();
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle_h2(request, peer).await) }
    });
    if let Err(e) = serve_http(io, service, &limits, &shutdown).await {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

impl HttpProxy {
    async fn handle_h2(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        self.balancer.count_request();
        prepare(&mut request, peer);
        let replay = Replay::of(&request);
        let mut request = request.map(Either::Left);

        let mut attempts = Attempts::default();
        loop {
            let (worker, may_retry) = match attempts.next(&self.balancer) {
                Ok(next) => next,
                Err(NoWorker::Exhausted) => return bad_gateway(),
                Err(none) => return self.unavailable(none.reason()),
            };
            match self.forward(&worker, request).await {
                Ok(response) => {
                    let status = response.status();
                    self.balancer.record(&worker, !status.is_server_error());
                    let retry_status = matches!(status.as_u16(), 502..=504);
                    if let Some(r) = replay.as_ref().filter(|_| retry_status && may_retry)
                        && self.balancer.take_retry()
                    {
                        tracing::info!(backend = %worker.address.text, %status, "retrying on another worker");
                        request = r.build();
                        continue;
                    }
                    return response;
                }
                Err(Failed::Connect { request: r, error }) => {
                    self.balancer.record(&worker, false);
                    if let Some(suppressed) = worker.state.log_gate.allow() {
                        tracing::warn!(backend = %worker.address.text, worker = worker.id, %error, suppressed, "connect failed");
                    }
                    // Nothing was sent: always safe to go elsewhere.
                    if !may_retry {
                        return bad_gateway();
                    }
                    request = *r;
                }
                Err(Failed::Backend(e)) => {
                    self.balancer.record(&worker, false);
                    if let Some(suppressed) = worker.state.log_gate.allow() {
                        tracing::warn!(backend = %worker.address.text, worker = worker.id, error = %e, suppressed, "backend failed");
                    }
                    match &replay {
                        Some(r) if may_retry && self.balancer.take_retry() => request = r.build(),
                        _ => return bad_gateway(),
                    }
                }
                Err(Failed::Timeout) => {
                    self.balancer.record(&worker, false);
                    if let Some(suppressed) = worker.state.log_gate.allow() {
                        tracing::warn!(backend = %worker.address.text, worker = worker.id,
                            timeout_ms = self.balancer.settings.response_timeout.as_millis() as u64,
                            suppressed, "no response headers in time");
                    }
                    return text_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 Gateway Timeout: the backend did not answer in time\n".into(),
                    );
                }
            }
        }
    }

    /// Sends `request` to `worker` on a pooled connection, or a new one.
    async fn forward(
        &self,
        worker: &Arc<Worker>,
        mut request: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, Failed> {
        let settings = &self.balancer.settings;
        let mut lease = Lease::new(InFlight::new(worker.clone()));
        loop {
            let (mut sender, pooled) = match worker.state.conns.take(settings.idle_timeout) {
                Some(sender) => (sender, true),
                None => {
                    match connect(worker, settings.connect_timeout, settings.drain_timeout).await {
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
                    // No upgrade is asked of the backend (HTTP/2 has none), so every
                    // connection goes back to the pool once its response has ended.
                    lease.hold(sender);
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = Either::Left(PooledBody::new(body, lease));
                    return Ok(Response::from_parts(parts, body));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // An idle connection the backend had just closed: the request was not
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

    fn unavailable(&self, why: &str) -> Response<ProxyBody> {
        let name = self.balancer.pool_name();
        text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("503 Service Unavailable: {why} in pool {name:?}\n"),
        )
    }
}

/// Rewrites a client request for the backend: origin-form target, hop-by-hop fields removed,
/// forwarding fields added. `Host` is kept as the client sent it.
fn prepare(request: &mut Request<Incoming>, peer: SocketAddr) {
    // An absolute-form target (`GET http://host/path`) names the host; RFC 9112 §3.2.2 makes
    // it replace the Host field. HTTP/2's :authority arrives the same way.
    if let Some(authority) = request.uri().authority().cloned() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *request.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    }
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    // hyper already answered `Expect: 100-continue` to the client when the body was asked
    // for; the backend must not wait for a second one.
    headers.remove(header::EXPECT);
    add_forwarded(headers, peer, "http");
    *request.version_mut() = Version::HTTP_11;
}

/// The details (addresses, errors) are logged where the failure happened, not shown to
/// clients.
fn bad_gateway() -> Response<ProxyBody> {
    text_response(
        StatusCode::BAD_GATEWAY,
        "502 Bad Gateway: the backend failed\n".into(),
    )
}

fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
