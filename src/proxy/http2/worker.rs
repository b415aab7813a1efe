//! An HTTP/2 request's exchange with an HTTP/1.1 worker, over the same connections (and the
//! same idle store) as the HTTP/1 transport.
//!
//! The request head is written once from the rewritten fields; the body streams as it
//! arrives — as it came when its length is known, chunked otherwise, with the client's
//! trailers as the chunked trailer section. The response head is read with the HTTP/1
//! path's checks (`http1::response`), and its body streams to the client through a small
//! channel (which is the backpressure) from a task that owns the connection until both
//! directions have ended, and puts it back in the idle store only if both ended cleanly.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::balance::Outcome;
use crate::config::PoolConfig;
use crate::proxy::forward::checks::MAX_FIELDS;
use crate::proxy::forward::headers;
use crate::proxy::http1::body::BodyLeft;
use crate::proxy::http1::chunked::Output;
use crate::proxy::http1::head::Framing;
use crate::proxy::http1::response::response_for_h2;
use crate::ring::{InFlight, Worker};
use crate::upstream::{IdleConns, Upstream, connect_upstream};

/// Bytes read from a worker at a time; the response head must fit in `MAX_HEAD`.
const READ: usize = 16 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// A request as it goes to the worker: its head, written once (and again for a retry).
pub struct Outbound {
    pub head: Vec<u8>,
    /// How the body goes (`Empty`: none).
    pub framing: Framing,
    /// HEAD: the response has no body whatever its fields say.
    pub head_request: bool,
}

/// Why one worker did not give a response head.
#[derive(Debug)]
pub enum Failed {
    /// No connection: nothing was sent.
    NotSent(String),
    /// The exchange broke before a response head (what ejection makes of it, and why).
    Broken(Outcome, String),
    /// No response head within the pool's `response_timeout`.
    Timeout,
}

/// What the exchange task says once the response head is read (or cannot be).
enum Head {
    Response(StatusCode, HeaderMap),
    /// A pooled connection the worker had closed: nothing came back and no body was sent,
    /// so the request can go out again on another connection.
    Stale,
    Failed(Failed),
}

/// Sends `out` (and `body`, taken once a connection is made) to `worker`; the response
/// head, with its body streaming behind it.
pub async fn exchange(
    worker: &Arc<Worker>,
    settings: &PoolConfig,
    out: &Outbound,
    body: &mut Option<Incoming>,
) -> Result<Response<WorkerBody>, Failed> {
    loop {
        let idle = IdleConns::of(worker).take_upstream(settings.idle_timeout);
        let (up, pooled) = match idle {
            Some(up) => (up, true),
            None => {
                let connected =
                    connect_upstream(worker, settings.connect_timeout, settings.drain_timeout);
                match connected.await {
                    Ok(up) => (up, false),
                    Err(e) => return Err(Failed::NotSent(e.to_string())),
                }
            }
        };
        let (head_tx, head_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(2);
        let task = Task {
            in_flight: InFlight::new(worker.clone()),
            up,
            pooled,
            head: out.head.clone(),
            framing: out.framing,
            head_request: out.head_request,
            body: body.take(),
            response_timeout: settings.response_timeout,
        };
        tokio::spawn(task.run(head_tx, data_tx));
        match head_rx.await {
            Ok(Head::Response(status, fields)) => {
                let mut response = Response::new(WorkerBody(data_rx));
                *response.status_mut() = status;
                *response.headers_mut() = fields;
                return Ok(response);
            }
            Ok(Head::Stale) => continue,
            Ok(Head::Failed(f)) => return Err(f),
            Err(_) => {
                return Err(Failed::Broken(
                    Outcome::Reset,
                    "the exchange ended before a response".into(),
                ));
            }
        }
    }
}

/// One exchange on one connection, run as its own task: it outlives the handler, which
/// returns as soon as the response head is in.
struct Task {
    /// The request counts on its worker until the response body has ended.
    in_flight: InFlight,
    up: Upstream,
    pooled: bool,
    head: Vec<u8>,
    framing: Framing,
    head_request: bool,
    body: Option<Incoming>,
    response_timeout: Duration,
}

/// Why the upload stopped early.
enum UploadError {
    /// The client's body broke (stream reset): the whole exchange is abandoned.
    Client,
    /// The worker stopped reading: its answer, if any, still comes.
    Worker,
}

impl Task {
    async fn run(self, head_tx: oneshot::Sender<Head>, data_tx: mpsc::Sender<io::Result<Bytes>>) {
        let Task {
            in_flight,
            mut up,
            pooled,
            head,
            framing,
            head_request,
            body,
            response_timeout,
        } = self;
        let worker = in_flight.worker().clone();
        if let Err(e) = up.stream.write_all(&head).await {
            let stale = pooled && body.is_none();
            let _ = head_tx.send(if stale {
                Head::Stale
            } else {
                Head::Failed(Failed::Broken(Outcome::Reset, e.to_string()))
            });
            return;
        }
        let mut rbuf = BytesMut::new();
        let (ended, uploaded) = {
            let (mut rd, mut wr) = up.stream.split();
            let sent_body = body.is_some();
            let upload = upload(&mut wr, body, framing);
            let download = download(
                &mut rd,
                &mut rbuf,
                head_request,
                response_timeout,
                (pooled && !sent_body, head_tx),
                &data_tx,
            );
            tokio::pin!(upload, download);
            let mut uploaded = (framing == Framing::Empty).then_some(true);
            let ended = loop {
                tokio::select! {
                    biased;
                    r = &mut download => break r,
                    r = &mut upload, if uploaded.is_none() => match r {
                        Ok(()) => uploaded = Some(true),
                        Err(UploadError::Client) => return,
                        Err(UploadError::Worker) => uploaded = Some(false),
                    },
                }
            };
            (ended, uploaded)
        };
        // Answered before the body ended: the connection's framing cannot be trusted.
        if ended == Ok(true) && uploaded == Some(true) && rbuf.is_empty() {
            IdleConns::put_upstream(&worker, up);
        }
        drop(in_flight);
    }
}

/// Streams the client's body to the worker in `framing`.
async fn upload<W: AsyncWrite + Unpin>(
    wr: &mut W,
    body: Option<Incoming>,
    framing: Framing,
) -> Result<(), UploadError> {
    let Some(mut body) = body else { return Ok(()) };
    let mut buf = Vec::new();
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(_)) => return Err(UploadError::Client),
        };
        buf.clear();
        match frame.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) if framing == Framing::Chunked => {
                buf.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                buf.extend_from_slice(&data);
                buf.extend_from_slice(b"\r\n");
            }
            Ok(data) => buf.extend_from_slice(&data),
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else {
                    continue;
                };
                if framing != Framing::Chunked {
                    // A body of known length has nowhere to carry trailers.
                    continue;
                }
                if trailers.len() > MAX_FIELDS {
                    return Err(UploadError::Client);
                }
                buf.extend_from_slice(b"0\r\n");
                write_trailers(&mut buf, &trailers);
                buf.extend_from_slice(b"\r\n");
                wr.write_all(&buf).await.map_err(|_| UploadError::Worker)?;
                return Ok(());
            }
        }
        wr.write_all(&buf).await.map_err(|_| UploadError::Worker)?;
    }
    if framing == Framing::Chunked {
        wr.write_all(b"0\r\n\r\n")
            .await
            .map_err(|_| UploadError::Worker)?;
    }
    Ok(())
}

/// The client's trailer fields the policy lets through, as an HTTP/1.1 trailer section.
fn write_trailers(buf: &mut Vec<u8>, trailers: &HeaderMap) {
    for (name, value) in trailers {
        if headers::trailer_allowed(name.as_str().as_bytes()) {
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
    }
}

/// Reads the response head (skipping interim responses), tells the handler, then relays
/// the body into `data_tx`. `Ok(reusable)` once the body has ended; `Err` when the
/// exchange broke or the client went away.
async fn download<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    head_request: bool,
    response_timeout: Duration,
    (stale_ok, head_tx): (bool, oneshot::Sender<Head>),
    data_tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<bool, ()> {
    let read_head = async {
        loop {
            if !rbuf.is_empty() {
                match response_for_h2(rbuf, head_request) {
                    Ok(Some((head, _, _))) if head.interim() => {
                        rbuf.advance(head.len);
                        continue;
                    }
                    Ok(Some(parsed)) => return Ok(parsed),
                    Ok(None) if rbuf.len() >= MAX_HEAD => {
                        return Err(Head::Failed(Failed::Broken(
                            Outcome::Protocol,
                            "response head larger than the limit".into(),
                        )));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(Head::Failed(Failed::Broken(
                            Outcome::Protocol,
                            e.to_string(),
                        )));
                    }
                }
            }
            let nothing = rbuf.is_empty();
            match rd.read_buf(reserve(rbuf)).await {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(_) if nothing && stale_ok => return Err(Head::Stale),
                Ok(_) => {
                    return Err(Head::Failed(Failed::Broken(
                        Outcome::Reset,
                        "closed the connection before a response".into(),
                    )));
                }
                Err(e) => {
                    return Err(Head::Failed(Failed::Broken(Outcome::Reset, e.to_string())));
                }
            }
        }
    };
    let parsed = match tokio::time::timeout(response_timeout, read_head).await {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(failed)) => {
            let _ = head_tx.send(failed);
            return Err(());
        }
        Err(_) => {
            let _ = head_tx.send(Head::Failed(Failed::Timeout));
            return Err(());
        }
    };
    let (head, status, fields) = parsed;
    rbuf.advance(head.len);
    if head_tx.send(Head::Response(status, fields)).is_err() {
        // The client's stream is gone.
        return Err(());
    }
    let mut left = BodyLeft::of(head.framing, Output::Data);
    let mut out = Vec::new();
    loop {
        if left.take(rbuf, &mut out).is_err() {
            let _ = data_tx
                .send(Err(io::Error::other(
                    "malformed chunked body from the worker",
                )))
                .await;
            return Err(());
        }
        if !out.is_empty()
            && data_tx
                .send(Ok(Bytes::from(std::mem::take(&mut out))))
                .await
                .is_err()
        {
            return Err(());
        }
        if left.done() {
            return Ok(head.reusable);
        }
        match rd.read_buf(reserve(rbuf)).await {
            Ok(0) if matches!(left, BodyLeft::Close) => return Ok(false),
            Ok(0) => {
                let _ = data_tx
                    .send(Err(io::Error::from(io::ErrorKind::UnexpectedEof)))
                    .await;
                return Err(());
            }
            Ok(_) => {}
            Err(e) => {
                let _ = data_tx.send(Err(e)).await;
                return Err(());
            }
        }
    }
}

fn reserve(buf: &mut BytesMut) -> &mut BytesMut {
    if buf.capacity() - buf.len() < READ / 4 {
        buf.reserve(READ);
    }
    buf
}

/// A worker's response body on its way to an HTTP/2 client: what the exchange task relays.
pub struct WorkerBody(mpsc::Receiver<io::Result<Bytes>>);

impl Body for WorkerBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}
