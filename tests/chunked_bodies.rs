//! Chunked request bodies through the real proxy, to a backend that records the raw bytes
//! it receives: malformed chunk-size lines and trailer sections are answered 400 or 431
//! and never reach the backend whole; valid extensions are dropped and the framing
//! normalised; a limit hit mid-body still gets the client an answer and closes the backend
//! connection that had part of the request.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use load_balancer::config::AlgorithmKind;
use load_balancer::config::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const HEAD: &[u8] = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
/// The same, for a request answered whole: the proxy closes after it, which ends `raw`.
const HEAD_CLOSE: &[u8] =
    b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// What a [`Recorder`] saw on one connection.
#[derive(Debug, Clone, Default)]
struct Conn {
    /// Every byte received, in order.
    bytes: Vec<u8>,
    /// Complete requests (head and body), in order.
    requests: Vec<Vec<u8>>,
    /// The proxy closed the connection.
    closed: bool,
}

/// A raw TCP backend: records every byte each connection brings and answers `response`
/// to each complete request. A request is complete when its chunked body's final empty
/// line came: the bodies of these tests never hold an empty line anywhere else.
struct Recorder {
    addr: SocketAddr,
    conns: watch::Receiver<Vec<Conn>>,
}

impl Recorder {
    async fn start(response: &'static [u8]) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (log, conns) = watch::channel(Vec::<Conn>::new());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut id = 0;
                log.send_modify(|c| {
                    id = c.len();
                    c.push(Conn::default());
                });
                let log = log.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                log.send_modify(|c| c[id].closed = true);
                                return;
                            }
                            Ok(n) => n,
                        };
                        request.extend_from_slice(&chunk[..n]);
                        let done = complete(&request);
                        log.send_modify(|c| {
                            c[id].bytes.extend_from_slice(&chunk[..n]);
                            if done {
                                c[id].requests.push(request.clone());
                            }
                        });
                        if done {
                            request.clear();
                            if s.write_all(response).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Recorder { addr, conns }
    }

    fn conns(&self) -> Vec<Conn> {
        self.conns.borrow().clone()
    }

    /// Waits until the connections recorded satisfy `check`; panics with `what` if not.
    async fn until(&self, what: &str, check: impl FnMut(&Vec<Conn>) -> bool) -> Vec<Conn> {
        let mut rx = self.conns.clone();
        match tokio::time::timeout(WAIT, rx.wait_for(check)).await {
            Ok(Ok(conns)) => conns.clone(),
            _ => panic!(
                "backend: not within {WAIT:?}: {what}; saw {:?}",
                self.conns()
            ),
        }
    }
}

/// Whether `request` (a head, then a chunked body) is complete.
fn complete(request: &[u8]) -> bool {
    let Some(head) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let body = &request[head + 4..];
    body.ends_with(b"\r\n\r\n")
}

async fn proxy_to(db: &TestDb, addr: SocketAddr) -> load_balancer::Running {
    let lb = load_balancer::start(&config(db, Protocol::Http, AlgorithmKind::RoundRobin))
        .await
        .expect("proxy starts");
    change(
        db,
        &lb,
        &format!("INSERT INTO workers(worker_address) VALUES ('{addr}')"),
    )
    .await;
    lb
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sends `rest` on `s` while reading the answer until the proxy closes. Writing and
/// reading at once: the proxy may answer (and stop reading) before the last byte.
async fn send_and_read(mut s: TcpStream, rest: &[u8]) -> String {
    let (mut r, mut w) = s.split();
    let mut reply = Vec::new();
    let write = async {
        // The proxy may have answered and closed first: that is not the test's concern.
        let _ = w.write_all(rest).await;
    };
    let read = async {
        // A reset after the answer may end the read; what arrived before it is kept.
        let _ = tokio::time::timeout(WAIT, r.read_to_end(&mut reply))
            .await
            .expect("the proxy answers and closes");
    };
    tokio::join!(write, read);
    show(&reply)
}

fn assert_refused(reply: &str, status: &str, what: &str) {
    assert!(
        reply.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {reply}"
    );
    assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{what}: {reply}");
    assert!(reply.contains("connection: close"), "{what}: {reply}");
}

#[tokio::test]
async fn malformed_chunk_size_lines_get_400_and_never_reach_the_backend() {
    let backend = Recorder::start(OK).await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, backend.addr).await;
    for body in [
        &b"5 \r\nhello\r\n0\r\n\r\n"[..],
        b"5\t\r\nhello\r\n0\r\n\r\n",
        b"5;a \r\nhello\r\n0\r\n\r\n",
        b"5;a=b c\r\nhello\r\n0\r\n\r\n",
        b"5;\r\nhello\r\n0\r\n\r\n",
        b"5;;\r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b"5;a=\xff\r\nhello\r\n0\r\n\r\n",
        b"0 \r\n\r\n",
    ] {
        let reply = raw(lb.listeners[0], &[HEAD, body].concat()).await;
        assert_refused(&reply, "400", &show(body));
    }
    // Each request arrived in one small write, so the proxy had the bad line in its first
    // read, before choosing a backend: not even a connection was made.
    assert_eq!(backend.conns().len(), 0, "{:?}", backend.conns());
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn valid_extensions_are_dropped_and_the_size_line_normalised() {
    let backend = Recorder::start(OK).await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, backend.addr).await;
    let forms: [&[u8]; 6] = [
        b"5;a=b\r\n",
        b"5 ; a = b\r\n",
        b"5;a=\"x y\"\r\n",
        b"5;a;b=c\r\n",
        b"005;a=\"q\\\"\"\r\n",
        b"5\r\n",
    ];
    for (i, line) in forms.iter().enumerate() {
        let body = [line, &b"hello\r\n0;end=1\r\n\r\n"[..]].concat();
        let reply = raw(lb.listeners[0], &[HEAD_CLOSE, &body[..]].concat()).await;
        assert!(
            reply.starts_with("HTTP/1.1 200 OK"),
            "{}: {reply}",
            show(line)
        );
        assert!(reply.ends_with("\r\n\r\nok"), "{}: {reply}", show(line));
        let conns = backend
            .until("the request arrived", |c| {
                c.iter().map(|c| c.requests.len()).sum::<usize>() == i + 1
            })
            .await;
        let request = conns.iter().flat_map(|c| &c.requests).next_back().unwrap();
        assert!(
            request.ends_with(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "{}: the backend got {:?}",
            show(line),
            show(request)
        );
    }
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn valid_trailers_reach_the_backend_without_framing_fields() {
    let backend = Recorder::start(OK).await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, backend.addr).await;
    let reply = raw(
        lb.listeners[0],
        &[
            HEAD_CLOSE,
            b"5\r\nhello\r\n0\r\nX-Sum: 1 \r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n",
        ]
        .concat(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    let conns = backend
        .until("the request arrived", |c| {
            c.first().is_some_and(|c| !c.requests.is_empty())
        })
        .await;
    let request = &conns[0].requests[0];
    assert!(
        request.ends_with(b"\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1 \r\n\r\n"),
        "the backend got {:?}",
        show(request)
    );
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn malformed_trailers_get_400_and_too_many_get_431() {
    let backend = Recorder::start(OK).await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, backend.addr).await;
    let cases: [(&[u8], &str); 4] = [
        (b"X T\r\n\r\n", "no colon"),
        (b": a\r\n\r\n", "empty name"),
        (b"GET / HTTP/1.1\r\n\r\n", "a request line"),
        (b"X: a\r\n b\r\n\r\n", "obs-fold"),
    ];
    for (trailers, what) in cases {
        let reply = raw(
            lb.listeners[0],
            &[HEAD, b"5\r\nhello\r\n0\r\n", trailers].concat(),
        )
        .await;
        assert_refused(&reply, "400", what);
    }
    // 200 short fields: still one small write, under the proxy's first read.
    let many: Vec<u8> = (0..200).flat_map(|_| *b"a:b\r\n").collect();
    let reply = raw(
        lb.listeners[0],
        &[HEAD, b"5\r\nhello\r\n0\r\n", &many, b"\r\n"].concat(),
    )
    .await;
    assert_refused(&reply, "431", "200 trailer fields");
    assert_eq!(backend.conns().len(), 0, "{:?}", backend.conns());
    lb.stop(Duration::from_secs(5)).await;
}

/// Sends a head and a first chunk, waits until the backend has them, then sends `rest`:
/// returns the client's answer and what the backend saw.
async fn refused_mid_body(lb: &load_balancer::Running, backend: &Recorder, rest: &[u8]) -> String {
    let mut s = TcpStream::connect(lb.listeners[0]).await.unwrap();
    s.write_all(&[HEAD, b"5\r\nhello\r\n"].concat())
        .await
        .unwrap();
    backend
        .until("the head and the first chunk arrived", |c| {
            c.first()
                .is_some_and(|c| c.bytes.ends_with(b"\r\n\r\n5\r\nhello\r\n"))
        })
        .await;
    send_and_read(s, rest).await
}

/// After a refusal mid-body: the backend connection that had part of the request was
/// closed, and the next request goes out on a new one.
async fn backend_connection_was_dropped(lb: &load_balancer::Running, backend: &Recorder) {
    let conns = backend
        .until("the proxy closed the backend connection", |c| {
            c.first().is_some_and(|c| c.closed)
        })
        .await;
    assert!(conns[0].requests.is_empty(), "{conns:?}");
    let reply = raw(
        lb.listeners[0],
        &[HEAD_CLOSE, &b"5\r\nhello\r\n0\r\n\r\n"[..]].concat(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    let conns = backend.conns();
    assert_eq!(conns.len(), 2, "a new backend connection: {conns:?}");
    assert_eq!(conns[1].requests.len(), 1, "{conns:?}");
}

#[tokio::test]
async fn a_4_kib_chunk_line_mid_body_gets_400_and_the_backend_connection_closes() {
    let backend = Recorder::start(OK).await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, backend.addr).await;
    let mut rest = b"5;a=".to_vec();
    rest.resize(4096, b'b');
    rest.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let reply = refused_mid_body(&lb, &backend, &rest).await;
    assert_refused(&reply, "400", "a 4 KiB chunk line");
    backend_connection_was_dropped(&lb, &backend).await;
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_70_kb_trailer_mid_body_gets_431_and_the_backend_connection_closes() {
    let backend = Recorder::start(OK).await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, backend.addr).await;
    let rest = format!("0\r\nX-Big: {}\r\n\r\n", "y".repeat(70_000));
    let reply = refused_mid_body(&lb, &backend, rest.as_bytes()).await;
    assert_refused(&reply, "431", "a 70 kB trailer");
    backend_connection_was_dropped(&lb, &backend).await;
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_malformed_line_mid_body_gets_400_and_the_backend_connection_closes() {
    let backend = Recorder::start(OK).await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, backend.addr).await;
    let reply = refused_mid_body(&lb, &backend, b"5;a \r\nhello\r\n0\r\n\r\n").await;
    assert_refused(&reply, "400", "a malformed line after the head went out");
    backend_connection_was_dropped(&lb, &backend).await;
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_backend_chunked_body_that_breaks_the_rules_is_a_502() {
    let backend = Recorder::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a \r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, backend.addr).await;
    let reply = raw(lb.listeners[0], &[HEAD, b"0\r\n\r\n"].concat()).await;
    assert!(reply.starts_with("HTTP/1.1 502 "), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    backend
        .until("the proxy closed the backend connection", |c| {
            c.first().is_some_and(|c| c.closed)
        })
        .await;
    lb.stop(Duration::from_secs(5)).await;
}
