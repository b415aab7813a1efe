//! One HTTP/2 connection to a worker, driven by a task of its own over `codec::client`:
//! it reads the worker's frames into one buffer, hands them to the codec, and turns the
//! events into news for each stream's handles (`stream`); what the streams send (from
//! the tasks of the requests they belong to) is written in the driver's next turn. It
//! PINGs the worker every 20 s and closes the connection when a PING goes unanswered.
//!
//! The codec and the streams' slots sit behind one lock (`Shared`), taken by the driver
//! and by the requests' tasks for the few instructions each step needs; a handle that
//! left frames to write wakes the driver.
//!
//! The driver also keeps the one timer its streams' response timeouts need: a request
//! waiting for its response head says by when (`Slot::head_due_ms`), and the driver wakes
//! it then to check (`poll_due`). A tokio timer per request cost more than the rest of
//! the wait.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use hyper::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::codec::client::{Client, Config};
use crate::codec::conn::{ConnError, Event, StreamIds};
use crate::codec::frame::Code;
use crate::codec::message::Head;
use crate::codec_io::{poll_write_out, wake};
use crate::ring::state::now_ms;

/// Frames waiting to be written beyond which request bodies stop sending.
pub(super) const HIGH_WATER: usize = 1024 * 1024;

/// Bytes read from the worker at a time, at least: large bodies come in few reads.
const READ: usize = 64 * 1024;

/// What the driver and the streams share.
pub(super) struct Shared {
    state: Mutex<State>,
    /// The driver's task, woken by a stream that left frames to write.
    driver: AtomicWaker,
    /// The worker's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS),
    /// read without the lock when a request looks for a connection with room.
    pub(super) peer_max: AtomicU32,
    /// The earliest `Slot::head_due_ms` the driver's timer is to wake at (`NOT_DUE`:
    /// none). Changed under the lock (a stream that needs an earlier one lowers it and
    /// wakes the driver), read without it by the driver on each turn.
    pub(super) next_due_ms: AtomicU64,
}

impl Shared {
    pub(super) fn new(config: Config) -> Shared {
        Shared {
            state: Mutex::new(State {
                client: Client::new(config),
                slots: HashMap::default(),
                ended: None,
                out_waiting: false,
                dropped: false,
            }),
            driver: AtomicWaker::new(),
            peer_max: AtomicU32::new(u32::MAX),
            next_due_ms: AtomicU64::new(NOT_DUE),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while locked leaves the codec mid-update: nothing more of the
        // connection can be trusted, and every user of it panics too, as that task did.
        self.state
            .lock()
            .expect("HTTP/2 worker connection state poisoned")
    }

    /// A stream wrote frames: the driver writes them.
    pub(super) fn wake_driver(&self) {
        self.driver.wake();
    }
}

pub(super) struct State {
    pub(super) client: Client,
    pub(super) slots: HashMap<u32, Slot, BuildHasherDefault<StreamIds>>,
    /// The connection is over, and why: every stream still open fails with it.
    pub(super) ended: Option<Ended>,
    /// A request body waits for the codec's buffer to drain below `HIGH_WATER`.
    pub(super) out_waiting: bool,
    /// The pool let the connection go: it closes once its streams are done.
    pub(super) dropped: bool,
}

/// `Shared::next_due_ms` when no stream waits for a head with a due time.
pub(super) const NOT_DUE: u64 = u64::MAX;

/// Why a connection ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// The worker closed it, or the socket failed.
    Io(Arc<str>),
    /// A connection error, this side's or the worker's GOAWAY with one.
    Protocol(ConnError),
    /// Its PING went unanswered.
    Unanswered,
    /// Closed gracefully, all streams done.
    Closed,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Io(why) => write!(f, "the connection failed: {why}"),
            Ended::Protocol(e) => write!(f, "HTTP/2 error {}: {}", e.code.0, e.why),
            Ended::Unanswered => f.write_str("a PING went unanswered"),
            Ended::Closed => f.write_str("the connection closed"),
        }
    }
}

/// Why a failed stream never reached the worker's application, so the request may go to
/// another worker whatever it is (RFC 9113 §8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unprocessed {
    /// The worker refused this stream (`REFUSED_STREAM`); its connection takes others.
    Stream,
    /// The connection is going: a graceful GOAWAY left the stream above the last one the
    /// worker processes (or came before it was opened).
    Connection,
}

/// How a stream ended before it was done both ways.
#[derive(Debug, Clone)]
pub enum Cut {
    /// The worker did not process it: the request may go again.
    Unprocessed(Unprocessed),
    /// Reset: by the worker (`by_peer`) or by this side for the worker's error.
    Reset { code: Code, by_peer: bool },
    /// The connection ended.
    Connection(Ended),
}

/// One stream, as its handles see it.
#[derive(Default)]
pub(super) struct Slot {
    /// The final response head, until `ResponseFuture` takes it.
    pub(super) head: Option<Head>,
    pub(super) head_waker: Option<Waker>,
    /// When (`now_ms`) the head's waiter is to be woken if the head has not come, to
    /// check its response timeout.
    pub(super) head_due_ms: Option<u64>,
    pub(super) data: VecDeque<bytes::Bytes>,
    pub(super) trailers: Option<HeaderMap>,
    /// The worker ended its side: once `data` and `trailers` are read, the body is whole.
    pub(super) recv_done: bool,
    pub(super) recv_waker: Option<Waker>,
    pub(super) send_waker: Option<Waker>,
    pub(super) cut: Option<Cut>,
    /// The response body's reader is gone: what still arrives is released at once.
    pub(super) reader_gone: bool,
    /// Handles alive (response, body, request body): the slot goes with the last.
    pub(super) handles: u8,
}

impl State {
    /// One of a stream's handles is gone. `true`: the driver should hear of it.
    #[must_use]
    pub(super) fn drop_handle(&mut self, stream: u32) -> bool {
        if let Some(slot) = self.slots.get_mut(&stream) {
            slot.handles -= 1;
            if slot.handles == 0 {
                self.slots.remove(&stream);
                return self.slots.is_empty();
            }
        }
        false
    }
}

/// What a stream that can go no further fails with: its own cut, else the connection's end.
pub(super) fn cut_of(slot: &Slot, ended: &Option<Ended>) -> Option<Cut> {
    slot.cut
        .clone()
        .or_else(|| ended.clone().map(Cut::Connection))
}

/// Every this long a PING is sent; one not answered in `PING_TIMEOUT` closes the
/// connection.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Drives one connection until it ends; returns why.
pub(super) async fn drive<IO>(io: IO, shared: Arc<Shared>) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut driver = Driver {
        io,
        shared,
        read: BytesMut::with_capacity(READ),
        writing: BytesMut::new(),
        failed: None,
        pong: false,
        due: Box::pin(tokio::time::sleep(Duration::ZERO)),
        armed_ms: NOT_DUE,
    };
    let ended = loop {
        let turn = std::future::poll_fn(|cx| driver.poll(cx));
        tokio::select! {
            ended = turn => break ended,
            _ = tokio::time::sleep(PING_INTERVAL) => {
                // Is the worker still there?
                driver.pong = false;
                driver.shared.lock().client.ping(*b"lb-alive");
                driver.shared.wake_driver();
                let answered = std::future::poll_fn(|cx| driver.poll_ping(cx));
                match tokio::time::timeout(PING_TIMEOUT, answered).await {
                    Ok(Some(ended)) => break ended,
                    Ok(None) => {}
                    Err(_) => break Ended::Unanswered,
                }
            }
        }
    };
    driver.finish(&ended).await;
    ended
}

struct Driver<IO> {
    io: IO,
    shared: Arc<Shared>,
    read: BytesMut,
    /// Frames being written; the codec's buffer is swapped in when it is empty.
    writing: BytesMut,
    failed: Option<ConnError>,
    /// The answer to the PING out came.
    pong: bool,
    /// The streams' timer (see `poll_due`), polled only while armed.
    due: Pin<Box<Sleep>>,
    /// The `now_ms` `due` is set for (`NOT_DUE`: not armed).
    armed_ms: u64,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Driver<IO> {
    /// Reads, dispatches and writes until the connection ends.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        self.shared.driver.register(cx.waker());
        self.poll_due(cx);
        loop {
            if let Poll::Ready(Err(e)) = self.poll_write(cx) {
                return Poll::Ready(Ended::Io(e.to_string().into()));
            }
            let flushed = self.writing.is_empty();
            if let Some(e) = self.failed {
                return if flushed {
                    Poll::Ready(Ended::Protocol(e))
                } else {
                    Poll::Pending
                };
            }
            {
                let state = self.shared.lock();
                let done = state.client.open_streams() == 0 && state.slots.is_empty();
                if flushed && done && (state.dropped || state.client.is_closing()) {
                    return Poll::Ready(Ended::Closed);
                }
            }
            // Backpressure: nothing more is read while the worker does not read (its
            // PINGs and SETTINGS would otherwise pile up answers).
            if self.writing.len() >= HIGH_WATER {
                return Poll::Pending;
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(true)) => self.receive(),
                Poll::Ready(Ok(false)) => {
                    return Poll::Ready(Ended::Io("the worker closed the connection".into()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Ended::Io(e.to_string().into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Wakes the streams whose response head is due and has not come (each checks its own
    /// timeout: a request body still moving puts it off), and sets the timer for the next.
    /// Armed for the earliest due time when it was set: a stream whose head comes first
    /// leaves it as it is, so it fires about once per response timeout, not per request.
    fn poll_due(&mut self, cx: &mut Context<'_>) {
        loop {
            let next = self.shared.next_due_ms.load(Ordering::Relaxed);
            if next == NOT_DUE {
                self.armed_ms = NOT_DUE;
                return;
            }
            if next != self.armed_ms {
                // The coarse clock may lag the timer's: never set it in the past.
                let wait = next.saturating_sub(now_ms()).max(1);
                self.due
                    .as_mut()
                    .reset(Instant::now() + Duration::from_millis(wait));
                self.armed_ms = next;
            }
            if self.due.as_mut().poll(cx).is_pending() {
                return;
            }
            let now = now_ms();
            let mut state = self.shared.lock();
            let mut next = NOT_DUE;
            for slot in state.slots.values_mut() {
                match slot.head_due_ms {
                    Some(due) if due <= now => {
                        slot.head_due_ms = None;
                        wake(&mut slot.head_waker);
                    }
                    Some(due) => next = next.min(due),
                    None => {}
                }
            }
            self.shared.next_due_ms.store(next, Ordering::Relaxed);
            self.armed_ms = NOT_DUE;
        }
    }

    /// Drives the connection while a PING is out: `Some` if it ends meanwhile, `None`
    /// once the answer came.
    fn poll_ping(&mut self, cx: &mut Context<'_>) -> Poll<Option<Ended>> {
        match self.poll(cx) {
            Poll::Ready(ended) => Poll::Ready(Some(ended)),
            Poll::Pending if self.pong => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// `Ok(false)`: the worker closed its side.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.read.capacity() - self.read.len() < READ / 4 {
            self.read.reserve(READ);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(true)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what the codec has for the worker, as far as the socket takes it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        poll_write_out(&mut self.io, cx, &mut self.writing, |writing| {
            let mut state = shared.lock();
            std::mem::swap(writing, state.client.out());
            if state.out_waiting {
                // The codec's buffer is empty again: bodies waiting for it go on.
                state.out_waiting = false;
                for slot in state.slots.values_mut() {
                    wake(&mut slot.send_waker);
                }
            }
        })
    }

    /// Hands what was read to the codec and its events to the streams.
    fn receive(&mut self) {
        let mut state = self.shared.lock();
        let received = state.client.recv(&mut self.read);
        while let Some(event) = state.client.event() {
            self.pong |= dispatch(&mut state, event);
        }
        self.shared
            .peer_max
            .store(state.client.max_concurrent_streams(), Ordering::Relaxed);
        if let Err(e) = received {
            self.failed = Some(e);
        }
    }

    /// Ends the connection for the streams still open, writes what is left (a GOAWAY),
    /// and closes.
    async fn finish(&mut self, ended: &Ended) {
        {
            let mut state = self.shared.lock();
            state.ended = Some(ended.clone());
            if matches!(ended, Ended::Closed | Ended::Unanswered) {
                state.client.goaway();
            }
            for slot in state.slots.values_mut() {
                wake(&mut slot.head_waker);
                wake(&mut slot.recv_waker);
                wake(&mut slot.send_waker);
            }
        }
        if matches!(ended, Ended::Io(_)) {
            return;
        }
        let flushed = std::future::poll_fn(|cx| self.poll_write(cx));
        if tokio::time::timeout(Duration::from_secs(1), flushed)
            .await
            .is_ok()
        {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.io).await;
        }
    }
}

/// Tells a stream's handles what the codec said of it. `true`: a PING answer.
fn dispatch(state: &mut State, event: Event) -> bool {
    let State { client, slots, .. } = state;
    match event {
        Event::Response {
            stream,
            head,
            end_stream,
        } => {
            let Some(slot) = slots.get_mut(&stream) else {
                return false;
            };
            // The codec checked it as HTTP/2; it goes on to clients of either version, and
            // an HTTP/1.1 one could not be given a field `http` cannot hold.
            if head.fits_http() {
                slot.head = Some(head);
                slot.recv_done = end_stream;
            } else {
                // The worker's error.
                client.reset(stream, Code::PROTOCOL_ERROR);
                slot.cut = Some(Cut::Reset {
                    code: Code::PROTOCOL_ERROR,
                    by_peer: false,
                });
            }
            wake(&mut slot.head_waker);
            wake(&mut slot.recv_waker);
        }
        // Interim heads (103 Early Hints, say) are not forwarded.
        Event::Interim { .. } => {}
        Event::Data {
            stream,
            data,
            end_stream,
        } => {
            let Some(slot) = slots.get_mut(&stream) else {
                client.release(stream, data.len() as u32);
                return false;
            };
            if slot.reader_gone {
                client.release(stream, data.len() as u32);
            } else if !data.is_empty() {
                slot.data.push_back(data);
            }
            slot.recv_done |= end_stream;
            wake(&mut slot.recv_waker);
        }
        Event::Trailers { stream, head } => {
            if let Some(slot) = slots.get_mut(&stream) {
                match head.header_map(0) {
                    Some(trailers) => {
                        slot.trailers = Some(trailers);
                        slot.recv_done = true;
                    }
                    None => {
                        slot.cut = Some(Cut::Reset {
                            code: Code::PROTOCOL_ERROR,
                            by_peer: false,
                        })
                    }
                }
                wake(&mut slot.recv_waker);
            }
        }
        Event::Unprocessed { stream } => {
            // REFUSED_STREAM on a connection that goes on, or a GOAWAY's leftovers.
            let why = if client.is_closing() {
                Unprocessed::Connection
            } else {
                Unprocessed::Stream
            };
            if let Some(slot) = slots.get_mut(&stream) {
                slot.cut = Some(Cut::Unprocessed(why));
                wake_all(slot);
            }
        }
        Event::Reset {
            stream,
            code,
            by_peer,
        } => {
            if let Some(slot) = slots.get_mut(&stream) {
                slot.cut = Some(Cut::Reset { code, by_peer });
                wake_all(slot);
            }
        }
        Event::Writable => {
            for slot in slots.values_mut() {
                wake(&mut slot.send_waker);
            }
        }
        Event::GoAway { .. } => {}
        Event::PingAck { .. } => return true,
        Event::Request { .. } | Event::TooLarge { .. } => {
            unreachable!("a client's codec gives no server event")
        }
    }
    false
}

fn wake_all(slot: &mut Slot) {
    wake(&mut slot.head_waker);
    wake(&mut slot.recv_waker);
    wake(&mut slot.send_waker);
}
