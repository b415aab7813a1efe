//! HTTP/1 framing through the proxy: pipelining, HTTP/1.0 clients, absolute-form targets,
//! interim responses, and backends that frame their responses oddly, close idle
//! connections under the proxy or send garbage.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use load_balancer::config::AlgorithmKind;
use load_balancer::config::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend written byte by byte: for each request head (bodies are not expected) it
/// writes what `script` returns for the path, and closes the connection after it if told
/// to. Returns its address and the number of connections it accepted.
async fn scripted(script: fn(&str) -> (&'static [u8], bool)) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (response, close) = script(&path);
                    if s.write_all(response).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
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

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::RoundRobin).await;
    add(&db, &lb, &[&a]).await;
    let reply = raw(
        lb.listeners[0],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecondGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 3, "{reply}");
    let first = reply.find("\r\n\r\na").expect("first answer");
    let second = reply.find("second").expect("second answer");
    assert!(first < second, "{reply}");
    assert!(reply.ends_with("\r\n\r\na"), "{reply}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn responses_are_framed_for_each_client() {
    let (addr, _) = scripted(|path| match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false,
        ),
        "/close" => (b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the close", true),
        "/hints" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/both" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        ),
        "/garbage" => (b"SURPRISE\r\n\r\n", true),
        _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
    })
    .await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, addr).await;
    let proxy = lb.listeners[0];

    // HTTP/1.1 gets the chunked body as it came; HTTP/1.0 gets the data alone, then a close.
    let reply = raw(
        proxy,
        b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        reply.to_lowercase().contains("transfer-encoding: chunked"),
        "{reply}"
    );
    assert!(
        reply.ends_with("5;x=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "{reply}"
    );
    let reply = raw(proxy, b"GET /chunked HTTP/1.0\r\n\r\n").await;
    assert!(
        !reply.to_lowercase().contains("transfer-encoding"),
        "{reply}"
    );
    assert!(reply.ends_with("\r\n\r\nhello world"), "{reply}");

    // A body delimited by the backend's close: the client's connection closes after it too.
    let reply = raw(proxy, b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(
        reply.to_lowercase().contains("connection: close"),
        "{reply}"
    );
    assert!(reply.ends_with("\r\n\r\nuntil the close"), "{reply}");

    // Interim responses reach an HTTP/1.1 client before the final one; not an HTTP/1.0 one.
    let reply = raw(
        proxy,
        b"GET /hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let hint = reply.find("HTTP/1.1 103 Early Hints").expect("the 103");
    let last = reply.find("HTTP/1.1 200 OK").expect("the 200");
    assert!(hint < last && reply.ends_with("ok"), "{reply}");
    let reply = raw(proxy, b"GET /hints HTTP/1.0\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.1 200 OK") && !reply.contains("103"),
        "{reply}"
    );

    // Both framings from a backend: chunked wins and the Content-Length is not passed on.
    let reply = raw(
        proxy,
        b"GET /both HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!reply.to_lowercase().contains("content-length"), "{reply}");
    assert!(reply.ends_with("2\r\nok\r\n0\r\n\r\n"), "{reply}");

    // Not HTTP at all: 502, and the proxy goes on serving.
    let reply = raw(
        proxy,
        b"GET /garbage HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    let reply = raw(
        proxy,
        b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn absolute_form_target_names_the_host() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let lb = start_http(&db, AlgorithmKind::RoundRobin).await;
    add(&db, &lb, &[&a]).await;
    let reply = raw(
        lb.listeners[0],
        b"GET http://example.com/headers HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("host: example.com\n"), "{reply}");
    assert!(!reply.contains("host: other"), "{reply}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn connections_the_backend_closed_while_idle_are_not_used() {
    // Keep-alive by default, but the backend closes every connection after one answer
    // without saying so: the proxy must notice (or retry) rather than fail a request.
    let (addr, accepted) =
        scripted(|_| (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true)).await;
    let db = TestDb::new().await;
    let lb = proxy_to(&db, addr).await;
    let client = client();
    for i in 0..50 {
        let (status, body) = get(&client, lb.listeners[0], "/").await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert!(accepted.load(Ordering::SeqCst) >= 50);
    lb.stop(Duration::from_secs(5)).await;
}
