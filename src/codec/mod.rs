//! The HTTP/2 codec: bytes to frames and back (`frame`), a field block from its HEADERS
//! and CONTINUATION frames (`block`), field blocks to fields and back (`hpack`), fields to
//! checked message heads (`message`), and flow control's arithmetic (`window`). Pure: no
//! I/O, no timers, no policy, so every rule of RFC 9113 §4–8 and RFC 7541 it enforces is
//! tested on exact bytes.
//!
//! Why the proxy has its own: the h2 crate's share of an HTTP/2 request keeps the proxy's
//! CPU per request above HAProxy's (README, "Performance"), and its codec is private, so
//! it cannot be kept while the rest is replaced. The connection state machine that will
//! serve clients and workers with it comes next; until then, nothing outside the tests
//! and `benches/hpack.rs` calls this module.

pub mod block;
pub mod frame;
pub mod hpack;
pub mod message;
pub mod window;
