//! What both sides of an HTTP/2 connection do alike, without I/O (RFC 9113 §5–6): the
//! stream table, flow control both ways, body data and trailers received, resets, SETTINGS,
//! WINDOW_UPDATE and PING, and what is written back. `server` and `client` each own one
//! `Core` and add their role: who opens streams, what a HEADERS frame means, which limits
//! the peer is held to.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::{Buf, Bytes, BytesMut};

use super::block::Assembler;
use super::frame::{self, Code, Frame, FrameError, HEAD_LEN, Head, Settings};
use super::hpack::{self, Decoder};
use super::message;
use super::window::{Receive, Window};

/// What the peer did, in order. `Request` and `TooLarge` come to a server only; `Response`,
/// `Interim`, `Unprocessed` and `PingAck` to a client only.
#[derive(Debug)]
pub enum Event {
    /// A new stream: a request head. `end_stream`: it has no body.
    Request {
        stream: u32,
        head: message::Head,
        end_stream: bool,
    },
    /// A request whose fields are over `max_header_list_size`: answer it 431 (RFC 6585),
    /// or reset it.
    TooLarge {
        stream: u32,
        end_stream: bool,
    },
    /// A stream's final response head. `end_stream`: it has no body.
    Response {
        stream: u32,
        head: message::Head,
        end_stream: bool,
    },
    /// An interim (1xx) response head; the final one follows.
    Interim {
        stream: u32,
        head: message::Head,
    },
    /// The server did not process the stream (REFUSED_STREAM, or above the last stream of
    /// its GOAWAY, RFC 9113 §8.7): the request may go again, whatever its method.
    Unprocessed {
        stream: u32,
    },
    /// Body bytes; hand them back with `release` once they are consumed, which is what
    /// lets the peer send more.
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
    },
    Trailers {
        stream: u32,
        head: message::Head,
    },
    /// The stream ended before it was done both ways: the peer reset it (`by_peer`), or
    /// what it sent broke a rule and this side reset it.
    Reset {
        stream: u32,
        code: Code,
        by_peer: bool,
    },
    /// Send windows grew: streams waiting for one may `send_data` again.
    Writable,
    /// The peer's GOAWAY.
    GoAway {
        code: Code,
    },
    /// The answer to this side's PING (`Client::ping`).
    PingAck {
        payload: [u8; 8],
    },
}

/// Why the connection ended; its GOAWAY is in `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct ConnError {
    pub code: Code,
    pub why: &'static str,
}

impl From<FrameError> for ConnError {
    fn from(e: FrameError) -> ConnError {
        ConnError {
            code: e.code,
            why: e.why,
        }
    }
}

pub(super) fn fail<T>(code: Code, why: &'static str) -> Result<T, ConnError> {
    Err(ConnError { code, why })
}

pub(super) const UNDECODABLE: &str = "a field block that cannot be decoded";

/// One open stream, as this side sees it.
#[derive(Debug)]
pub(super) struct Stream {
    /// The peer ended its side (END_STREAM received).
    pub(super) remote_done: bool,
    /// The head that opens this side's half went out: a server's response, a client's
    /// request (always, once open).
    pub(super) head_sent: bool,
    /// The peer's head came: a client's request, a server's final response.
    pub(super) head_received: bool,
    /// This side ended its side.
    pub(super) local_done: bool,
    pub(super) send: Window,
    pub(super) recv: Receive,
    /// The body's content-length, when it must hold to it, and the bytes received so far.
    pub(super) length: Option<u64>,
    pub(super) received: u64,
    /// Body bytes handed to the caller and not yet released.
    pub(super) held: u32,
    /// A client's HEAD request: its response has no body, whatever its content-length.
    pub(super) no_body: bool,
}

/// Hashes stream identifiers for the stream table in a few instructions, where SipHash
/// cost hundreds a request. Identifiers rise, at most `max_concurrent_streams` open at
/// once, so ids that differ only in their high bits must not share buckets: the product's
/// high half, which every bit of the id reaches, is folded into the low bits the table
/// indexes with.
#[derive(Default)]
pub struct StreamIds(u64);

impl StreamIds {
    fn mix(x: u64) -> u64 {
        let p = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        p ^ (p >> 32)
    }
}

impl Hasher for StreamIds {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = StreamIds::mix(self.0 << 8 | b as u64);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = StreamIds::mix(id as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How many reset streams `was_reset` remembers.
const RESETS_REMEMBERED: usize = 128;

/// The windows and limits this side announces (its SETTINGS).
#[derive(Debug, Clone, Copy)]
pub(super) struct Local {
    pub(super) stream_window: u32,
    pub(super) connection_window: u32,
    pub(super) max_frame_size: u32,
    pub(super) max_header_list_size: u32,
}

/// Where a connection is in its life, as frames are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// A server waits for the client's preface (§3.4).
    Preface,
    /// The peer's first frame must be SETTINGS.
    FirstSettings,
    Open,
    /// A connection error was sent: nothing more is read.
    Failed,
}

/// What each side adds to the frames both read alike (`recv`).
pub(super) trait Role {
    /// Why a first frame other than SETTINGS is refused, the peer named.
    const NOT_SETTINGS_FIRST: &'static str;
    fn core(&mut self) -> &mut Core;
    /// The last stream this side processed, for the GOAWAY of a connection error.
    fn last_processed(&self) -> u32;
    /// A stream the peer could not have opened yet (§5.1, idle): most frames on one are
    /// the connection's error.
    fn is_idle(&self, stream: u32) -> bool;
    /// A whole field block on `stream`.
    fn headers(&mut self, stream: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError>;
    /// RST_STREAM, SETTINGS, PING or GOAWAY, which each side reads its own way; `recv`
    /// hands over no other frame.
    fn control(&mut self, frame: Frame<'_>) -> Result<(), ConnError>;
}

/// Takes every whole frame from `buf` (what was read from the peer). An error ends the
/// connection: its GOAWAY is in `out`, to be written before closing.
pub(super) fn recv<R: Role>(role: &mut R, buf: &mut BytesMut) -> Result<(), ConnError> {
    match read(role, buf) {
        Err(e) => {
            let last = role.last_processed();
            let core = role.core();
            if core.phase != Phase::Failed {
                core.phase = Phase::Failed;
                frame::goaway(last, e.code, e.why.as_bytes(), &mut core.out);
            }
            Err(e)
        }
        ok => ok,
    }
}

fn read<R: Role>(role: &mut R, buf: &mut BytesMut) -> Result<(), ConnError> {
    let core = role.core();
    if core.phase == Phase::Failed {
        return fail(Code::PROTOCOL_ERROR, "the connection has failed");
    }
    if core.phase == Phase::Preface {
        let preface = frame::PREFACE;
        let n = buf.len().min(preface.len());
        if buf[..n] != preface[..n] {
            return fail(Code::PROTOCOL_ERROR, "not the HTTP/2 preface");
        }
        if n < preface.len() {
            return Ok(());
        }
        buf.advance(preface.len());
        core.phase = Phase::FirstSettings;
    }
    while let Some((head, bytes)) = role.core().next_frame(buf)? {
        frame(role, head, bytes)?;
    }
    Ok(())
}

fn frame<R: Role>(role: &mut R, head: Head, bytes: Bytes) -> Result<(), ConnError> {
    let payload = &bytes[HEAD_LEN..];
    let parsed = match frame::parse(head, payload) {
        Ok(f) => f,
        Err(e) => return role.core().stream_or_connection_error(e),
    };
    let core = role.core();
    if core.phase == Phase::FirstSettings {
        if !matches!(parsed, Frame::Settings(_)) {
            return fail(Code::PROTOCOL_ERROR, R::NOT_SETTINGS_FIRST);
        }
        core.phase = Phase::Open;
    }
    if core.assembler.expecting().is_some() && !matches!(parsed, Frame::Continuation { .. }) {
        return fail(Code::PROTOCOL_ERROR, "a frame inside a field block");
    }
    match parsed {
        Frame::Data {
            stream,
            end_stream,
            data,
            flow_len,
        } => {
            let data = bytes.slice_ref(data);
            let idle = role.is_idle(stream);
            role.core().data(stream, data, flow_len, end_stream, idle)
        }
        Frame::Headers {
            stream,
            end_stream,
            end_headers,
            fragment,
            ..
        } => match core
            .assembler
            .headers(stream, end_stream, end_headers, fragment)?
        {
            Some(block) => role.headers(stream, end_stream, block.bytes),
            None => Ok(()),
        },
        Frame::Continuation {
            stream,
            end_headers,
            fragment,
        } => {
            let Some(block) = core.assembler.continuation(stream, end_headers, fragment)? else {
                return Ok(());
            };
            // Copied out of the assembler, which `headers` may not borrow: the rare case.
            let (end_stream, bytes) = (block.end_stream, block.bytes.to_vec());
            role.headers(stream, end_stream, &bytes)
        }
        Frame::WindowUpdate { stream, increment } => {
            let idle = role.is_idle(stream);
            role.core().window_update(stream, increment, idle)
        }
        // Priorities are deprecated (§5.3.2): data goes out in the order it is sent.
        Frame::Priority { .. } | Frame::SettingsAck | Frame::Unknown => Ok(()),
        Frame::RstStream { .. }
        | Frame::Settings(_)
        | Frame::Ping { .. }
        | Frame::GoAway { .. } => role.control(parsed),
    }
}

pub(super) struct Core {
    pub(super) phase: Phase,
    pub(super) local: Local,
    pub(super) decoder: Decoder,
    pub(super) assembler: Assembler,
    pub(super) streams: HashMap<u32, Stream, BuildHasherDefault<StreamIds>>,
    pub(super) send: Window,
    pub(super) recv: Receive,
    /// What the peer's settings say this side may send.
    pub(super) peer_initial_window: u32,
    pub(super) peer_max_frame_size: u32,
    pub(super) peer_max_concurrent_streams: u32,
    /// The streams this side reset last, oldest first.
    reset_lately: VecDeque<u32>,
    pub(super) out: BytesMut,
    pub(super) events: VecDeque<Event>,
}

impl Core {
    /// Windows below 65,535 are raised to it: the peer may send that much before it has
    /// read this side's settings.
    pub(super) fn new(phase: Phase, mut local: Local) -> Core {
        let default = frame::DEFAULT_WINDOW;
        local.stream_window = local.stream_window.max(default);
        local.connection_window = local.connection_window.max(default);
        Core {
            phase,
            local,
            decoder: Decoder::new(4096),
            assembler: Assembler::new(local.max_header_list_size as usize + 16 * 1024),
            streams: HashMap::default(),
            send: Window::new(default),
            recv: Receive::new(local.connection_window),
            peer_initial_window: default,
            peer_max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            peer_max_concurrent_streams: u32::MAX,
            reset_lately: VecDeque::new(),
            out: BytesMut::with_capacity(4096),
            events: VecDeque::new(),
        }
    }

    /// Writes this side's SETTINGS (`settings` plus its windows and limits) and the
    /// connection window's increase.
    pub(super) fn write_settings(&mut self, settings: Settings) {
        Settings {
            initial_window_size: Some(self.local.stream_window),
            max_frame_size: Some(self.local.max_frame_size),
            max_header_list_size: Some(self.local.max_header_list_size),
            ..settings
        }
        .write(&mut self.out);
        let default = frame::DEFAULT_WINDOW;
        if self.local.connection_window > default {
            frame::window_update(0, self.local.connection_window - default, &mut self.out);
        }
    }

    /// The next whole frame in `buf`, taken from it.
    pub(super) fn next_frame(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<(Head, Bytes)>, ConnError> {
        if buf.len() < HEAD_LEN {
            return Ok(None);
        }
        let head = Head::parse(buf[..HEAD_LEN].try_into().expect("9 bytes"));
        frame::check_size(&head, self.local.max_frame_size)?;
        let total = HEAD_LEN + head.len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        Ok(Some((head, buf.split_to(total).freeze())))
    }

    /// A stream opened by either side.
    pub(super) fn open(&mut self, stream: u32, length: Option<u64>, remote_done: bool) {
        self.streams.insert(
            stream,
            Stream {
                remote_done,
                head_sent: false,
                head_received: false,
                local_done: false,
                send: Window::new(self.peer_initial_window),
                recv: Receive::new(self.local.stream_window),
                length,
                received: 0,
                held: 0,
                no_body: false,
            },
        );
    }

    /// A frame's own error: a stream error resets that stream; a connection error ends it.
    pub(super) fn stream_or_connection_error(&mut self, e: FrameError) -> Result<(), ConnError> {
        match e.stream {
            Some(stream) => {
                self.reset_for_error(stream, e.code);
                Ok(())
            }
            None => Err(e.into()),
        }
    }

    /// A stream this side reset lately: frames the peer sent before it learnt of the
    /// reset are discarded, not an error (§5.1, closed).
    pub(super) fn was_reset(&self, stream: u32) -> bool {
        self.reset_lately.contains(&stream)
    }

    /// Decodes a block no stream will take, only to keep the dynamic table in step with
    /// the peer's: one it cannot decode ends the connection.
    pub(super) fn skip(&mut self, block: &[u8]) -> Result<(), ConnError> {
        match self.decoder.decode(block, |_| {}) {
            Ok(()) => Ok(()),
            Err(_) => fail(Code::COMPRESSION_ERROR, UNDECODABLE),
        }
    }

    /// A second field block on an open stream whose peer head came: trailers, which must
    /// end it (§8.1).
    pub(super) fn trailers(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), ConnError> {
        let s = self.streams.get(&stream).expect("the caller found it open");
        if s.remote_done || !end_stream {
            let code = if s.remote_done {
                Code::STREAM_CLOSED
            } else {
                Code::PROTOCOL_ERROR
            };
            self.reset_for_error(stream, code);
            return self.skip(block);
        }
        let limit = self.local.max_header_list_size as usize;
        match message::Head::trailers(&mut self.decoder, block, limit) {
            Ok(head) => {
                let s = self.streams.get_mut(&stream).expect("open");
                s.remote_done = true;
                if s.length.is_some_and(|n| n != s.received) {
                    self.reset_for_error(stream, Code::PROTOCOL_ERROR);
                    return Ok(());
                }
                self.events.push_back(Event::Trailers { stream, head });
                self.close_if_done(stream);
                Ok(())
            }
            Err(message::HeadError::Compression(_)) => fail(Code::COMPRESSION_ERROR, UNDECODABLE),
            Err(_) => {
                self.reset_for_error(stream, Code::PROTOCOL_ERROR);
                Ok(())
            }
        }
    }

    /// DATA. `idle`: the stream is one the peer could not have opened yet (a connection
    /// error).
    pub(super) fn data(
        &mut self,
        stream: u32,
        data: Bytes,
        flow: u32,
        end: bool,
        idle: bool,
    ) -> Result<(), ConnError> {
        if !self.recv.received(flow) {
            return fail(
                Code::FLOW_CONTROL_ERROR,
                "DATA beyond the connection's window",
            );
        }
        // Padding is nobody's to release: it goes back at once.
        let padding = flow - data.len() as u32;
        self.release_connection(padding);
        let Some(s) = self.streams.get_mut(&stream) else {
            self.release_connection(data.len() as u32);
            if idle {
                return fail(Code::PROTOCOL_ERROR, "DATA on an idle stream");
            }
            if !self.was_reset(stream) {
                self.reset_for_error(stream, Code::STREAM_CLOSED);
            }
            return Ok(());
        };
        if s.remote_done || !s.head_received {
            // After the end, or (a server's) before the response head.
            let code = if s.remote_done {
                Code::STREAM_CLOSED
            } else {
                Code::PROTOCOL_ERROR
            };
            self.release_connection(data.len() as u32);
            self.reset_for_error(stream, code);
            return Ok(());
        }
        if !s.recv.received(flow) {
            self.release_connection(data.len() as u32);
            self.reset_for_error(stream, Code::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        if let Some(increment) = s.recv.release(padding) {
            frame::window_update(stream, increment, &mut self.out);
        }
        s.received += data.len() as u64;
        let too_long = s.length.is_some_and(|n| s.received > n);
        let too_short = end && s.length.is_some_and(|n| s.received != n);
        if too_long || too_short {
            self.release_connection(data.len() as u32);
            self.reset_for_error(stream, Code::PROTOCOL_ERROR);
            return Ok(());
        }
        s.remote_done = end;
        s.held += data.len() as u32;
        if data.is_empty() && !end {
            return Ok(());
        }
        self.events.push_back(Event::Data {
            stream,
            data,
            end_stream: end,
        });
        self.close_if_done(stream);
        Ok(())
    }

    /// The peer's SETTINGS: applied, then acknowledged.
    pub(super) fn settings(&mut self, s: Settings) -> Result<(), ConnError> {
        if let Some(size) = s.initial_window_size {
            let delta = size as i64 - self.peer_initial_window as i64;
            for st in self.streams.values_mut() {
                if st.send.adjust(delta).is_err() {
                    return fail(Code::FLOW_CONTROL_ERROR, "a window above 2^31-1");
                }
            }
            self.peer_initial_window = size;
            if delta > 0 {
                self.events.push_back(Event::Writable);
            }
        }
        if let Some(size) = s.max_frame_size {
            self.peer_max_frame_size = size;
        }
        if let Some(n) = s.max_concurrent_streams {
            self.peer_max_concurrent_streams = n;
        }
        frame::settings_ack(&mut self.out);
        Ok(())
    }

    /// WINDOW_UPDATE. `idle`: as for `data`.
    pub(super) fn window_update(
        &mut self,
        stream: u32,
        increment: u32,
        idle: bool,
    ) -> Result<(), ConnError> {
        if stream == 0 {
            if self.send.grow(increment).is_err() {
                return fail(
                    Code::FLOW_CONTROL_ERROR,
                    "the connection window above 2^31-1",
                );
            }
        } else if let Some(s) = self.streams.get_mut(&stream) {
            if s.send.grow(increment).is_err() {
                self.reset_for_error(stream, Code::FLOW_CONTROL_ERROR);
                return Ok(());
            }
        } else if idle {
            return fail(Code::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream");
        }
        self.events.push_back(Event::Writable);
        Ok(())
    }

    /// Resets a stream for the peer's error; the caller hears of it if it knew it.
    pub(super) fn reset_for_error(&mut self, stream: u32, code: Code) {
        self.send_reset(stream, code);
        if self.remove(stream).is_some() {
            self.events.push_back(Event::Reset {
                stream,
                code,
                by_peer: false,
            });
        }
    }

    pub(super) fn close_if_done(&mut self, stream: u32) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| s.remote_done && s.local_done)
        {
            self.remove(stream);
        }
    }

    fn release_connection(&mut self, n: u32) {
        if let Some(increment) = self.recv.release(n) {
            frame::window_update(0, increment, &mut self.out);
        }
    }

    /// The caller consumed `n` bytes of the stream's body: credit goes back to the peer as
    /// the windows' policy says.
    pub(super) fn release(&mut self, stream: u32, n: u32) {
        // A closed stream's credit went back when it closed (`remove`).
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let n = n.min(s.held);
        s.held -= n;
        if !s.remote_done
            && let Some(increment) = s.recv.release(n)
        {
            frame::window_update(stream, increment, &mut self.out);
        }
        self.release_connection(n);
    }

    /// Forgets a stream; what it held of the connection's window goes back, so a stream
    /// closed with its body unread does not shrink the connection for the others.
    pub(super) fn remove(&mut self, stream: u32) -> Option<Stream> {
        let s = self.streams.remove(&stream)?;
        self.release_connection(s.held);
        Some(s)
    }

    /// Writes a head's field block (`pseudo` first) as HEADERS and CONTINUATIONs. The
    /// block is encoded in place, behind a HEADERS frame head whose length is filled in
    /// once known, so a head costs no buffer of its own; one larger than a frame (rare)
    /// is then cut into CONTINUATIONs.
    pub(super) fn write_head<'a>(
        &mut self,
        stream: u32,
        pseudo: impl FnOnce(&mut BytesMut),
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        end_stream: bool,
    ) {
        let start = self.out.len();
        self.out.resize(start + HEAD_LEN, 0);
        pseudo(&mut self.out);
        for (name, value) in fields {
            hpack::field(name, value, false, &mut self.out);
        }
        let len = self.out.len() - start - HEAD_LEN;
        if len > self.peer_max_frame_size as usize {
            let block = self.out[start + HEAD_LEN..].to_vec();
            self.out.truncate(start);
            let max = self.peer_max_frame_size;
            frame::headers(stream, &block, end_stream, max, &mut self.out);
            return;
        }
        let end = if end_stream {
            frame::flag::END_STREAM
        } else {
            0
        };
        let head = Head {
            len: len as u32,
            kind: frame::kind::HEADERS,
            flags: frame::flag::END_HEADERS | end,
            stream,
        };
        head.write(&mut &mut self.out[start..start + HEAD_LEN]);
    }

    /// See `Server::send_data`.
    pub(super) fn send_data(&mut self, stream: u32, data: &mut Bytes, end: bool) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        debug_assert!(s.head_sent, "DATA before the head");
        loop {
            let n = data
                .len()
                .min(s.send.available() as usize)
                .min(self.send.available() as usize)
                .min(self.peer_max_frame_size as usize);
            let last = n == data.len();
            if n == 0 && !(last && end) {
                return true;
            }
            s.send.take(n as u32);
            self.send.take(n as u32);
            frame::data_head(stream, n, last && end, &mut self.out);
            self.out.extend_from_slice(&data[..n]);
            data.advance(n);
            if last {
                if end {
                    self.end_local(stream);
                }
                return true;
            }
        }
    }

    /// See `Server::capacity`.
    pub(super) fn capacity(&self, stream: u32) -> u32 {
        self.streams
            .get(&stream)
            .map_or(0, |s| s.send.available().min(self.send.available()))
    }

    /// See `Server::send_trailers`.
    pub(super) fn send_trailers<'a>(
        &mut self,
        stream: u32,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> bool {
        let Some(s) = self.streams.get(&stream) else {
            return false;
        };
        debug_assert!(s.head_sent, "trailers before the head");
        self.write_head(stream, |_| {}, fields, true);
        self.end_local(stream);
        true
    }

    /// See `Server::reset`.
    pub(super) fn reset(&mut self, stream: u32, code: Code) {
        if self.remove(stream).is_some() {
            self.send_reset(stream, code);
        }
    }

    /// Writes RST_STREAM and remembers the stream for a while (`was_reset`).
    pub(super) fn send_reset(&mut self, stream: u32, code: Code) {
        frame::rst_stream(stream, code, &mut self.out);
        if self.reset_lately.len() == RESETS_REMEMBERED {
            self.reset_lately.pop_front();
        }
        self.reset_lately.push_back(stream);
    }

    /// This side's half of the stream ended. What the peer still sends stays the caller's
    /// to read, or to refuse with `reset(stream, Code::NO_ERROR)` (§8.1).
    pub(super) fn end_local(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.local_done = true;
        }
        self.close_if_done(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_apart_only_in_their_high_bits_hash_apart() {
        let low = |id: u32| {
            let mut h = StreamIds::default();
            h.write_u32(id);
            h.finish() & 0xff
        };
        let buckets: std::collections::HashSet<u64> = (0..64).map(|k| low(1 + (k << 20))).collect();
        assert!(
            buckets.len() > 32,
            "{} buckets of 256 for 64 ids",
            buckets.len()
        );
    }
}
