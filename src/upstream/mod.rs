//! Connections to workers: dialing them, keeping idle ones for reuse (and an h2 pool's
//! connections shared by many streams, `h2`), and probing them for the health checks.
//!
//! Everything here is keyed by the worker (its id, address and state in the ring) and knows
//! nothing of which worker should be picked (`balance`) or what the client asked (`proxy`).
//! Whether a connection may be kept is decided from the worker's state: a drained, deleted
//! or re-addressed worker's connections are closed when their exchange ends, and its idle
//! ones by the reaper.

pub mod connect;
pub mod h2;
pub mod idle;
pub mod private;
pub mod probe;
pub mod proxy_header;
pub mod stream;
pub mod tls;

pub use connect::{ConnectError, Connector, Upstream, connect_upstream, dial};
pub use idle::IdleConns;
pub use private::PrivateConns;
pub use stream::UpstreamStream;
