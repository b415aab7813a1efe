//! The HTTP/2 codec: bytes to frames and back (`frame`), a field block from its HEADERS
//! and CONTINUATION frames (`block`), field blocks to fields and back (`hpack`), fields to
//! checked message heads (`message`), flow control's arithmetic (`window`), and the server
//! side of a connection built on them (`server`). Pure: no I/O, no timers, no policy, so
//! every rule of RFC 9113 §3–8 and RFC 7541 it enforces is tested on exact bytes.
//!
//! Why the proxy has its own: the h2 crate's share of an HTTP/2 request keeps the proxy's
//! CPU per request above HAProxy's (README, "Performance"), and its codec is private, so
//! it cannot be kept while the rest is replaced. Nothing serves traffic with it yet: the
//! client side of a connection (to h2 workers) and the tasks that drive both sides over
//! sockets come next, and until they pass h2spec and the HTTP/2 and gRPC tests the h2
//! crate stays in the request path.

pub mod block;
pub mod frame;
pub mod hpack;
pub mod message;
pub mod server;
pub mod window;
