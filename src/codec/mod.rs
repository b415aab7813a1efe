//! The HTTP/2 codec: bytes to frames and back (`frame`), a field block from its HEADERS
//! and CONTINUATION frames (`block`), field blocks to fields and back (`hpack`), fields to
//! checked message heads (`message`), flow control's arithmetic (`window`), what both
//! sides of a connection do alike (`conn`: streams, windows, SETTINGS, PING), and the two
//! sides on it (`server`, `client`). Pure: no I/O, no timers, no policy, so every rule of
//! RFC 9113 §3–8 and RFC 7541 it enforces is tested on exact bytes.
//!
//! Why the proxy has its own: the h2 crate's share of an HTTP/2 request kept the proxy's
//! CPU per request above HAProxy's (README, "Performance"), and its codec is private, so
//! it could not be kept while the rest was replaced. `server` serves the proxy's HTTP/2
//! clients (`proxy::http2::conn` drives it over the socket), `client` speaks to h2 workers
//! (`upstream::h2::conn` drives it).

pub mod block;
pub mod client;
pub mod conn;
pub mod frame;
pub mod hpack;
pub mod message;
pub mod server;
pub mod window;
