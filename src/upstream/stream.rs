//! A connection to a worker as the transports read and write it: plain TCP, or TLS over
//! it (a pool's `[pools.NAME.tls]`). One type for both, so pooling, draining and the
//! exchanges are written once.

use std::io;

use tokio::net::TcpStream;
use tokio::net::tcp;

use crate::io_variants::{read_by_variant, write_by_variant};

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

pub enum UpstreamStream {
    Plain(TcpStream),
    /// Boxed: a TLS session is kilobytes; plain pools should not pay for it.
    Tls(Box<Tls>),
}

impl UpstreamStream {
    /// The TCP socket under it, for what only the socket can do (probe for a close,
    /// shut it down from the drain watcher).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(s) => s,
            UpstreamStream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the worker closed the idle connection (or sent something unasked): a read
    /// that would not block. Without a system call in the usual case: tokio knows the
    /// socket is not readable until epoll says otherwise. A TLS connection is probed on
    /// its socket: anything there (a close_notify, an alert) means it is not reusable.
    pub fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.tcp().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Read and write halves used at the same time (see `ClientStream::split`).
    pub fn split(&mut self) -> (UpstreamRead<'_>, UpstreamWrite<'_>) {
        match self {
            UpstreamStream::Plain(s) => {
                let (r, w) = s.split();
                (UpstreamRead::Plain(r), UpstreamWrite::Plain(w))
            }
            UpstreamStream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
        }
    }
}

pub enum UpstreamRead<'a> {
    Plain(tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut Tls>),
}

pub enum UpstreamWrite<'a> {
    Plain(tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut Tls>),
}

read_by_variant!(UpstreamStream, Plain, Tls);
write_by_variant!(UpstreamStream, Plain, Tls);
read_by_variant!(UpstreamRead<'_>, Plain, Tls);
write_by_variant!(UpstreamWrite<'_>, Plain, Tls);
