//! The chunked transfer coding (RFC 9112 §7.1), read incrementally.
//!
//! The proxy forwards a chunked body as it came, byte for byte, and only needs to know where
//! it ends; for an HTTP/1.0 client it sends the data alone. [`Chunked`] walks the framing as
//! bytes arrive, in whatever pieces, and is strict where leniency lets requests be smuggled:
//! chunk lines end in CRLF, sizes are hexadecimal without sign or prefix, and a chunk's data
//! is followed by CRLF.

use std::ops::Range;

/// Longest chunk-size line (size, extensions) and trailer section accepted, in bytes.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct ChunkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the hexadecimal size (`digits` so far).
    Size {
        digits: u8,
    },
    /// After the size: whitespace, then `;` and extensions, or CR.
    AfterSize,
    /// After `;`: extensions, up to CR.
    Extension,
    /// CR seen at the end of a size line; LF expected.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// CR seen at the end of a trailer line.
    TrailerLf,
    /// CR seen on the final empty line.
    EndLf,
    Done,
}

/// Where one call to [`Chunked::step`] got to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input taken (framing and data).
    pub consumed: usize,
    /// Of those, the range that is chunk data.
    pub data: Option<Range<usize>>,
}

#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// Bytes of the current chunk still to come, or the size being read.
    remaining: u64,
    /// Bytes of the current size line or of the trailers, against the limits.
    line: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: State::Size { digits: 0 },
            remaining: 0,
            line: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes bytes from the start of `input`, stopping after a run of data or at the end
    /// of the body (what follows is the next message).
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Data => {
                    // Framing first, then the data on the next call: one range per step.
                    if i > 0 {
                        break;
                    }
                    let n = (input.len() as u64).min(self.remaining) as usize;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step {
                        consumed: n,
                        data: Some(0..n),
                    });
                }
                State::Size { digits } => {
                    let digit = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match digit {
                        Some(d) if digits < 15 => {
                            self.remaining = self.remaining * 16 + u64::from(d);
                            self.state = State::Size { digits: digits + 1 };
                        }
                        Some(_) => return Err(ChunkError),
                        None if digits == 0 => return Err(ChunkError),
                        None => {
                            self.state = State::AfterSize;
                            continue;
                        }
                    }
                }
                State::AfterSize => match b {
                    b'\r' => self.state = State::SizeLf,
                    b';' => self.state = State::Extension,
                    b' ' | b'\t' => {}
                    _ => return Err(ChunkError),
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(ChunkError),
                    // Extensions (and whitespace before them) are passed along unread.
                    _ if b == b'\t' || b >= b' ' => {}
                    _ => return Err(ChunkError),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.line = 0;
                    self.state = if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.line = 0;
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => return Err(ChunkError),
                    _ => self.state = State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(ChunkError),
                    _ if b == b'\t' || b >= b' ' => {}
                    _ => return Err(ChunkError),
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = State::Done;
                    return Ok(Step {
                        consumed: i + 1,
                        data: None,
                    });
                }
                State::Done => break,
            }
            i += 1;
            self.line += 1;
            let limit = match self.state {
                State::Size { .. } | State::AfterSize | State::Extension | State::SizeLf => {
                    MAX_LINE
                }
                _ => MAX_TRAILERS,
            };
            if self.line > limit {
                return Err(ChunkError);
            }
        }
        Ok(Step {
            consumed: i,
            data: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes; returns (bytes taken, data, done).
    fn run(input: &[u8], piece: usize) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut c = Chunked::new();
        let (mut taken, mut avail) = (0, 0);
        let mut data = Vec::new();
        while !c.is_done() {
            let window = &input[taken..avail];
            let step = c.step(window)?;
            if let Some(r) = step.data {
                data.extend_from_slice(&window[r]);
            }
            taken += step.consumed;
            if step.consumed == 0 {
                if avail == input.len() {
                    break;
                }
                avail = (avail + piece).min(input.len());
            }
        }
        Ok((taken, data, c.is_done()))
    }

    #[test]
    fn reads_chunks_in_any_pieces_and_stops_at_the_end() {
        let body =
            b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nGET / HTTP/1.1";
        let end = body.len() - b"GET / HTTP/1.1".len();
        for piece in [1, 2, 3, 7, 100] {
            let (taken, data, done) = run(body, piece).unwrap();
            assert!(done, "piece {piece}");
            assert_eq!(taken, end, "piece {piece}");
            assert_eq!(data, b"hello0123456789", "piece {piece}");
        }
    }

    #[test]
    fn refuses_what_smuggling_relies_on() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..], // bare LF after the size
            b"5\r\nhelloX\r\n0\r\n\r\n",   // data longer than its size
            b"-5\r\nhello\r\n0\r\n\r\n",   // signed size
            b"0x5\r\nhello\r\n0\r\n\r\n",  // prefixed size
            b"ffffffffffffffff1\r\n",      // overflow
            b"\r\n",                       // no size
            b"0\r\nX: y\n\r\n",            // bare LF in a trailer
        ] {
            assert!(run(bad, 100).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn incomplete_body_is_not_done() {
        let (taken, data, done) = run(b"5\r\nhel", 100).unwrap();
        assert!(!done);
        assert_eq!(taken, 6);
        assert_eq!(data, b"hel");
    }
}
