//! A message body on its way through the proxy, in whatever framing it came: what is left
//! of it, and moving the bytes at hand from one buffer to the other (a chunked body checked
//! and written as the parser says, see `chunked::Output`).

use bytes::{Buf, BytesMut};

use super::chunked::{ChunkError, Chunked, Output};
use super::head::Framing;

/// What is left of a body to relay.
pub enum BodyLeft {
    Done,
    Length(u64),
    Chunked(Chunked),
    Close,
}

impl BodyLeft {
    /// `output`: what a chunked body becomes on the way (see [`Output`]).
    pub fn of(framing: Framing, output: Output) -> BodyLeft {
        match framing {
            Framing::Empty => BodyLeft::Done,
            Framing::Length(n) => BodyLeft::Length(n),
            Framing::Chunked => BodyLeft::Chunked(Chunked::with_output(output)),
            Framing::Close => BodyLeft::Close,
        }
    }

    pub fn done(&self) -> bool {
        matches!(self, BodyLeft::Done)
    }

    /// Moves the body bytes at the start of `buf` to `out` (a chunked body's framing as the
    /// parser writes it, not as it came).
    #[inline]
    pub fn take(&mut self, buf: &mut BytesMut, out: &mut Vec<u8>) -> Result<(), ChunkError> {
        match self {
            BodyLeft::Done => {}
            BodyLeft::Length(n) => {
                let k = (buf.len() as u64).min(*n) as usize;
                out.extend_from_slice(&buf[..k]);
                buf.advance(k);
                *n -= k as u64;
                if *n == 0 {
                    *self = BodyLeft::Done;
                }
            }
            BodyLeft::Close => {
                out.extend_from_slice(buf);
                buf.clear();
            }
            BodyLeft::Chunked(c) => {
                let taken = c.forward(buf, out)?;
                buf.advance(taken);
                if c.is_done() {
                    *self = BodyLeft::Done;
                }
            }
        }
        Ok(())
    }
}

/// `buf` with room for a read of about `size` bytes.
pub fn reserved(buf: &mut BytesMut, size: usize) -> &mut BytesMut {
    if buf.capacity() - buf.len() < size / 4 {
        buf.reserve(size);
    }
    buf
}
