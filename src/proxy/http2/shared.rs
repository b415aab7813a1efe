//! What one client connection's driver (`conn`) and its streams' handles (`body`,
//! `respond`) share: the codec and each stream's slot, behind one lock. The streams run
//! inside the connection's task (see `serve`), so the lock is taken by one task at a time;
//! only a request body read by an upload task (`to_http1`) takes it from elsewhere, and
//! that task wakes the connection when what it did left frames to write.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::header::HeaderMap;

use crate::codec::frame::Code;
use crate::codec::server::{Server, StreamIds};

/// Frames waiting to be written beyond which the connection stops reading and responses
/// stop sending.
pub(super) const HIGH_WATER: usize = 256 * 1024;

/// What the connection and its streams share.
pub(super) struct Shared {
    state: Mutex<State>,
    /// The connection's task, woken by a stream handle outside it that left frames to write.
    conn: AtomicWaker,
}

impl Shared {
    pub(super) fn new(server: Server) -> Shared {
        Shared {
            state: Mutex::new(State {
                server,
                slots: HashMap::default(),
                closed: false,
                out_waiting: false,
                going_away: false,
            }),
            conn: AtomicWaker::new(),
        }
    }

    /// The connection's task, to be woken by `wake_connection`.
    pub(super) fn register(&self, waker: &Waker) {
        self.conn.register(waker);
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while locked leaves the codec mid-update: nothing more of the
        // connection can be trusted, and every user of it panics too, as the task did.
        self.state.lock().expect("HTTP/2 connection state poisoned")
    }

    /// A handle outside the connection's task wrote frames: the connection writes them.
    pub(super) fn wake_connection(&self) {
        self.conn.wake();
    }
}

pub(super) struct State {
    pub(super) server: Server,
    pub(super) slots: HashMap<u32, Slot, BuildHasherDefault<StreamIds>>,
    /// The connection ended: every stream is gone.
    pub(super) closed: bool,
    /// A response waits for the codec's buffer to drain below `HIGH_WATER`.
    pub(super) out_waiting: bool,
    /// The connection closes once the last slot goes (see `Connection::poll`).
    pub(super) going_away: bool,
}

/// One stream, as its handles see it.
#[derive(Default)]
pub(super) struct Slot {
    /// Body bytes received and not yet read.
    pub(super) data: VecDeque<Bytes>,
    pub(super) trailers: Option<HeaderMap>,
    /// The client ended its side: once `data` and `trailers` are read, the body is whole.
    pub(super) recv_done: bool,
    /// The stream ended before its request was read whole: the client reset it (its code),
    /// or the response was reset (the code sent, what the body's reader sees of it).
    pub(super) reset: Option<Code>,
    /// The response is over (whole or reset).
    pub(super) responded: bool,
    /// The body's reader is gone: what still arrives is released at once.
    pub(super) reader_gone: bool,
    pub(super) recv_waker: Option<Waker>,
    pub(super) send_waker: Option<Waker>,
    /// Handles alive (the body and the responder): the slot goes with the last.
    pub(super) handles: u8,
}

impl State {
    /// One of a stream's handles is gone. `true`: the connection should hear of it.
    #[must_use]
    pub(super) fn drop_handle(&mut self, stream: u32) -> bool {
        if let Some(slot) = self.slots.get_mut(&stream) {
            slot.handles -= 1;
            if slot.handles == 0 {
                self.slots.remove(&stream);
                // The last stream of a closing connection, gone perhaps in an upload
                // task: the connection closes now.
                if self.going_away && self.slots.is_empty() {
                    return true;
                }
            }
        }
        false
    }
}

/// A rest of a request body this short, declared by its content-length, is taken and
/// dropped rather than refused once the response is whole (see `State::refuse_rest`).
const DRAIN_LIMIT: u64 = 64 * 1024;

impl State {
    /// The response is whole and nobody reads the request body: the client need not send
    /// the rest, and RST_STREAM(NO_ERROR) tells it so (RFC 9113 §8.1). A short rest of a
    /// declared length is taken and dropped instead: the client sends it within its window
    /// anyway, and some clients (curl 7.88) take that reset for a failed request.
    pub(super) fn refuse_rest(&mut self, stream: u32) {
        if self
            .server
            .body_left(stream)
            .is_none_or(|n| n > DRAIN_LIMIT)
        {
            self.server.reset(stream, Code::NO_ERROR);
        }
    }
}
