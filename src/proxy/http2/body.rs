//! Bodies on a client's HTTP/2 stream, both ways, over the h2 crate's streams: the
//! request's (`RequestBody`, which hands back flow-control window as it is read) and the
//! response's (`send`, which writes as the client's window allows and stops when the client
//! resets the stream).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

/// A client's request body: DATA as it comes, then its trailers.
pub struct RequestBody {
    stream: RecvStream,
    /// Every DATA frame was read: trailers (if any) are next.
    data_done: bool,
}

impl RequestBody {
    pub fn new(stream: RecvStream) -> RequestBody {
        RequestBody {
            stream,
            data_done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = &mut *self;
        if !me.data_done {
            match ready!(me.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read, so the client may send as much again: the window is what bounds
                    // the bytes held for a stream whose worker reads slowly.
                    let _ = me.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM(NO_ERROR) after the response began (RFC 9113 §8.1): the
                // client needs no more of the body read, which ends it, not a failure.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => me.data_done = true,
            }
        }
        match ready!(me.stream.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Writes `body` to the client's stream and ends it (with the body's trailers, if any).
/// Returns when the body has gone, or as soon as the client resets the stream; a body that
/// fails resets it (INTERNAL_ERROR), so the client never takes a cut body for a whole one.
pub async fn send<B>(mut body: B, mut tx: SendStream<Bytes>)
where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        let frame = tokio::select! {
            biased;
            _ = std::future::poll_fn(|cx| tx.poll_reset(cx)) => return,
            frame = body.frame() => frame,
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(_)) => {
                tx.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            // Nothing more, and the last data did not carry the end: an empty DATA does.
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                    return;
                }
                continue;
            }
        };
        let end = body.is_end_stream();
        if data.is_empty() && !end {
            continue;
        }
        if !data.is_empty() {
            // A minimal claim on the connection's window, not the chunk's length: the
            // chunk is in hand, and h2 raises the claim to what it buffers. Claiming whole
            // chunks for every waiting stream starves the others (hyper#4003).
            tx.reserve_capacity(1);
            while tx.capacity() == 0 {
                let granted = std::future::poll_fn(|cx| {
                    if tx.poll_reset(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    tx.poll_capacity(cx)
                });
                match granted.await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        }
        if tx.send_data(data, end).is_err() || end {
            return;
        }
    }
}
