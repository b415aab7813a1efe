//! Field block decoding (RFC 7541 §3, §6): each field goes to a callback as slices of the
//! block, of the tables, or of one scratch buffer for Huffman-coded strings, so decoding
//! allocates only when the peer adds to its dynamic table.

use super::DecodeError;
use super::huffman;
use super::table::{Dynamic, STATIC};

/// One decoded field. `sensitive`: the peer sent it never-indexed (RFC 7541 §6.2.3), so
/// it must go on the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub sensitive: bool,
}

/// The decoding side of one HTTP/2 connection: its peer's dynamic table.
#[derive(Debug)]
pub struct Decoder {
    table: Dynamic,
    /// Huffman-decoded strings of the field being decoded.
    scratch: Vec<u8>,
}

/// Where a decoded string is.
#[derive(Clone, Copy)]
enum At {
    Block(usize, usize),
    Scratch(usize, usize),
    /// The name of an entry of the static or dynamic table.
    Name(usize),
}

impl Decoder {
    /// `table_size`: this side's SETTINGS_HEADER_TABLE_SIZE, the most the peer's
    /// dynamic table may hold (4096 unless this side says otherwise).
    pub fn new(table_size: usize) -> Decoder {
        Decoder {
            table: Dynamic::new(table_size),
            scratch: Vec::new(),
        }
    }

    /// Decodes one whole field block (a HEADERS frame's fragment and its CONTINUATIONs),
    /// giving each field to `each` in order. Every block must be decoded, even one whose
    /// stream is refused, or the dynamic table falls out of step with the peer's; an
    /// error leaves it out of step, so the connection must end.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut each: impl FnMut(Field<'_>),
    ) -> Result<(), DecodeError> {
        let mut pos = 0;
        let mut fields = false;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let (name, value) = self.table.get(integer(block, &mut pos, 7)?)?;
                each(Field {
                    name,
                    value,
                    sensitive: false,
                });
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing (§6.2.1).
                self.literal(block, &mut pos, 6, false, true, &mut each)?;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first field (§4.2).
                if fields {
                    return Err(DecodeError::LateTableSizeUpdate);
                }
                let size = integer(block, &mut pos, 5)?;
                self.table.resize(size)?;
                continue;
            } else {
                // Literal without indexing (§6.2.2) or never indexed (§6.2.3).
                let never = first & 0x10 != 0;
                self.literal(block, &mut pos, 4, never, false, &mut each)?;
            }
            fields = true;
        }
        Ok(())
    }

    fn literal(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        prefix: u8,
        sensitive: bool,
        index: bool,
        each: &mut impl FnMut(Field<'_>),
    ) -> Result<(), DecodeError> {
        self.scratch.clear();
        let name = match integer(block, pos, prefix)? {
            0 => string(block, pos, &mut self.scratch)?,
            i => {
                let (name, _) = self.table.get(i)?;
                if i > STATIC.len() && index {
                    // Inserting may evict the entry the name comes from (RFC 7541 §4.4).
                    let start = self.scratch.len();
                    self.scratch.extend_from_slice(name);
                    At::Scratch(start, self.scratch.len())
                } else {
                    At::Name(i)
                }
            }
        };
        let value = string(block, pos, &mut self.scratch)?;
        let scratch = &self.scratch;
        let bytes = |at: At| match at {
            At::Block(s, e) => &block[s..e],
            At::Scratch(s, e) => &scratch[s..e],
            At::Name(i) => STATIC[i - 1].0,
        };
        let value = bytes(value);
        if index {
            // Never a dynamic entry's name (copied above): the table is free to change.
            let name = bytes(name);
            each(Field {
                name,
                value,
                sensitive,
            });
            self.table.insert(name, value);
        } else {
            let name = match name {
                At::Name(i) if i > STATIC.len() => self.table.get(i)?.0,
                at => bytes(at),
            };
            each(Field {
                name,
                value,
                sensitive,
            });
        }
        Ok(())
    }
}

/// A string literal (§5.2) at `pos`: where its bytes are, raw in the block or Huffman-
/// decoded onto the end of `scratch`.
fn string(block: &[u8], pos: &mut usize, scratch: &mut Vec<u8>) -> Result<At, DecodeError> {
    let huffman = block.get(*pos).ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let start = *pos;
    let end = start.checked_add(len).ok_or(DecodeError::Truncated)?;
    let raw = block.get(start..end).ok_or(DecodeError::Truncated)?;
    *pos = end;
    if !huffman {
        return Ok(At::Block(start, end));
    }
    let from = scratch.len();
    huffman::decode(raw, scratch)?;
    Ok(At::Scratch(from, scratch.len()))
}

/// An integer with an N-bit prefix (§5.1) at `pos`. At most four continuation bytes
/// (values below 2^28): nothing in HTTP/2 needs more, and it keeps the sum from
/// overflowing.
fn integer(block: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, DecodeError> {
    let max = (1usize << prefix) - 1;
    let mut value = (*block.get(*pos).ok_or(DecodeError::Truncated)? as usize) & max;
    *pos += 1;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        value += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(DecodeError::Integer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::huffman::tests::unhex;
    use super::*;

    fn decode(d: &mut Decoder, hex: &str) -> Result<Vec<(String, String)>, DecodeError> {
        let mut out = Vec::new();
        d.decode(&unhex(hex), |f| {
            out.push((
                String::from_utf8(f.name.to_vec()).unwrap(),
                String::from_utf8(f.value.to_vec()).unwrap(),
            ))
        })?;
        Ok(out)
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 C.3 and C.4: three requests on one connection, raw and Huffman-coded,
    /// each adding to the table the next one indexes (the blocks as the Python `hpack`
    /// package encodes them, which are the RFC's).
    #[test]
    fn decodes_the_rfc_request_sequences() {
        let expected = [
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ];
        let raw = [
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ];
        let huffman = [
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ];
        for blocks in [raw, huffman] {
            let mut d = Decoder::new(4096);
            for (block, want) in blocks.iter().zip(&expected) {
                assert_eq!(&decode(&mut d, block).unwrap(), want);
            }
            assert_eq!((d.table.len(), d.table.size()), (3, 164));
        }
    }

    /// RFC 7541 C.5 and C.6: three responses in a 256-byte table (a size update first),
    /// so entries are evicted as new ones come.
    #[test]
    fn decodes_the_rfc_response_sequences_with_eviction() {
        let expected = [
            fields(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]),
            fields(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]),
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                ),
            ]),
        ];
        let raw = [
            "3fe1014803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
            "4803333037c1c0bf",
            "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31",
        ];
        let huffman = [
            "3fe101488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
            "4883640effc1c0bf",
            "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        ];
        for blocks in [raw, huffman] {
            let mut d = Decoder::new(4096);
            for (block, want) in blocks.iter().zip(&expected) {
                assert_eq!(&decode(&mut d, block).unwrap(), want);
            }
            assert_eq!((d.table.len(), d.table.size()), (3, 215));
            assert_eq!(d.table.get(62).unwrap().0, b"set-cookie");
        }
    }

    #[test]
    fn never_indexed_fields_are_marked_sensitive() {
        let mut d = Decoder::new(4096);
        let mut sensitive = Vec::new();
        d.decode(&unhex("881f0884414961531086f2b24fd4b57f814f"), |f| {
            sensitive.push((String::from_utf8_lossy(f.name).into_owned(), f.sensitive))
        })
        .unwrap();
        let want = [
            (":status", false),
            ("authorization", true),
            ("x-token", true),
        ];
        assert_eq!(sensitive, want.map(|(n, s)| (n.to_string(), s)));
        assert_eq!(d.table.len(), 0, "never-indexed fields are not added");
    }

    #[test]
    fn a_name_taken_from_an_entry_its_insertion_evicts_survives() {
        let mut d = Decoder::new(64);
        let mut block = vec![0x40, 4];
        block.extend_from_slice(b"aaaa");
        block.push(4);
        block.extend_from_slice(b"bbbb");
        assert_eq!(
            decode(&mut d, &hex(&block)).unwrap(),
            fields(&[("aaaa", "bbbb")])
        );
        // Name: index 62 (that entry); 4 + 20 + 32 bytes do not fit beside it.
        let mut block = vec![0x40 | 62, 20];
        block.extend_from_slice(&[b'c'; 20]);
        let c20 = "c".repeat(20);
        assert_eq!(
            decode(&mut d, &hex(&block)).unwrap(),
            fields(&[("aaaa", &c20)])
        );
        assert_eq!(
            (d.table.len(), d.table.get(62).unwrap().0),
            (1, &b"aaaa"[..])
        );
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let cases: [(&str, DecodeError); 9] = [
            ("80", DecodeError::Index),
            ("be", DecodeError::Index),
            ("41", DecodeError::Truncated),
            ("400561", DecodeError::Truncated),
            ("ff", DecodeError::Truncated),
            ("ffffffffff7f", DecodeError::Integer),
            ("3fe21f", DecodeError::TableSize),
            ("8220", DecodeError::LateTableSizeUpdate),
            ("0081008100", DecodeError::Huffman),
        ];
        for (block, error) in cases {
            let mut d = Decoder::new(4096);
            assert_eq!(decode(&mut d, block), Err(error), "{block}");
        }
        // The largest size this side allows is taken, at the start of a block.
        assert_eq!(
            decode(&mut Decoder::new(4096), "3fe11f82").unwrap().len(),
            1
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// xorshift64: the tests' randomness, fixed by its seed.
    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn arbitrary_bytes_decode_or_fail_without_panicking() {
        let mut next = rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..50_000 {
            let len = (next() % 48) as usize;
            let block: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut d = Decoder::new(256);
            let _ = d.decode(&block, |_| {});
            assert!(d.table.size() <= 256);
        }
    }

    #[test]
    fn what_the_encoder_writes_decodes_to_the_same_fields() {
        let names: [&[u8]; 6] = [b":method", b":path", b"accept", b"x-a", b"cookie", b""];
        let mut next = rng(7);
        for _ in 0..2_000 {
            let mut block = Vec::new();
            let mut sent = Vec::new();
            for _ in 0..next() % 12 {
                let name = names[(next() % names.len() as u64) as usize].to_vec();
                let value: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
                let sensitive = next().is_multiple_of(4);
                super::super::field(&name, &value, sensitive, &mut block);
                sent.push((name, value, sensitive));
            }
            let mut got = Vec::new();
            Decoder::new(4096)
                .decode(&block, |f| {
                    got.push((f.name.to_vec(), f.value.to_vec(), f.sensitive))
                })
                .unwrap();
            for ((n, v, s), (gn, gv, gs)) in sent.iter().zip(&got) {
                assert_eq!((n, v), (gn, gv));
                assert_eq!(s, gs);
            }
            assert_eq!(sent.len(), got.len());
        }
    }
}
