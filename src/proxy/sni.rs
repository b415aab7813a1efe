//! The server name (SNI) of a client's TLS ClientHello, read without terminating TLS: what
//! a TCP listener routes TLS passthrough by.
//!
//! The bytes are read into a buffer the caller owns and forwards to the chosen backend
//! before anything else, so the backend sees the stream from its first byte and does the
//! handshake itself; this module only looks. Parsing is rustls' own (`Acceptor`, fed the
//! bytes as they arrive), so records, fragmentation and the hello's extensions are decoded
//! by a parser that real clients are tested against, not by one of our own.
//!
//! What is not a ClientHello rustls accepts — not TLS at all, a malformed record layer, or a
//! hello that starts like TLS but does not parse — is [`Peeked::NotTls`]: the caller sends
//! the connection to the listener's default pool, bytes included, and the backend there
//! decides what to make of it. Refusing such connections here would make the proxy
//! stricter than the backend it fronts, and routing cannot be steered by a hello nobody
//! can read.

use std::io;
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The TLS record header: content type, version, length.
const RECORD_HEADER: usize = 5;
/// The content type of a handshake record, the first byte a TLS client sends.
const HANDSHAKE: u8 = 0x16;

/// The most bytes read looking for a whole ClientHello: one full plaintext record (2^14
/// bytes, RFC 8446 §5.1) with its header. Real hellos, post-quantum key shares included,
/// are a few KiB; a client still short of a whole hello past this is not worth routing.
pub const MAX_HELLO: usize = 16 * 1024 + RECORD_HEADER;

/// What the first bytes of a connection said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// The hello's `server_name`, lower-case (DNS names compare case-insensitively).
    ServerName(String),
    /// A ClientHello without a server name (or with an IP address in it, which RFC 6066
    /// does not allow there and rustls treats as none).
    NoServerName,
    /// Not a ClientHello rustls accepts (see the module's documentation).
    NotTls,
}

#[derive(Debug, thiserror::Error)]
pub enum SniError {
    #[error("no whole TLS ClientHello within the timeout")]
    Timeout,
    #[error("the client closed the connection before a whole TLS ClientHello")]
    Closed,
    #[error("the TLS ClientHello is not whole after {MAX_HELLO} bytes")]
    TooLarge,
    #[error("reading the TLS ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// Reads from `stream` into `buffered` until the ClientHello is whole (or it is clearly not
/// TLS), within `timeout` for the whole hello, at most `MAX_HELLO` bytes.
///
/// Bytes already in `buffered` are taken as the stream's first (e.g. read along with a
/// PROXY header). Reading stops as soon as the answer is known: every byte read stays in
/// `buffered` for the caller to forward, whatever the outcome, and none is read past the
/// read that completed the hello.
pub async fn peek_server_name<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffered: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Peeked, SniError> {
    // One deadline for the whole hello, not one per read: a client trickling a byte at a
    // time must not hold the connection (and its task) for longer than that.
    tokio::time::timeout(timeout, read_hello(stream, buffered))
        .await
        .unwrap_or(Err(SniError::Timeout))
}

async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffered: &mut Vec<u8>,
) -> Result<Peeked, SniError> {
    let mut acceptor = Acceptor::default();
    // How much of `buffered` the acceptor has been given.
    let mut fed = 0;
    loop {
        if let Some(peeked) = judge(&mut acceptor, buffered, &mut fed) {
            return Ok(peeked);
        }
        let room = MAX_HELLO.saturating_sub(buffered.len());
        if room == 0 {
            return Err(SniError::TooLarge);
        }
        // Room for a typical hello in one read, without asking for all of `MAX_HELLO` up
        // front (`read_buf` into a full Vec would otherwise read 64 bytes at a time).
        buffered.reserve(room.min(4096));
        let n = (&mut *stream).take(room as u64).read_buf(buffered).await?;
        if n == 0 {
            return Err(SniError::Closed);
        }
    }
}

/// The answer the bytes in `buffered` give, if they give one yet: hands the acceptor what
/// it was not given before and asks whether the hello is whole.
fn judge(acceptor: &mut Acceptor, buffered: &[u8], fed: &mut usize) -> Option<Peeked> {
    // Any other first byte is not a TLS client, whatever follows (an HTTP request, an SSH
    // banner, SSLv2's compatible hello): decided on one byte, without waiting for more.
    if *buffered.first()? != HANDSHAKE {
        return Some(Peeked::NotTls);
    }
    while *fed < buffered.len() {
        match acceptor.read_tls(&mut &buffered[*fed..]) {
            Ok(0) => break,
            Ok(n) => *fed += n,
            // Its buffer is full: more than a hello's worth without a whole hello. Cannot
            // happen below `MAX_HELLO` (rustls holds a whole record), but not TLS if it did.
            Err(_) => return Some(Peeked::NotTls),
        }
    }
    // rustls checks each record header as soon as its 5 bytes are in (content type,
    // version 3.x, length within a record's bounds), so a malformed record layer is an
    // error here without waiting for the body it announces.
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => Some(match accepted.client_hello().server_name() {
            // rustls lower-cases the name as it validates it (a DNS name, not an IP).
            Some(name) => Peeked::ServerName(name.to_owned()),
            None => Peeked::NoServerName,
        }),
        Err(_) => Some(Peeked::NotTls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    const LONG: Duration = Duration::from_secs(10);

    /// The first flight of a real rustls client connecting to `server_name`.
    fn client_hello(server_name: &str) -> Vec<u8> {
        let config = ClientConfig::builder_with_provider(crate::config::tls_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        out
    }

    /// The same handshake bytes cut into records of at most `size` bytes of payload each.
    fn refragment(hello: &[u8], size: usize) -> Vec<u8> {
        let (header, payload) = hello.split_at(RECORD_HEADER);
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        assert_eq!(payload.len(), len, "the client sent one record");
        let mut out = Vec::new();
        for chunk in payload.chunks(size) {
            out.extend_from_slice(&header[..3]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// Peeks at a stream on which `sent` was written and that stays open.
    async fn peek(sent: &[u8]) -> (Result<Peeked, SniError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(sent).await.unwrap();
        let mut buffered = Vec::new();
        let r = peek_server_name(&mut server, &mut buffered, LONG).await;
        drop(client);
        (r, buffered)
    }

    fn name(s: &str) -> Peeked {
        Peeked::ServerName(s.into())
    }

    #[tokio::test]
    async fn a_real_hello_gives_its_server_name_in_lower_case() {
        let hello = client_hello("Example.COM");
        // The client sends the name as given: the lower-casing is the reader's.
        assert!(hello.windows(11).any(|w| w == b"Example.COM"));
        let (r, buffered) = peek(&hello).await;
        assert_eq!(r.unwrap(), name("example.com"));
        assert_eq!(
            buffered, hello,
            "every byte read is kept, none past the hello"
        );
    }

    #[tokio::test]
    async fn a_hello_a_byte_at_a_time_or_over_several_records_is_read_whole() {
        let hello = client_hello("Example.COM");
        for sent in [
            hello.clone(),
            refragment(&hello, 100),
            refragment(&hello, 1),
        ] {
            // A pipe of one byte: each read returns at most one.
            let (mut client, mut server) = tokio::io::duplex(1);
            let writer = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    client.write_all(&sent).await.unwrap();
                    // What follows the hello is not read (the backend gets it from the
                    // stream): the write blocks until the pipe is dropped.
                    let _ = client.write_all(b"more").await;
                })
            };
            let mut buffered = Vec::new();
            let r = peek_server_name(&mut server, &mut buffered, LONG).await;
            assert_eq!(r.unwrap(), name("example.com"));
            assert_eq!(buffered, sent);
            drop(server);
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn bytes_already_buffered_are_the_start_of_the_hello() {
        let hello = refragment(&client_hello("a.example"), 300);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&hello[10..]).await.unwrap();
        let mut buffered = hello[..10].to_vec();
        let r = peek_server_name(&mut server, &mut buffered, LONG).await;
        assert_eq!(r.unwrap(), name("a.example"));
        assert_eq!(buffered, hello);
    }

    #[tokio::test]
    async fn a_hello_for_an_ip_address_has_no_server_name() {
        // rustls sends no SNI when the name is an IP address.
        let hello = client_hello("127.0.0.1");
        let (r, buffered) = peek(&hello).await;
        assert_eq!(r.unwrap(), Peeked::NoServerName);
        assert_eq!(buffered, hello);
    }

    #[tokio::test(start_paused = true)]
    async fn not_tls_is_decided_on_the_first_bytes_without_waiting() {
        // The stream stays open in each case: waiting for more would end in the timeout.
        let start = Instant::now();
        let cases: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\n",
            // A record header announcing 65535 bytes: more than any record may hold.
            &[0x16, 0x03, 0x01, 0xff, 0xff],
            // Not version 3.x, decided on the first three bytes.
            &[0x16, 0x04, 0x00],
            // A zero-length handshake record.
            &[0x16, 0x03, 0x01, 0x00, 0x00],
            // A whole record with a ClientHello of length 0: starts like TLS, does not parse.
            &[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00],
        ];
        for sent in cases {
            let (r, buffered) = peek(sent).await;
            assert_eq!(r.unwrap(), Peeked::NotTls, "{sent:?}");
            assert_eq!(buffered, sent);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn an_oversized_record_with_garbage_is_not_tls() {
        let mut sent = vec![0x16, 0x03, 0x01, 0xff, 0xff];
        sent.extend((0..2000u32).map(|i| (i * 7) as u8));
        let (r, buffered) = peek(&sent).await;
        assert_eq!(r.unwrap(), Peeked::NotTls);
        assert_eq!(buffered, sent);
    }

    #[tokio::test]
    async fn a_record_longer_than_the_limit_is_too_large() {
        // 18000 bytes: within what rustls allows a (ciphertext) record, beyond a hello's
        // plaintext record; a ClientHello header announcing as much follows.
        let mut sent = vec![0x16, 0x03, 0x03, 0x46, 0x50, 0x01, 0x00, 0x46, 0x4c];
        sent.resize(MAX_HELLO + 100, 0x00);
        let (r, buffered) = peek(&sent).await;
        assert!(matches!(r, Err(SniError::TooLarge)), "{r:?}");
        assert_eq!(buffered, sent[..MAX_HELLO], "no byte read past the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_hello_times_out() {
        let hello = client_hello("example.com");
        let half = &hello[..hello.len() / 2];
        let start = Instant::now();
        let (r, buffered) = peek(half).await;
        assert!(matches!(r, Err(SniError::Timeout)), "{r:?}");
        assert_eq!(start.elapsed(), LONG);
        assert_eq!(buffered, half);
    }

    #[tokio::test]
    async fn eof_before_a_whole_hello_is_closed() {
        let hello = client_hello("example.com");
        for sent in [&hello[..hello.len() / 2], &hello[..1], &[]] {
            let (mut client, mut server) = tokio::io::duplex(64 * 1024);
            client.write_all(sent).await.unwrap();
            drop(client);
            let mut buffered = Vec::new();
            let r = peek_server_name(&mut server, &mut buffered, LONG).await;
            assert!(matches!(r, Err(SniError::Closed)), "{r:?}");
            assert_eq!(buffered, sent);
        }
    }
}
