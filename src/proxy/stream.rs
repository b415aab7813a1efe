//! A client connection as the transports read and write it: plain TCP, or TLS over it
//! (`tls`). One type for both, so the HTTP/1, HTTP/2 and TCP transports are written once;
//! the match per read or write costs nothing next to the system call behind it.

use std::io;

use tokio::net::TcpStream;
use tokio::net::tcp;

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// A client's connection after the edge (`edge.rs`): the PROXY header read, TLS set up.
pub enum ClientStream {
    Plain(TcpStream),
    /// Boxed: a TLS session is kilobytes, and most connections of a plain listener would
    /// otherwise carry that much unused space.
    Tls(Box<Tls>),
}

impl ClientStream {
    /// Waits until a read would find something, without a buffer: an idle keep-alive
    /// client holds no memory. A TLS session may hold decrypted bytes the socket no longer
    /// shows, so there it returns at once and the caller reads.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.readable().await,
            ClientStream::Tls(_) => Ok(()),
        }
    }

    /// The protocol ALPN chose during the TLS handshake (`h2`, `http/1.1`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            ClientStream::Plain(_) => None,
            ClientStream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Read and write halves used at the same time (a body streaming up while the response
    /// streams down). TCP's are free; a TLS session is one state machine, so its halves
    /// share it through tokio's lock.
    pub fn split(&mut self) -> (ClientRead<'_>, ClientWrite<'_>) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.split();
                (ClientRead::Plain(r), ClientWrite::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
        }
    }
}

pub enum ClientRead<'a> {
    Plain(tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut Tls>),
}

pub enum ClientWrite<'a> {
    Plain(tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut Tls>),
}

use crate::io_variants::{read_by_variant, write_by_variant};

read_by_variant!(ClientStream, Plain, Tls);
write_by_variant!(ClientStream, Plain, Tls);
read_by_variant!(ClientRead<'_>, Plain, Tls);
write_by_variant!(ClientWrite<'_>, Plain, Tls);
