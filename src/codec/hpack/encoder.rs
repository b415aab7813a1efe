//! Field encoding without a dynamic table: a field the static table holds whole is one
//! byte; any other is a literal that is not indexed (a static index for its name when
//! there is one) with raw, not Huffman-coded, strings (RFC 7541 §6.2.2). So the peer's
//! decoder never has to keep anything for us, and encoding costs a copy.

use bytes::BufMut;

use super::table::{STATIC, static_name};

/// Appends the representation of `name: value` (the name lowercase, as HTTP/2 sends it).
/// `sensitive`: the never-indexed form, which tells every later hop not to index it
/// either (RFC 7541 §7.1.3): for credentials, and for fields a peer sent that way.
/// Inlined into the loops that write a head: called for every field, it cost more in its
/// calls' prologues and epilogues than in its work.
#[inline(always)]
pub fn field(name: &[u8], value: &[u8], sensitive: bool, dst: &mut impl BufMut) {
    let form = if sensitive { 0x10 } else { 0x00 };
    match static_name(name) {
        Some((first, count)) => {
            if !sensitive {
                let entries = &STATIC[first - 1..first - 1 + count];
                if let Some(i) = entries.iter().position(|&(_, v)| v == value) {
                    integer(first + i, 7, 0x80, dst);
                    return;
                }
            }
            integer(first, 4, form, dst);
        }
        None => {
            dst.put_u8(form);
            string(name, dst);
        }
    }
    string(value, dst);
}

/// Appends `:status` (a response's first field).
pub fn status(code: u16, dst: &mut impl BufMut) {
    let index = match code {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            let digits = [
                b'0' + (code / 100 % 10) as u8,
                b'0' + (code / 10 % 10) as u8,
                b'0' + (code % 10) as u8,
            ];
            // Without indexing, the name being `:status` (static index 8).
            dst.put_u8(0x08);
            string(&digits, dst);
            return;
        }
    };
    dst.put_u8(0x80 | index);
}

/// A raw string literal: its length (7-bit prefix, H = 0), then its bytes. Inlined, as
/// `integer` is: a head's dozen fields call them twice each, and the calls' own cost was
/// most of theirs.
#[inline(always)]
fn string(s: &[u8], dst: &mut impl BufMut) {
    integer(s.len(), 7, 0x00, dst);
    dst.put_slice(s);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1); `flags` are the first byte's bits
/// above the prefix.
#[inline(always)]
fn integer(value: usize, prefix: u8, flags: u8, dst: &mut impl BufMut) {
    let max = (1usize << prefix) - 1;
    if value < max {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::*;

    fn decoded(block: &[u8]) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        Decoder::new(4096)
            .decode(block, |f| {
                out.push((
                    String::from_utf8_lossy(f.name).into(),
                    String::from_utf8_lossy(f.value).into(),
                    f.sensitive,
                ))
            })
            .unwrap();
        out
    }

    #[test]
    fn whole_static_entries_are_one_byte() {
        let mut b = Vec::new();
        field(b":method", b"GET", false, &mut b);
        field(b":method", b"POST", false, &mut b);
        field(b":scheme", b"https", false, &mut b);
        field(b":path", b"/index.html", false, &mut b);
        field(b"accept-encoding", b"gzip, deflate", false, &mut b);
        status(200, &mut b);
        status(500, &mut b);
        assert_eq!(b, [0x82, 0x83, 0x87, 0x85, 0x90, 0x88, 0x8e]);
    }

    #[test]
    fn other_fields_are_raw_literals_never_indexed_when_sensitive() {
        let mut b = Vec::new();
        field(b":path", b"/a", false, &mut b);
        field(b"x-id", b"7", false, &mut b);
        field(b"authorization", b"k", true, &mut b);
        field(b"x-key", b"s", true, &mut b);
        status(302, &mut b);
        #[rustfmt::skip]
        let expected = [
            0x04, 2, b'/', b'a',
            0x00, 4, b'x', b'-', b'i', b'd', 1, b'7',
            0x1f, 0x08, 1, b'k',
            0x10, 5, b'x', b'-', b'k', b'e', b'y', 1, b's',
            0x08, 3, b'3', b'0', b'2',
        ];
        assert_eq!(b, expected);
        let fields = decoded(&b);
        assert_eq!(fields[2], ("authorization".into(), "k".into(), true));
        assert_eq!(fields[4], (":status".into(), "302".into(), false));
    }

    #[test]
    fn long_names_and_values_round_trip() {
        let name = vec![b'x'; 300];
        let value = vec![b'v'; 70_000];
        let mut b = Vec::new();
        field(&name, &value, false, &mut b);
        field(b"server", &value[..126], false, &mut b);
        field(b"server", &value[..127], false, &mut b);
        let fields = decoded(&b);
        assert_eq!(fields[0].0.len(), 300);
        assert_eq!(fields[0].1.len(), 70_000);
        assert_eq!((fields[1].1.len(), fields[2].1.len()), (126, 127));
    }

    #[test]
    fn integers_follow_rfc_7541_c_1() {
        let mut b = Vec::new();
        integer(10, 5, 0, &mut b);
        assert_eq!(b, [10]);
        b.clear();
        integer(1337, 5, 0, &mut b);
        assert_eq!(b, [31, 154, 10]);
        b.clear();
        integer(42, 8, 0, &mut b);
        assert_eq!(b, [42]);
    }
}
