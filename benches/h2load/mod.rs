//! h2load's requests as its HPACK encoder sends them, for the HTTP/2 benches: the first on
//! a connection with incremental indexing (Huffman-coded), which adds :authority,
//! user-agent and accept-encoding to the table, then every later one as indexes into it.

pub const FIRST_REQUEST: &str =
    "828486418b089d5c0b8170dc0bc0781f5383f963e7907a8f9c541c722954d3a5358980aed89707";
pub const REPEATED_REQUEST: &str = "828486c0bf90be";

/// The bytes a hex string spells.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
