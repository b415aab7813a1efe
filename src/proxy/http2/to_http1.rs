//! An HTTP/2 request's exchange with an HTTP/1.1 worker, over the same connections (and the
//! same idle store) as the HTTP/1 transport.
//!
//! The request head is written once from the rewritten fields; the body streams as it
//! arrives — as it came when its length is known, chunked otherwise, with the client's
//! trailers as the chunked trailer section. The response head is read with the HTTP/1
//! path's checks (`http1::response`). A bodiless request (most) needs nothing running
//! beside the download: its response body reads the connection itself and gives it back
//! to the idle store at its clean end (`direct`). With a body, the exchange runs in a task
//! that owns the connection until both directions have ended, relays the response body
//! through a small channel (which is the backpressure), and puts the connection back only
//! if both ended cleanly. Either way the exchange stops as soon as the client's stream is
//! gone, and a body ends for the client only when its framing says so: a relay that broke
//! off is an error, never a short body.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::body::RequestBody;
use crate::balance::Outcome;
use crate::config::PoolConfig;
use crate::proxy::forward::checks::MAX_FIELDS;
use crate::proxy::forward::{Reject, headers};
use crate::proxy::http1::body::{BodyLeft, reserved};
use crate::proxy::http1::chunked::Output;
use crate::proxy::http1::head::Framing;
use crate::proxy::http1::response::response_for_h2;
use crate::ring::state::now_ms;
use crate::ring::{InFlight, Worker};
use crate::upstream::{Connector, IdleConns, Upstream, connect_upstream};

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
    /// Idempotent and bodiless: it may go out again on another connection when an idle one
    /// turns out to be closed.
    pub replayable: bool,
    /// The first frame of a body whose end was awaited to choose the framing.
    pub first: Option<Frame<Bytes>>,
    /// Counts the body bytes sent to the worker, for the access log (`None` without one).
    pub uploaded: Option<Arc<AtomicU64>>,
    /// How long dialling the last worker took (`None`: a reused connection).
    pub connect: Option<Duration>,
    /// The client's address, for what new connections to workers carry of it.
    pub client: std::net::SocketAddr,
}

/// Why one worker did not give a response head.
#[derive(Debug)]
pub enum Failed {
    /// No connection: nothing was sent.
    NotSent(String),
    /// The exchange broke before a response head (what ejection makes of it, and why).
    Broken(Outcome, String),
    /// No response head within the pool's `response_timeout` of the request being sent.
    Timeout,
    /// The client's body broke a rule on the way (too many trailer fields): not the
    /// worker's doing.
    Refused(Reject),
    /// The client sent no body byte for `response_timeout`: not the worker's doing.
    ClientStalled,
    /// The client's stream went away.
    ClientGone,
}

/// What the exchange task says once the response head is read (or cannot be).
enum Head {
    Response(StatusCode, HeaderMap),
    /// A pooled connection the worker had closed: nothing came back, and the request can
    /// go out again on another connection.
    Stale,
    Failed(Failed),
}

/// One piece of a response body on its way to the client.
enum Piece {
    Data(Bytes),
    /// The body ended as its framing said.
    End,
    Failed(io::Error),
}

/// Sends `out` (and `body`, taken once a connection is made) to `worker`; the response
/// head, with its body streaming behind it.
pub async fn exchange(
    worker: &Arc<Worker>,
    connector: &Connector,
    settings: &PoolConfig,
    out: &mut Outbound,
    body: &mut Option<RequestBody>,
) -> Result<Response<WorkerBody>, Failed> {
    loop {
        // Counted before the connection is made, as the HTTP/1 path does: picks that
        // respect `max_connections` see requests still connecting.
        let in_flight = InFlight::new(worker.clone());
        // With `send_proxy`, a connection names one client: none is shared or kept here
        // (`IdleConns::put_upstream` closes it after its exchange), each stream dials.
        let idle = connector
            .shares_connections()
            .then(|| IdleConns::of(worker).take_upstream(settings.idle_timeout))
            .flatten();
        let (up, pooled) = match idle {
            Some(up) => {
                out.connect = None;
                (up, true)
            }
            None => {
                let dialled = std::time::Instant::now();
                let connected = connect_upstream(worker, connector, out.client);
                match connected.await {
                    Ok(up) => {
                        out.connect = Some(dialled.elapsed());
                        (up, false)
                    }
                    Err(e) => return Err(Failed::NotSent(e.to_string())),
                }
            }
        };
        if body.is_none() && out.first.is_none() {
            let stale_ok = pooled && out.replayable;
            match direct(in_flight, up, stale_ok, out, settings.response_timeout).await {
                Err(Head::Stale) => continue,
                Err(Head::Failed(f)) => return Err(f),
                Err(Head::Response(..)) => unreachable!("a response is Ok"),
                Ok(response) => return Ok(response),
            }
        }
        let (head_tx, head_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(2);
        let task = Task {
            in_flight,
            up,
            stale_ok: pooled && out.replayable,
            head: out.head.clone(),
            framing: out.framing,
            head_request: out.head_request,
            first: out.first.take(),
            body: body.take(),
            response_timeout: settings.response_timeout,
            uploaded: out.uploaded.clone(),
        };
        tokio::spawn(task.run(head_tx, data_tx));
        match head_rx.await {
            Ok(Head::Response(status, fields)) => {
                let mut response = Response::new(WorkerBody {
                    from: From::Task(data_rx),
                    ended: false,
                });
                *response.status_mut() = status;
                *response.headers_mut() = fields;
                return Ok(response);
            }
            Ok(Head::Stale) => continue,
            Ok(Head::Failed(f)) => return Err(f),
            // The task ended without a word: only a client body that broke does that.
            Err(_) => return Err(Failed::ClientGone),
        }
    }
}

/// One exchange on one connection, run as its own task: it outlives the handler, which
/// returns as soon as the response head is in.
struct Task {
    /// The request counts on its worker until the response body has ended.
    in_flight: InFlight,
    up: Upstream,
    /// A failure with nothing received may be a closed idle connection (see `Head::Stale`).
    stale_ok: bool,
    head: Vec<u8>,
    framing: Framing,
    head_request: bool,
    first: Option<Frame<Bytes>>,
    body: Option<RequestBody>,
    response_timeout: Duration,
    uploaded: Option<Arc<AtomicU64>>,
}

/// Why the upload stopped early.
enum UploadError {
    /// The client's body broke (stream reset): the whole exchange is abandoned.
    Client,
    /// The client's body broke the policy's limits.
    Refused(Reject),
    /// The worker stopped reading: its answer, if any, still comes.
    Worker,
}

/// What the upload tells the download while both run.
#[derive(Default)]
struct Progress {
    /// When the upload last moved (`now_ms()`).
    last_ms: AtomicU64,
    /// The whole body was sent (or there was none).
    done: AtomicBool,
}

impl Task {
    async fn run(self, head_tx: oneshot::Sender<Head>, data_tx: mpsc::Sender<Piece>) {
        let Task {
            in_flight,
            mut up,
            stale_ok,
            head,
            framing,
            head_request,
            first,
            body,
            response_timeout,
            uploaded: uploaded_bytes,
        } = self;
        let worker = in_flight.worker().clone();
        // Taken by whoever answers the handler first.
        let mut head_tx = Some(head_tx);
        if let Err(e) = up.stream.write_all(&head).await {
            let head_tx = head_tx.take().expect("not sent yet");
            let _ = head_tx.send(if stale_ok {
                Head::Stale
            } else {
                Head::Failed(Failed::Broken(Outcome::Reset, e.to_string()))
            });
            return;
        }
        let progress = Progress {
            last_ms: AtomicU64::new(now_ms()),
            done: AtomicBool::new(framing == Framing::Empty),
        };
        let mut rbuf = BytesMut::new();
        let (ended, uploaded) = {
            let (mut rd, mut wr) = up.stream.split();
            let counted = uploaded_bytes.as_deref();
            let upload = upload(&mut wr, first, body, framing, &progress, counted);
            let head_tx = &mut head_tx;
            let download = async {
                let tx = head_tx.as_mut().expect("not sent yet");
                let head = read_head(
                    &mut rd,
                    &mut rbuf,
                    head_request,
                    response_timeout,
                    stale_ok,
                    &progress,
                    tx.closed(),
                )
                .await;
                let tx = head_tx.take().expect("not sent yet");
                let (head, status, fields) = match head {
                    Ok(parsed) => parsed,
                    Err(said) => {
                        let _ = tx.send(said);
                        return Err(None);
                    }
                };
                if tx.send(Head::Response(status, fields)).is_err() {
                    return Err(None);
                }
                match relay_body(&mut rd, &mut rbuf, head.framing, &data_tx).await {
                    Ok(()) => Ok(head.reusable),
                    Err(()) => Err(None),
                }
            };
            tokio::pin!(upload, download);
            let mut uploaded = (framing == Framing::Empty).then_some(true);
            let ended = loop {
                tokio::select! {
                    biased;
                    r = &mut download => break r,
                    r = &mut upload, if uploaded.is_none() => match r {
                        Ok(()) => uploaded = Some(true),
                        Err(UploadError::Client) => return,
                        Err(UploadError::Refused(reject)) => break Err(Some(reject)),
                        Err(UploadError::Worker) => uploaded = Some(false),
                    },
                }
            };
            (ended, uploaded)
        };
        match ended {
            // Answered before the body ended: the connection's framing cannot be trusted.
            Ok(true) if uploaded == Some(true) && rbuf.is_empty() => {
                IdleConns::put_upstream(&worker, up)
            }
            Ok(_) | Err(None) => {}
            // The body broke the limits mid-way: the worker has part of a request that will
            // never end, and its connection closes with the task. If the head was not sent
            // yet, the client is told why; otherwise its response breaks off.
            Err(Some(reject)) => {
                if let Some(tx) = head_tx.take() {
                    let _ = tx.send(Head::Failed(Failed::Refused(reject)));
                }
                let _ = data_tx
                    .send(Piece::Failed(io::Error::other("request body refused")))
                    .await;
            }
        }
        drop(in_flight);
    }
}

/// Streams the client's body to the worker in `framing`, `first` frame first.
async fn upload<W: AsyncWrite + Unpin>(
    wr: &mut W,
    first: Option<Frame<Bytes>>,
    body: Option<RequestBody>,
    framing: Framing,
    progress: &Progress,
    counted: Option<&AtomicU64>,
) -> Result<(), UploadError> {
    let Some(mut body) = body else {
        progress.done.store(true, Ordering::Relaxed);
        return Ok(());
    };
    let mut first = first;
    let mut buf = Vec::new();
    loop {
        let frame = match first.take() {
            Some(frame) => frame,
            None => match body.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(_)) => return Err(UploadError::Client),
            },
        };
        buf.clear();
        if let (Some(n), Some(data)) = (counted, frame.data_ref()) {
            n.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let last = match frame.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) if framing == Framing::Chunked => {
                buf.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                buf.extend_from_slice(&data);
                buf.extend_from_slice(b"\r\n");
                false
            }
            Ok(data) => {
                buf.extend_from_slice(&data);
                false
            }
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else {
                    continue;
                };
                if framing != Framing::Chunked {
                    // A body of known length has nowhere to carry trailers.
                    continue;
                }
                if trailers.len() > MAX_FIELDS {
                    return Err(UploadError::Refused(Reject::TooLarge));
                }
                buf.extend_from_slice(b"0\r\n");
                write_trailers(&mut buf, &trailers);
                buf.extend_from_slice(b"\r\n");
                true
            }
        };
        wr.write_all(&buf).await.map_err(|_| UploadError::Worker)?;
        progress.last_ms.store(now_ms(), Ordering::Relaxed);
        if last {
            progress.done.store(true, Ordering::Relaxed);
            return Ok(());
        }
    }
    if framing == Framing::Chunked {
        wr.write_all(b"0\r\n\r\n")
            .await
            .map_err(|_| UploadError::Worker)?;
    }
    progress.done.store(true, Ordering::Relaxed);
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

type Parsed = (
    crate::proxy::http1::response::ResponseHead,
    StatusCode,
    HeaderMap,
);

/// Reads the response head, skipping interim responses. The timeout runs from the request
/// having been sent: while the client's body is still coming, from its last byte, and a
/// client that stalls for the whole timeout is the client's failure, not the worker's.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    head_request: bool,
    response_timeout: Duration,
    stale_ok: bool,
    progress: &Progress,
    gone: impl Future<Output = ()>,
) -> Result<Parsed, Head> {
    tokio::pin!(gone);
    let timeout_ms = response_timeout.as_millis() as u64;
    let mut received = false;
    loop {
        if !rbuf.is_empty() {
            match response_for_h2(rbuf, head_request) {
                Ok(Some((head, _, _))) if head.interim() => {
                    rbuf.advance(head.len);
                    continue;
                }
                Ok(Some(parsed)) => {
                    rbuf.advance(parsed.0.len);
                    return Ok(parsed);
                }
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
        let since = progress.last_ms.load(Ordering::Relaxed);
        let left = (since + timeout_ms).saturating_sub(now_ms());
        let read = tokio::select! {
            r = rd.read_buf(reserved(rbuf, READ)) => r,
            _ = tokio::time::sleep(Duration::from_millis(left)) => {
                if progress.last_ms.load(Ordering::Relaxed) != since {
                    continue;
                }
                return Err(Head::Failed(if progress.done.load(Ordering::Relaxed) {
                    Failed::Timeout
                } else {
                    Failed::ClientStalled
                }));
            }
            // Nobody waits for this answer any more.
            _ = &mut gone => return Err(Head::Failed(Failed::ClientGone)),
        };
        match read {
            Ok(n) if n > 0 => received = true,
            Ok(_) | Err(_) if !received && stale_ok => return Err(Head::Stale),
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
}

/// Relays a response body into `pieces`, ending it with `Piece::End` once its framing says
/// so. `Err` when it broke off or the client went away.
async fn relay_body<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    framing: Framing,
    pieces: &mpsc::Sender<Piece>,
) -> Result<(), ()> {
    let mut left = BodyLeft::of(framing, Output::Data);
    let mut out = Vec::new();
    loop {
        if left.take(rbuf, &mut out).is_err() {
            let broken = io::Error::other("malformed chunked body from the worker");
            let _ = pieces.send(Piece::Failed(broken)).await;
            return Err(());
        }
        if !out.is_empty() {
            let data = Bytes::from(std::mem::take(&mut out));
            pieces.send(Piece::Data(data)).await.map_err(|_| ())?;
        }
        if left.done() {
            return pieces.send(Piece::End).await.map_err(|_| ());
        }
        let read = tokio::select! {
            r = rd.read_buf(reserved(rbuf, READ)) => r,
            // The client's stream is gone: stop now, not at the worker's next byte.
            _ = pieces.closed() => return Err(()),
        };
        match read {
            Ok(0) if matches!(left, BodyLeft::Close) => {
                // Close-delimited: the end is the close, and the connection goes with it.
                let _ = pieces.send(Piece::End).await;
                return Err(());
            }
            Ok(0) => {
                let cut = io::Error::from(io::ErrorKind::UnexpectedEof);
                let _ = pieces.send(Piece::Failed(cut)).await;
                return Err(());
            }
            Ok(_) => {}
            Err(e) => {
                let _ = pieces.send(Piece::Failed(e)).await;
                return Err(());
            }
        }
    }
}

/// Sends a bodiless request on `up` and reads the response head, without a task: the
/// response body then reads the connection itself (`From::Connection`), and puts it back in
/// the idle store at its clean end. Most requests have no body, and for them the task and
/// its two channels would be pure cost. Dropped early (the client went), the connection
/// closes with it.
async fn direct(
    in_flight: InFlight,
    mut up: Upstream,
    stale_ok: bool,
    out: &Outbound,
    response_timeout: Duration,
) -> Result<Response<WorkerBody>, Head> {
    if let Err(e) = up.stream.write_all(&out.head).await {
        return Err(if stale_ok {
            Head::Stale
        } else {
            Head::Failed(Failed::Broken(Outcome::Reset, e.to_string()))
        });
    }
    let progress = Progress {
        last_ms: AtomicU64::new(now_ms()),
        done: AtomicBool::new(true),
    };
    let mut rbuf = BytesMut::new();
    let (head, status, fields) = read_head(
        &mut up.stream,
        &mut rbuf,
        out.head_request,
        response_timeout,
        stale_ok,
        &progress,
        std::future::pending(),
    )
    .await?;
    let mut response = Response::new(WorkerBody {
        from: From::Connection(Box::new(Reading {
            up: Some(up),
            rbuf,
            left: BodyLeft::of(head.framing, Output::Data),
            reusable: head.reusable,
            in_flight,
        })),
        ended: false,
    });
    *response.status_mut() = status;
    *response.headers_mut() = fields;
    Ok(response)
}

/// A response body read straight from its worker connection.
struct Reading {
    /// `None` once given back to the idle store.
    up: Option<Upstream>,
    rbuf: BytesMut,
    left: BodyLeft,
    /// The worker's response allows another request on the connection.
    reusable: bool,
    /// The request counts on its worker until the body has ended.
    in_flight: InFlight,
}

impl Reading {
    /// The body has ended: the connection goes back to the idle store if the worker allows
    /// another request on it and sent nothing past the body.
    fn release(&mut self) {
        if let Some(up) = self.up.take()
            && self.reusable
            && self.rbuf.is_empty()
        {
            IdleConns::put_upstream(self.in_flight.worker(), up);
        }
    }

    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Piece> {
        let mut out = Vec::new();
        loop {
            if self.left.take(&mut self.rbuf, &mut out).is_err() {
                let broken = io::Error::other("malformed chunked body from the worker");
                return Poll::Ready(Piece::Failed(broken));
            }
            if !out.is_empty() {
                return Poll::Ready(Piece::Data(Bytes::from(out)));
            }
            if self.left.done() {
                self.release();
                return Poll::Ready(Piece::End);
            }
            let Some(up) = self.up.as_mut() else {
                return Poll::Ready(Piece::Failed(io::ErrorKind::NotConnected.into()));
            };
            reserved(&mut self.rbuf, READ);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut up.stream), cx, &mut self.rbuf);
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(self.left, BodyLeft::Close) => {
                    // Close-delimited: the end is the close, and the connection goes with it.
                    self.up = None;
                    return Poll::Ready(Piece::End);
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Piece::Failed(io::ErrorKind::UnexpectedEof.into()));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Piece::Failed(e)),
            }
        }
    }
}

/// Where a response body comes from.
enum From {
    /// The exchange task relays it (the request had a body to stream at the same time).
    Task(mpsc::Receiver<Piece>),
    /// Read here, from the connection (see `direct`).
    Connection(Box<Reading>),
}

/// A worker's response body on its way to an HTTP/2 client.
pub struct WorkerBody {
    from: From,
    /// The end (or an error) was delivered: nothing more comes.
    ended: bool,
}

impl Body for WorkerBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let piece = match &mut self.from {
            From::Task(pieces) => match pieces.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(piece) => piece,
            },
            From::Connection(reading) => match reading.poll_piece(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(piece) => Some(piece),
            },
        };
        Poll::Ready(match piece {
            Some(Piece::Data(data)) => {
                // The last data of a body read here ends it at once, so that it goes to
                // the client with the stream's end rather than an empty frame after it.
                if let From::Connection(reading) = &mut self.from
                    && reading.left.done()
                {
                    reading.release();
                    self.ended = true;
                }
                Some(Ok(Frame::data(data)))
            }
            Some(Piece::End) => {
                self.ended = true;
                None
            }
            Some(Piece::Failed(e)) => {
                self.ended = true;
                Some(Err(e))
            }
            // The task stopped without saying the body ended: never a short body.
            None => {
                self.ended = true;
                Some(Err(io::Error::from(io::ErrorKind::UnexpectedEof)))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}
