//! The server side of one HTTP/2 connection, without I/O (RFC 9113 §3–6, §8): bytes read
//! from the client go in (`recv`), requests, their bodies and resets come out as events;
//! responses go in as calls (`send_head`, `send_data`, `send_trailers`, `reset`), and the
//! frames to write come out of one buffer (`out`). What both sides do alike (streams,
//! flow control, SETTINGS, PING) is `conn::Core`'s; here is what a server adds: the
//! preface, streams the client opens, requests, and the limits a client is held to. What
//! a request means is the caller's.

use bytes::{Bytes, BytesMut};

use super::conn::{self, Core, Local, Phase, Role, UNDECODABLE, fail};
use super::frame::{self, Code, Frame, Settings};
use super::hpack;
use super::message::{self, HeadError};

pub use super::conn::{ConnError, Event, StreamIds};

pub use super::frame::PREFACE;

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

pub struct Server {
    config: Config,
    core: Core,
    /// The highest stream the client opened (every lower one is open or closed).
    last_stream: u32,
    /// GOAWAY sent: streams above this one are not served.
    goaway: Option<u32>,
    premature_resets: u32,
}

impl Server {
    /// A connection whose SETTINGS (and connection window increase) are already in `out`.
    pub fn new(config: Config) -> Server {
        let mut core = Core::new(
            Phase::Preface,
            Local {
                stream_window: config.stream_window,
                connection_window: config.connection_window,
                max_frame_size: config.max_frame_size,
                max_header_list_size: config.max_header_list_size,
            },
        );
        core.write_settings(Settings {
            max_concurrent_streams: Some(config.max_concurrent_streams),
            ..Settings::default()
        });
        Server {
            config,
            core,
            last_stream: 0,
            goaway: None,
            premature_resets: 0,
        }
    }

    /// The frames to write, in order.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.core.out
    }

    /// The next event, if any.
    pub fn event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    /// Streams open (requests not yet answered and ended both ways).
    pub fn open_streams(&self) -> usize {
        self.core.streams.len()
    }

    /// Takes every whole frame from `buf` (what was read from the client). An error ends
    /// the connection: its GOAWAY is in `out`, to be written before closing.
    pub fn recv(&mut self, buf: &mut BytesMut) -> Result<(), ConnError> {
        conn::recv(self, buf)
    }

    fn request(&mut self, stream: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let core = &mut self.core;
        if core.streams.contains_key(&stream) {
            return core.trailers(stream, end_stream, block);
        }
        if stream.is_multiple_of(2) {
            return fail(
                Code::PROTOCOL_ERROR,
                "a client stream with an even identifier",
            );
        }
        if stream <= self.last_stream {
            // Closed: its block still counts for HPACK, and nothing else of it does.
            core.skip(block)?;
            if core.was_reset(stream) {
                return Ok(());
            }
            return fail(Code::STREAM_CLOSED, "HEADERS on a closed stream");
        }
        self.last_stream = stream;
        if self.goaway.is_some_and(|last| stream > last) {
            // After GOAWAY: not served, but decoded all the same (§6.8).
            return core.skip(block);
        }
        if core.streams.len() >= self.config.max_concurrent_streams as usize {
            core.send_reset(stream, Code::REFUSED_STREAM);
            return core.skip(block);
        }
        let limit = core.local.max_header_list_size as usize;
        let head = match message::Head::request(&mut core.decoder, block, limit) {
            Ok(head) => head,
            Err(HeadError::Compression(_)) => return fail(Code::COMPRESSION_ERROR, UNDECODABLE),
            Err(HeadError::Malformed(_)) => {
                core.send_reset(stream, Code::PROTOCOL_ERROR);
                return Ok(());
            }
            Err(HeadError::TooLarge) => {
                self.open(stream, None, end_stream);
                self.core
                    .events
                    .push_back(Event::TooLarge { stream, end_stream });
                return Ok(());
            }
        };
        let length = match head.content_length() {
            Ok(n) => n,
            Err(_) => {
                core.send_reset(stream, Code::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        if end_stream && length.is_some_and(|n| n > 0) {
            core.send_reset(stream, Code::PROTOCOL_ERROR);
            return Ok(());
        }
        self.open(stream, length, end_stream);
        self.core.events.push_back(Event::Request {
            stream,
            head,
            end_stream,
        });
        Ok(())
    }

    /// A stream the client opened: its request came.
    fn open(&mut self, stream: u32, length: Option<u64>, end_stream: bool) {
        self.core.open(stream, length, end_stream);
        let s = self.core.streams.get_mut(&stream).expect("just opened");
        s.head_received = true;
    }

    fn rst_stream(&mut self, stream: u32, code: Code) -> Result<(), ConnError> {
        if self.is_idle(stream) {
            return fail(Code::PROTOCOL_ERROR, "RST_STREAM on an idle stream");
        }
        if let Some(s) = self.core.remove(stream) {
            if !s.head_sent {
                self.premature_resets += 1;
                if self.premature_resets > self.config.max_premature_resets {
                    return fail(Code::ENHANCE_YOUR_CALM, "too many streams reset unanswered");
                }
            }
            self.core.events.push_back(Event::Reset {
                stream,
                code,
                by_peer: true,
            });
        }
        Ok(())
    }

    /// The caller consumed `n` bytes of the stream's body: credit goes back to the client
    /// as the windows' policy says.
    pub fn release(&mut self, stream: u32, n: u32) {
        self.core.release(stream, n);
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
        let Some(s) = self.core.streams.get_mut(&stream) else {
            return false;
        };
        if s.head_sent {
            return false;
        }
        s.head_sent = true;
        self.core.write_head(
            stream,
            |block| hpack::status(status, block),
            fields,
            end_stream,
        );
        self.premature_resets = self.premature_resets.saturating_sub(1);
        if end_stream {
            self.core.end_local(stream);
        }
        true
    }

    /// Sends as much of `data` as the windows allow, taking it from the front; `end`: the
    /// body ends with it (END_STREAM goes out with its last byte). Returns whether the
    /// stream is still there to send on.
    pub fn send_data(&mut self, stream: u32, data: &mut Bytes, end: bool) -> bool {
        self.core.send_data(stream, data, end)
    }

    /// The request body bytes its content-length still promises (`None`: no length
    /// declared, or the stream is closed).
    pub fn body_left(&self, stream: u32) -> Option<u64> {
        let s = self.core.streams.get(&stream)?;
        Some(s.length? - s.received)
    }

    /// What `stream` may send now (the lesser of its window and the connection's).
    pub fn capacity(&self, stream: u32) -> u32 {
        self.core.capacity(stream)
    }

    /// Ends the response with trailers.
    pub fn send_trailers<'a>(
        &mut self,
        stream: u32,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> bool {
        self.core.send_trailers(stream, fields)
    }

    /// Resets a stream: the response broke off, or the caller will not answer, or
    /// (`NO_ERROR`) the response is whole and the rest of the request body is not wanted
    /// (§8.1).
    pub fn reset(&mut self, stream: u32, code: Code) {
        self.core.reset(stream, code);
    }

    /// Starts a graceful close: streams opened so far are served, no new one is.
    pub fn goaway(&mut self) {
        if self.goaway.is_none() {
            self.goaway = Some(self.last_stream);
            frame::goaway(self.last_stream, Code::NO_ERROR, &[], &mut self.core.out);
        }
    }
}

impl Role for Server {
    const NOT_SETTINGS_FIRST: &'static str = "the preface's first frame is not SETTINGS";

    fn core(&mut self) -> &mut Core {
        &mut self.core
    }

    fn last_processed(&self) -> u32 {
        self.last_stream
    }

    /// A stream the client has not opened yet.
    fn is_idle(&self, stream: u32) -> bool {
        stream > self.last_stream
    }

    fn headers(&mut self, stream: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        self.request(stream, end_stream, block)
    }

    fn control(&mut self, frame: Frame<'_>) -> Result<(), ConnError> {
        let core = &mut self.core;
        match frame {
            Frame::RstStream { stream, code } => self.rst_stream(stream, code),
            Frame::Settings(s) => core.settings(s),
            Frame::Ping { ack, payload } => {
                if !ack {
                    frame::ping(true, payload, &mut core.out);
                }
                Ok(())
            }
            Frame::GoAway { code, .. } => {
                core.events.push_back(Event::GoAway { code });
                Ok(())
            }
            _ => unreachable!("conn::recv hands over control frames only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::{HEAD_LEN, Head, flag, kind};
    use crate::codec::hpack::Decoder;

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
        assert_eq!(s.core.peer_initial_window, 1000);
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
        assert_eq!(s.core.recv.available(), 65_535 - 32_768);
        // The caller answers without reading the body: the stream stays open for it
        // until the caller says it will not read it, when the stream closes and the
        // connection's window is whole again (one update of the 32,768 bytes held).
        s.send_head(1, 413, [], true);
        assert_eq!(s.open_streams(), 1);
        assert_eq!(s.core.recv.available(), 65_535 - 32_768);
        s.reset(1, Code::NO_ERROR);
        assert_eq!(s.open_streams(), 0);
        assert_eq!(s.core.recv.available(), 65_535);
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
    fn a_head_larger_than_a_frame_goes_as_headers_and_continuations() {
        let mut s = open(Config::default());
        s.recv(&mut get(1)).unwrap();
        s.recv(&mut get(3)).unwrap();
        let big = vec![b'v'; 20_000];
        assert!(s.send_head(1, 200, [(&b"x-big"[..], &big[..])], true));
        assert!(s.send_head(3, 204, [(&b"x-small"[..], &b"1"[..])], true));
        let frames = written(&mut s);
        let heads: Vec<(u8, u8, u32, usize)> = frames
            .iter()
            .map(|(h, p)| (h.kind, h.flags, h.stream, p.len()))
            .collect();
        // The peer's SETTINGS_MAX_FRAME_SIZE is the default, 16,384.
        // :status 200 indexed; x-big as a literal: its form, the name's length and name,
        // the value's length (4 bytes for 20,000) and value.
        let block = 1 + (1 + 1 + 5) + (4 + 20_000);
        assert_eq!(
            heads,
            [
                (kind::HEADERS, flag::END_STREAM, 1, 16_384),
                (kind::CONTINUATION, flag::END_HEADERS, 1, block - 16_384),
                (
                    kind::HEADERS,
                    flag::END_STREAM | flag::END_HEADERS,
                    3,
                    1 + 1 + 8 + 1 + 1
                ),
            ]
        );
        let mut d = Decoder::new(4096);
        let mut fields = Vec::new();
        let whole = [&frames[0].1[..], &frames[1].1[..]].concat();
        for b in [&whole[..], &frames[2].1[..]] {
            d.decode(b, |f| fields.push((f.name.to_vec(), f.value.len())))
                .unwrap();
        }
        let fields: Vec<(&[u8], usize)> = fields.iter().map(|(n, l)| (&n[..], *l)).collect();
        assert_eq!(
            fields,
            [
                (&b":status"[..], 3),
                (b"x-big", 20_000),
                (b":status", 3),
                (b"x-small", 1)
            ]
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
