//! The server side of one HTTP/2 connection, without I/O (RFC 9113 §3–6, §8): bytes read
//! from the client go in (`recv`), requests, their bodies and resets come out as events;
//! responses go in as calls (`send_head`, `send_data`, `send_trailers`, `reset`), and the
//! frames to write come out of one buffer (`out`). Stream states, both directions' flow
//! control and the limits a client is held to live here; what a request means is the
//! caller's.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::{Buf, Bytes, BytesMut};

use super::block::Assembler;
use super::frame::{self, Code, Frame, FrameError, HEAD_LEN, Head, Settings};
use super::hpack::{self, Decoder};
use super::message::{self, HeadError};
use super::window::{Receive, Window};

/// What a client must send first (§3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// This side's settings and limits.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub max_concurrent_streams: u32,
    /// Each stream's receive window; the connection's. At least 65,535 each (less is
    /// raised to it): a client may send that much before it has read these settings.
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a request's fields, counted as the setting counts.
    pub max_header_list_size: u32,
    /// Streams the client may reset before their response began, net of responses that
    /// completed, before the connection ends with ENHANCE_YOUR_CALM (the "rapid reset"
    /// attack: each such stream costs the proxy a request it never answers).
    pub max_premature_resets: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_concurrent_streams: 200,
            stream_window: 1 << 20,
            connection_window: 1 << 20,
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: 64 * 1024,
            max_premature_resets: 100,
        }
    }
}

/// What the client did, in order.
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
    /// Body bytes; hand them back with `release` once they are consumed, which is what
    /// lets the client send more.
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
    },
    Trailers {
        stream: u32,
        head: message::Head,
    },
    /// The stream ended without its response: the client reset it (`by_client`), or its
    /// request broke a rule and this side reset it.
    Reset {
        stream: u32,
        code: Code,
        by_client: bool,
    },
    /// Send windows grew: streams waiting for one may `send_data` again.
    Writable,
    /// The client's GOAWAY.
    GoAway {
        code: Code,
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

fn fail<T>(code: Code, why: &'static str) -> Result<T, ConnError> {
    Err(ConnError { code, why })
}

/// One open stream, as this side sees it.
#[derive(Debug)]
struct Stream {
    /// The client ended its side (END_STREAM received).
    remote_done: bool,
    /// This side's response head has gone out.
    responding: bool,
    /// This side ended its side.
    local_done: bool,
    send: Window,
    recv: Receive,
    /// The request's content-length, and the body bytes received so far.
    length: Option<u64>,
    received: u64,
    /// Body bytes handed to the caller and not yet released.
    held: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's preface.
    Preface,
    /// The preface came; its first frame must be SETTINGS.
    FirstSettings,
    Open,
    /// A connection error was sent: nothing more is read.
    Failed,
}

pub struct Server {
    config: Config,
    phase: Phase,
    decoder: Decoder,
    assembler: Assembler,
    streams: HashMap<u32, Stream, BuildHasherDefault<StreamIds>>,
    /// The highest stream the client opened (every lower one is open or closed).
    last_stream: u32,
    /// GOAWAY sent: streams above this one are not served.
    goaway: Option<u32>,
    send: Window,
    recv: Receive,
    /// What the client's settings say this side may send.
    peer_initial_window: u32,
    peer_max_frame_size: u32,
    premature_resets: u32,
    /// The streams this side reset last, oldest first.
    reset_lately: VecDeque<u32>,
    out: BytesMut,
    events: VecDeque<Event>,
}

/// Hashes stream identifiers for the stream table in a few instructions, where SipHash
/// cost hundreds a request. The client picks them (rising, at most
/// `max_concurrent_streams` open at once), so ids that differ only in their high bits must
/// not share buckets: the product's high half, which every bit of the id reaches, is
/// folded into the low bits the table indexes with.
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

impl Server {
    /// A connection whose SETTINGS (and connection window increase) are already in `out`.
    pub fn new(mut config: Config) -> Server {
        let default = frame::DEFAULT_WINDOW;
        config.stream_window = config.stream_window.max(default);
        config.connection_window = config.connection_window.max(default);
        let mut out = BytesMut::with_capacity(4096);
        Settings {
            max_concurrent_streams: Some(config.max_concurrent_streams),
            initial_window_size: Some(config.stream_window),
            max_frame_size: Some(config.max_frame_size),
            max_header_list_size: Some(config.max_header_list_size),
            ..Settings::default()
        }
        .write(&mut out);
        if config.connection_window > default {
            frame::window_update(0, config.connection_window - default, &mut out);
        }
        let block_limit = config.max_header_list_size as usize + 16 * 1024;
        Server {
            config,
            phase: Phase::Preface,
            decoder: Decoder::new(4096),
            assembler: Assembler::new(block_limit),
            streams: HashMap::default(),
            last_stream: 0,
            goaway: None,
            send: Window::new(default),
            recv: Receive::new(config.connection_window),
            peer_initial_window: default,
            peer_max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            premature_resets: 0,
            reset_lately: VecDeque::new(),
            out,
            events: VecDeque::new(),
        }
    }

    /// The frames to write, in order.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// The next event, if any.
    pub fn event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Streams open (requests not yet answered and ended both ways).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Takes every whole frame from `buf` (what was read from the client). An error ends
    /// the connection: its GOAWAY is in `out`, to be written before closing.
    pub fn recv(&mut self, buf: &mut BytesMut) -> Result<(), ConnError> {
        match self.read(buf) {
            Err(e) => {
                if self.phase != Phase::Failed {
                    self.phase = Phase::Failed;
                    frame::goaway(self.last_stream, e.code, e.why.as_bytes(), &mut self.out);
                }
                Err(e)
            }
            ok => ok,
        }
    }

    fn read(&mut self, buf: &mut BytesMut) -> Result<(), ConnError> {
        if self.phase == Phase::Failed {
            return fail(Code::PROTOCOL_ERROR, "the connection has failed");
        }
        if self.phase == Phase::Preface {
            let n = buf.len().min(PREFACE.len());
            if buf[..n] != PREFACE[..n] {
                return fail(Code::PROTOCOL_ERROR, "not the HTTP/2 preface");
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            buf.advance(PREFACE.len());
            self.phase = Phase::FirstSettings;
        }
        while buf.len() >= HEAD_LEN {
            let head = Head::parse(buf[..HEAD_LEN].try_into().expect("9 bytes"));
            frame::check_size(&head, self.config.max_frame_size)?;
            let total = HEAD_LEN + head.len as usize;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(());
            }
            let bytes = buf.split_to(total).freeze();
            self.frame(head, bytes)?;
        }
        Ok(())
    }

    fn frame(&mut self, head: Head, bytes: Bytes) -> Result<(), ConnError> {
        let payload = &bytes[HEAD_LEN..];
        let parsed = match frame::parse(head, payload) {
            Ok(f) => f,
            Err(e) => return self.stream_or_connection_error(e),
        };
        if self.phase == Phase::FirstSettings {
            if !matches!(parsed, Frame::Settings(_)) {
                return fail(
                    Code::PROTOCOL_ERROR,
                    "the preface's first frame is not SETTINGS",
                );
            }
            self.phase = Phase::Open;
        }
        if self.assembler.expecting().is_some() && !matches!(parsed, Frame::Continuation { .. }) {
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
                self.data(stream, data, flow_len, end_stream)
            }
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                fragment,
                ..
            } => {
                match self
                    .assembler
                    .headers(stream, end_stream, end_headers, fragment)?
                {
                    Some(block) => self.headers(stream, end_stream, block.bytes),
                    None => Ok(()),
                }
            }
            Frame::Continuation {
                stream,
                end_headers,
                fragment,
            } => {
                let Some(block) = self.assembler.continuation(stream, end_headers, fragment)?
                else {
                    return Ok(());
                };
                // Copied out of the assembler, which `headers` may not borrow: the rare case.
                let (end_stream, bytes) = (block.end_stream, block.bytes.to_vec());
                self.headers(stream, end_stream, &bytes)
            }
            // Priorities are deprecated (§5.3.2): data goes out in the order it is sent.
            Frame::Priority { .. } => Ok(()),
            Frame::RstStream { stream, code } => self.rst_stream(stream, code),
            Frame::Settings(s) => self.settings(s),
            Frame::SettingsAck => Ok(()),
            Frame::Ping { ack, payload } => {
                if !ack {
                    frame::ping(true, payload, &mut self.out);
                }
                Ok(())
            }
            Frame::GoAway { code, .. } => {
                self.events.push_back(Event::GoAway { code });
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => self.window_update(stream, increment),
            Frame::Unknown => Ok(()),
        }
    }

    /// A frame's own error: a stream error resets that stream; a connection error ends it.
    fn stream_or_connection_error(&mut self, e: FrameError) -> Result<(), ConnError> {
        match e.stream {
            Some(stream) => {
                self.reset_for_error(stream, e.code);
                Ok(())
            }
            None => Err(e.into()),
        }
    }

    /// A stream the client has not opened yet (§5.1, idle): most frames on one are the
    /// connection's error.
    fn is_idle(&self, stream: u32) -> bool {
        stream > self.last_stream
    }

    /// A stream this side reset lately: frames the client sent before it learnt of the
    /// reset are discarded, not an error (§5.1, closed).
    fn was_reset(&self, stream: u32) -> bool {
        self.reset_lately.contains(&stream)
    }

    /// Decodes a block no stream will take, only to keep the dynamic table in step with
    /// the client's: one it cannot decode ends the connection.
    fn skip(&mut self, block: &[u8]) -> Result<(), ConnError> {
        match self.decoder.decode(block, |_| {}) {
            Ok(()) => Ok(()),
            Err(_) => fail(Code::COMPRESSION_ERROR, UNDECODABLE),
        }
    }

    fn headers(&mut self, stream: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let limit = self.config.max_header_list_size as usize;
        if let Some(s) = self.streams.get(&stream) {
            // A second block on an open stream: trailers, which must end it (§8.1).
            if s.remote_done || !end_stream {
                let code = if s.remote_done {
                    Code::STREAM_CLOSED
                } else {
                    Code::PROTOCOL_ERROR
                };
                self.reset_for_error(stream, code);
                return self.skip(block);
            }
            return match message::Head::trailers(&mut self.decoder, block, limit) {
                Ok(head) => {
                    let s = self
                        .streams
                        .get_mut(&stream)
                        .expect("open, as looked up above");
                    s.remote_done = true;
                    if s.length.is_some_and(|n| n != s.received) {
                        self.reset_for_error(stream, Code::PROTOCOL_ERROR);
                        return Ok(());
                    }
                    self.events.push_back(Event::Trailers { stream, head });
                    self.close_if_done(stream);
                    Ok(())
                }
                Err(HeadError::Compression(_)) => fail(Code::COMPRESSION_ERROR, UNDECODABLE),
                Err(_) => {
                    self.reset_for_error(stream, Code::PROTOCOL_ERROR);
                    Ok(())
                }
            };
        }
        if stream.is_multiple_of(2) {
            return fail(
                Code::PROTOCOL_ERROR,
                "a client stream with an even identifier",
            );
        }
        if stream <= self.last_stream {
            // Closed: its block still counts for HPACK, and nothing else of it does.
            self.skip(block)?;
            if self.was_reset(stream) {
                return Ok(());
            }
            return fail(Code::STREAM_CLOSED, "HEADERS on a closed stream");
        }
        self.last_stream = stream;
        if self.goaway.is_some_and(|last| stream > last) {
            // After GOAWAY: not served, but decoded all the same (§6.8).
            return self.skip(block);
        }
        if self.streams.len() >= self.config.max_concurrent_streams as usize {
            self.send_reset(stream, Code::REFUSED_STREAM);
            return self.skip(block);
        }
        let head = match message::Head::request(&mut self.decoder, block, limit) {
            Ok(head) => head,
            Err(HeadError::Compression(_)) => return fail(Code::COMPRESSION_ERROR, UNDECODABLE),
            Err(HeadError::Malformed(_)) => {
                self.send_reset(stream, Code::PROTOCOL_ERROR);
                return Ok(());
            }
            Err(HeadError::TooLarge) => {
                self.open(stream, None, end_stream);
                self.events
                    .push_back(Event::TooLarge { stream, end_stream });
                return Ok(());
            }
        };
        let length = match head.content_length() {
            Ok(n) => n,
            Err(_) => {
                self.send_reset(stream, Code::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        if end_stream && length.is_some_and(|n| n > 0) {
            self.send_reset(stream, Code::PROTOCOL_ERROR);
            return Ok(());
        }
        self.open(stream, length, end_stream);
        self.events.push_back(Event::Request {
            stream,
            head,
            end_stream,
        });
        Ok(())
    }

    fn open(&mut self, stream: u32, length: Option<u64>, end_stream: bool) {
        self.streams.insert(
            stream,
            Stream {
                remote_done: end_stream,
                responding: false,
                local_done: false,
                send: Window::new(self.peer_initial_window),
                recv: Receive::new(self.config.stream_window),
                length,
                received: 0,
                held: 0,
            },
        );
    }

    fn data(&mut self, stream: u32, data: Bytes, flow: u32, end: bool) -> Result<(), ConnError> {
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
            if self.is_idle(stream) {
                return fail(Code::PROTOCOL_ERROR, "DATA on an idle stream");
            }
            if !self.was_reset(stream) {
                self.reset_for_error(stream, Code::STREAM_CLOSED);
            }
            return Ok(());
        };
        if s.remote_done {
            self.release_connection(data.len() as u32);
            self.reset_for_error(stream, Code::STREAM_CLOSED);
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

    fn rst_stream(&mut self, stream: u32, code: Code) -> Result<(), ConnError> {
        if self.is_idle(stream) {
            return fail(Code::PROTOCOL_ERROR, "RST_STREAM on an idle stream");
        }
        if let Some(s) = self.remove(stream) {
            if !s.responding {
                self.premature_resets += 1;
                if self.premature_resets > self.config.max_premature_resets {
                    return fail(Code::ENHANCE_YOUR_CALM, "too many streams reset unanswered");
                }
            }
            self.events.push_back(Event::Reset {
                stream,
                code,
                by_client: true,
            });
        }
        Ok(())
    }

    fn settings(&mut self, s: Settings) -> Result<(), ConnError> {
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
        frame::settings_ack(&mut self.out);
        Ok(())
    }

    fn window_update(&mut self, stream: u32, increment: u32) -> Result<(), ConnError> {
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
        } else if self.is_idle(stream) {
            return fail(Code::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream");
        }
        self.events.push_back(Event::Writable);
        Ok(())
    }

    /// Resets a stream for its request's error; the caller hears of it if it knew it.
    fn reset_for_error(&mut self, stream: u32, code: Code) {
        self.send_reset(stream, code);
        if self.remove(stream).is_some() {
            self.events.push_back(Event::Reset {
                stream,
                code,
                by_client: false,
            });
        }
    }

    fn close_if_done(&mut self, stream: u32) {
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

    /// The caller consumed `n` bytes of the stream's body: credit goes back to the client
    /// as the windows' policy says.
    pub fn release(&mut self, stream: u32, n: u32) {
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
    fn remove(&mut self, stream: u32) -> Option<Stream> {
        let s = self.streams.remove(&stream)?;
        self.release_connection(s.held);
        Some(s)
    }

    /// Sends the response head: `:status`, then `fields` (lowercase names). `false` when
    /// the stream is gone (reset) or already answered.
    pub fn send_head<'a>(
        &mut self,
        stream: u32,
        status: u16,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        end_stream: bool,
    ) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        if s.responding {
            return false;
        }
        s.responding = true;
        let mut block = Vec::with_capacity(128);
        hpack::status(status, &mut block);
        for (name, value) in fields {
            hpack::field(name, value, false, &mut block);
        }
        frame::headers(
            stream,
            &block,
            end_stream,
            self.peer_max_frame_size,
            &mut self.out,
        );
        self.premature_resets = self.premature_resets.saturating_sub(1);
        if end_stream {
            self.end_local(stream);
        }
        true
    }

    /// Sends as much of `data` as the windows allow, taking it from the front; `end`: the
    /// body ends with it (END_STREAM goes out with its last byte). Returns whether the
    /// stream is still there to send on.
    pub fn send_data(&mut self, stream: u32, data: &mut Bytes, end: bool) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        debug_assert!(s.responding, "DATA before the response head");
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

    /// The request body bytes its content-length still promises (`None`: no length
    /// declared, or the stream is closed).
    pub fn body_left(&self, stream: u32) -> Option<u64> {
        let s = self.streams.get(&stream)?;
        Some(s.length? - s.received)
    }

    /// What `stream` may send now (the lesser of its window and the connection's).
    pub fn capacity(&self, stream: u32) -> u32 {
        self.streams
            .get(&stream)
            .map_or(0, |s| s.send.available().min(self.send.available()))
    }

    /// Ends the response with trailers.
    pub fn send_trailers<'a>(
        &mut self,
        stream: u32,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> bool {
        let Some(s) = self.streams.get(&stream) else {
            return false;
        };
        debug_assert!(s.responding, "trailers before the response head");
        let mut block = Vec::with_capacity(128);
        for (name, value) in fields {
            hpack::field(name, value, false, &mut block);
        }
        frame::headers(
            stream,
            &block,
            true,
            self.peer_max_frame_size,
            &mut self.out,
        );
        self.end_local(stream);
        true
    }

    /// Resets a stream: the response broke off, or the caller will not answer, or
    /// (`NO_ERROR`) the response is whole and the rest of the request body is not wanted
    /// (§8.1).
    pub fn reset(&mut self, stream: u32, code: Code) {
        if self.remove(stream).is_some() {
            self.send_reset(stream, code);
        }
    }

    /// Writes RST_STREAM and remembers the stream for a while (`was_reset`).
    fn send_reset(&mut self, stream: u32, code: Code) {
        frame::rst_stream(stream, code, &mut self.out);
        if self.reset_lately.len() == RESETS_REMEMBERED {
            self.reset_lately.pop_front();
        }
        self.reset_lately.push_back(stream);
    }

    /// Starts a graceful close: streams opened so far are served, no new one is.
    pub fn goaway(&mut self) {
        if self.goaway.is_none() {
            self.goaway = Some(self.last_stream);
            frame::goaway(self.last_stream, Code::NO_ERROR, &[], &mut self.out);
        }
    }

    /// This side's half of the stream ended. A request body still coming stays the
    /// caller's to read, or to refuse with `reset(stream, Code::NO_ERROR)` (§8.1).
    fn end_local(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.local_done = true;
        }
        self.close_if_done(stream);
    }
}

const UNDECODABLE: &str = "a field block that cannot be decoded";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::{flag, kind};

    /// A server past the handshake: the client's preface and empty SETTINGS taken, what
    /// the server wrote so far drained.
    fn open(config: Config) -> Server {
        let mut s = Server::new(config);
        let mut b = BytesMut::from(PREFACE);
        Settings::default().write(&mut b);
        s.recv(&mut b).unwrap();
        s.out().clear();
        s
    }

    fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        hpack::field(b":method", method.as_bytes(), false, &mut b);
        hpack::field(b":scheme", b"http", false, &mut b);
        hpack::field(b":authority", b"h", false, &mut b);
        hpack::field(b":path", path.as_bytes(), false, &mut b);
        for (n, v) in extra {
            hpack::field(n.as_bytes(), v.as_bytes(), false, &mut b);
        }
        b
    }

    fn get(stream: u32) -> BytesMut {
        let mut b = BytesMut::new();
        frame::headers(stream, &request_block("GET", "/", &[]), true, 16384, &mut b);
        b
    }

    /// The frames in `out`, drained: (head, payload).
    fn written(s: &mut Server) -> Vec<(Head, Vec<u8>)> {
        let out = s.out().split();
        let mut frames = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let head = Head::parse(out[at..at + HEAD_LEN].try_into().unwrap());
            let end = at + HEAD_LEN + head.len as usize;
            frames.push((head, out[at + HEAD_LEN..end].to_vec()));
            at = end;
        }
        frames
    }

    fn events(s: &mut Server) -> Vec<Event> {
        std::iter::from_fn(|| s.event()).collect()
    }

    /// The frames of one kind in `out`, drained: (stream, payload).
    fn of_kind(s: &mut Server, k: u8) -> Vec<(u32, Vec<u8>)> {
        written(s)
            .into_iter()
            .filter(|(h, _)| h.kind == k)
            .map(|(h, p)| (h.stream, p))
            .collect()
    }

    fn resets(s: &mut Server) -> Vec<(u32, Code)> {
        of_kind(s, kind::RST_STREAM)
            .into_iter()
            .map(|(stream, p)| (stream, Code(u32::from_be_bytes(p[..].try_into().unwrap()))))
            .collect()
    }

    /// The WINDOW_UPDATEs in `out`, drained: (stream, increment).
    fn updates(s: &mut Server) -> Vec<(u32, u32)> {
        of_kind(s, kind::WINDOW_UPDATE)
            .into_iter()
            .map(|(stream, p)| (stream, u32::from_be_bytes(p[..].try_into().unwrap())))
            .collect()
    }

    fn goaway_code(s: &mut Server) -> Option<Code> {
        of_kind(s, kind::GOAWAY)
            .first()
            .map(|(_, p)| Code(u32::from_be_bytes(p[4..8].try_into().unwrap())))
    }

    #[test]
    fn the_handshake_sends_settings_first_and_acknowledges_the_clients() {
        let mut s = Server::new(Config::default());
        let mut b = BytesMut::from(&PREFACE[..10]);
        s.recv(&mut b).unwrap();
        b.extend_from_slice(&PREFACE[10..]);
        Settings {
            initial_window_size: Some(1000),
            ..Settings::default()
        }
        .write(&mut b);
        s.recv(&mut b).unwrap();
        assert!(b.is_empty());
        let kinds: Vec<(u8, u8)> = written(&mut s)
            .iter()
            .map(|(h, _)| (h.kind, h.flags))
            .collect();
        let want = [
            (kind::SETTINGS, 0),
            (kind::WINDOW_UPDATE, 0),
            (kind::SETTINGS, flag::ACK),
        ];
        assert_eq!(kinds, want);
        assert_eq!(s.peer_initial_window, 1000);
    }

    #[test]
    fn a_bad_preface_or_a_first_frame_not_settings_ends_the_connection() {
        let mut s = Server::new(Config::default());
        let e = s
            .recv(&mut BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]))
            .unwrap_err();
        assert_eq!(e.code, Code::PROTOCOL_ERROR);
        assert_eq!(goaway_code(&mut s), Some(Code::PROTOCOL_ERROR));
        let mut s = Server::new(Config::default());
        let mut b = BytesMut::from(PREFACE);
        frame::ping(false, [0; 8], &mut b);
        assert_eq!(s.recv(&mut b).unwrap_err().code, Code::PROTOCOL_ERROR);
    }

    #[test]
    fn a_request_is_answered_and_its_stream_closes() {
        let mut s = open(Config::default());
        s.recv(&mut get(1)).unwrap();
        let Some(Event::Request {
            stream: 1,
            head,
            end_stream: true,
        }) = s.event()
        else {
            panic!("a request");
        };
        assert_eq!(head.path(), Some(&b"/"[..]));
        assert!(s.send_head(1, 200, [(&b"content-type"[..], &b"text/plain"[..])], false));
        assert!(s.send_data(1, &mut Bytes::from_static(b"ok\n"), true));
        let frames = written(&mut s);
        assert_eq!(frames.len(), 2);
        assert_eq!(
            (frames[0].0.kind, frames[0].0.flags),
            (kind::HEADERS, flag::END_HEADERS)
        );
        let mut fields = Vec::new();
        Decoder::new(4096)
            .decode(&frames[0].1, |f| {
                fields.push((f.name.to_vec(), f.value.to_vec()))
            })
            .unwrap();
        assert_eq!(fields[0], (b":status".to_vec(), b"200".to_vec()));
        assert_eq!(
            (frames[1].0.kind, frames[1].0.flags),
            (kind::DATA, flag::END_STREAM)
        );
        assert_eq!(frames[1].1, b"ok\n");
        assert_eq!(s.open_streams(), 0);
        assert!(!s.send_head(1, 200, [], true), "the stream is gone");
    }

    #[test]
    fn a_body_comes_as_data_and_credit_goes_back_as_it_is_released() {
        let mut s = open(Config {
            stream_window: 100_000,
            connection_window: 1 << 20,
            ..Config::default()
        });
        let mut b = BytesMut::new();
        let block = request_block("POST", "/", &[("content-length", "80000")]);
        frame::headers(1, &block, false, 16384, &mut b);
        for _ in 0..4 {
            frame::data_head(1, 15_000, false, &mut b);
            b.extend_from_slice(&[b'x'; 15_000]);
        }
        s.recv(&mut b).unwrap();
        let ev = events(&mut s);
        assert!(matches!(
            ev[0],
            Event::Request {
                stream: 1,
                end_stream: false,
                ..
            }
        ));
        assert_eq!(ev.len(), 5);
        assert!(
            matches!(&ev[4], Event::Data { stream: 1, data, end_stream: false } if data.len() == 15_000)
        );
        s.release(1, 49_999);
        assert!(written(&mut s).is_empty(), "less than half the window");
        s.release(1, 10_001);
        assert_eq!(updates(&mut s), [(1, 60_000)]);
        // The rest, ending the body at its declared length.
        let mut b = BytesMut::new();
        frame::data_head(1, 20_000 - 16_384, false, &mut b);
        b.extend_from_slice(&[b'y'; 20_000 - 16_384]);
        frame::data_head(1, 16_384, true, &mut b);
        b.extend_from_slice(&[b'y'; 16_384]);
        s.recv(&mut b).unwrap();
        let ev = events(&mut s);
        assert!(matches!(
            &ev[..],
            [
                Event::Data { .. },
                Event::Data {
                    end_stream: true,
                    ..
                }
            ]
        ));
    }

    #[test]
    fn bodies_that_break_their_length_or_window_reset_the_stream() {
        let mut s = open(Config {
            stream_window: 65_535,
            ..Config::default()
        });
        let mut b = BytesMut::new();
        let block = request_block("POST", "/", &[("content-length", "5")]);
        frame::headers(1, &block, false, 16384, &mut b);
        frame::data_head(1, 6, false, &mut b);
        b.extend_from_slice(b"123456");
        // Stream 3 sends 4 x 16,384 bytes against a stream window of 65,535: one too many.
        frame::headers(3, &request_block("POST", "/", &[]), false, 16384, &mut b);
        for _ in 0..4 {
            frame::data_head(3, 16_384, false, &mut b);
            b.extend_from_slice(&[0; 16_384]);
        }
        frame::headers(
            5,
            &request_block("POST", "/", &[("content-length", "5")]),
            true,
            16384,
            &mut b,
        );
        s.recv(&mut b).unwrap();
        let want = [
            (1, Code::PROTOCOL_ERROR),
            (3, Code::FLOW_CONTROL_ERROR),
            (5, Code::PROTOCOL_ERROR),
        ];
        assert_eq!(resets(&mut s), want);
        assert_eq!(s.open_streams(), 0);
        // A DATA frame the client sent before it saw the reset is dropped quietly.
        let mut b = BytesMut::new();
        frame::data_head(1, 1, true, &mut b);
        b.extend_from_slice(b"7");
        s.recv(&mut b).unwrap();
        assert_eq!(resets(&mut s), []);
    }

    #[test]
    fn a_stream_closed_with_its_body_unread_gives_the_connection_its_credit_back() {
        let mut s = open(Config {
            connection_window: 65_535,
            ..Config::default()
        });
        let mut b = BytesMut::new();
        frame::headers(1, &request_block("POST", "/", &[]), false, 16384, &mut b);
        frame::data_head(1, 16_384, false, &mut b);
        b.extend_from_slice(&[0; 16_384]);
        frame::data_head(1, 16_384, false, &mut b);
        b.extend_from_slice(&[0; 16_384]);
        s.recv(&mut b).unwrap();
        assert_eq!(s.recv.available(), 65_535 - 32_768);
        // The caller answers without reading the body: the stream stays open for it
        // until the caller says it will not read it, when the stream closes and the
        // connection's window is whole again (one update of the 32,768 bytes held).
        s.send_head(1, 413, [], true);
        assert_eq!(s.open_streams(), 1);
        assert_eq!(s.recv.available(), 65_535 - 32_768);
        s.reset(1, Code::NO_ERROR);
        assert_eq!(s.open_streams(), 0);
        assert_eq!(s.recv.available(), 65_535);
        let out: Vec<(u8, u32, Vec<u8>)> = written(&mut s)
            .into_iter()
            .map(|(h, p)| (h.kind, h.stream, p))
            .collect();
        assert_eq!(
            out,
            [
                (kind::HEADERS, 1, vec![0x08, 3, b'4', b'1', b'3']),
                (kind::WINDOW_UPDATE, 0, 32_768u32.to_be_bytes().to_vec()),
                (kind::RST_STREAM, 1, Code::NO_ERROR.0.to_be_bytes().to_vec()),
            ]
        );
        s.release(1, 32_768);
        assert!(written(&mut s).is_empty(), "released once, not twice");
    }

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

    #[test]
    fn streams_beyond_the_limit_are_refused() {
        let mut s = open(Config {
            max_concurrent_streams: 1,
            ..Config::default()
        });
        let mut b = BytesMut::new();
        frame::headers(1, &request_block("POST", "/", &[]), false, 16384, &mut b);
        frame::headers(3, &request_block("GET", "/", &[]), true, 16384, &mut b);
        s.recv(&mut b).unwrap();
        assert_eq!(resets(&mut s), [(3, Code::REFUSED_STREAM)]);
        assert_eq!(s.open_streams(), 1);
    }

    #[test]
    fn stream_identifiers_must_be_odd_and_rise() {
        let mut s = open(Config::default());
        assert_eq!(s.recv(&mut get(2)).unwrap_err().code, Code::PROTOCOL_ERROR);
        let mut s = open(Config::default());
        s.recv(&mut get(5)).unwrap();
        s.send_head(5, 204, [], true);
        let e = s.recv(&mut get(3)).unwrap_err();
        assert_eq!(e.code, Code::STREAM_CLOSED);
        // A closed stream's block must still decode: HPACK state is the connection's.
        let mut s = open(Config::default());
        s.recv(&mut get(5)).unwrap();
        s.send_head(5, 204, [], true);
        let mut b = BytesMut::new();
        frame::headers(3, &[0x80], true, 16384, &mut b);
        assert_eq!(s.recv(&mut b).unwrap_err().code, Code::COMPRESSION_ERROR);
        let mut s = open(Config::default());
        let mut b = BytesMut::new();
        frame::data_head(7, 0, true, &mut b);
        assert_eq!(
            s.recv(&mut b).unwrap_err().code,
            Code::PROTOCOL_ERROR,
            "idle"
        );
    }

    #[test]
    fn malformed_and_oversized_requests() {
        let mut s = open(Config {
            max_header_list_size: 250,
            ..Config::default()
        });
        // Stream 1's fields count 209 bytes, under the limit: it is refused as malformed.
        let mut b = BytesMut::new();
        frame::headers(
            1,
            &request_block("GET", "/", &[("connection", "x")]),
            true,
            16384,
            &mut b,
        );
        let big = "v".repeat(200);
        frame::headers(
            3,
            &request_block("GET", "/", &[("x", &big)]),
            true,
            16384,
            &mut b,
        );
        s.recv(&mut b).unwrap();
        assert_eq!(resets(&mut s), [(1, Code::PROTOCOL_ERROR)]);
        assert!(matches!(
            s.event(),
            Some(Event::TooLarge {
                stream: 3,
                end_stream: true
            })
        ));
        assert!(s.send_head(3, 431, [], true));
        assert_eq!(s.open_streams(), 0);
        let mut b = BytesMut::new();
        frame::headers(5, &[0x80], true, 16384, &mut b);
        assert_eq!(s.recv(&mut b).unwrap_err().code, Code::COMPRESSION_ERROR);
    }

    #[test]
    fn a_request_split_over_continuations_and_its_trailers() {
        let mut s = open(Config::default());
        let mut b = BytesMut::new();
        let block = request_block("POST", "/upload", &[("te", "trailers")]);
        frame::headers(1, &block, false, 8, &mut b);
        let mut trailers = Vec::new();
        hpack::field(b"grpc-status", b"0", false, &mut trailers);
        frame::headers(1, &trailers, true, 16384, &mut b);
        s.recv(&mut b).unwrap();
        let ev = events(&mut s);
        assert!(
            matches!(&ev[0], Event::Request { head, .. } if head.path() == Some(&b"/upload"[..]))
        );
        assert!(matches!(&ev[1], Event::Trailers { stream: 1, head } if head.fields().len() == 1));
        // Anything between HEADERS and its CONTINUATION ends the connection.
        let mut b = BytesMut::new();
        frame::headers(3, &block, false, 8, &mut b);
        let cut = HEAD_LEN + 8;
        let mut interleaved = BytesMut::from(&b[..cut]);
        frame::ping(false, [0; 8], &mut interleaved);
        assert_eq!(
            s.recv(&mut interleaved).unwrap_err().code,
            Code::PROTOCOL_ERROR
        );
    }

    #[test]
    fn sending_waits_for_the_clients_windows() {
        let mut s = Server::new(Config::default());
        let mut b = BytesMut::from(PREFACE);
        Settings {
            initial_window_size: Some(10),
            ..Settings::default()
        }
        .write(&mut b);
        b.extend_from_slice(&get(1));
        s.recv(&mut b).unwrap();
        written(&mut s);
        s.send_head(1, 200, [], false);
        let mut body = Bytes::from_static(b"0123456789abcdef");
        assert!(s.send_data(1, &mut body, true));
        assert_eq!(&body[..], b"abcdef", "ten bytes went, the rest waits");
        assert_eq!(s.capacity(1), 0);
        let mut b = BytesMut::new();
        frame::window_update(1, 100, &mut b);
        s.recv(&mut b).unwrap();
        assert!(matches!(s.event(), Some(Event::Request { .. })));
        assert!(matches!(s.event(), Some(Event::Writable)));
        assert!(s.send_data(1, &mut body, true));
        assert!(body.is_empty());
        let data: Vec<(u8, usize)> = written(&mut s)
            .into_iter()
            .filter(|(h, _)| h.kind == kind::DATA)
            .map(|(h, p)| (h.flags, p.len()))
            .collect();
        assert_eq!(data, [(0, 10), (flag::END_STREAM, 6)]);
        // A window pushed past 2^31-1 is that stream's error.
        let mut s = open(Config::default());
        s.recv(&mut get(1)).unwrap();
        let mut b = BytesMut::new();
        frame::window_update(1, frame::MAX_WINDOW, &mut b);
        s.recv(&mut b).unwrap();
        assert_eq!(resets(&mut s), [(1, Code::FLOW_CONTROL_ERROR)]);
    }

    #[test]
    fn pings_are_answered_and_rapid_resets_end_the_connection() {
        let mut s = open(Config {
            max_premature_resets: 2,
            ..Config::default()
        });
        let mut b = BytesMut::new();
        frame::ping(false, *b"pingpong", &mut b);
        s.recv(&mut b).unwrap();
        let frames = written(&mut s);
        assert_eq!(
            (frames[0].0.flags, &frames[0].1[..]),
            (flag::ACK, &b"pingpong"[..])
        );
        for stream in [1, 3, 5] {
            let mut b = get(stream);
            frame::rst_stream(stream, Code::CANCEL, &mut b);
            let got = s.recv(&mut b);
            if stream < 5 {
                got.unwrap();
            } else {
                assert_eq!(got.unwrap_err().code, Code::ENHANCE_YOUR_CALM);
            }
        }
        assert_eq!(goaway_code(&mut s), Some(Code::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn a_response_ends_with_trailers_and_the_clients_goaway_is_told() {
        let mut s = open(Config::default());
        s.recv(&mut get(1)).unwrap();
        s.send_head(
            1,
            200,
            [(&b"content-type"[..], &b"application/grpc"[..])],
            false,
        );
        s.send_data(1, &mut Bytes::from_static(b"\0\0\0\0\0"), false);
        assert!(s.send_trailers(1, [(&b"grpc-status"[..], &b"0"[..])]));
        let frames = written(&mut s);
        let kinds: Vec<(u8, u8)> = frames.iter().map(|(h, _)| (h.kind, h.flags)).collect();
        let end = flag::END_STREAM | flag::END_HEADERS;
        let want = [
            (kind::HEADERS, flag::END_HEADERS),
            (kind::DATA, 0),
            (kind::HEADERS, end),
        ];
        assert_eq!(kinds, want);
        assert_eq!(s.open_streams(), 0);
        let mut b = BytesMut::new();
        frame::goaway(0, Code::NO_ERROR, b"bye", &mut b);
        s.recv(&mut b).unwrap();
        let ev = events(&mut s);
        assert!(matches!(
            ev.last(),
            Some(Event::GoAway {
                code: Code::NO_ERROR
            })
        ));
    }

    #[test]
    fn after_goaway_new_streams_are_not_served() {
        let mut s = open(Config::default());
        s.recv(&mut get(1)).unwrap();
        s.goaway();
        s.recv(&mut get(3)).unwrap();
        let ev = events(&mut s);
        assert_eq!(ev.len(), 1, "only stream 1: {ev:?}");
        let frames = written(&mut s);
        assert_eq!(frames[0].0.kind, kind::GOAWAY);
        assert_eq!(&frames[0].1[..4], 1u32.to_be_bytes());
    }
}
