//! The response side of one client stream: its head, its body as the windows allow, its
//! trailers, or a reset. Used from the connection's own task only (the stream's future),
//! whose next write takes what it sent.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::header::HeaderMap;

use super::shared::{HIGH_WATER, Shared, State};
use crate::codec::frame::Code;
use crate::codec_io::{park, wake};

/// The stream can take nothing more: the client reset it, or the connection went.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client's stream is gone")]
pub struct Gone;

pub struct Responder {
    shared: Arc<Shared>,
    stream: u32,
    /// The response ended (or was reset): nothing is owed to the client.
    finished: bool,
}

impl Responder {
    pub(super) fn new(shared: Arc<Shared>, stream: u32) -> Responder {
        Responder {
            shared,
            stream,
            finished: false,
        }
    }

    /// Resolves when the stream can take nothing more (see `Gone`).
    pub async fn gone(&mut self) {
        poll_fn(|cx| self.poll_gone(cx)).await
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        let closed = state.closed;
        match state.slots.get_mut(&self.stream) {
            Some(slot) if slot.reset.is_none() && !closed => {
                park(&mut slot.send_waker, cx);
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Sends the response head (`end`: the response has no body): `fields` as HTTP/2
    /// carries them (lowercase names, none connection-specific: see `carried`). `Err`: the
    /// stream is gone.
    pub fn send_head<'a>(
        &mut self,
        status: u16,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        end: bool,
    ) -> Result<(), Gone> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(Gone);
        }
        if !state.server.send_head(self.stream, status, fields, end) {
            return Err(Gone);
        }
        if end {
            self.finished = true;
            ended(self.stream, &mut state, None);
        }
        Ok(())
    }

    /// Sends `data` (`end`: the body ends with it) as the client's windows allow.
    pub async fn send(&mut self, mut data: Bytes, end: bool) -> Result<(), Gone> {
        poll_fn(|cx| self.poll_send(cx, &mut data, end)).await
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
        end: bool,
    ) -> Poll<Result<(), Gone>> {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let closed = state.closed;
        let Some(slot) = state.slots.get_mut(&self.stream) else {
            return Poll::Ready(Err(Gone));
        };
        if slot.reset.is_some() || closed {
            return Poll::Ready(Err(Gone));
        }
        if state.server.out().len() >= HIGH_WATER {
            // The client reads slower than this stream sends: wait for the writes.
            state.out_waiting = true;
            park(&mut slot.send_waker, cx);
            return Poll::Pending;
        }
        if !state.server.send_data(self.stream, data, end) {
            return Poll::Ready(Err(Gone));
        }
        if !data.is_empty() {
            // The windows are spent: a WINDOW_UPDATE (`Event::Writable`) wakes it.
            let slot = state.slots.get_mut(&self.stream).expect("looked up above");
            park(&mut slot.send_waker, cx);
            return Poll::Pending;
        }
        if end {
            self.finished = true;
            ended(self.stream, state, None);
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the response with trailers.
    pub fn send_trailers(&mut self, fields: &HeaderMap) -> Result<(), Gone> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(Gone);
        }
        if !state.server.send_trailers(self.stream, carried(fields)) {
            return Err(Gone);
        }
        self.finished = true;
        ended(self.stream, &mut state, None);
        Ok(())
    }

    /// Resets the stream: the response broke off, and the client must not take what it
    /// got for a whole one.
    pub fn reset(&mut self, code: Code) {
        let mut state = self.shared.lock();
        state.server.reset(self.stream, code);
        self.finished = true;
        ended(self.stream, &mut state, Some(code));
    }
}

/// The response is over: whole (`reset` is `None`), or reset with that code, which a
/// reader of the request body still coming sees as its cut. A whole response leaves the
/// body to its reader; without one, the client is told it need not send the rest (RFC
/// 9113 §8.1).
fn ended(stream: u32, state: &mut State, reset: Option<Code>) {
    let Some(slot) = state.slots.get_mut(&stream) else {
        return;
    };
    slot.responded = true;
    if slot.recv_done {
        return;
    }
    match reset {
        Some(code) if slot.reset.is_none() => {
            slot.reset = Some(code);
            wake(&mut slot.recv_waker);
        }
        Some(_) => {}
        None if slot.reader_gone => state.refuse_rest(stream),
        None => {}
    }
}

impl Drop for Responder {
    /// A response dropped before its end (the request's future was cancelled, or failed
    /// before answering) resets the stream, so the client does not wait for it.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if !self.finished && !state.closed {
            state.server.reset(self.stream, Code::CANCEL);
            self.finished = true;
            ended(self.stream, &mut state, Some(Code::CANCEL));
        }
        if state.drop_handle(self.stream) {
            drop(state);
            self.shared.wake_connection();
        }
    }
}

/// `fields` as HTTP/2 carries them: connection-specific ones left out.
pub fn carried(fields: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    fields
        .iter()
        .filter(|(name, value)| !connection_specific(name.as_str(), value.as_bytes()))
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
}

/// Fields HTTP/2 does not carry (RFC 9113 §8.2.2): a worker's HTTP/1.1 hop-by-hop fields
/// that got this far are dropped rather than make the response malformed.
fn connection_specific(name: &str, value: &[u8]) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    ) || (name == "te" && value != b"trailers")
}
