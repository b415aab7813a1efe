//! Bodies on a client's HTTP/2 stream, both ways: the request's (`RequestBody`, which hands
//! back flow-control window as it is read) and the response's (`send`, which writes as the
//! client's window allows and stops when the client resets the stream).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::respond::Responder;
use super::shared::Shared;
use crate::codec::frame::Code;
use crate::codec_io::park;

/// Why a request body did not end whole.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum BodyError {
    #[error("the client reset the stream (error code {})", .0.0)]
    Reset(Code),
    #[error("the client connection closed")]
    Closed,
}

/// A client's request body: DATA as it comes, then its trailers.
pub struct RequestBody {
    shared: Arc<Shared>,
    stream: u32,
    /// Nothing more to read: the end (or the error) was given.
    ended: bool,
}

impl RequestBody {
    /// `ended`: the request came without a body (END_STREAM on its HEADERS).
    pub(super) fn new(shared: Arc<Shared>, stream: u32, ended: bool) -> RequestBody {
        RequestBody {
            shared,
            stream,
            ended,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let shared = self.shared.clone();
        let mut state = shared.lock();
        let state = &mut *state;
        let closed = state.closed;
        let Some(slot) = state.slots.get_mut(&self.stream) else {
            self.ended = true;
            return Poll::Ready(Some(Err(BodyError::Closed)));
        };
        if let Some(data) = slot.data.pop_front() {
            // Read, so the client may send as much again: the window is what bounds the
            // bytes held for a stream whose worker reads slowly.
            let before = state.server.out().len();
            state.server.release(self.stream, data.len() as u32);
            if state.server.out().len() > before {
                shared.wake_connection();
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        // Whole: a reset that came after the end changes nothing of what was received.
        if slot.recv_done {
            self.ended = true;
            return Poll::Ready(slot.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        match slot.reset {
            // RST_STREAM(NO_ERROR) after the response began (RFC 9113 §8.1): the client
            // needs no more of the body read, which ends it, not a failure.
            Some(Code::NO_ERROR) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Some(code) => {
                self.ended = true;
                Poll::Ready(Some(Err(BodyError::Reset(code))))
            }
            None if closed => {
                self.ended = true;
                Poll::Ready(Some(Err(BodyError::Closed)))
            }
            None => {
                park(&mut slot.recv_waker, cx);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.ended {
            return true;
        }
        let state = self.shared.lock();
        state
            .slots
            .get(&self.stream)
            .is_some_and(|slot| slot.data.is_empty() && slot.recv_done && slot.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for RequestBody {
    /// What the client sent and nobody will read goes back to its windows at once, as does
    /// what it still sends.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let mut wrote = false;
        if let Some(slot) = state.slots.get_mut(&self.stream) {
            slot.reader_gone = true;
            slot.trailers = None;
            let unread: usize = slot.data.drain(..).map(|d| d.len()).sum();
            let before = state.server.out().len();
            let refuse = slot.responded && !slot.recv_done && slot.reset.is_none();
            if unread > 0 {
                state.server.release(self.stream, unread as u32);
            }
            if refuse {
                state.refuse_rest(self.stream);
            }
            wrote = state.server.out().len() > before;
        }
        wrote |= state.drop_handle(self.stream);
        if wrote {
            self.shared.wake_connection();
        }
    }
}

/// Writes `body` to the client's stream and ends it (with the body's trailers, if any).
/// Returns when the body has gone, or as soon as the client resets the stream; a body that
/// fails resets it (INTERNAL_ERROR), so the client never takes a cut body for a whole one.
pub async fn send<B>(mut body: B, respond: &mut Responder)
where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        let frame = tokio::select! {
            biased;
            _ = respond.gone() => return,
            frame = body.frame() => frame,
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(_)) => {
                respond.reset(Code::INTERNAL_ERROR);
                return;
            }
            // Nothing more, and the last data did not carry the end: an empty DATA does.
            None => {
                let _ = respond.send(Bytes::new(), true).await;
                return;
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = respond.send_trailers(&trailers);
                    return;
                }
                continue;
            }
        };
        let end = body.is_end_stream();
        if data.is_empty() && !end {
            continue;
        }
        if respond.send(data, end).await.is_err() || end {
            return;
        }
    }
}
