//! The client side of one HTTP/2 connection (to an h2 worker), without I/O (RFC 9113
//! §3–6, §8): requests go in as calls (`send_request`, `send_data`, `send_trailers`,
//! `reset`), bytes read from the server go in (`recv`), and responses, their bodies,
//! resets and what the server did not process come out as events; the frames to write come
//! out of one buffer (`out`). What both sides do alike is `conn::Core`'s; here is what a
//! client adds: the preface, the streams it opens within the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS, response heads (interim ones too), and what REFUSED_STREAM
//! and GOAWAY say was never processed (§8.7), which is what makes a retry safe.

use bytes::{Bytes, BytesMut};

use super::conn::{self, Core, Local, Phase, Role, UNDECODABLE, fail};
use super::frame::{self, Code, Frame, Settings};
use super::hpack;
use super::message::{self, HeadError};

pub use super::conn::{ConnError, Event};

/// This side's settings and limits.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Each stream's receive window; the connection's (at least 65,535 each).
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a response's fields, counted as the setting counts.
    pub max_header_list_size: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            stream_window: 1 << 20,
            connection_window: 1 << 20,
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: 64 * 1024,
        }
    }
}

/// The highest stream identifier (2^31 - 1).
const MAX_STREAM: u32 = (1 << 31) - 1;

pub struct Client {
    core: Core,
    /// The identifier the next stream takes.
    next_stream: u32,
    /// The last stream the server's GOAWAY says it may process: nothing more opens.
    goaway: Option<u32>,
    /// This side sent GOAWAY: nothing more opens.
    closing: bool,
}

/// A request's pseudo-fields (§8.3.1).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a [u8],
    pub scheme: &'a [u8],
    /// Empty: none sent (the request names its host in `host`, §8.3.1).
    pub authority: &'a [u8],
    pub path: &'a [u8],
}

impl Client {
    /// A connection whose preface, SETTINGS (push disabled) and connection window
    /// increase are already in `out`.
    pub fn new(config: Config) -> Client {
        let mut core = Core::new(
            Phase::FirstSettings,
            Local {
                stream_window: config.stream_window,
                connection_window: config.connection_window,
                max_frame_size: config.max_frame_size,
                max_header_list_size: config.max_header_list_size,
            },
        );
        core.out.extend_from_slice(frame::PREFACE);
        core.write_settings(Settings {
            enable_push: Some(false),
            ..Settings::default()
        });
        Client {
            core,
            next_stream: 1,
            goaway: None,
            closing: false,
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

    /// Streams open (not yet ended both ways).
    pub fn open_streams(&self) -> usize {
        self.core.streams.len()
    }

    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS came).
    pub fn max_concurrent_streams(&self) -> u32 {
        self.core.peer_max_concurrent_streams
    }

    /// Whether a new stream may open now: the connection is sound, neither side said
    /// GOAWAY, identifiers are left, and the server's concurrency limit has room.
    pub fn can_open(&self) -> bool {
        self.core.phase != Phase::Failed
            && self.goaway.is_none()
            && !self.closing
            && self.next_stream <= MAX_STREAM
            && self.core.streams.len() < self.core.peer_max_concurrent_streams as usize
    }

    /// Whether the connection can carry no new stream ever again (a GOAWAY either way, a
    /// connection error, identifiers spent): it ends once its streams do.
    pub fn is_closing(&self) -> bool {
        self.core.phase == Phase::Failed
            || self.goaway.is_some()
            || self.closing
            || self.next_stream > MAX_STREAM
    }

    /// Opens a stream with a request head: `target`'s pseudo-fields, then `fields`
    /// (lowercase names). `end_stream`: it has no body. `None` when no stream may open
    /// (`can_open`).
    pub fn send_request<'a>(
        &mut self,
        target: Target<'_>,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        end_stream: bool,
    ) -> Option<u32> {
        if !self.can_open() {
            return None;
        }
        let stream = self.next_stream;
        self.next_stream += 2;
        let core = &mut self.core;
        core.open(stream, None, false);
        let s = core.streams.get_mut(&stream).expect("just opened");
        s.head_sent = true;
        // A response to HEAD has no body, whatever its content-length says (§8.1.1).
        s.no_body = target.method == b"HEAD";
        core.write_head(
            stream,
            |block| {
                hpack::field(b":method", target.method, false, block);
                hpack::field(b":scheme", target.scheme, false, block);
                if !target.authority.is_empty() {
                    hpack::field(b":authority", target.authority, false, block);
                }
                hpack::field(b":path", target.path, false, block);
            },
            fields,
            end_stream,
        );
        if end_stream {
            core.end_local(stream);
        }
        Some(stream)
    }

    /// Takes every whole frame from `buf` (what was read from the server). An error ends
    /// the connection: its GOAWAY is in `out`, to be written before closing.
    pub fn recv(&mut self, buf: &mut BytesMut) -> Result<(), ConnError> {
        conn::recv(self, buf)
    }

    fn response(&mut self, stream: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let idle = self.is_idle(stream);
        let core = &mut self.core;
        let Some(s) = core.streams.get(&stream) else {
            if idle {
                return fail(Code::PROTOCOL_ERROR, "HEADERS on an idle stream");
            }
            // Closed: its block still counts for HPACK, and nothing else of it does.
            core.skip(block)?;
            if core.was_reset(stream) {
                return Ok(());
            }
            return fail(Code::STREAM_CLOSED, "HEADERS on a closed stream");
        };
        if s.head_received {
            return core.trailers(stream, end_stream, block);
        }
        let limit = core.local.max_header_list_size as usize;
        let head = match message::Head::response(&mut core.decoder, block, limit) {
            Ok(head) => head,
            Err(HeadError::Compression(_)) => return fail(Code::COMPRESSION_ERROR, UNDECODABLE),
            // Malformed, or more than this side will hold: the stream's error either way.
            Err(HeadError::Malformed(_) | HeadError::TooLarge) => {
                core.reset_for_error(stream, Code::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        let status = head.status().expect("a response head has a status");
        if (100..200).contains(&status) {
            // 101 does not exist in HTTP/2 (§8.6), and an interim head cannot end a stream.
            if status == 101 || end_stream {
                core.reset_for_error(stream, Code::PROTOCOL_ERROR);
            } else {
                core.events.push_back(Event::Interim { stream, head });
            }
            return Ok(());
        }
        // No body whatever the length says: the answer to HEAD, 204, 304 (RFC 9110 §6.4.1).
        let no_body = s.no_body || status == 204 || status == 304;
        let length = match head.content_length() {
            Ok(n) if !no_body => n,
            Ok(_) => None,
            Err(_) => {
                core.reset_for_error(stream, Code::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        if end_stream && length.is_some_and(|n| n > 0) {
            core.reset_for_error(stream, Code::PROTOCOL_ERROR);
            return Ok(());
        }
        let s = core.streams.get_mut(&stream).expect("open");
        s.head_received = true;
        s.length = length;
        s.remote_done = end_stream;
        core.events.push_back(Event::Response {
            stream,
            head,
            end_stream,
        });
        core.close_if_done(stream);
        Ok(())
    }

    fn rst_stream(&mut self, stream: u32, code: Code) -> Result<(), ConnError> {
        if self.is_idle(stream) {
            return fail(Code::PROTOCOL_ERROR, "RST_STREAM on an idle stream");
        }
        if self.core.remove(stream).is_some() {
            let event = if code == Code::REFUSED_STREAM {
                Event::Unprocessed { stream }
            } else {
                Event::Reset {
                    stream,
                    code,
                    by_peer: true,
                }
            };
            self.core.events.push_back(event);
        }
        Ok(())
    }

    /// The server's GOAWAY: streams above its last one were not processed, and go (as
    /// `Unprocessed`); the others finish. A second GOAWAY may only lower the last stream.
    fn goaway_received(&mut self, last_stream: u32, code: Code) {
        let last = self.goaway.map_or(last_stream, |l| l.min(last_stream));
        self.goaway = Some(last);
        let mut above: Vec<u32> = self
            .core
            .streams
            .keys()
            .copied()
            .filter(|&id| id > last)
            .collect();
        above.sort_unstable();
        for stream in above {
            self.core.remove(stream);
            self.core.events.push_back(Event::Unprocessed { stream });
        }
        self.core.events.push_back(Event::GoAway { code });
    }

    /// The caller consumed `n` bytes of the stream's response body: credit goes back to
    /// the server as the windows' policy says.
    pub fn release(&mut self, stream: u32, n: u32) {
        self.core.release(stream, n);
    }

    /// Sends as much of `data` as the windows allow, taking it from the front; `end`: the
    /// body ends with it. Returns whether the stream is still there to send on.
    pub fn send_data(&mut self, stream: u32, data: &mut Bytes, end: bool) -> bool {
        self.core.send_data(stream, data, end)
    }

    /// What `stream` may send now (the lesser of its window and the connection's).
    pub fn capacity(&self, stream: u32) -> u32 {
        self.core.capacity(stream)
    }

    /// Ends the request with trailers.
    pub fn send_trailers<'a>(
        &mut self,
        stream: u32,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> bool {
        self.core.send_trailers(stream, fields)
    }

    /// Resets a stream: the request broke off, or its response is no longer wanted.
    pub fn reset(&mut self, stream: u32, code: Code) {
        self.core.reset(stream, code);
    }

    /// Sends a PING; its answer comes as `Event::PingAck` with the same payload.
    pub fn ping(&mut self, payload: [u8; 8]) {
        frame::ping(false, payload, &mut self.core.out);
    }

    /// Starts a graceful close: streams open finish, no new one opens.
    pub fn goaway(&mut self) {
        if !self.closing {
            self.closing = true;
            frame::goaway(0, Code::NO_ERROR, &[], &mut self.core.out);
        }
    }
}

impl Role for Client {
    const NOT_SETTINGS_FIRST: &'static str = "the server's first frame is not SETTINGS";

    fn core(&mut self) -> &mut Core {
        &mut self.core
    }

    /// The server opens no stream: the last one this side processed is 0.
    fn last_processed(&self) -> u32 {
        0
    }

    /// A stream this side has not opened; the server opens none (no push).
    fn is_idle(&self, stream: u32) -> bool {
        stream.is_multiple_of(2) || stream >= self.next_stream
    }

    fn headers(&mut self, stream: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        self.response(stream, end_stream, block)
    }

    fn control(&mut self, frame: Frame<'_>) -> Result<(), ConnError> {
        let core = &mut self.core;
        match frame {
            Frame::RstStream { stream, code } => self.rst_stream(stream, code),
            Frame::Settings(s) => {
                if s.enable_push == Some(true) {
                    return fail(Code::PROTOCOL_ERROR, "a server's SETTINGS_ENABLE_PUSH of 1");
                }
                let more = s
                    .max_concurrent_streams
                    .is_some_and(|n| n > core.peer_max_concurrent_streams);
                core.settings(s)?;
                if more {
                    // Streams waiting for room may open now.
                    core.events.push_back(Event::Writable);
                }
                Ok(())
            }
            Frame::Ping { ack, payload } => {
                if ack {
                    core.events.push_back(Event::PingAck { payload });
                } else {
                    frame::ping(true, payload, &mut core.out);
                }
                Ok(())
            }
            Frame::GoAway {
                last_stream, code, ..
            } => {
                self.goaway_received(last_stream, code);
                Ok(())
            }
            _ => unreachable!("conn::recv hands over control frames only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::{HEAD_LEN, Head, kind};
    use crate::codec::hpack::Decoder;

    /// A client past the handshake: the server's empty SETTINGS taken, what the client
    /// wrote so far drained.
    fn open(settings: Settings) -> Client {
        let mut c = Client::new(Config::default());
        let mut b = BytesMut::new();
        settings.write(&mut b);
        c.recv(&mut b).unwrap();
        c.out().clear();
        c
    }

    fn target(method: &'static str) -> Target<'static> {
        Target {
            method: method.as_bytes(),
            scheme: b"http",
            authority: b"w",
            path: b"/",
        }
    }

    fn get(c: &mut Client) -> u32 {
        c.send_request(target("GET"), [], true)
            .expect("a stream opens")
    }

    /// A response head from the server, as frames.
    fn response(stream: u32, status: u16, fields: &[(&str, &str)], end: bool) -> BytesMut {
        let mut block = Vec::new();
        hpack::status(status, &mut block);
        for (n, v) in fields {
            hpack::field(n.as_bytes(), v.as_bytes(), false, &mut block);
        }
        let mut b = BytesMut::new();
        frame::headers(stream, &block, end, 16_384, &mut b);
        b
    }

    fn data(stream: u32, bytes: &[u8], end: bool) -> BytesMut {
        let mut b = BytesMut::new();
        frame::data_head(stream, bytes.len(), end, &mut b);
        b.extend_from_slice(bytes);
        b
    }

    /// The frames in `out`, drained: (head, payload).
    fn written(c: &mut Client) -> Vec<(Head, Vec<u8>)> {
        let out = c.out().split();
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

    fn events(c: &mut Client) -> Vec<Event> {
        std::iter::from_fn(|| c.event()).collect()
    }

    fn recv(c: &mut Client, mut b: BytesMut) -> Result<(), ConnError> {
        let r = c.recv(&mut b);
        assert!(b.is_empty() || r.is_err(), "every whole frame taken");
        r
    }

    #[test]
    fn the_preface_and_settings_go_first_and_the_servers_must_be_settings() {
        let mut c = Client::new(Config::default());
        let out = c.out().split();
        assert!(out.starts_with(frame::PREFACE));
        let settings = &out[frame::PREFACE.len()..];
        let head = Head::parse(settings[..HEAD_LEN].try_into().unwrap());
        assert_eq!(head.kind, kind::SETTINGS);
        let payload = &settings[HEAD_LEN..HEAD_LEN + head.len as usize];
        assert!(
            payload.chunks(6).any(|p| p == [0, 2, 0, 0, 0, 0]),
            "SETTINGS_ENABLE_PUSH = 0: {payload:?}"
        );

        // A server whose first frame is not SETTINGS.
        let mut b = BytesMut::new();
        frame::ping(false, [0; 8], &mut b);
        let e = c.recv(&mut b).unwrap_err();
        assert_eq!(e.code, Code::PROTOCOL_ERROR);
        let frames = written(&mut c);
        assert_eq!(frames.last().unwrap().0.kind, kind::GOAWAY);
        assert!(!c.can_open());

        // One that pushes is refused too.
        let mut c = Client::new(Config::default());
        let mut b = BytesMut::new();
        Settings {
            enable_push: Some(true),
            ..Settings::default()
        }
        .write(&mut b);
        assert_eq!(c.recv(&mut b).unwrap_err().code, Code::PROTOCOL_ERROR);
    }

    #[test]
    fn a_request_goes_out_and_its_response_body_and_trailers_come_back() {
        let mut c = open(Settings::default());
        let stream = c
            .send_request(
                target("POST"),
                [(&b"content-type"[..], &b"application/grpc"[..])],
                false,
            )
            .unwrap();
        assert_eq!(stream, 1);
        let frames = written(&mut c);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.kind, kind::HEADERS);
        let head = message::Head::request(&mut Decoder::new(4096), &frames[0].1, 1 << 16).unwrap();
        assert_eq!(head.method(), Some(&b"POST"[..]));
        assert_eq!(head.scheme(), Some(&b"http"[..]));
        assert_eq!(head.authority(), Some(&b"w"[..]));
        assert_eq!(head.path(), Some(&b"/"[..]));
        assert_eq!(
            head.values(b"content-type").next(),
            Some(&b"application/grpc"[..])
        );

        let mut body = Bytes::from_static(b"ping");
        assert!(c.send_data(stream, &mut body, true));
        assert!(body.is_empty());

        let mut b = response(1, 200, &[("content-length", "5")], false);
        b.extend(data(1, b"hello", false));
        let mut block = Vec::new();
        hpack::field(b"grpc-status", b"0", false, &mut block);
        frame::headers(1, &block, true, 16_384, &mut b);
        recv(&mut c, b).unwrap();
        let got = events(&mut c);
        assert!(
            matches!(&got[..], [
                Event::Response { stream: 1, head, end_stream: false },
                Event::Data { stream: 1, data, end_stream: false },
                Event::Trailers { stream: 1, head: trailers },
            ] if head.status() == Some(200)
                && &data[..] == b"hello"
                && trailers.values(b"grpc-status").next() == Some(&b"0"[..])),
            "{got:?}"
        );
        assert_eq!(c.open_streams(), 0, "ended both ways");
    }

    #[test]
    fn interim_heads_come_before_the_final_one_and_101_is_refused() {
        let mut c = open(Settings::default());
        let one = get(&mut c);
        let mut b = response(one, 103, &[("link", "</a>")], false);
        b.extend(response(one, 200, &[], true));
        recv(&mut c, b).unwrap();
        let got = events(&mut c);
        assert!(
            matches!(&got[..], [
                Event::Interim { stream: 1, head: early },
                Event::Response { stream: 1, head: last, end_stream: true },
            ] if early.status() == Some(103) && last.status() == Some(200)),
            "{got:?}"
        );

        let two = get(&mut c);
        recv(&mut c, response(two, 101, &[], false)).unwrap();
        assert!(matches!(
            &events(&mut c)[..],
            [Event::Reset {
                stream: 3,
                code: Code::PROTOCOL_ERROR,
                by_peer: false
            }]
        ));
    }

    #[test]
    fn refused_streams_and_those_above_a_goaway_were_not_processed() {
        let mut c = open(Settings::default());
        let (one, three, five, seven) = (get(&mut c), get(&mut c), get(&mut c), get(&mut c));
        let mut b = BytesMut::new();
        frame::rst_stream(three, Code::REFUSED_STREAM, &mut b);
        frame::rst_stream(one, Code::CANCEL, &mut b);
        frame::goaway(five, Code::NO_ERROR, b"", &mut b);
        recv(&mut c, b).unwrap();
        let got = events(&mut c);
        assert!(
            matches!(
                &got[..],
                [
                    Event::Unprocessed { stream: 3 },
                    Event::Reset {
                        stream: 1,
                        code: Code::CANCEL,
                        by_peer: true
                    },
                    Event::Unprocessed { stream: 7 },
                    Event::GoAway {
                        code: Code::NO_ERROR
                    },
                ]
            ),
            "{got:?}"
        );
        assert!(!c.can_open());
        assert!(c.is_closing());
        assert!(c.send_request(target("GET"), [], true).is_none());
        // Stream 5, at the GOAWAY's last stream, is still served.
        recv(&mut c, response(five, 200, &[], true)).unwrap();
        assert!(matches!(
            &events(&mut c)[..],
            [Event::Response { stream: 5, .. }]
        ));
        assert_eq!(c.open_streams(), 0);
        let _ = seven;
    }

    #[test]
    fn no_more_streams_open_than_the_server_allows() {
        let mut c = open(Settings {
            max_concurrent_streams: Some(1),
            ..Settings::default()
        });
        let one = get(&mut c);
        assert!(!c.can_open());
        assert!(c.send_request(target("GET"), [], true).is_none());
        recv(&mut c, response(one, 204, &[], true)).unwrap();
        assert!(c.can_open(), "the stream ended both ways");
        // A raised limit says so.
        get(&mut c);
        let mut b = BytesMut::new();
        Settings {
            max_concurrent_streams: Some(2),
            ..Settings::default()
        }
        .write(&mut b);
        recv(&mut c, b).unwrap();
        assert!(events(&mut c).iter().any(|e| matches!(e, Event::Writable)));
        assert!(c.can_open());
    }

    #[test]
    fn what_the_server_breaks_resets_the_stream_or_ends_the_connection() {
        let mut c = open(Settings::default());
        // DATA before the response head: the stream's error.
        let one = get(&mut c);
        written(&mut c);
        recv(&mut c, data(one, b"x", false)).unwrap();
        assert!(matches!(
            &events(&mut c)[..],
            [Event::Reset {
                stream: 1,
                code: Code::PROTOCOL_ERROR,
                by_peer: false
            }]
        ));
        assert_eq!(written(&mut c)[0].0.kind, kind::RST_STREAM);

        // A body longer than its content-length.
        let three = get(&mut c);
        let mut b = response(three, 200, &[("content-length", "1")], false);
        b.extend(data(three, b"xy", true));
        recv(&mut c, b).unwrap();
        assert!(matches!(
            &events(&mut c)[..],
            [
                Event::Response { .. },
                Event::Reset {
                    stream: 3,
                    code: Code::PROTOCOL_ERROR,
                    ..
                }
            ]
        ));

        // HEAD's answer has a content-length and no body: fine.
        let five = c.send_request(target("HEAD"), [], true).unwrap();
        recv(
            &mut c,
            response(five, 200, &[("content-length", "9")], true),
        )
        .unwrap();
        assert!(matches!(
            &events(&mut c)[..],
            [Event::Response {
                stream: 5,
                end_stream: true,
                ..
            }]
        ));

        // HEADERS on a stream the server would have to open: the connection's error.
        let e = recv(&mut c, response(2, 200, &[], true)).unwrap_err();
        assert_eq!(e.code, Code::PROTOCOL_ERROR);
        assert!(c.is_closing());
    }

    #[test]
    fn pings_are_answered_and_acknowledged() {
        let mut c = open(Settings::default());
        c.ping(*b"12345678");
        let frames = written(&mut c);
        assert_eq!((frames[0].0.kind, frames[0].0.flags), (kind::PING, 0));
        let mut b = BytesMut::new();
        frame::ping(true, *b"12345678", &mut b);
        frame::ping(false, *b"abcdefgh", &mut b);
        recv(&mut c, b).unwrap();
        assert!(matches!(
            &events(&mut c)[..],
            [Event::PingAck { payload }] if payload == b"12345678"
        ));
        let frames = written(&mut c);
        assert_eq!((frames[0].0.kind, frames[0].0.flags), (kind::PING, 1));
        assert_eq!(frames[0].1, b"abcdefgh");
    }
}
