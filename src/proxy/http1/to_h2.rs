//! An HTTP/1.x request to a `protocol = "h2"` pool: the pieces the session puts together
//! to send it as a stream to an h2 worker (`proxy::to_h2` does the sending, so both client
//! versions share one path to h2 workers).
//!
//! The head is the one the HTTP/1 path already checked and rewrote for a worker (hop-by-hop
//! fields gone, forwarding fields added), read back into HTTP/2's parts; the body is read
//! from the client, de-chunked, and handed over as frames through a small channel (which is
//! the backpressure); the response goes back as HTTP/1.1: its length when it has one,
//! chunked otherwise (with the worker's trailers as the chunked trailer section), or
//! delimited by the close for an HTTP/1.0 client.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::body::{BodyLeft, reserved};
use super::chunked::ChunkError;
use super::head::{Framing, put, put_length};
use crate::proxy::forward::checks::MAX_FIELDS;
use crate::proxy::forward::headers::{Field, classify};

/// Bytes read from the client at a time while its body streams.
const READ: usize = 16 * 1024;

/// The parts of the h2 request for `worker_head`, the worker-bound HTTP/1.1 head the
/// HTTP/1 path wrote (origin-form target, `Host` first). `tls`: the scheme of the worker
/// connection. `None` when it has no usable host.
pub fn parts_of(worker_head: &[u8], tls: bool) -> Option<Parts> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    parsed.parse(worker_head).ok()?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut host = None;
    for field in parsed.headers.iter() {
        // The authority goes in the URI; connection-specific fields are not HTTP/2's
        // (RFC 9113 §8.2.2: the body's end is the stream's, an upgrade is not offered to a
        // worker), except `te: trailers`.
        match classify(field.name.as_bytes()) {
            Field::Host => {
                host = Some(field.value);
                continue;
            }
            Field::HopByHop
                if field.name.eq_ignore_ascii_case("te")
                    && field.value.eq_ignore_ascii_case(b"trailers") => {}
            Field::TransferEncoding | Field::Connection | Field::Upgrade | Field::HopByHop => {
                continue;
            }
            _ => {}
        }
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_bytes(field.value).ok()?);
    }
    let uri = Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(host?)
        .path_and_query(parsed.path?)
        .build()
        .ok()?;
    let mut request = Request::new(());
    *request.method_mut() = hyper::Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Some(request.into_parts().0)
}

/// A client's HTTP/1 body as the h2 request's: frames the session reads and sends.
pub struct ChannelBody {
    frames: mpsc::Receiver<Result<Bytes, io::Error>>,
    ended: bool,
}

/// The session's end of a `ChannelBody`.
pub type BodySender = mpsc::Sender<Result<Bytes, io::Error>>;

impl ChannelBody {
    /// A body for `framing`: ended from the start when there is none.
    pub fn new(framing: Framing) -> (BodySender, ChannelBody) {
        let (tx, frames) = mpsc::channel(2);
        let ended = framing == Framing::Empty;
        (tx, ChannelBody { frames, ended })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Why the client's body stopped.
#[derive(Debug)]
pub enum Pumped {
    /// Whole: the connection's next bytes are the next request.
    Done,
    /// The stream to the worker went (answered early, or failed): the rest of the body
    /// was not read, so the connection cannot be reused.
    Abandoned,
    ClientGone,
    Client(io::Error),
    Malformed(ChunkError),
}

/// Reads the client's body (`left` of it; the bytes already in `inbuf` first) into `tx`,
/// de-chunked.
pub async fn pump<R: AsyncRead + Unpin>(
    rd: &mut R,
    inbuf: &mut BytesMut,
    left: &mut BodyLeft,
    tx: BodySender,
) -> Pumped {
    let mut out = Vec::new();
    loop {
        if let Err(e) = left.take(inbuf, &mut out) {
            let _ = tx
                .send(Err(io::Error::other("malformed chunked body")))
                .await;
            return Pumped::Malformed(e);
        }
        if !out.is_empty() {
            let data = Bytes::from(std::mem::take(&mut out));
            if tx.send(Ok(data)).await.is_err() {
                return Pumped::Abandoned;
            }
        }
        if left.done() {
            return Pumped::Done;
        }
        let read = tokio::select! {
            r = rd.read_buf(reserved(inbuf, READ)) => r,
            _ = tx.closed() => return Pumped::Abandoned,
        };
        match read {
            Ok(0) => {
                let _ = tx.send(Err(io::ErrorKind::UnexpectedEof.into())).await;
                return Pumped::ClientGone;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx
                    .send(Err(io::Error::new(e.kind(), "client body broke")))
                    .await;
                return Pumped::Client(e);
            }
        }
    }
}

/// How the response is framed for the HTTP/1 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length,
    Chunked,
    /// Until the close: an HTTP/1.0 client, and no length.
    Close,
}

/// What writing the response did.
pub struct Written {
    /// The response ended as its framing said: the connection may carry another.
    pub clean: bool,
    /// Its framing ends only with the close.
    pub close_delimited: bool,
    pub body_bytes: u64,
}

/// Writes `response` to the client as HTTP/1.1. `head_request`: no body whatever its
/// fields say; `http10`: no chunked coding; `close`: says `Connection: close`.
/// `Err`: the client went away.
pub async fn write_response<W, B>(
    wr: &mut W,
    response: Response<B>,
    out: &mut Vec<u8>,
    head_request: bool,
    http10: bool,
    close: bool,
) -> io::Result<Written>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<u64>().ok());
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            put(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let bodiless = head_request || status == 204 || status == 304 || status < 200;
    let framing = match (bodiless, length) {
        (true, _) => Out::None,
        (false, Some(_)) => Out::Length,
        (false, None) if http10 => Out::Close,
        (false, None) => Out::Chunked,
    };
    match (framing, length) {
        // A HEAD or 304 answer keeps the length the full response would have.
        (Out::None | Out::Length, Some(n)) if status != 204 => put_length(out, n),
        (Out::Chunked, _) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    if close || framing == Out::Close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut written = Written {
        clean: false,
        close_delimited: framing == Out::Close,
        body_bytes: 0,
    };
    if framing == Out::None {
        wr.write_all(out).await?;
        written.clean = true;
        return Ok(written);
    }
    loop {
        let frame = match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => frame,
            // The worker's body broke off: the client connection closes without the
            // framing's end, so the client sees it cut, never complete.
            Some(Err(_)) => {
                wr.write_all(out).await?;
                return Ok(written);
            }
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                written.body_bytes += data.len() as u64;
                if framing == Out::Chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(&data);
                }
                wr.write_all(out).await?;
                out.clear();
            }
            Err(frame) => {
                if let (Ok(trailers), Out::Chunked) = (frame.into_trailers(), framing) {
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in &trailers {
                        put(out, name.as_str().as_bytes(), value.as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    wr.write_all(out).await?;
                    out.clear();
                    written.clean = true;
                    return Ok(written);
                }
            }
        }
    }
    if framing == Out::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    wr.write_all(out).await?;
    out.clear();
    written.clean = true;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[test]
    fn the_worker_head_becomes_h2_parts() {
        let head = b"POST /a/b?c=1 HTTP/1.1\r\nHost: api.example:8080\r\n\
            Transfer-Encoding: chunked\r\nX-Forwarded-For: 10.0.0.1\r\nCookie: a=1\r\n\
            Connection: upgrade\r\nUpgrade: websocket\r\nKeep-Alive: 5\r\nTE: gzip\r\n\r\n";
        let parts = parts_of(head, false).unwrap();
        assert_eq!(parts.method, hyper::Method::POST);
        assert_eq!(parts.uri, "http://api.example:8080/a/b?c=1");
        assert_eq!(parts.headers.len(), 2, "{:?}", parts.headers);
        let head = b"POST / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n";
        assert_eq!(parts_of(head, false).unwrap().headers["te"], "trailers");
        assert_eq!(parts.headers["x-forwarded-for"], "10.0.0.1");
        assert_eq!(
            parts_of(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true)
                .unwrap()
                .uri,
            "https://h/"
        );
        assert!(
            parts_of(b"GET / HTTP/1.1\r\nX: y\r\n\r\n", false).is_none(),
            "no host"
        );
    }

    async fn written(response: Response<impl Body<Data = Bytes> + Unpin>, http10: bool) -> String {
        let mut wire = Vec::new();
        let mut out = Vec::new();
        let w = write_response(&mut wire, response, &mut out, false, http10, false)
            .await
            .unwrap();
        assert!(w.clean);
        String::from_utf8(wire).unwrap()
    }

    #[tokio::test]
    async fn lengths_chunks_trailers_and_http10() {
        let mut r = Response::new(Full::new(Bytes::from_static(b"hello")));
        r.headers_mut()
            .insert("content-length", "5".parse().unwrap());
        r.headers_mut().insert("x-a", "1".parse().unwrap());
        assert_eq!(
            written(r, false).await,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\nContent-Length: 5\r\n\r\nhello"
        );

        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cdefghijklmnopqrstuvwxyz"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let r = Response::new(body);
        assert_eq!(
            written(r, false).await,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             2\r\nab\r\n18\r\ncdefghijklmnopqrstuvwxyz\r\n0\r\ngrpc-status: 0\r\n\r\n"
        );

        let r = Response::new(Full::new(Bytes::from_static(b"old")));
        assert_eq!(
            written(r, true).await,
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nold"
        );
        let mut r = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}));
        *r.status_mut() = hyper::StatusCode::NO_CONTENT;
        assert_eq!(written(r, false).await, "HTTP/1.1 204 No Content\r\n\r\n");
    }
}
