//! The HTTP/1 transport: heads (`request`, `response`, `head`), chunked bodies (`chunked`),
//! the session that serves one client connection (`session`), and what it needs to send a
//! request to an h2 worker (`to_h2`).

pub mod body;
pub mod chunked;
pub mod head;
pub mod request;
pub mod response;
pub mod session;
pub mod to_h2;
