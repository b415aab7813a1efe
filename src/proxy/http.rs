//! The HTTP listener: per-request balancing.
//!
//! Each client connection is served by hyper (HTTP/1.1 keep-alive); each request picks a
//! worker afresh from the current snapshot, takes one of that worker's pooled connections
//! (or dials one), and streams the request and response bodies through without buffering
//! them. A connect failure, where nothing was sent, is retried once on another worker.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use tokio::net::{TcpListener, TcpStream};

use super::headers::{add_forwarded, strip_hop_by_hop};
use super::pool::{Lease, PooledBody, connect};
use super::{Balancer, CONNECT_TIMEOUT, accept_loop, serve_http1};
use crate::ring::{InFlight, Worker};
use crate::shutdown::Shutdown;

/// What a response to the client carries: a backend's body, or our own short message.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

pub struct HttpProxy {
    balancer: Balancer,
}

/// Why forwarding to one worker failed.
enum Failed {
    /// No connection could be made: nothing was sent, so the request can go elsewhere.
    Connect {
        request: Box<Request<Incoming>>,
        error: String,
    },
    /// The backend failed after the request was (at least partly) sent.
    Backend(hyper::Error),
}

impl HttpProxy {
    pub fn new(balancer: Balancer) -> HttpProxy {
        HttpProxy { balancer }
    }

    /// Serves clients from `listener` until the shutdown drains it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        let sd = shutdown.clone();
        accept_loop(listener, shutdown, move |stream, peer| {
            self.clone().serve_connection(stream, peer, sd.clone())
        })
        .await
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) {
        let service = service_fn(move |request| {
            let proxy = self.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }
        });
        if let Err(e) = serve_http1(stream, service, &shutdown).await {
            tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
        }
    }

    async fn handle(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        prepare(&mut request, peer);
        let Some(first) = self.balancer.pick(None) else {
            return self.unavailable();
        };
        let request = match self.forward(&first, request).await {
            Ok(response) => return response,
            Err(Failed::Backend(e)) => return bad_gateway(&first, &e.to_string()),
            Err(Failed::Connect { request, error }) => {
                tracing::warn!(backend = %first.address.text, worker = first.id, %error,
                    "connect failed; retrying on another worker");
                *request
            }
        };
        let second = match self.balancer.pick(Some(first.id)) {
            Some(w) if w.id != first.id => w,
            _ => return bad_gateway(&first, "connect failed and no other worker is available"),
        };
        match self.forward(&second, request).await {
            Ok(response) => response,
            Err(Failed::Backend(e)) => bad_gateway(&second, &e.to_string()),
            Err(Failed::Connect { error, .. }) => bad_gateway(&second, &error),
        }
    }

    /// Sends `request` to `worker` on a pooled connection, or a new one.
    async fn forward(
        &self,
        worker: &Arc<Worker>,
        mut request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Failed> {
        let mut lease = Lease::new(InFlight::new(worker.clone()));
        loop {
            let (mut sender, pooled) = match worker.state.conns.take() {
                Some(sender) => (sender, true),
                None => match connect(&worker.address, CONNECT_TIMEOUT).await {
                    Ok(sender) => (sender, false),
                    Err(e) => {
                        return Err(Failed::Connect {
                            request: Box::new(request),
                            error: e.to_string(),
                        });
                    }
                },
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
            match sender.try_send_request(request).await {
                Ok(response) => {
                    lease.hold(sender);
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = Either::Left(PooledBody::new(body, lease));
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
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

    fn unavailable(&self) -> Response<ProxyBody> {
        let name = self.balancer.pool_name();
        text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("503 Service Unavailable: no worker with weight > 0 in pool {name:?}\n"),
        )
    }
}

/// Rewrites a client request for the backend: origin-form target, hop-by-hop fields removed,
/// forwarding fields added. `Host` is kept as the client sent it.
fn prepare(request: &mut Request<Incoming>, peer: SocketAddr) {
    // An absolute-form target (`GET http://host/path`) names the host; RFC 9112 §3.2.2 makes
    // it replace the Host field.
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
    strip_hop_by_hop(request.headers_mut());
    add_forwarded(request.headers_mut(), peer, "http");
    *request.version_mut() = Version::HTTP_11;
}

fn bad_gateway(worker: &Worker, error: &str) -> Response<ProxyBody> {
    tracing::warn!(backend = %worker.address.text, worker = worker.id, error, "backend failed");
    text_response(
        StatusCode::BAD_GATEWAY,
        "502 Bad Gateway: the backend failed\n".to_string(),
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
