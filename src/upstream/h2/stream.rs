//! One stream on a worker connection, as the request's task holds it: the request head
//! sent (`open`), its body and trailers (`SendStream`), the response head
//! (`ResponseFuture`) and body (`RecvStream`). Each step takes the connection's lock for a
//! few instructions and wakes its driver when it left frames to write. A handle dropped
//! before its direction ended resets the stream (CANCEL), so the worker stops working for
//! nobody.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::http::request::Parts;

use super::conn::{Cut, HIGH_WATER, Shared, Slot, State, Unprocessed, cut_of};
use crate::codec::client::Target;
use crate::codec::frame::Code;
use crate::codec::message::Head;
use crate::codec_io::park;

/// Sends a request head on a new stream of `shared`'s connection: `parts`, then the
/// fields in `added` (`end`: no body follows). The response to wait for, and the body's
/// handle when one follows.
pub(super) fn open(
    shared: &Arc<Shared>,
    parts: &Parts,
    added: &[(&[u8], &[u8])],
    end: bool,
) -> Result<(ResponseFuture, Option<SendStream>), Cut> {
    let mut state = shared.lock();
    if let Some(ended) = &state.ended {
        return Err(Cut::Connection(ended.clone()));
    }
    let uri = &parts.uri;
    let target = Target {
        method: parts.method.as_str().as_bytes(),
        scheme: uri.scheme_str().unwrap_or("http").as_bytes(),
        authority: uri.authority().map_or(&b""[..], |a| a.as_str().as_bytes()),
        path: uri
            .path_and_query()
            .map_or(&b"/"[..], |p| p.as_str().as_bytes()),
    };
    let fields = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .chain(added.iter().copied());
    let Some(stream) = state.client.send_request(target, fields, end) else {
        // Between the pick and now, the connection filled up or began to close: the
        // request never left, and may go elsewhere.
        let why = if state.client.is_closing() {
            Unprocessed::Connection
        } else {
            Unprocessed::Stream
        };
        return Err(Cut::Unprocessed(why));
    };
    state.slots.insert(
        stream,
        Slot {
            handles: if end { 1 } else { 2 },
            ..Slot::default()
        },
    );
    drop(state);
    shared.wake_driver();
    let response = ResponseFuture {
        body: Some(RecvStream {
            shared: shared.clone(),
            stream,
            ended: false,
        }),
        due_ms: None,
    };
    let send = (!end).then(|| SendStream {
        shared: shared.clone(),
        stream,
        finished: false,
    });
    Ok((response, send))
}

/// The response head to come; resolves to it (its status and fields as the worker sent
/// them, fit for `http`) and its body's handle.
pub struct ResponseFuture {
    body: Option<RecvStream>,
    /// When (`now_ms`) the connection's driver is to wake this future if the head has
    /// not come (`wake_at`).
    due_ms: Option<u64>,
}

impl ResponseFuture {
    /// Has the connection's driver wake this future at `due_ms` (a `now_ms` time) if no
    /// head came by then, so that its owner, polling it, can check a timeout: one timer
    /// per connection serves every stream's.
    pub fn wake_at(&mut self, due_ms: u64) {
        self.due_ms = Some(due_ms);
    }
}

impl Future for ResponseFuture {
    type Output = Result<(Head, RecvStream), Cut>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (head, done) = {
            let due_ms = self.due_ms;
            let body = self.body.as_ref().expect("polled after it resolved");
            let mut guard = body.shared.lock();
            let State { slots, ended, .. } = &mut *guard;
            let slot = slots.get_mut(&body.stream).expect("held by this handle");
            match slot.head.take() {
                Some(head) => {
                    slot.head_due_ms = None;
                    let done = slot.recv_done && slot.data.is_empty() && slot.trailers.is_none();
                    (head, done)
                }
                None => {
                    if let Some(cut) = cut_of(slot, ended) {
                        return Poll::Ready(Err(cut));
                    }
                    park(&mut slot.head_waker, cx);
                    slot.head_due_ms = due_ms;
                    let next_due_ms = &body.shared.next_due_ms;
                    if let Some(due) = due_ms
                        && due < next_due_ms.load(Ordering::Relaxed)
                    {
                        // Sooner than the driver's timer is set for.
                        next_due_ms.store(due, Ordering::Relaxed);
                        drop(guard);
                        body.shared.wake_driver();
                    }
                    return Poll::Pending;
                }
            }
        };
        let mut body = self.body.take().expect("checked above");
        body.ended = done;
        Poll::Ready(Ok((head, body)))
    }
}

/// A worker's response body: DATA as it comes, then its trailers.
pub struct RecvStream {
    shared: Arc<Shared>,
    stream: u32,
    /// Everything was read (or the stream failed, and said so).
    ended: bool,
}

impl RecvStream {
    /// The next piece of the body; `None` once the data is over (trailers may follow).
    /// Each piece's bytes go back to the worker's windows as it is handed out.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Cut>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let mut guard = self.shared.lock();
        let State {
            client,
            slots,
            ended,
            ..
        } = &mut *guard;
        let slot = slots.get_mut(&self.stream).expect("held by this handle");
        if let Some(data) = slot.data.pop_front() {
            let before = client.out().len();
            client.release(self.stream, data.len() as u32);
            if client.out().len() > before {
                self.shared.wake_driver();
            }
            // The last piece of a body without trailers: what follows (`is_end_stream`,
            // the end) is known without the lock.
            self.ended = slot.recv_done && slot.data.is_empty() && slot.trailers.is_none();
            return Poll::Ready(Some(Ok(data)));
        }
        if slot.recv_done {
            return Poll::Ready(None);
        }
        if let Some(cut) = cut_of(slot, ended) {
            self.ended = true;
            return Poll::Ready(Some(Err(cut)));
        }
        park(&mut slot.recv_waker, cx);
        Poll::Pending
    }

    /// The trailers, once the data is over (`None`: the body ended without).
    pub fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, Cut>> {
        if self.ended {
            return Poll::Ready(Ok(None));
        }
        let mut guard = self.shared.lock();
        let State { slots, ended, .. } = &mut *guard;
        let slot = slots.get_mut(&self.stream).expect("held by this handle");
        if slot.recv_done && slot.data.is_empty() {
            self.ended = true;
            return Poll::Ready(Ok(slot.trailers.take()));
        }
        if let Some(cut) = cut_of(slot, ended) {
            self.ended = true;
            return Poll::Ready(Err(cut));
        }
        park(&mut slot.recv_waker, cx);
        Poll::Pending
    }

    pub fn is_end_stream(&self) -> bool {
        if self.ended {
            return true;
        }
        let state = self.shared.lock();
        state
            .slots
            .get(&self.stream)
            .is_some_and(|slot| slot.recv_done && slot.data.is_empty() && slot.trailers.is_none())
    }
}

impl Drop for RecvStream {
    /// A response abandoned before its end resets the stream (the client went, the call's
    /// deadline passed); what was received and not read goes back to the connection.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let before = state.client.out().len();
        if let Some(slot) = state.slots.get_mut(&self.stream) {
            slot.reader_gone = true;
            let unread: usize = slot.data.drain(..).map(|d| d.len()).sum();
            let whole = slot.recv_done;
            state.client.release(self.stream, unread as u32);
            if !whole {
                state.client.reset(self.stream, Code::CANCEL);
            }
        }
        let last = state.drop_handle(self.stream);
        if last || state.client.out().len() > before {
            self.shared.wake_driver();
        }
    }
}

/// A request body's way to the worker, as its windows allow.
pub struct SendStream {
    shared: Arc<Shared>,
    stream: u32,
    /// The body ended (or was reset): nothing is owed to the worker.
    finished: bool,
}

/// The stream can take nothing more: the worker reset it, or the connection went.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the worker's stream is gone")]
pub struct Gone;

impl SendStream {
    /// Resolves when the stream can take nothing more (the worker reset it, or the
    /// connection ended).
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let ended = state.ended.is_some();
        match state.slots.get_mut(&self.stream) {
            Some(slot) if slot.cut.is_none() && !ended => {
                park(&mut slot.send_waker, cx);
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Sends `data` (`end`: the body ends with it) as the worker's windows allow.
    pub async fn send(&mut self, mut data: Bytes, end: bool) -> Result<(), Gone> {
        std::future::poll_fn(|cx| self.poll_send(cx, &mut data, end)).await
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
        end: bool,
    ) -> Poll<Result<(), Gone>> {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let ended = state.ended.is_some();
        let Some(slot) = state.slots.get_mut(&self.stream) else {
            return Poll::Ready(Err(Gone));
        };
        if slot.cut.is_some() || ended {
            return Poll::Ready(Err(Gone));
        }
        if state.client.out().len() >= HIGH_WATER {
            // The worker reads slower than this body comes: wait for the writes.
            state.out_waiting = true;
            park(&mut slot.send_waker, cx);
            self.shared.wake_driver();
            return Poll::Pending;
        }
        let before = state.client.out().len();
        let open = state.client.send_data(self.stream, data, end);
        if state.client.out().len() > before {
            self.shared.wake_driver();
        }
        if !open {
            return Poll::Ready(Err(Gone));
        }
        if !data.is_empty() {
            // The windows are spent: a WINDOW_UPDATE (`Event::Writable`) wakes it.
            let slot = state.slots.get_mut(&self.stream).expect("looked up above");
            park(&mut slot.send_waker, cx);
            return Poll::Pending;
        }
        self.finished |= end;
        Poll::Ready(Ok(()))
    }

    /// Ends the body with trailers.
    pub fn send_trailers(&mut self, fields: &HeaderMap) -> Result<(), Gone> {
        let mut state = self.shared.lock();
        if state.ended.is_some() {
            return Err(Gone);
        }
        let fields = fields
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        let sent = state.client.send_trailers(self.stream, fields);
        drop(state);
        self.shared.wake_driver();
        self.finished = true;
        if sent { Ok(()) } else { Err(Gone) }
    }

    /// Resets the stream: the body broke off, and the worker must not take what it got
    /// for a whole one.
    pub fn send_reset(&mut self, code: Code) {
        self.shared.lock().client.reset(self.stream, code);
        self.shared.wake_driver();
        self.finished = true;
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let before = state.client.out().len();
        if !self.finished && state.ended.is_none() {
            state.client.reset(self.stream, Code::CANCEL);
        }
        let last = state.drop_handle(self.stream);
        if last || state.client.out().len() > before {
            drop(state);
            self.shared.wake_driver();
        }
    }
}
