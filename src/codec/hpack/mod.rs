//! HPACK, HTTP/2's field compression (RFC 7541), as the proxy's HTTP/2 codec needs it: a
//! decoder that mirrors each peer's dynamic table and hands fields over without copying
//! them, and an encoder that keeps no table at all.
//!
//! Why not the h2 crate's: it is private to h2, and it is where h2 spends a third of an
//! HTTP/2 → h2 request (README, "Performance"): its encoder hashes every field into a
//! dynamic table and Huffman-codes every literal; its decoder builds a `HeaderMap`
//! entry per field. Here the encoder writes static-table indexes and raw literals
//! (`encoder`), so encoding is a copy, and the decoder (`decoder`) gives borrowed slices
//! to a callback. Every peer may still send Huffman-coded strings (`huffman`) and index
//! into its dynamic table (`table`): both are decoded in full.

mod decoder;
mod encoder;
mod huffman;
mod table;

pub use decoder::{Decoder, Field};
pub use encoder::{field, status};

/// Why a field block cannot be decoded. Each is the peer's COMPRESSION_ERROR (RFC 9113
/// §4.3): the dynamic tables are out of step, so the connection cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the field block ends inside a representation")]
    Truncated,
    #[error("an integer longer than HPACK ever needs")]
    Integer,
    #[error("an index outside both tables")]
    Index,
    #[error("a Huffman string with EOS or with bad padding")]
    Huffman,
    #[error("a dynamic table size above this side's SETTINGS_HEADER_TABLE_SIZE")]
    TableSize,
    #[error("a dynamic table size update after the block's first field")]
    LateTableSizeUpdate,
}
