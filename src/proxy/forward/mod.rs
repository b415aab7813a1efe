//! The one forwarding policy both HTTP versions follow. The transports (`http1`, `http2`)
//! frame and move bytes; what a request may be, how it is rewritten for the worker, what
//! the proxy answers itself and when it tries another worker are decided here, once:
//!
//! - `affinity`: what of a request pins it to a worker (`hash_key`, the sticky cookie);
//! - `checks`: what is refused before a worker sees it, and with which status;
//! - `headers`: which fields are hop-by-hop, and the forwarding fields that tell the worker
//!   who the client is;
//! - `canned`: the proxy's own answers (400 … 504), each body written once;
//! - `grpc`: which requests are gRPC calls, their deadline, and the proxy's answers and
//!   cuts as a gRPC client reads them (`grpc-status`);
//! - `retry`: which failures may go to another worker.
//!
//! Whatever HTTP/1 refuses, HTTP/2 refuses the same way, because both ask these functions.

pub mod affinity;
pub mod canned;
pub mod checks;
pub mod grpc;
pub mod headers;
pub mod retry;

pub use canned::Canned;
pub use checks::Reject;
