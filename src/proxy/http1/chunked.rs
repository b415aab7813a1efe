//! The chunked transfer coding (RFC 9112 §7.1), read incrementally and written out again.
//!
//! [`Chunked`] walks a chunked body as bytes arrive, in whatever pieces, checks it against
//! the grammar exactly, and appends what should go on to an output buffer: the data, copied
//! straight from the input, and the framing, re-written from what was parsed rather than
//! copied (see [`Output`]). Strictness is the point: every leniency (a bare LF, whitespace
//! after the size, a stray byte in an extension, a folded trailer) is a place where the
//! proxy and the backend could disagree on where a body ends, which is how requests are
//! smuggled. Nothing is buffered but a trailer field's name (a few bytes): a size line's
//! extensions are checked by a state machine as they pass.

use crate::proxy::forward::checks::{MAX_FIELDS, is_tchar};
use crate::proxy::forward::headers;

/// Longest chunk-size line accepted, its CRLF included.
pub const MAX_LINE: usize = 4096;
/// Largest trailer section accepted, from after the last chunk's line to the final CRLF.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body was refused. The proxy answers a client's with 400 (`Malformed`,
/// `LineTooLong`) or 431 (the trailer limits); a backend's is a failed backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed chunked body: {0}")]
    Malformed(&'static str),
    #[error("chunk-size line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("trailer section larger than {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
    #[error("more than {MAX_FIELDS} trailer fields")]
    TooManyTrailers,
}

/// What [`Chunked::forward`] appends to its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Requests: each size line re-written as `HEX\r\n` (lower case, no leading zeros),
    /// extensions dropped; data, CRLFs and kept trailer fields as received. The backend
    /// then parses only the simplest form of the framing, whatever its own parser's quirks.
    Normalised,
    /// Responses to an HTTP/1.1 client: the framing as received, once checked. Extensions
    /// from the origin are end-to-end and may mean something to the client; a backend's
    /// body that fails a check closes the client connection, so a client never gets a
    /// complete message that was not checked whole.
    AsReceived,
    /// Responses to an HTTP/1.0 client: the data alone (it cannot take trailers either).
    Data,
}

/// A trailer name longer than the longest the policy drops (`proxy-authorization`) is
/// kept: only shorter ones are held back until the colon.
const NAME_HELD: usize = 19;

fn dropped(name: &[u8]) -> bool {
    !headers::trailer_allowed(name)
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

fn ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a size line: a hex digit must come.
    SizeStart,
    /// In the size.
    Size,
    /// After the size or a complete extension: BWS, `;`, or CR.
    ExtNext,
    /// BWS after the size or an extension: more of it, or `;`.
    ExtWs,
    /// After `;`: BWS, then a name.
    ExtNameStart,
    ExtName,
    /// BWS after a name: `=` or `;` must follow.
    ExtNameWs,
    /// After `=`: BWS, then a token or a quoted string.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtQuotedPair,
    /// CR seen at the end of a size line.
    SizeLf,
    Data,
    /// After a chunk's data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerName,
    TrailerValue,
    /// CR seen at the end of a trailer line.
    TrailerLf,
    /// CR seen on the final empty line.
    EndLf,
    Done,
}

impl State {
    /// Before the LF of a size line.
    fn in_size_line(self) -> bool {
        use State::*;
        matches!(
            self,
            SizeStart
                | Size
                | ExtNext
                | ExtWs
                | ExtNameStart
                | ExtName
                | ExtNameWs
                | ExtValueStart
                | ExtToken
                | ExtQuoted
                | ExtQuotedPair
                | SizeLf
        )
    }
}

#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    output: Output,
    /// The size being read, then the bytes of the chunk still to come.
    size: u64,
    /// Bytes of the current size line, or of the trailer section, against the limits.
    line: usize,
    /// Trailer fields so far (dropped ones included).
    fields: usize,
    /// The current trailer field: its name's first bytes, its length, whether it goes on.
    name: [u8; NAME_HELD],
    name_len: usize,
    keep: bool,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    /// A body whose output is [`Output::Normalised`].
    pub fn new() -> Chunked {
        Chunked::with_output(Output::Normalised)
    }

    pub fn with_output(output: Output) -> Chunked {
        Chunked {
            state: State::SizeStart,
            output,
            size: 0,
            line: 0,
            fields: 0,
            name: [0; NAME_HELD],
            name_len: 0,
            keep: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes bytes from the start of `input`, up to its end or to the end of the body
    /// (what follows is the next message), and appends what goes on to `out`. Returns the
    /// bytes taken. After an error, what this call appended must not be sent.
    pub fn forward(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        self.run(input, out)
    }

    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Data => {
                    // The hot path: a whole run of data in one copy.
                    let n = ((input.len() - i) as u64).min(self.size) as usize;
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Done => break,
                _ => {}
            }
            self.line += 1;
            if self.line > MAX_LINE {
                self.over_limit()?;
            }
            self.byte(input[i], out)?;
            i += 1;
        }
        Ok(i)
    }

    #[cold]
    fn over_limit(&self) -> Result<(), ChunkError> {
        use State::*;
        match self.state {
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf => {
                if self.line > MAX_TRAILERS {
                    return Err(ChunkError::TrailersTooLarge);
                }
                Ok(())
            }
            _ => Err(ChunkError::LineTooLong),
        }
    }

    /// One byte of framing (anything but data).
    fn byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), ChunkError> {
        use ChunkError::Malformed;
        use State::*;
        let before = self.state;
        self.state = match before {
            SizeStart => {
                self.size = hex(b).ok_or(Malformed("chunk size missing"))?;
                Size
            }
            Size => match hex(b) {
                Some(d) => {
                    // Leading zeros do not count: only a value that no longer fits.
                    if self.size >> 60 != 0 {
                        return Err(Malformed("chunk size too large"));
                    }
                    self.size = self.size << 4 | d;
                    Size
                }
                None => ext_next(b)?,
            },
            ExtNext => ext_next(b)?,
            // `5 \r\n` and `5;a=b c`: whitespace may only come before `;`, `=` or a value.
            ExtWs => match b {
                b';' => ExtNameStart,
                _ if ws(b) => ExtWs,
                _ => return Err(Malformed("whitespace in a chunk line not followed by `;`")),
            },
            // `5;\r\n`, `5;;`: `;` always introduces a name.
            ExtNameStart => match b {
                _ if is_tchar(b) => ExtName,
                _ if ws(b) => ExtNameStart,
                _ => return Err(Malformed("chunk extension without a name")),
            },
            ExtName => match b {
                _ if is_tchar(b) => ExtName,
                b'=' => ExtValueStart,
                b';' => ExtNameStart,
                b'\r' => SizeLf,
                _ if ws(b) => ExtNameWs,
                _ => return Err(Malformed("invalid byte in a chunk extension name")),
            },
            // `5;a \r\n`: BWS is only allowed before `=` or `;`.
            ExtNameWs => match b {
                b'=' => ExtValueStart,
                b';' => ExtNameStart,
                _ if ws(b) => ExtNameWs,
                _ => return Err(Malformed("whitespace after a chunk extension name")),
            },
            // `5;a=\r\n`, `5;a=\xff`: a value is a token or a quoted string, never empty.
            ExtValueStart => match b {
                _ if is_tchar(b) => ExtToken,
                b'"' => ExtQuoted,
                _ if ws(b) => ExtValueStart,
                _ => return Err(Malformed("chunk extension value missing or invalid")),
            },
            ExtToken => match b {
                _ if is_tchar(b) => ExtToken,
                b';' => ExtNameStart,
                b'\r' => SizeLf,
                _ if ws(b) => ExtWs,
                _ => return Err(Malformed("invalid byte in a chunk extension value")),
            },
            // qdtext and quoted-pair allow obs-text (>= 0x80); it is refused here: no
            // extension needs it, and it is one less thing for parsers downstream to read
            // differently.
            ExtQuoted => match b {
                b'"' => ExtNext,
                b'\\' => ExtQuotedPair,
                b'\t' | b' '..=b'~' => ExtQuoted,
                _ => return Err(Malformed("invalid byte in a quoted chunk extension value")),
            },
            ExtQuotedPair => match b {
                b'\t' | b' '..=b'~' => ExtQuoted,
                _ => return Err(Malformed("invalid quoted pair in a chunk extension value")),
            },
            SizeLf => {
                if b != b'\n' {
                    return Err(Malformed("chunk-size line not ended by CRLF"));
                }
                if self.output == Output::Normalised {
                    let mut hex = [0u8; 18];
                    let at = write_hex(self.size, &mut hex);
                    out.extend_from_slice(&hex[at..]);
                }
                self.line = 0;
                if self.size == 0 { TrailerStart } else { Data }
            }
            DataCr if b == b'\r' => DataLf,
            DataLf if b == b'\n' => {
                if self.output != Output::Data {
                    out.extend_from_slice(b"\r\n");
                }
                self.line = 0;
                SizeStart
            }
            DataCr | DataLf => return Err(Malformed("chunk data not followed by CRLF")),
            TrailerStart => match b {
                b'\r' => EndLf,
                _ if is_tchar(b) => {
                    self.fields += 1;
                    if self.fields > MAX_FIELDS {
                        return Err(ChunkError::TooManyTrailers);
                    }
                    self.name_len = 0;
                    self.name_byte(b, out);
                    TrailerName
                }
                // RFC 9112 §5.2: obs-fold is refused by a proxy, not unfolded.
                _ if ws(b) => return Err(Malformed("trailer line starts with whitespace")),
                b':' => return Err(Malformed("trailer field with an empty name")),
                _ => return Err(Malformed("invalid byte in a trailer field name")),
            },
            TrailerName => match b {
                _ if is_tchar(b) => {
                    self.name_byte(b, out);
                    TrailerName
                }
                b':' => {
                    let held = self.name_len <= NAME_HELD;
                    self.keep = self.output != Output::Data
                        && !(held && dropped(&self.name[..self.name_len]));
                    if self.keep {
                        if held {
                            out.extend_from_slice(&self.name[..self.name_len]);
                        }
                        out.extend_from_slice(b":");
                    }
                    TrailerValue
                }
                // `X T`, `GET / HTTP/1.1`, and whitespace before the colon (§5.1).
                _ => return Err(Malformed("trailer field name not followed by `:`")),
            },
            // field-value: VCHAR, SP, HTAB and obs-text, as in the head (httparse's rule).
            TrailerValue => match b {
                b'\r' => TrailerLf,
                b'\t' | b' '..=b'~' | 0x80..=0xff => {
                    if self.keep {
                        out.extend_from_slice(&[b]);
                    }
                    TrailerValue
                }
                _ => return Err(Malformed("invalid byte in a trailer field value")),
            },
            TrailerLf => {
                if b != b'\n' {
                    return Err(Malformed("trailer line not ended by CRLF"));
                }
                if self.keep {
                    out.extend_from_slice(b"\r\n");
                }
                TrailerStart
            }
            EndLf => {
                if b != b'\n' {
                    return Err(Malformed("trailer section not ended by CRLF"));
                }
                if self.output != Output::Data {
                    out.extend_from_slice(b"\r\n");
                }
                Done
            }
            Data | Done => unreachable!("data and the end are handled by `run`"),
        };
        // As received: a size line's bytes go on, each once checked.
        if self.output == Output::AsReceived && before.in_size_line() {
            out.extend_from_slice(&[b]);
        }
        Ok(())
    }

    /// A byte of a trailer name: held back while the name could still be one to drop.
    fn name_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.name_len < NAME_HELD {
            self.name[self.name_len] = b;
        } else if self.output != Output::Data {
            if self.name_len == NAME_HELD {
                out.extend_from_slice(&self.name);
            }
            out.extend_from_slice(&[b]);
        }
        self.name_len += 1;
    }
}

/// Writes `n` in lower-case hex followed by CRLF at the end of `buf`; returns where it
/// starts.
fn write_hex(mut n: u64, buf: &mut [u8; 18]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len() - 2;
    buf[at..].copy_from_slice(b"\r\n");
    loop {
        at -= 1;
        buf[at] = DIGITS[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            return at;
        }
    }
}

/// After the size or a complete extension.
fn ext_next(b: u8) -> Result<State, ChunkError> {
    match b {
        b'\r' => Ok(State::SizeLf),
        b';' => Ok(State::ExtNameStart),
        _ if ws(b) => Ok(State::ExtWs),
        b'\n' => Err(ChunkError::Malformed("chunk-size line ended by a bare LF")),
        _ => Err(ChunkError::Malformed("invalid byte in a chunk-size line")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECES: [usize; 6] = [1, 2, 3, 7, 100, usize::MAX];

    /// Feeds `input` as a forwarder does: the unconsumed bytes stay at the front of the
    /// buffer, and `piece` more arrive each time nothing more can be taken. Returns (bytes
    /// taken, output, done).
    fn feed(
        input: &[u8],
        piece: usize,
        output: Output,
    ) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut c = Chunked::with_output(output);
        let (mut taken, mut avail) = (0, 0);
        let mut out = Vec::new();
        while !c.is_done() {
            let n = c.forward(&input[taken..avail], &mut out)?;
            taken += n;
            if n == 0 || taken == avail {
                if avail == input.len() {
                    break;
                }
                avail = avail.saturating_add(piece).min(input.len());
            }
        }
        Ok((taken, out, c.is_done()))
    }

    /// `input` fed in every piece size: the outcome must not depend on how it arrived.
    fn all_pieces(input: &[u8], output: Output) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let whole = feed(input, usize::MAX, output);
        for piece in PIECES {
            assert_eq!(
                feed(input, piece, output),
                whole,
                "piece {piece}: {:?}",
                String::from_utf8_lossy(input)
            );
        }
        whole
    }

    fn normalised(input: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let (taken, out, done) = all_pieces(input, Output::Normalised)?;
        assert!(done, "{:?} is complete", String::from_utf8_lossy(input));
        assert_eq!(taken, input.len());
        Ok(out)
    }

    fn show(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn malformed_chunk_size_lines_are_refused() {
        for line in [
            &b"5 \r\n"[..],
            b"5\t\r\n",
            b"5;a \r\n",
            b"5;a=b c\r\n",
            b"5;\r\n",
            b"5;;\r\n",
            b"5;a=\r\n",
            b"5;a=\xff\r\n",
            b"5;a=\"\xff\"\r\n",
            b"5;a=\"x\r\n",
            b"5;a=\"x\"y\r\n",
            b"5;a b\r\n",
            b"5;=b\r\n",
            b";a\r\n",
            b" 5\r\n",
            b"5\r\r\n",
        ] {
            let body = [line, b"hello\r\n0\r\n\r\n"].concat();
            assert!(
                matches!(
                    all_pieces(&body, Output::Normalised),
                    Err(ChunkError::Malformed(_))
                ),
                "{:?}",
                show(line)
            );
        }
        assert!(matches!(
            all_pieces(b"0 \r\n\r\n", Output::Normalised),
            Err(ChunkError::Malformed(_))
        ));
    }

    #[test]
    fn valid_extensions_are_dropped_and_the_line_normalised() {
        for line in [
            &b"5;a=b\r\n"[..],
            b"5 ; a = b\r\n",
            b"5\t;\ta\t=\tb\r\n",
            b"5;a=\"x y\"\r\n",
            b"5;a;b=c\r\n",
            b"5;a=\"\"\r\n",
            b"5;a=\"q\\\"t\\\\\"\r\n",
            b"5;a=\"x\";b\r\n",
            b"5;!#$%&'*+-.^_`|~09AZaz=!#$%&'*+-.^_`|~09AZaz\r\n",
            b"000005\r\n",
        ] {
            let body = [line, b"hello\r\n0;last=1\r\n\r\n"].concat();
            assert_eq!(
                show(&normalised(&body).unwrap()),
                "5\r\nhello\r\n0\r\n\r\n",
                "{:?}",
                show(line)
            );
        }
        let body = b"00A\r\n0123456789\r\n1F;x\r\n0123456789abcdef0123456789abcde\r\n000\r\n\r\n";
        assert_eq!(
            show(&normalised(body).unwrap()),
            "a\r\n0123456789\r\n1f\r\n0123456789abcdef0123456789abcde\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn responses_keep_checked_extensions_and_http10_gets_data_only() {
        let body = b"5 ;x=\"1 2\"\r\nhello\r\n6\r\n world\r\n0;y\r\nX-T: v\r\n\r\nNEXT";
        let end = body.len() - 4;
        let (taken, out, done) = all_pieces(body, Output::AsReceived).unwrap();
        assert!(done);
        assert_eq!(taken, end);
        assert_eq!(show(&out), show(&body[..end]));
        let (taken, out, done) = all_pieces(body, Output::Data).unwrap();
        assert!(done);
        assert_eq!(taken, end);
        assert_eq!(show(&out), "hello world");
        // The same checks in every mode.
        for output in [Output::AsReceived, Output::Data] {
            assert!(all_pieces(b"5;a \r\nhello\r\n0\r\n\r\n", output).is_err());
            assert!(all_pieces(b"0\r\nX T\r\n\r\n", output).is_err());
        }
    }

    #[test]
    fn a_chunk_line_of_4_kib_is_too_long() {
        let mut line = b"5;a=".to_vec();
        line.resize(4096, b'b');
        let body = [&line[..], b"\r\nhello\r\n0\r\n\r\n"].concat();
        assert_eq!(
            all_pieces(&body, Output::Normalised),
            Err(ChunkError::LineTooLong)
        );
        // The limit counts the CRLF: 4096 bytes in all is the longest line taken.
        line.truncate(MAX_LINE - 2);
        let body = [&line[..], b"\r\nhello\r\n0\r\n\r\n"].concat();
        assert_eq!(show(&normalised(&body).unwrap()), "5\r\nhello\r\n0\r\n\r\n");
        // Leading zeros are part of the line too.
        let zeros = [&[b'0'; MAX_LINE][..], b"5\r\nhello\r\n0\r\n\r\n"].concat();
        assert_eq!(
            all_pieces(&zeros, Output::Normalised),
            Err(ChunkError::LineTooLong)
        );
    }

    #[test]
    fn malformed_trailers_are_refused() {
        for trailers in [
            &b"X T\r\n\r\n"[..],
            b": a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"X: a\r\n b\r\n\r\n",
            b"X: a\r\n\tb\r\n\r\n",
            b" X: a\r\n\r\n",
            b"X : a\r\n\r\n",
            b"X: a\nY: b\r\n\r\n",
            b"X: a\rY: b\r\n\r\n",
            b"X: a\x00b\r\n\r\n",
            b"X: a\x7f\r\n\r\n",
            b"X\r\n\r\n",
            b"X: a\r\n\n",
            b"X\xff: a\r\n\r\n",
        ] {
            let body = [b"0\r\n", trailers].concat();
            assert!(
                matches!(
                    all_pieces(&body, Output::Normalised),
                    Err(ChunkError::Malformed(_))
                ),
                "{:?}",
                show(trailers)
            );
        }
    }

    #[test]
    fn trailers_over_the_limits_are_refused() {
        let fields = |n: usize| {
            let mut body = b"0\r\n".to_vec();
            for i in 0..n {
                body.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            body
        };
        assert_eq!(
            all_pieces(&fields(200), Output::Normalised),
            Err(ChunkError::TooManyTrailers)
        );
        assert_eq!(
            all_pieces(&fields(MAX_FIELDS + 1), Output::Normalised),
            Err(ChunkError::TooManyTrailers)
        );
        let most = fields(MAX_FIELDS);
        assert_eq!(normalised(&most).unwrap(), most);

        let big = format!("0\r\nX-Big: {}\r\n\r\n", "y".repeat(70_000));
        assert_eq!(
            all_pieces(big.as_bytes(), Output::Normalised),
            Err(ChunkError::TrailersTooLarge)
        );
        // The limit counts the whole section, final CRLF included.
        let value = MAX_TRAILERS - "X: \r\n\r\n".len();
        let full = format!("0\r\nX: {}\r\n\r\n", "y".repeat(value));
        assert_eq!(normalised(full.as_bytes()).unwrap(), full.as_bytes());
        let over = format!("0\r\nX: {}\r\n\r\n", "y".repeat(value + 1));
        assert_eq!(
            all_pieces(over.as_bytes(), Output::Normalised),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    #[test]
    fn valid_trailers_go_on_and_framing_ones_are_dropped() {
        let long = "X-A-Rather-Long-Trailer-Name";
        let body = format!(
            "5\r\nhello\r\n0\r\nX-Checksum: abc \r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\
             HOST: evil\r\nconnection: close\r\nX-Forwarded-For: 1.2.3.4\r\nTrailer: x\r\n\
             X-Empty:\r\nX-Obs: caf\u{e9}\r\n{long}:\tv\r\nX-Last:v\r\n\r\n"
        );
        assert_eq!(
            show(&normalised(body.as_bytes()).unwrap()),
            format!(
                "5\r\nhello\r\n0\r\nX-Checksum: abc \r\nX-Empty:\r\nX-Obs: caf\u{e9}\r\n\
                 {long}:\tv\r\nX-Last:v\r\n\r\n"
            )
        );
        let (_, out, done) = all_pieces(body.as_bytes(), Output::Data).unwrap();
        assert!(done);
        assert_eq!(show(&out), "hello");
    }

    #[test]
    fn pieces_of_any_size_give_the_same_output_and_stop_at_the_end() {
        let body: &[u8] = b"5;ext=1\r\nhello\r\nA ; q=\"a;b\" ; r\r\n0123456789\r\n\
            0\r\nX-Trailer: t\r\nConnection: x\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let end = body.len() - b"GET / HTTP/1.1\r\n\r\n".len();
        for piece in PIECES {
            let (taken, out, done) = feed(body, piece, Output::Normalised).unwrap();
            assert!(done, "piece {piece}");
            assert_eq!(taken, end, "piece {piece}");
            assert_eq!(
                show(&out),
                "5\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
                "piece {piece}"
            );
        }
    }

    #[test]
    fn refuses_what_smuggling_relies_on() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..], // bare LF after the size
            b"5\r\nhelloX\r\n0\r\n\r\n",   // data longer than its size
            b"-5\r\nhello\r\n0\r\n\r\n",   // signed size
            b"0x5\r\nhello\r\n0\r\n\r\n",  // prefixed size
            b"+5\r\nhello\r\n0\r\n\r\n",   // signed size
            b"ffffffffffffffff1\r\n",      // overflow
            b"\r\n",                       // no size
            b"5;a=b\nhello\r\n0\r\n\r\n",  // bare LF after an extension
            b"0\r\nX: y\n\r\n",            // bare LF in a trailer
            b"0\r\n\n",                    // bare LF at the end
        ] {
            assert!(
                all_pieces(bad, Output::Normalised).is_err(),
                "{:?}",
                show(bad)
            );
        }
        // The largest size that fits is a size (the data is another matter).
        let (taken, out, done) = feed(b"ffffffffffffffff\r\nab", 100, Output::Normalised).unwrap();
        assert_eq!(
            (taken, show(&out).as_str(), done),
            (20, "ffffffffffffffff\r\nab", false)
        );
    }

    #[test]
    fn an_incomplete_body_is_not_done() {
        let (taken, out, done) = feed(b"5\r\nhel", 100, Output::Normalised).unwrap();
        assert!(!done);
        assert_eq!(taken, 6);
        assert_eq!(out, b"5\r\nhel");
    }
}
