//! One client connection's HTTP/2 driver: the bytes read from the socket go through the
//! codec (`codec::server`), whose events become requests (handed out by `poll`) and news
//! for the streams' two handles, the request body (`RequestBody`) and the response side
//! (`Responder`); what the streams send goes out in the connection's writes.
//!
//! The codec and each stream's slot sit behind one lock (`shared`).
//!
//! Backpressure: the connection stops reading while `HIGH_WATER` bytes of frames wait to be
//! written, and a response stops sending while the codec's buffer is that full, so a client
//! that does not read holds the proxy to a bounded buffer (PING and SETTINGS floods
//! included, since their answers wait in the same buffer).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Uri, Version};

use super::body::RequestBody;
use super::respond::Responder;
use super::rewind::Rewind;
use super::shared::{HIGH_WATER, Shared, Slot, State};
use crate::codec::frame::Code;
use crate::codec::message::Head;
use crate::codec::server::{Config, ConnError, Event, Server};
use crate::codec_io::{poll_write_out, wake};

/// Bytes read from the socket at a time, at least.
const READ: usize = 16 * 1024;

/// What `Connection::poll` gives. Not boxed: a request is handed over once, by value, to
/// the stream's future that owns it.
#[allow(clippy::large_enum_variant)]
pub(super) enum Next {
    /// A new stream: its request, and the handle its response goes through.
    Request(Request<RequestBody>, Responder),
    /// The connection is over.
    Closed(Closed),
}

/// How a connection ended.
#[derive(Debug)]
pub(super) enum Closed {
    /// GOAWAY sent or received, and no stream left: close, once the client had its chance
    /// to read the GOAWAY (`Connection::linger`).
    Graceful,
    /// A connection error: its GOAWAY is written, the close follows as after `Graceful`.
    Failed(ConnError),
    /// The client closed its side, or the socket failed: nothing more can be said.
    Gone(Option<io::Error>),
}

pub(super) struct Connection {
    io: Rewind,
    shared: Arc<Shared>,
    read: BytesMut,
    /// Frames being written; the codec's buffer is swapped in when it is empty.
    writing: BytesMut,
    accepted: VecDeque<(Request<RequestBody>, Responder)>,
    /// GOAWAY sent or received: the connection closes once no stream is left.
    going_away: bool,
    failed: Option<ConnError>,
}

impl Connection {
    pub(super) fn new(io: Rewind, config: Config) -> Connection {
        Connection {
            io,
            shared: Arc::new(Shared::new(Server::new(config))),
            read: BytesMut::with_capacity(READ),
            writing: BytesMut::new(),
            accepted: VecDeque::new(),
            going_away: false,
            failed: None,
        }
    }

    /// Starts a graceful close: streams open so far are served, no new one is.
    pub(super) fn goaway(&mut self) {
        let mut state = self.shared.lock();
        state.server.goaway();
        state.going_away = true;
        self.going_away = true;
    }

    /// Reads, writes, and gives the next new stream, or the end. `streams_done`: no
    /// stream's future is left (a graceful close waits for them).
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, streams_done: bool) -> Poll<Next> {
        self.shared.register(cx.waker());
        loop {
            if let Some((request, respond)) = self.accepted.pop_front() {
                return Poll::Ready(Next::Request(request, respond));
            }
            if let Poll::Ready(Err(e)) = self.poll_write(cx) {
                return Poll::Ready(Next::Closed(Closed::Gone(Some(e))));
            }
            let flushed = self.writing.is_empty();
            if let Some(e) = self.failed {
                if flushed {
                    return Poll::Ready(Next::Closed(Closed::Failed(e)));
                }
                return Poll::Pending;
            }
            if self.going_away && flushed && streams_done && self.shared.lock().slots.is_empty() {
                return Poll::Ready(Next::Closed(Closed::Graceful));
            }
            // Backpressure: nothing more is read while the client does not read.
            if self.writing.len() >= HIGH_WATER {
                return Poll::Pending;
            }
            if self.read.capacity() - self.read.len() < READ / 4 {
                self.read.reserve(READ);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Next::Closed(Closed::Gone(None))),
                Poll::Ready(Ok(_)) => self.receive(),
                Poll::Ready(Err(e)) => return Poll::Ready(Next::Closed(Closed::Gone(Some(e)))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes what the codec has for the client, as far as the socket takes it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        poll_write_out(&mut self.io, cx, &mut self.writing, |writing| {
            let mut state = shared.lock();
            std::mem::swap(writing, state.server.out());
            if state.out_waiting {
                // The codec's buffer is empty again: responses waiting for it go on.
                state.out_waiting = false;
                for slot in state.slots.values_mut() {
                    wake(&mut slot.send_waker);
                }
            }
        })
    }

    /// Hands what was read to the codec and its events to the streams.
    fn receive(&mut self) {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        let received = state.server.recv(&mut self.read);
        while let Some(event) = state.server.event() {
            self.dispatch(&mut state, event);
        }
        if let Err(e) = received {
            self.failed = Some(e);
        }
    }

    fn dispatch(&mut self, state: &mut State, event: Event) {
        let State {
            server,
            slots,
            going_away,
            ..
        } = state;
        match event {
            Event::Request {
                stream,
                head,
                end_stream,
            } => match request_of(&head) {
                Some(parts) => {
                    let slot = Slot {
                        recv_done: end_stream,
                        handles: 2,
                        ..Slot::default()
                    };
                    slots.insert(stream, slot);
                    let body = RequestBody::new(self.shared.clone(), stream, end_stream);
                    let request = Request::from_parts(parts, body);
                    let respond = Responder::new(self.shared.clone(), stream);
                    self.accepted.push_back((request, respond));
                }
                // What the codec lets through and `http` cannot hold (a path with bytes
                // its URI refuses, say): malformed.
                None => server.reset(stream, Code::PROTOCOL_ERROR),
            },
            // RFC 6585: the request is refused whole, before any of it is forwarded.
            Event::TooLarge { stream, end_stream } => {
                server.send_head(stream, 431, [(&b"content-length"[..], &b"0"[..])], true);
                if !end_stream {
                    // Nobody reads its body: the client need not send it (RFC 9113 §8.1).
                    server.reset(stream, Code::NO_ERROR);
                }
            }
            Event::Data {
                stream,
                data,
                end_stream,
            } => {
                let Some(slot) = slots.get_mut(&stream) else {
                    server.release(stream, data.len() as u32);
                    return;
                };
                if slot.reader_gone {
                    server.release(stream, data.len() as u32);
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
                        // Trailers `http` cannot hold: the body is not whole.
                        None => slot.reset = Some(Code::PROTOCOL_ERROR),
                    }
                    wake(&mut slot.recv_waker);
                }
            }
            Event::Reset { stream, code, .. } => {
                if let Some(slot) = slots.get_mut(&stream) {
                    slot.reset = Some(code);
                    wake(&mut slot.recv_waker);
                    wake(&mut slot.send_waker);
                }
            }
            Event::Writable => {
                for slot in slots.values_mut() {
                    wake(&mut slot.send_waker);
                }
            }
            Event::Response { .. }
            | Event::Interim { .. }
            | Event::Unprocessed { .. }
            | Event::PingAck { .. } => unreachable!("a server's codec gives no client event"),
            // The client will open no new stream: the connection ends with the last one.
            Event::GoAway { .. } => {
                *going_away = true;
                self.going_away = true;
            }
        }
    }

    /// Closes the connection once the client had its chance to read the last frames: they
    /// are written, the write side is shut, and what the client still sends is read and
    /// dropped until it closes too. Closing with unread bytes would make the kernel answer
    /// with a reset, which may destroy the GOAWAY before the client reads it.
    pub(super) async fn linger(&mut self) {
        if std::future::poll_fn(|cx| self.poll_write(cx))
            .await
            .is_err()
        {
            return;
        }
        if tokio::io::AsyncWriteExt::shutdown(&mut self.io)
            .await
            .is_err()
        {
            return;
        }
        loop {
            self.read.clear();
            if self.read.capacity() < READ {
                self.read.reserve(READ);
            }
            let read = std::future::poll_fn(|cx| {
                tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
            });
            if !matches!(read.await, Ok(n) if n > 0) {
                return;
            }
        }
    }
}

impl Drop for Connection {
    /// Every stream still open learns that the connection is gone.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        for slot in state.slots.values_mut() {
            wake(&mut slot.recv_waker);
            wake(&mut slot.send_waker);
        }
    }
}

/// A request head as `http` holds it; `None` for what it cannot hold. Extended CONNECT
/// is refused: this side never offered it (RFC 8441 §3).
fn request_of(head: &Head) -> Option<hyper::http::request::Parts> {
    if head.protocol().is_some() {
        return None;
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::from_bytes(head.method()?).ok()?;
    parts.version = Version::HTTP_2;
    let mut uri = hyper::http::uri::Parts::default();
    // Both share the head's buffer rather than copy it.
    if let Some(authority) = head.authority() {
        uri.authority = Some(Authority::from_maybe_shared(head.share(authority)).ok()?);
        // `http` takes a scheme only beside an authority; a request with none names its
        // host in `Host`, which the policy reads instead.
        if let Some(scheme) = head.scheme() {
            uri.scheme = Some(Scheme::try_from(scheme).ok()?);
        }
    }
    if let Some(path) = head.path() {
        uri.path_and_query = Some(PathAndQuery::from_maybe_shared(head.share(path)).ok()?);
    }
    parts.uri = Uri::from_parts(uri).ok()?;
    // No room for more: the forwarding fields are not added to the map, but sent after it
    // (`headers::Forwarding`) or written into an HTTP/1.1 worker's head.
    parts.headers = head.header_map(0)?;
    Some(parts)
}
