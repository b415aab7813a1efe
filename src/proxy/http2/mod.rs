//! The HTTP/2 transport (prior knowledge, h2c): hyper serves the client; each request (one
//! stream) is checked and rewritten by the forwarding policy (`forward`), picks a worker
//! afresh and goes to it as HTTP/1.1 (`worker`), on the connections the HTTP/1 transport
//! uses too.
//!
//! Bodies stream through without buffering, trailers included. What is refused, what the
//! proxy answers itself and when a request goes to another worker are the same as on the
//! HTTP/1 path, because both ask `forward`.

mod worker;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::HttpProxy;
use super::forward::headers::{self, Client};
use super::forward::retry::{self, Failure};
use super::forward::{Canned, Reject, checks};
use super::http1::head::{Framing, put, put_length};
use crate::balance::{Attempts, NoWorker, Outcome};
use crate::shutdown::Shutdown;
use worker::{Failed, Outbound, WorkerBody};

/// What a response to the client carries: a worker's body, or the proxy's own answer.
pub type ProxyBody = Either<WorkerBody, Full<Bytes>>;

/// A client connection that opened with the HTTP/2 preface: `io` replays the bytes the
/// HTTP/1 path had already read. When the drain starts, GOAWAY lets the streams in progress
/// finish; at the cut the connection just closes.
pub async fn serve(proxy: Arc<HttpProxy>, io: Rewind, peer: SocketAddr, shutdown: Shutdown) {
    let limits = proxy.limits.clone();
    let client = Arc::new(Client::new(peer));
    let service = service_fn(move |request| {
        let (proxy, client) = (proxy.clone(), client.clone());
        async move { Ok::<_, Infallible>(handle(&proxy, request, &client).await) }
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

/// Forwards one request (stream) to a worker picked for it.
async fn handle(
    proxy: &HttpProxy,
    request: Request<Incoming>,
    client: &Client,
) -> Response<ProxyBody> {
    let balancer = &proxy.balancer;
    let settings = &balancer.settings;
    balancer.count_request();
    let (prepared, body) = match prepare(request, client) {
        Ok(prepared) => prepared,
        Err(reject) => {
            if let Reject::BadRequest(why) = reject {
                tracing::debug!(why, "bad request");
            }
            return own(&reject.canned());
        }
    };
    // A body streams through once: only a request without one can be sent again.
    let replayable = body.is_none() && prepared.idempotent;
    let mut body = body;

    let mut attempts = Attempts::default();
    loop {
        let (worker, may_retry) = match attempts.next(balancer) {
            Ok(next) => next,
            Err(NoWorker::Exhausted) => return own(&Canned::BAD_GATEWAY),
            Err(none) => return own(&Canned::no_worker(none, balancer, &proxy.sync)),
        };
        let (failure, outcome, error) = match worker::exchange(
            &worker,
            settings,
            &prepared.worker,
            &mut body,
        )
        .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                balancer.record(&worker, Outcome::Status(status));
                let retry = matches!(status, 502..=504)
                    && retry::should_retry(
                        Failure::GatewayStatus,
                        replayable,
                        may_retry,
                        &balancer.budget,
                    );
                if !retry {
                    return response.map(Either::Left);
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
                return own(&Canned::GATEWAY_TIMEOUT);
            }
        };
        balancer.record(&worker, outcome);
        if let Some(suppressed) = worker.state.log_gate.allow() {
            tracing::warn!(backend = %worker.address.text, worker = worker.id, %error,
                    suppressed, "backend failed");
        }
        // After a connect failure the body (if any) was not taken: the request goes on whole.
        if !retry::should_retry(failure, replayable, may_retry, &balancer.budget) {
            return own(&Canned::BAD_GATEWAY);
        }
    }
}

/// A checked request, ready for a worker.
struct Prepared {
    worker: Outbound,
    /// Idempotent method (RFC 9110 §9.2.2).
    idempotent: bool,
}

/// One of the proxy's own answers, as this transport sends it.
fn own(answer: &Canned) -> Response<ProxyBody> {
    answer.to_response().map(Either::Right)
}

/// Checks an HTTP/2 request with the rules the HTTP/1 path applies, and writes its HTTP/1.1
/// head for the worker: origin-form target, Host from `:authority`, hop-by-hop fields
/// removed, cookies joined, forwarding fields added; the body is sent as it came when its
/// length is known, chunked (with the client's trailers) otherwise.
fn prepare(
    request: Request<Incoming>,
    client: &Client,
) -> Result<(Prepared, Option<Incoming>), Reject> {
    let (mut parts, body) = request.into_parts();
    checks::method(parts.method.as_str().as_bytes())?;
    checks::field_count(parts.headers.len())?;
    let authority = parts.uri.authority().map(|a| a.as_str().to_string());
    if parts.headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(Reject::BadRequest("more than one Host"));
    }
    let host = parts.headers.get(header::HOST).map(|h| h.as_bytes());
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
    headers::rewrite_h2_request(&mut parts.headers, authority.as_deref(), client);

    let length = match parts.headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(Reject::BadRequest("invalid Content-Length"))?,
        ),
    };
    let (framing, body) = match (body.is_end_stream(), length) {
        (true, _) => (Framing::Empty, None),
        (false, Some(n)) => (Framing::Length(n), Some(body)),
        (false, None) => (Framing::Chunked, Some(body)),
    };
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(&mut head, &parts.headers);
    match framing {
        Framing::Chunked => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        // A bodiless request whose method usually has a body says so, rather than leave
        // the worker to guess.
        Framing::Empty if length.is_none() && expects_body(&parts.method) => {
            put_length(&mut head, 0)
        }
        Framing::Empty | Framing::Length(_) | Framing::Close => {}
    }
    head.extend_from_slice(b"\r\n");
    let prepared = Prepared {
        worker: Outbound {
            head,
            framing,
            head_request: parts.method == Method::HEAD,
        },
        idempotent: retry::idempotent(parts.method.as_str().as_bytes()),
    };
    Ok((prepared, body))
}

/// Host first (as HTTP/1.1 senders do), then every other field as rewritten.
fn write_fields(head: &mut Vec<u8>, fields: &HeaderMap) {
    if let Some(host) = fields.get(header::HOST) {
        put(head, b"Host", host.as_bytes());
    }
    for (name, value) in fields {
        if name != header::HOST {
            put(head, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// A client connection whose first bytes were already read: they are read again first.
pub struct Rewind {
    read: BytesMut,
    stream: TcpStream,
}

impl Rewind {
    pub fn new(read: BytesMut, stream: TcpStream) -> Rewind {
        Rewind { read, stream }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
