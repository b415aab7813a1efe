//! The HTTP/1 transport: heads (`request`, `response`, `head`), chunked bodies (`chunked`)
//! and the session that serves one client connection (`session`).

pub mod body;
pub mod chunked;
pub mod head;
pub mod request;
pub mod response;
pub mod session;
