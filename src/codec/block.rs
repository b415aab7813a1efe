//! A field block from its frames (RFC 9113 §4.3, §6.10): a HEADERS frame's fragment and
//! the CONTINUATION frames that follow it on the same stream, with nothing in between,
//! held to a size limit so a peer cannot make the proxy buffer without end (the
//! "CONTINUATION flood").

use super::frame::{Code, FrameError};

/// The whole field block of one HEADERS frame sequence.
#[derive(Debug, PartialEq, Eq)]
pub struct Block<'a> {
    pub stream: u32,
    /// The HEADERS frame carried END_STREAM.
    pub end_stream: bool,
    pub bytes: &'a [u8],
}

/// Collects a field block split over frames. Most blocks fit in their HEADERS frame and
/// are handed back without a copy.
#[derive(Debug)]
pub struct Assembler {
    /// The stream whose block is incomplete, and whether it ends the stream.
    open: Option<(u32, bool)>,
    buf: Vec<u8>,
    /// The most a block may hold.
    max: usize,
}

impl Assembler {
    /// `max`: the largest block accepted (the field-list limit, plus HPACK's overhead).
    pub fn new(max: usize) -> Assembler {
        Assembler {
            open: None,
            buf: Vec::new(),
            max,
        }
    }

    /// The stream whose CONTINUATION must come next, if a block is incomplete: any other
    /// frame is the connection's error (§6.10).
    pub fn expecting(&self) -> Option<u32> {
        self.open.map(|(stream, _)| stream)
    }

    /// A HEADERS frame: the block, when this frame ends it.
    pub fn headers<'a>(
        &mut self,
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        fragment: &'a [u8],
    ) -> Result<Option<Block<'a>>, FrameError> {
        if self.open.is_some() {
            return Err(interleaved());
        }
        self.check(fragment.len())?;
        if end_headers {
            return Ok(Some(Block {
                stream,
                end_stream,
                bytes: fragment,
            }));
        }
        self.buf.clear();
        self.buf.extend_from_slice(fragment);
        self.open = Some((stream, end_stream));
        Ok(None)
    }

    /// A CONTINUATION frame: the block, when this frame ends it.
    pub fn continuation(
        &mut self,
        stream: u32,
        end_headers: bool,
        fragment: &[u8],
    ) -> Result<Option<Block<'_>>, FrameError> {
        let Some((open, end_stream)) = self.open else {
            return Err(interleaved());
        };
        if open != stream {
            return Err(interleaved());
        }
        self.check(self.buf.len() + fragment.len())?;
        self.buf.extend_from_slice(fragment);
        if !end_headers {
            return Ok(None);
        }
        self.open = None;
        Ok(Some(Block {
            stream,
            end_stream,
            bytes: &self.buf,
        }))
    }

    fn check(&self, len: usize) -> Result<(), FrameError> {
        if len > self.max {
            // The block cannot be decoded without all of it, so the HPACK state is lost
            // with it: the connection ends (h2 and nghttp2 do the same).
            return Err(FrameError {
                code: Code::ENHANCE_YOUR_CALM,
                stream: None,
                why: "a field block larger than the limit",
            });
        }
        Ok(())
    }
}

fn interleaved() -> FrameError {
    FrameError {
        code: Code::PROTOCOL_ERROR,
        stream: None,
        why: "CONTINUATION out of sequence",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_block_is_handed_back_as_it_came() {
        let mut a = Assembler::new(100);
        let fragment = [0x82, 0x86];
        let block = a.headers(1, true, true, &fragment).unwrap().unwrap();
        assert_eq!(block.bytes.as_ptr(), fragment.as_ptr(), "no copy");
        assert_eq!((block.stream, block.end_stream), (1, true));
        assert_eq!(a.expecting(), None);
    }

    #[test]
    fn continuations_complete_a_block() {
        let mut a = Assembler::new(100);
        assert_eq!(a.headers(3, true, false, &[1, 2]).unwrap(), None);
        assert_eq!(a.expecting(), Some(3));
        assert_eq!(a.continuation(3, false, &[3]).unwrap(), None);
        let block = a.continuation(3, true, &[4]).unwrap().unwrap();
        assert_eq!(
            block,
            Block {
                stream: 3,
                end_stream: true,
                bytes: &[1, 2, 3, 4]
            }
        );
        assert_eq!(a.expecting(), None);
    }

    #[test]
    fn out_of_sequence_frames_and_floods_end_the_connection() {
        let mut a = Assembler::new(4);
        let e = a.continuation(1, true, &[1]).unwrap_err();
        assert_eq!((e.code, e.stream), (Code::PROTOCOL_ERROR, None));
        a.headers(1, false, false, &[1]).unwrap();
        let e = a.continuation(3, true, &[1]).unwrap_err();
        assert_eq!(
            e.code,
            Code::PROTOCOL_ERROR,
            "another stream's CONTINUATION"
        );
        let e = a.headers(3, false, true, &[1]).unwrap_err();
        assert_eq!(
            e.code,
            Code::PROTOCOL_ERROR,
            "HEADERS in the middle of a block"
        );
        a.continuation(1, false, &[2, 3, 4]).unwrap();
        let e = a.continuation(1, false, &[5]).unwrap_err();
        assert_eq!((e.code, e.stream), (Code::ENHANCE_YOUR_CALM, None));
        let e = Assembler::new(4)
            .headers(1, false, true, &[0; 5])
            .unwrap_err();
        assert_eq!(e.code, Code::ENHANCE_YOUR_CALM);
    }
}
