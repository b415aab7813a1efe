//! One access-log entry: what the proxy knows about one HTTP request or one TCP connection
//! once it is over. Built on the request path, so it holds owned values only and is moved,
//! whole, into the queue; all formatting happens later, on the writer thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One HTTP request or one TCP connection, as one access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the request (or connection) started: its head was read, or it was accepted.
    pub time: SystemTime,
    /// The client's address (after PROXY protocol, when trusted: the real client).
    pub client: SocketAddr,
    /// What was asked: an HTTP request's line and headers, or nothing for a TCP connection.
    pub kind: Kind,
    /// The status sent to the client; 0 when none was (TCP, or the client left first).
    pub status: u16,
    /// HTTP: request body bytes read from the client. TCP: every byte read from it.
    pub bytes_in: u64,
    /// HTTP: response body bytes written to the client (what combined's `%b` means). TCP:
    /// every byte written to it.
    pub bytes_out: u64,
    /// The worker (`host:port`) that served the last attempt; `None` when none was reached.
    pub worker: Option<Arc<str>>,
    /// The pool the request (or connection) went to: the listener's own, or a route's.
    pub pool: Arc<str>,
    /// From `time` until the last byte was sent (or the exchange ended otherwise).
    pub total: Duration,
    /// How long the connection to the worker took; `None` for a reused keep-alive connection
    /// or when no worker was dialled.
    pub connect: Option<Duration>,
    /// From `time` until the worker's first response byte (HTTP: the response head; TCP: the
    /// first byte from the worker); `None` when none came.
    pub ttfb: Option<Duration>,
    /// Attempts beyond the first (on other workers).
    pub retries: u32,
    /// How the exchange ended.
    pub ended: Ended,
}

/// What an entry is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Http(Http),
    /// A TCP connection: no request line, the bytes went through untouched.
    Tcp,
}

/// The parts of an HTTP request a log line shows, copied from its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    pub method: Box<str>,
    /// `:authority`, or `Host` for HTTP/1; `None` when the request had neither.
    pub authority: Option<Box<str>>,
    /// The request target as received: path and query (`/a?b=1`).
    pub path: Box<str>,
    pub version: HttpVersion,
    /// The `Referer` header, for the combined format (and the JSON `referer` key).
    pub referer: Option<Box<str>>,
    /// The `User-Agent` header, for the combined format (and the JSON `user_agent` key).
    pub user_agent: Option<Box<str>>,
}

/// The HTTP version of a request, as the client spoke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

impl HttpVersion {
    /// As written in a request line (and in the `protocol` field).
    pub fn name(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
            HttpVersion::Http2 => "HTTP/2",
        }
    }
}

impl Entry {
    /// The `protocol` field: the HTTP version, or `"TCP"`.
    pub fn protocol(&self) -> &'static str {
        match &self.kind {
            Kind::Http(http) => http.version.name(),
            Kind::Tcp => "TCP",
        }
    }
}

/// How a request or connection ended: the `ended` field. A small fixed set, so that a
/// dashboard can count by it; the status (and the proxy's own logs) say more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `"complete"`: the whole response was sent (HTTP, whatever its status, when it came
    /// from a worker); both sides closed (TCP).
    Complete,
    /// `"client_closed"`: the client went away before the end (nginx logs these as 499).
    ClientClosed,
    /// `"backend_failed"`: the worker could not be reached, reset the connection or sent a
    /// broken response, on every attempt (the client got a 502, or a cut stream).
    BackendFailed,
    /// `"timeout"`: a deadline passed: connect, response or idle timeout (the client got a
    /// 504 or 408, or the connection was closed).
    Timeout,
    /// `"refused"`: the proxy answered itself without reaching a worker: a 4xx for a bad
    /// request, a 503 with no worker available.
    Refused,
    /// `"cut"`: the proxy cut it on purpose: the shutdown (or reload) grace ran out, or its
    /// worker was drained and `drain_timeout` passed.
    Cut,
}

impl Ended {
    pub const ALL: [Ended; 6] = [
        Ended::Complete,
        Ended::ClientClosed,
        Ended::BackendFailed,
        Ended::Timeout,
        Ended::Refused,
        Ended::Cut,
    ];

    /// As written in a log line.
    pub fn name(self) -> &'static str {
        match self {
            Ended::Complete => "complete",
            Ended::ClientClosed => "client_closed",
            Ended::BackendFailed => "backend_failed",
            Ended::Timeout => "timeout",
            Ended::Refused => "refused",
            Ended::Cut => "cut",
        }
    }
}
