//! Reading the PROXY protocol header (v1 text or v2 binary) a trusted load balancer in
//! front of this one sends first on each connection, to learn the client's address.
//!
//! Trust is by the peer's address alone: a peer in the listener's `trusted_proxies` must
//! start with a header (without one it is closed: a proxy that forgot it would otherwise
//! pass off its own address as every client's), and a peer outside them must not (a client
//! could otherwise choose the address it is logged, hashed and forwarded as). An untrusted
//! peer without a header is served as itself.
//!
//! The header is read with `peek`, so nothing after it is consumed: once it is known to be
//! whole, exactly its length is read and thrown away, and the transports (TLS, HTTP, TCP)
//! start on the socket as if nothing had been there. No buffer is handed on.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{ListenerConfig, Protocol, TrustedProxies};

/// The v1 header's start: "PROXY" and its separator.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the protocol's own limit).
const V1_MAX: usize = 107;
/// The v2 header's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The longest v2 header accepted. The format allows 64 KiB of TLVs; the addresses need 36
/// bytes and the usual TLVs (ALPN, authority, SSL, unique id) a few hundred, so more is a
/// mistake or an attack, and is not buffered.
pub const V2_MAX: usize = 4096;
/// Waits between two peeks at a header that is not whole yet, growing to the cap: a header
/// split across segments is rare, and a peek cannot wait for *more* bytes than it saw.
const FIRST_WAIT: Duration = Duration::from_millis(1);
const MAX_WAIT: Duration = Duration::from_millis(50);

/// Why a connection was closed before a transport saw it.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("a trusted proxy sent no PROXY header")]
    Missing,
    #[error("PROXY header from an address outside trusted_proxies")]
    Untrusted,
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("closed before its PROXY header")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A listener's `accept_proxy` settings, for its edge (`Edge`).
#[derive(Debug, Clone)]
pub struct AcceptProxy {
    trusted: TrustedProxies,
    /// The listener's `header_read_timeout`: a header must be whole within it.
    timeout: Duration,
    /// Whether an untrusted peer's first bytes are awaited and checked for a header here.
    /// Yes on HTTP listeners, whose clients speak first anyway. No on TCP listeners: many
    /// protocols there (SMTP, MySQL, …) have the server speak first, and waiting for the
    /// client would stall them until the timeout; there the session is started at once
    /// and [`Screened`] checks the client's first bytes as they pass.
    screen_untrusted: bool,
}

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq)]
enum Start {
    /// Too few bytes to tell yet.
    Unknown,
    Neither,
    V1,
    V2,
}

fn start(bytes: &[u8]) -> Start {
    let is = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        bytes[..n] == signature[..n]
    };
    match (is(V1_SIGNATURE), is(v2::PROTOCOL_PREFIX)) {
        (true, _) if bytes.len() >= V1_SIGNATURE.len() => Start::V1,
        (_, true) if bytes.len() >= v2::PROTOCOL_PREFIX.len() => Start::V2,
        (false, false) => Start::Neither,
        _ => Start::Unknown,
    }
}

/// A header found at the start of `bytes`.
#[derive(Debug, PartialEq)]
enum Parsed {
    /// Not all of it has arrived.
    Partial,
    /// `len` bytes long; the client's address, or `None` for "use the peer's" (v2 LOCAL,
    /// v1 UNKNOWN, or an address family that is not IP).
    Whole {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Parses the header `bytes` start with (their [`start`] is `kind`).
fn parse(kind: &Start, bytes: &[u8]) -> Result<Parsed, HeaderError> {
    match kind {
        Start::V1 => {
            let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
                return if bytes.len() >= V1_MAX {
                    Err(HeaderError::TooLong(V1_MAX))
                } else {
                    Ok(Parsed::Partial)
                };
            };
            let len = end + 2;
            if len > V1_MAX {
                return Err(HeaderError::TooLong(V1_MAX));
            }
            let header = v1::Header::try_from(&bytes[..len])
                .map_err(|e| HeaderError::Malformed(e.to_string()))?;
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Whole { len, source })
        }
        Start::V2 => {
            if bytes.len() < V2_FIXED {
                return Ok(Parsed::Partial);
            }
            let len = V2_FIXED + u16::from_be_bytes([bytes[14], bytes[15]]) as usize;
            if len > V2_MAX {
                return Err(HeaderError::TooLong(V2_MAX));
            }
            if bytes.len() < len {
                return Ok(Parsed::Partial);
            }
            let header = v2::Header::try_from(&bytes[..len])
                .map_err(|e| HeaderError::Malformed(e.to_string()))?;
            let source = match (header.command, header.addresses) {
                // A health check or the proxy's own connection: no client behind it.
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            };
            Ok(Parsed::Whole { len, source })
        }
        Start::Unknown | Start::Neither => unreachable!("parsed only after a signature"),
    }
}

impl AcceptProxy {
    /// The listener's settings, or `None` when it takes no PROXY headers.
    pub fn of(listener: &ListenerConfig) -> Option<AcceptProxy> {
        listener.accept_proxy.then(|| AcceptProxy {
            trusted: listener.trusted_proxies.clone(),
            timeout: listener.header_read_timeout,
            screen_untrusted: listener.protocol == Protocol::Http,
        })
    }

    /// The client's address for the connection `tcp` from `peer`: the one its PROXY
    /// header carries, or `peer`'s own. On success the header has been consumed and
    /// nothing after it.
    pub async fn client(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, HeaderError> {
        let trusted = self.trusted.contains(peer.ip());
        if !trusted && !self.screen_untrusted {
            return Ok(peer);
        }
        let deadline = Instant::now() + self.timeout;
        tokio::time::timeout_at(deadline, self.read(tcp, peer, trusted))
            .await
            .map_err(|_| HeaderError::Timeout(self.timeout))?
    }

    async fn read(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        trusted: bool,
    ) -> Result<SocketAddr, HeaderError> {
        // Only the signature matters for an untrusted peer. Allocated per connection rather
        // than on the task's stack: every connection task would otherwise be 4 KiB larger.
        let mut buf = vec![0u8; if trusted { V2_MAX } else { V2_FIXED }];
        let mut wait = FIRST_WAIT;
        loop {
            let n = tcp.peek(&mut buf).await?;
            if n == 0 {
                return Err(HeaderError::Closed);
            }
            let bytes = &buf[..n];
            let kind = start(bytes);
            let parsed = match (&kind, trusted) {
                (Start::Neither, true) => return Err(HeaderError::Missing),
                (Start::Neither, false) => return Ok(peer),
                (Start::V1 | Start::V2, false) => return Err(HeaderError::Untrusted),
                (Start::Unknown, _) => Parsed::Partial,
                (_, true) => parse(&kind, bytes)?,
            };
            match parsed {
                Parsed::Whole { len, source } => {
                    tcp.read_exact(&mut buf[..len]).await?;
                    return Ok(source.unwrap_or(peer));
                }
                Parsed::Partial if n == buf.len() => {
                    // Cannot happen (the limits are below the buffer's size), but a loop
                    // that could spin on a full buffer must not exist.
                    return Err(HeaderError::TooLong(buf.len()));
                }
                Parsed::Partial => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                }
            }
        }
    }
}

/// A TCP session's client side on a listener that accepts PROXY headers: it fails the
/// session if the client's first bytes are a PROXY signature. A trusted peer's header was
/// consumed at the edge, so one here comes from an untrusted peer, or from a client behind
/// a trusted proxy: either way a client trying to choose its own address. Costs one branch
/// per read once the first twelve bytes have passed (or at once, off such listeners).
/// Bytes of a signature read before it was whole may reach the worker; the session is
/// closed all the same, and no address is ever read from them.
pub struct Screened<S> {
    inner: S,
    /// The client's first bytes, up to the longest signature's length.
    seen: [u8; 12],
    len: usize,
    /// Nothing more to check: not a signature, or not screened at all.
    passed: bool,
}

impl<S> Screened<S> {
    pub fn new(inner: S, screen: bool) -> Screened<S> {
        Screened {
            inner,
            seen: [0; 12],
            len: 0,
            passed: !screen,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Screened<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.passed {
            return Poll::Ready(Ok(()));
        }
        let new = &buf.filled()[before..];
        let take = new.len().min(this.seen.len() - this.len);
        this.seen[this.len..this.len + take].copy_from_slice(&new[..take]);
        this.len += take;
        match start(&this.seen[..this.len]) {
            Start::V1 | Start::V2 => {
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    HeaderError::Untrusted,
                )));
            }
            Start::Neither => this.passed = true,
            // The end of the stream before anything was told apart: nothing to screen.
            Start::Unknown if new.is_empty() => this.passed = true,
            Start::Unknown => {}
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Screened<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(command: v2::Command, src: &str, dst: &str) -> Vec<u8> {
        let addresses: v2::Addresses = (
            src.parse::<SocketAddr>().unwrap(),
            dst.parse::<SocketAddr>().unwrap(),
        )
            .into();
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn screened_fails_on_a_signature_and_passes_anything_else() {
        let read_all = async |bytes: &[u8], screen: bool| {
            let mut s = Screened::new(bytes, screen);
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.map(|_| out)
        };
        assert!(
            read_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhi", true)
                .await
                .is_err()
        );
        assert!(read_all(v2::PROTOCOL_PREFIX, true).await.is_err());
        assert_eq!(read_all(b"PROXY ", false).await.unwrap(), b"PROXY ");
        assert_eq!(read_all(b"PRO", true).await.unwrap(), b"PRO");
        let long = [b"hello ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(read_all(&long, true).await.unwrap(), long);
        // Split reads: the signature is seen across them.
        let mut s = Screened::new(reader_of(&[b"PR", b"OXY ", b"TCP4"]), true);
        let mut out = Vec::new();
        assert!(s.read_to_end(&mut out).await.is_err());
    }

    /// A reader that returns `parts` one read at a time.
    fn reader_of(parts: &[&[u8]]) -> impl AsyncRead + Unpin {
        let (mut client, server) = tokio::io::duplex(64);
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for p in parts {
                client.write_all(&p).await.unwrap();
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        server
    }

    #[test]
    fn starts() {
        assert_eq!(start(b"P"), Start::Unknown);
        assert_eq!(start(b"PROXY"), Start::Unknown);
        assert_eq!(start(b"PROXY "), Start::V1);
        assert_eq!(start(b"POST / HTTP/1.1"), Start::Neither);
        assert_eq!(start(b"\r\n\r\n"), Start::Unknown);
        assert_eq!(start(b"\r\n\r\nGET"), Start::Neither);
        assert_eq!(start(v2::PROTOCOL_PREFIX), Start::V2);
        assert_eq!(start(b"GET / HTTP/1.1"), Start::Neither);
    }

    #[test]
    fn v1_whole_partial_and_too_long() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\nGET /";
        let len = h.len() - 5;
        let source = Some("192.0.2.7:5555".parse().unwrap());
        assert_eq!(parse(&Start::V1, h).unwrap(), Parsed::Whole { len, source });
        assert_eq!(parse(&Start::V1, &h[..20]).unwrap(), Parsed::Partial);
        let h6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 80\r\n";
        let source = Some("[2001:db8::7]:5555".parse().unwrap());
        let len = h6.len();
        assert_eq!(
            parse(&Start::V1, h6).unwrap(),
            Parsed::Whole { len, source }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        let whole = Parsed::Whole {
            len: 15,
            source: None,
        };
        assert_eq!(parse(&Start::V1, unknown).unwrap(), whole);
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(
            parse(&Start::V1, &long),
            Err(HeaderError::TooLong(107))
        ));
        let bad = b"PROXY TCP4 nonsense\r\n";
        assert!(matches!(
            parse(&Start::V1, bad),
            Err(HeaderError::Malformed(_))
        ));
    }

    #[test]
    fn v2_proxy_local_partial_and_too_long() {
        let h = v2_header(v2::Command::Proxy, "192.0.2.7:5555", "10.0.0.1:80");
        let source = Some("192.0.2.7:5555".parse().unwrap());
        let whole = Parsed::Whole {
            len: h.len(),
            source,
        };
        assert_eq!(
            parse(&Start::V2, &[h.as_slice(), b"GET"].concat()).unwrap(),
            whole
        );
        assert_eq!(parse(&Start::V2, &h[..20]).unwrap(), Parsed::Partial);
        let local = v2_header(v2::Command::Local, "192.0.2.7:5555", "10.0.0.1:80");
        let whole = Parsed::Whole {
            len: local.len(),
            source: None,
        };
        assert_eq!(parse(&Start::V2, &local).unwrap(), whole);
        let mut huge = h.clone();
        huge[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert!(matches!(
            parse(&Start::V2, &huge),
            Err(HeaderError::TooLong(V2_MAX))
        ));
        let mut bad = h.clone();
        bad[12] = 0x31; // version 3
        assert!(matches!(
            parse(&Start::V2, &bad),
            Err(HeaderError::Malformed(_))
        ));
    }
}
