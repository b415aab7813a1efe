//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte head, each type's payload checked as the
//! RFC requires, and the frames the proxy writes. Parsing borrows the payload; what a
//! frame means for a stream or the connection (order, state, windows) is the connection's
//! business, not this module's.

use bytes::BufMut;

/// The frame head's size.
pub const HEAD_LEN: usize = 9;

/// What a client sends first, before its SETTINGS (§3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// SETTINGS_MAX_FRAME_SIZE's initial value, and the least a peer may set.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1 << 14;
/// The largest SETTINGS_MAX_FRAME_SIZE (2^24 - 1).
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// Every flow-control window's initial size (§6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;
/// The largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags; each means something only on the types named.
pub mod flag {
    /// DATA, HEADERS.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING.
    pub const ACK: u8 = 0x1;
    /// HEADERS, PUSH_PROMISE, CONTINUATION.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS, PUSH_PROMISE.
    pub const PADDED: u8 = 0x8;
    /// HEADERS.
    pub const PRIORITY: u8 = 0x20;
}

/// An error code (RFC 9113 §7), as RST_STREAM and GOAWAY carry it. Codes this side does
/// not know are kept as they came (§7: "MUST NOT trigger any special behavior").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u32);

impl Code {
    pub const NO_ERROR: Code = Code(0x0);
    pub const PROTOCOL_ERROR: Code = Code(0x1);
    pub const INTERNAL_ERROR: Code = Code(0x2);
    pub const FLOW_CONTROL_ERROR: Code = Code(0x3);
    pub const SETTINGS_TIMEOUT: Code = Code(0x4);
    pub const STREAM_CLOSED: Code = Code(0x5);
    pub const FRAME_SIZE_ERROR: Code = Code(0x6);
    pub const REFUSED_STREAM: Code = Code(0x7);
    pub const CANCEL: Code = Code(0x8);
    pub const COMPRESSION_ERROR: Code = Code(0x9);
    pub const CONNECT_ERROR: Code = Code(0xa);
    pub const ENHANCE_YOUR_CALM: Code = Code(0xb);
    pub const INADEQUATE_SECURITY: Code = Code(0xc);
    pub const HTTP_1_1_REQUIRED: Code = Code(0xd);
}

/// A frame's 9-byte head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The payload's length (24 bits).
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// 31 bits; the reserved bit is ignored on receipt (§4.1).
    pub stream: u32,
}

impl Head {
    pub fn parse(b: &[u8; HEAD_LEN]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    pub fn write(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.len.to_be_bytes()[1..]);
        dst.put_u8(self.kind);
        dst.put_u8(self.flags);
        dst.put_u32(self.stream);
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A stream's priority as HEADERS or PRIORITY carry it: parsed for its checks only, since
/// RFC 9113 deprecates the scheme and the proxy schedules streams its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub exclusive: bool,
    pub depends_on: u32,
    /// As sent (the weight is this plus one).
    pub weight: u8,
}

/// A parsed frame; payloads are slices of the bytes given to [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        stream: u32,
        end_stream: bool,
        /// The data, padding removed.
        data: &'a [u8],
        /// What counts against flow control: the whole payload, padding included (§6.1).
        flow_len: u32,
    },
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
        /// The field block fragment, padding removed.
        fragment: &'a [u8],
    },
    Priority {
        stream: u32,
        priority: Priority,
    },
    RstStream {
        stream: u32,
        code: Code,
    },
    Settings(Settings),
    SettingsAck,
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: Code,
        debug: &'a [u8],
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
        fragment: &'a [u8],
    },
    /// A type this side does not know: ignored, as §5.5 requires.
    Unknown,
}

/// The parameters one SETTINGS frame sets (`None`: not in it). Unknown ones are
/// ignored (§6.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
    pub enable_connect_protocol: Option<bool>,
}

impl Settings {
    const HEADER_TABLE_SIZE: u16 = 0x1;
    const ENABLE_PUSH: u16 = 0x2;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    const MAX_FRAME_SIZE: u16 = 0x5;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

    fn parse(payload: &[u8]) -> Result<Settings, FrameError> {
        let mut s = Settings::default();
        for p in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([p[0], p[1]]);
            let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            let flag = |value| match value {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(FrameError::connection(
                    Code::PROTOCOL_ERROR,
                    "a boolean setting not 0 or 1",
                )),
            };
            match id {
                Self::HEADER_TABLE_SIZE => s.header_table_size = Some(value),
                Self::ENABLE_PUSH => s.enable_push = Some(flag(value)?),
                Self::MAX_CONCURRENT_STREAMS => s.max_concurrent_streams = Some(value),
                Self::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
                    return Err(FrameError::connection(
                        Code::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                    ));
                }
                Self::INITIAL_WINDOW_SIZE => s.initial_window_size = Some(value),
                Self::MAX_FRAME_SIZE
                    if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) =>
                {
                    return Err(FrameError::connection(
                        Code::PROTOCOL_ERROR,
                        "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
                    ));
                }
                Self::MAX_FRAME_SIZE => s.max_frame_size = Some(value),
                Self::MAX_HEADER_LIST_SIZE => s.max_header_list_size = Some(value),
                Self::ENABLE_CONNECT_PROTOCOL => s.enable_connect_protocol = Some(flag(value)?),
                _ => {}
            }
        }
        Ok(s)
    }

    /// Appends a SETTINGS frame with the parameters set here.
    pub fn write(&self, dst: &mut impl BufMut) {
        let params = [
            (Self::HEADER_TABLE_SIZE, self.header_table_size),
            (Self::ENABLE_PUSH, self.enable_push.map(u32::from)),
            (Self::MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (Self::INITIAL_WINDOW_SIZE, self.initial_window_size),
            (Self::MAX_FRAME_SIZE, self.max_frame_size),
            (Self::MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            (
                Self::ENABLE_CONNECT_PROTOCOL,
                self.enable_connect_protocol.map(u32::from),
            ),
        ];
        let n = params.iter().filter(|(_, v)| v.is_some()).count();
        let head = Head {
            len: 6 * n as u32,
            kind: kind::SETTINGS,
            flags: 0,
            stream: 0,
        };
        head.write(dst);
        for (id, value) in params {
            if let Some(value) = value {
                dst.put_u16(id);
                dst.put_u32(value);
            }
        }
    }
}

/// Why a frame is refused: the code to send, and whether it ends only its stream
/// (RST_STREAM) or the whole connection (GOAWAY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct FrameError {
    pub code: Code,
    /// `Some`: a stream error on that stream; `None`: a connection error.
    pub stream: Option<u32>,
    pub why: &'static str,
}

impl FrameError {
    fn connection(code: Code, why: &'static str) -> FrameError {
        FrameError {
            code,
            stream: None,
            why,
        }
    }

    fn stream(stream: u32, code: Code, why: &'static str) -> FrameError {
        FrameError {
            code,
            stream: Some(stream),
            why,
        }
    }
}

/// Parses the frame `head` announced, whose payload is `payload` (exactly `head.len`
/// bytes). The caller has checked `head.len` against its SETTINGS_MAX_FRAME_SIZE (with
/// [`check_size`]) before reading the payload.
pub fn parse(head: Head, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    debug_assert_eq!(payload.len(), head.len as usize);
    let stream = head.stream;
    let on_stream = |what: &'static str| {
        if stream == 0 {
            Err(FrameError::connection(Code::PROTOCOL_ERROR, what))
        } else {
            Ok(())
        }
    };
    let on_connection = |what: &'static str| {
        if stream != 0 {
            Err(FrameError::connection(Code::PROTOCOL_ERROR, what))
        } else {
            Ok(())
        }
    };
    let size = |ok: bool, what: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(FrameError::connection(Code::FRAME_SIZE_ERROR, what))
        }
    };
    Ok(match head.kind {
        kind::DATA => {
            on_stream("DATA on stream 0")?;
            Frame::Data {
                stream,
                end_stream: head.has(flag::END_STREAM),
                data: unpad(head, payload)?,
                flow_len: head.len,
            }
        }
        kind::HEADERS => {
            on_stream("HEADERS on stream 0")?;
            let mut fragment = unpad(head, payload)?;
            let mut priority = None;
            if head.has(flag::PRIORITY) {
                if fragment.len() < 5 {
                    return Err(if head.has(flag::PADDED) {
                        FrameError::connection(Code::PROTOCOL_ERROR, "padding over the priority")
                    } else {
                        FrameError::connection(
                            Code::FRAME_SIZE_ERROR,
                            "HEADERS too short for its priority",
                        )
                    });
                }
                let p = priority_of(stream, &fragment[..5])?;
                fragment = &fragment[5..];
                priority = Some(p);
            }
            Frame::Headers {
                stream,
                end_stream: head.has(flag::END_STREAM),
                end_headers: head.has(flag::END_HEADERS),
                priority,
                fragment,
            }
        }
        kind::PRIORITY => {
            on_stream("PRIORITY on stream 0")?;
            if payload.len() != 5 {
                return Err(FrameError::stream(
                    stream,
                    Code::FRAME_SIZE_ERROR,
                    "PRIORITY not 5 bytes long",
                ));
            }
            Frame::Priority {
                stream,
                priority: priority_of(stream, payload)?,
            }
        }
        kind::RST_STREAM => {
            on_stream("RST_STREAM on stream 0")?;
            size(payload.len() == 4, "RST_STREAM not 4 bytes long")?;
            Frame::RstStream {
                stream,
                code: Code(be32(payload)),
            }
        }
        kind::SETTINGS => {
            on_connection("SETTINGS on a stream")?;
            if head.has(flag::ACK) {
                size(
                    payload.is_empty(),
                    "SETTINGS acknowledgement with a payload",
                )?;
                Frame::SettingsAck
            } else {
                size(
                    payload.len().is_multiple_of(6),
                    "SETTINGS not a multiple of 6 bytes",
                )?;
                Frame::Settings(Settings::parse(payload)?)
            }
        }
        kind::PUSH_PROMISE => {
            // The proxy never enables push, as a client, and clients may not push (§8.4).
            return Err(FrameError::connection(
                Code::PROTOCOL_ERROR,
                "PUSH_PROMISE, which this side does not allow",
            ));
        }
        kind::PING => {
            on_connection("PING on a stream")?;
            size(payload.len() == 8, "PING not 8 bytes long")?;
            Frame::Ping {
                ack: head.has(flag::ACK),
                payload: payload.try_into().expect("8 bytes"),
            }
        }
        kind::GOAWAY => {
            on_connection("GOAWAY on a stream")?;
            size(payload.len() >= 8, "GOAWAY shorter than 8 bytes")?;
            Frame::GoAway {
                last_stream: be32(payload) & MAX_WINDOW,
                code: Code(be32(&payload[4..])),
                debug: &payload[8..],
            }
        }
        kind::WINDOW_UPDATE => {
            size(payload.len() == 4, "WINDOW_UPDATE not 4 bytes long")?;
            let increment = be32(payload) & MAX_WINDOW;
            if increment == 0 {
                let why = "WINDOW_UPDATE of 0";
                return Err(if stream == 0 {
                    FrameError::connection(Code::PROTOCOL_ERROR, why)
                } else {
                    FrameError::stream(stream, Code::PROTOCOL_ERROR, why)
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        kind::CONTINUATION => {
            on_stream("CONTINUATION on stream 0")?;
            Frame::Continuation {
                stream,
                end_headers: head.has(flag::END_HEADERS),
                fragment: payload,
            }
        }
        _ => Frame::Unknown,
    })
}

/// Checks a frame's announced length against this side's SETTINGS_MAX_FRAME_SIZE before
/// its payload is read. Too long is a connection error whatever the type: the RFC
/// requires it for most (§4.2), and allows it for the rest.
pub fn check_size(head: &Head, max_frame_size: u32) -> Result<(), FrameError> {
    if head.len > max_frame_size {
        return Err(FrameError::connection(
            Code::FRAME_SIZE_ERROR,
            "a frame longer than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    Ok(())
}

/// The payload without its padding (§6.1): a Pad Length byte first, that many bytes at the
/// end, which must leave room for the rest.
fn unpad(head: Head, payload: &[u8]) -> Result<&[u8], FrameError> {
    if !head.has(flag::PADDED) {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        return Err(FrameError::connection(
            Code::FRAME_SIZE_ERROR,
            "a padded frame without its Pad Length",
        ));
    };
    let pad = pad as usize;
    if pad > rest.len() {
        return Err(FrameError::connection(
            Code::PROTOCOL_ERROR,
            "padding longer than the payload",
        ));
    }
    Ok(&rest[..rest.len() - pad])
}

/// A priority block (exclusive bit, dependency, weight). A stream that depends on itself
/// is that stream's error (§5.3.1).
fn priority_of(stream: u32, b: &[u8]) -> Result<Priority, FrameError> {
    let dependency = be32(b);
    let depends_on = dependency & MAX_WINDOW;
    if depends_on == stream {
        return Err(FrameError::stream(
            stream,
            Code::PROTOCOL_ERROR,
            "a stream that depends on itself",
        ));
    }
    Ok(Priority {
        exclusive: dependency & !MAX_WINDOW != 0,
        depends_on,
        weight: b[4],
    })
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Appends a DATA frame's head; its `len` bytes of data follow (written by the caller, or
/// sent as their own buffer).
pub fn data_head(stream: u32, len: usize, end_stream: bool, dst: &mut impl BufMut) {
    Head {
        len: len as u32,
        kind: kind::DATA,
        flags: if end_stream { flag::END_STREAM } else { 0 },
        stream,
    }
    .write(dst);
}

/// Appends a field block as HEADERS, then as many CONTINUATION frames as `max_frame_size`
/// requires (§4.3: nothing may come between them).
pub fn headers(
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
    dst: &mut impl BufMut,
) {
    let max = max_frame_size as usize;
    let mut chunks = block.chunks(max.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let mut rest = chunks.peekable();
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if rest.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    let mut kind = kind::HEADERS;
    let mut chunk = first;
    loop {
        Head {
            len: chunk.len() as u32,
            kind,
            flags,
            stream,
        }
        .write(dst);
        dst.put_slice(chunk);
        let Some(next) = rest.next() else { return };
        chunk = next;
        kind = kind::CONTINUATION;
        flags = if rest.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
    }
}

/// Appends RST_STREAM.
pub fn rst_stream(stream: u32, code: Code, dst: &mut impl BufMut) {
    Head {
        len: 4,
        kind: kind::RST_STREAM,
        flags: 0,
        stream,
    }
    .write(dst);
    dst.put_u32(code.0);
}

/// Appends the acknowledgement of the peer's SETTINGS.
pub fn settings_ack(dst: &mut impl BufMut) {
    Head {
        len: 0,
        kind: kind::SETTINGS,
        flags: flag::ACK,
        stream: 0,
    }
    .write(dst);
}

/// Appends PING (`ack`: the answer to the peer's, with its payload).
pub fn ping(ack: bool, payload: [u8; 8], dst: &mut impl BufMut) {
    Head {
        len: 8,
        kind: kind::PING,
        flags: if ack { flag::ACK } else { 0 },
        stream: 0,
    }
    .write(dst);
    dst.put_slice(&payload);
}

/// Appends GOAWAY: streams above `last_stream` were not and will not be processed.
pub fn goaway(last_stream: u32, code: Code, debug: &[u8], dst: &mut impl BufMut) {
    Head {
        len: 8 + debug.len() as u32,
        kind: kind::GOAWAY,
        flags: 0,
        stream: 0,
    }
    .write(dst);
    dst.put_u32(last_stream);
    dst.put_u32(code.0);
    dst.put_slice(debug);
}

/// Appends WINDOW_UPDATE (stream 0: the connection's window).
pub fn window_update(stream: u32, increment: u32, dst: &mut impl BufMut) {
    Head {
        len: 4,
        kind: kind::WINDOW_UPDATE,
        flags: 0,
        stream,
    }
    .write(dst);
    dst.put_u32(increment);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses one frame from its exact bytes: head, then payload.
    fn parsed(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
        let head = Head::parse(bytes[..HEAD_LEN].try_into().unwrap());
        assert_eq!(
            head.len as usize,
            bytes.len() - HEAD_LEN,
            "test bytes have their length"
        );
        parse(head, &bytes[HEAD_LEN..])
    }

    fn conn(code: Code) -> impl Fn(FrameError) -> bool {
        move |e| e.code == code && e.stream.is_none()
    }

    #[test]
    fn heads_read_back_and_ignore_the_reserved_bit() {
        let head = Head {
            len: 0x01_02_03,
            kind: kind::HEADERS,
            flags: flag::END_HEADERS,
            stream: 7,
        };
        let mut b = Vec::new();
        head.write(&mut b);
        assert_eq!(b, [1, 2, 3, 1, 4, 0, 0, 0, 7]);
        b[5] |= 0x80;
        assert_eq!(Head::parse(b[..].try_into().unwrap()), head);
    }

    #[test]
    fn data_loses_its_padding_but_counts_it() {
        // Padded: Pad Length 2, "hi", two bytes of padding, END_STREAM.
        let f = parsed(&[0, 0, 5, 0, 0x9, 0, 0, 0, 1, 2, b'h', b'i', 0, 0]).unwrap();
        let want = Frame::Data {
            stream: 1,
            end_stream: true,
            data: b"hi",
            flow_len: 5,
        };
        assert_eq!(f, want);
        // Padding longer than what follows its length byte.
        let e = parsed(&[0, 0, 2, 0, 0x8, 0, 0, 0, 1, 2, b'h']).unwrap_err();
        assert!(conn(Code::PROTOCOL_ERROR)(e));
        // PADDED with no payload at all.
        let e = parsed(&[0, 0, 0, 0, 0x8, 0, 0, 0, 1]).unwrap_err();
        assert!(conn(Code::FRAME_SIZE_ERROR)(e));
        let e = parsed(&[0, 0, 1, 0, 0, 0, 0, 0, 0, b'x']).unwrap_err();
        assert!(conn(Code::PROTOCOL_ERROR)(e));
    }

    #[test]
    fn headers_carry_priority_and_padding() {
        // PADDED | PRIORITY | END_HEADERS on stream 3: pad 1, exclusive dependency on 1,
        // weight 15, fragment 0x82, one byte of padding.
        #[rustfmt::skip]
        let bytes = [0, 0, 8, 1, 0x2c, 0, 0, 0, 3,
            1, 0x80, 0, 0, 1, 15, 0x82, 0];
        let want = Frame::Headers {
            stream: 3,
            end_stream: false,
            end_headers: true,
            priority: Some(Priority {
                exclusive: true,
                depends_on: 1,
                weight: 15,
            }),
            fragment: &[0x82],
        };
        assert_eq!(parsed(&bytes).unwrap(), want);
        // Depending on itself: that stream's error, not the connection's.
        let e = parsed(&[0, 0, 5, 1, 0x24, 0, 0, 0, 3, 0, 0, 0, 3, 15]).unwrap_err();
        assert_eq!((e.code, e.stream), (Code::PROTOCOL_ERROR, Some(3)));
        // Padding that eats into the priority fields.
        let e = parsed(&[0, 0, 6, 1, 0x2c, 0, 0, 0, 3, 1, 0, 0, 0, 1, 15]).unwrap_err();
        assert!(conn(Code::PROTOCOL_ERROR)(e));
        let e = parsed(&[0, 0, 4, 1, 0x24, 0, 0, 0, 3, 0, 0, 0, 1]).unwrap_err();
        assert!(conn(Code::FRAME_SIZE_ERROR)(e));
        let e = parsed(&[0, 0, 1, 1, 0x4, 0, 0, 0, 0, 0x82]).unwrap_err();
        assert!(conn(Code::PROTOCOL_ERROR)(e));
    }

    #[test]
    fn priority_and_rst_stream_are_checked() {
        let f = parsed(&[0, 0, 5, 2, 0, 0, 0, 0, 5, 0, 0, 0, 3, 200]).unwrap();
        assert!(matches!(f, Frame::Priority { stream: 5, priority } if priority.weight == 200));
        let e = parsed(&[0, 0, 4, 2, 0, 0, 0, 0, 5, 0, 0, 0, 3]).unwrap_err();
        assert_eq!((e.code, e.stream), (Code::FRAME_SIZE_ERROR, Some(5)));
        let e = parsed(&[0, 0, 5, 2, 0, 0, 0, 0, 5, 0, 0, 0, 5, 1]).unwrap_err();
        assert_eq!((e.code, e.stream), (Code::PROTOCOL_ERROR, Some(5)));
        let f = parsed(&[0, 0, 4, 3, 0, 0, 0, 0, 5, 0, 0, 0, 8]).unwrap();
        assert_eq!(
            f,
            Frame::RstStream {
                stream: 5,
                code: Code::CANCEL
            }
        );
        let e = parsed(&[0, 0, 3, 3, 0, 0, 0, 0, 5, 0, 0, 8]).unwrap_err();
        assert!(conn(Code::FRAME_SIZE_ERROR)(e));
        let e = parsed(&[0, 0, 4, 3, 0, 0, 0, 0, 0, 0, 0, 0, 8]).unwrap_err();
        assert!(conn(Code::PROTOCOL_ERROR)(e));
    }

    #[test]
    fn settings_round_trip_and_bad_values_are_refused() {
        let sent = Settings {
            header_table_size: Some(0),
            enable_push: Some(false),
            max_concurrent_streams: Some(200),
            initial_window_size: Some(1 << 20),
            max_frame_size: Some(1 << 14),
            max_header_list_size: Some(65536),
            enable_connect_protocol: None,
        };
        let mut b = Vec::new();
        sent.write(&mut b);
        assert_eq!(b.len(), HEAD_LEN + 36);
        assert_eq!(parsed(&b).unwrap(), Frame::Settings(sent));
        // An unknown parameter (0xff) is ignored.
        let f = parsed(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0, 1]).unwrap();
        assert_eq!(f, Frame::Settings(Settings::default()));
        let mut ack = Vec::new();
        settings_ack(&mut ack);
        assert_eq!(parsed(&ack).unwrap(), Frame::SettingsAck);
        let cases: [(&[u8], Code); 6] = [
            (&[0, 0, 1, 4, 1, 0, 0, 0, 0, 0], Code::FRAME_SIZE_ERROR),
            (
                &[0, 0, 3, 4, 0, 0, 0, 0, 0, 0, 1, 0],
                Code::FRAME_SIZE_ERROR,
            ),
            (&[0, 0, 0, 4, 0, 0, 0, 0, 1], Code::PROTOCOL_ERROR),
            (
                &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2],
                Code::PROTOCOL_ERROR,
            ),
            (
                &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0x80, 0, 0, 0],
                Code::FLOW_CONTROL_ERROR,
            ),
            (
                &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0x3f, 0xff],
                Code::PROTOCOL_ERROR,
            ),
        ];
        for (bytes, code) in cases {
            assert!(conn(code)(parsed(bytes).unwrap_err()), "{bytes:?}");
        }
    }

    #[test]
    fn ping_goaway_and_window_update() {
        let mut b = Vec::new();
        ping(true, *b"12345678", &mut b);
        assert_eq!(
            parsed(&b).unwrap(),
            Frame::Ping {
                ack: true,
                payload: *b"12345678"
            }
        );
        let e = parsed(&[0, 0, 7, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap_err();
        assert!(conn(Code::FRAME_SIZE_ERROR)(e));
        let e = parsed(&[0, 0, 8, 6, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap_err();
        assert!(conn(Code::PROTOCOL_ERROR)(e));

        let mut b = Vec::new();
        goaway(9, Code::ENHANCE_YOUR_CALM, b"slow down", &mut b);
        let want = Frame::GoAway {
            last_stream: 9,
            code: Code::ENHANCE_YOUR_CALM,
            debug: b"slow down",
        };
        assert_eq!(parsed(&b).unwrap(), want);
        let e = parsed(&[0, 0, 4, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1]).unwrap_err();
        assert!(conn(Code::FRAME_SIZE_ERROR)(e));

        let mut b = Vec::new();
        window_update(0, MAX_WINDOW, &mut b);
        let want = Frame::WindowUpdate {
            stream: 0,
            increment: MAX_WINDOW,
        };
        assert_eq!(parsed(&b).unwrap(), want);
        let e = parsed(&[0, 0, 4, 8, 0, 0, 0, 0, 3, 0, 0, 0, 0]).unwrap_err();
        assert_eq!((e.code, e.stream), (Code::PROTOCOL_ERROR, Some(3)));
        let e = parsed(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0x80, 0, 0, 0]).unwrap_err();
        assert!(
            conn(Code::PROTOCOL_ERROR)(e),
            "the reserved bit alone is an increment of 0"
        );
        let e = parsed(&[0, 0, 3, 8, 0, 0, 0, 0, 0, 0, 0, 1]).unwrap_err();
        assert!(conn(Code::FRAME_SIZE_ERROR)(e));
    }

    #[test]
    fn continuation_push_promise_and_unknown_types() {
        let f = parsed(&[0, 0, 1, 9, 4, 0, 0, 0, 1, 0x82]).unwrap();
        let want = Frame::Continuation {
            stream: 1,
            end_headers: true,
            fragment: &[0x82],
        };
        assert_eq!(f, want);
        let e = parsed(&[0, 0, 1, 9, 4, 0, 0, 0, 0, 0x82]).unwrap_err();
        assert!(conn(Code::PROTOCOL_ERROR)(e));
        let e = parsed(&[0, 0, 4, 5, 4, 0, 0, 0, 1, 0, 0, 0, 2]).unwrap_err();
        assert!(conn(Code::PROTOCOL_ERROR)(e));
        assert_eq!(
            parsed(&[0, 0, 2, 0xfa, 0xff, 0, 0, 0, 0, 1, 2]).unwrap(),
            Frame::Unknown
        );
    }

    #[test]
    fn long_field_blocks_go_on_in_continuation_frames() {
        let block: Vec<u8> = (0..40).collect();
        let mut b = Vec::new();
        headers(5, &block, true, 16, &mut b);
        let mut at = 0;
        let mut frames = Vec::new();
        while at < b.len() {
            let head = Head::parse(b[at..at + HEAD_LEN].try_into().unwrap());
            let end = at + HEAD_LEN + head.len as usize;
            frames.push((head.kind, head.flags, b[at + HEAD_LEN..end].to_vec()));
            at = end;
        }
        let want = vec![
            (kind::HEADERS, flag::END_STREAM, block[..16].to_vec()),
            (kind::CONTINUATION, 0, block[16..32].to_vec()),
            (kind::CONTINUATION, flag::END_HEADERS, block[32..].to_vec()),
        ];
        assert_eq!(frames, want);
        let mut b = Vec::new();
        headers(1, &[], false, 16, &mut b);
        assert_eq!(b, [0, 0, 0, 1, flag::END_HEADERS, 0, 0, 0, 1]);
    }

    #[test]
    fn frames_longer_than_the_limit_end_the_connection() {
        let head = Head {
            len: DEFAULT_MAX_FRAME_SIZE + 1,
            kind: kind::DATA,
            flags: 0,
            stream: 1,
        };
        assert!(conn(Code::FRAME_SIZE_ERROR)(
            check_size(&head, DEFAULT_MAX_FRAME_SIZE).unwrap_err()
        ));
        assert!(check_size(&head, DEFAULT_MAX_FRAME_SIZE + 1).is_ok());
        let mut b = Vec::new();
        data_head(1, 3, true, &mut b);
        b.extend_from_slice(b"abc");
        assert!(matches!(
            parsed(&b).unwrap(),
            Frame::Data {
                data: b"abc",
                end_stream: true,
                ..
            }
        ));
        let mut b = Vec::new();
        rst_stream(7, Code::REFUSED_STREAM, &mut b);
        assert_eq!(b, [0, 0, 4, 3, 0, 0, 0, 0, 7, 0, 0, 0, 7]);
    }
}
