//! The PROXY protocol through the real proxy: headers accepted from trusted peers (the
//! address they carry is the client's in X-Forwarded-For and the access log), refused from
//! others, malformed, oversized or unfinished ones closed; and headers sent to workers in
//! HTTP and TCP mode, read back here with `ppp`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use load_balancer::config::{
    AccessLogTarget, AlgorithmKind, Config, PoolConfig, Protocol, SendProxy, TrustedProxies,
};
use ppp::v2;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";

fn trusting(db: &TestDb, protocol: Protocol, blocks: &[&str]) -> Config {
    let mut cfg = config(db, protocol, AlgorithmKind::RoundRobin);
    let l = &mut cfg.listeners[0];
    l.accept_proxy = true;
    l.trusted_proxies = TrustedProxies::new(blocks.iter().map(|b| b.parse().unwrap()).collect());
    cfg
}

fn sending(cfg: &mut Config, send: SendProxy) {
    let pool = PoolConfig {
        send_proxy: send,
        ..PoolConfig::default()
    };
    cfg.pools.insert("default".into(), pool);
}

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

fn temp_log() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lb_proxy_protocol_{}_{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("access.log")
}

/// The `X-Forwarded-For` value of a recorded request head.
fn xff(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("x-forwarded-for: ")
                .or(l.strip_prefix("X-Forwarded-For: "))
        })
        .unwrap_or_else(|| panic!("no X-Forwarded-For in {head}"))
        .to_string()
}

/// Whether the proxy closes `s` without answering (an empty read, or a reset).
async fn closed_without_answer(s: &mut TcpStream) -> bool {
    let mut reply = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut reply)).await {
        Err(_) => panic!("the proxy did not close the connection within {WAIT:?}"),
        Ok(Ok(_)) => reply.is_empty(),
        Ok(Err(_)) => true,
    }
}

/// Sends `first` (a header, or anything) then a GET; the response.
async fn request_after(proxy: SocketAddr, first: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(first).await.unwrap();
    exchange(&mut s, GET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_v1_and_v2_headers_give_the_client_address_everywhere() {
    let db = TestDb::new().await;
    let backend = Scripted::recorder().await;
    let log = temp_log();
    let mut cfg = trusting(&db, Protocol::Http, &["10.0.0.0/8", "127.0.0.1/32"]);
    cfg.listeners[0].access_log = AccessLogTarget::File(log.clone());
    let lb = load_balancer::start(&cfg).await.unwrap();
    let proxy = lb.listeners[0];
    add_addresses(&db, &lb, &[backend.addr]).await;

    let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n";
    assert!(request_after(proxy, v1).await.starts_with("HTTP/1.1 200"));
    let v2 = v2_header(v2::Command::Proxy, "[2001:db8::7]:6666", "[2001:db8::1]:80");
    assert!(request_after(proxy, &v2).await.starts_with("HTTP/1.1 200"));
    // LOCAL (a health check of the proxy in front): the peer's own address.
    let local = v2_header(v2::Command::Local, "192.0.2.8:1", "10.0.0.1:80");
    assert!(
        request_after(proxy, &local)
            .await
            .starts_with("HTTP/1.1 200")
    );
    // A header split across segments is waited for, and only it is consumed: the request
    // sent with its second half is served.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&v1[..12]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let rest = [&v1[12..], GET].concat();
    assert!(exchange(&mut s, &rest).await.starts_with("HTTP/1.1 200"));

    let heads = backend.requests();
    assert_eq!(heads.len(), 4, "{heads:#?}");
    assert_eq!(xff(&heads[0]), "192.0.2.7");
    assert_eq!(xff(&heads[1]), "2001:db8::7");
    assert_eq!(xff(&heads[2]), "127.0.0.1");
    assert_eq!(xff(&heads[3]), "192.0.2.7");
    assert!(heads[1].contains("for=\"[2001:db8::7]\""), "{}", heads[1]);

    // A line is written when its request's report ends, which may be just after the
    // client has its response: the lines are checked as a set, not in sending order.
    let lines = log_lines(&log, 4).await;
    let clients: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["client"].as_str().unwrap().to_string()
        })
        .collect();
    let count = |c: &str| clients.iter().filter(|x| *x == c).count();
    assert_eq!(
        count("192.0.2.7:5555"),
        2,
        "v1, whole and split: {clients:?}"
    );
    assert_eq!(count("[2001:db8::7]:6666"), 1, "{clients:?}");
    let local: Vec<_> = clients
        .iter()
        .filter(|c| c.starts_with("127.0.0.1:"))
        .collect();
    assert_eq!(local.len(), 1, "LOCAL keeps the peer: {clients:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_oversized_and_unfinished_headers_are_closed() {
    let db = TestDb::new().await;
    let backend = Scripted::recorder().await;
    let mut cfg = trusting(&db, Protocol::Http, &["127.0.0.1/32"]);
    cfg.listeners[0].header_read_timeout = Duration::from_millis(400);
    let lb = load_balancer::start(&cfg).await.unwrap();
    let proxy = lb.listeners[0];
    add_addresses(&db, &lb, &[backend.addr]).await;

    let mut oversized = v2_header(v2::Command::Proxy, "192.0.2.7:5555", "10.0.0.1:80");
    oversized[14..16].copy_from_slice(&5000u16.to_be_bytes());
    oversized.resize(16 + 5000, 0);
    let long_v1 = [b"PROXY TCP4 ".as_slice(), &[b'1'; 150], b"\r\n"].concat();
    let cases: [(&str, Vec<u8>); 5] = [
        ("a trusted peer without a header", GET.to_vec()),
        (
            "a malformed v1 header",
            b"PROXY TCP4 nonsense here\r\n".to_vec(),
        ),
        ("a v1 header over 107 bytes", long_v1),
        ("a v2 header over 4 KiB", oversized),
        (
            "a v2 signature with a bad version",
            [v2::PROTOCOL_PREFIX, &[0x31, 0x11, 0, 12], &[0; 12]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let _ = s.write_all(GET).await;
        assert!(closed_without_answer(&mut s).await, "{what}");
    }

    // Half a header, never finished: closed once header_read_timeout has passed.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    s.write_all(b"PROXY TCP4 192.0.2.7 10.0").await.unwrap();
    assert!(closed_without_answer(&mut s).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );

    assert_eq!(backend.count(), 0, "{:#?}", backend.requests());
    // The process lives, and serves a good header.
    let reply = request_after(proxy, b"PROXY TCP4 192.0.2.9 10.0.0.1 1 80\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(xff(&backend.requests()[0]), "192.0.2.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_is_served_as_itself_and_closed_if_it_sends_a_header() {
    let db = TestDb::new().await;
    let backend = Scripted::recorder().await;
    let cfg = trusting(&db, Protocol::Http, &["10.0.0.0/8"]);
    let lb = load_balancer::start(&cfg).await.unwrap();
    let proxy = lb.listeners[0];
    add_addresses(&db, &lb, &[backend.addr]).await;

    for header in [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n".to_vec(),
        v2_header(v2::Command::Proxy, "192.0.2.7:5555", "10.0.0.1:80"),
    ] {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(&[header.as_slice(), GET].concat())
            .await
            .unwrap();
        assert!(closed_without_answer(&mut s).await);
    }
    assert_eq!(backend.count(), 0);

    // Without a header: served, with its own address. A POST starts like "PROXY" does.
    assert!(request_after(proxy, b"").await.starts_with("HTTP/1.1 200"));
    let post = b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n";
    let mut s = TcpStream::connect(proxy).await.unwrap();
    assert!(exchange(&mut s, post).await.starts_with("HTTP/1.1 200"));
    let heads = backend.requests();
    assert_eq!(heads.len(), 2);
    assert_eq!(xff(&heads[0]), "127.0.0.1");
}

/// A worker that reads the PROXY header each connection starts with (logged as
/// `"v1 <source>"` or `"v2 <source>"`), then answers every GET with 200 `ok`.
async fn header_reading_worker() -> Scripted {
    Scripted::start(|mut s, log| async move {
        let Some(header) = read_proxy_header(&mut s).await else {
            return;
        };
        log.lock().unwrap().push(header.into_bytes());
        let heads = Log::default();
        while read_request_head(&mut s, &heads).await.is_some() {
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await
}

/// Reads one PROXY header (v1 or v2) from `s` with `ppp`: its version and source address.
async fn read_proxy_header(s: &mut TcpStream) -> Option<String> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.ok()?;
    if first[0] == b'P' {
        let mut header = first.to_vec();
        while !header.ends_with(b"\r\n") {
            s.read_exact(&mut first).await.ok()?;
            header.push(first[0]);
        }
        let parsed = ppp::v1::Header::try_from(header.as_slice()).expect("a v1 header");
        let source = match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => SocketAddr::from((a.source_address, a.source_port)),
            ppp::v1::Addresses::Tcp6(a) => SocketAddr::from((a.source_address, a.source_port)),
            ppp::v1::Addresses::Unknown => return Some("v1 local".into()),
        };
        return Some(format!("v1 {source}"));
    }
    let mut header = vec![0u8; 16];
    header[0] = first[0];
    s.read_exact(&mut header[1..]).await.ok()?;
    let len = u16::from_be_bytes([header[14], header[15]]) as usize;
    header.resize(16 + len, 0);
    s.read_exact(&mut header[16..]).await.ok()?;
    let parsed = v2::Header::try_from(header.as_slice()).expect("a v2 header");
    if parsed.command == v2::Command::Local {
        return Some("v2 local".into());
    }
    let source = match parsed.addresses {
        v2::Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
        v2::Addresses::IPv6(a) => SocketAddr::from((a.source_address, a.source_port)),
        other => panic!("{other:?}"),
    };
    Some(format!("v2 {source}"))
}

async fn send_proxy_http(send: SendProxy, name: &str) {
    let db = TestDb::new().await;
    let worker = header_reading_worker().await;
    let mut cfg = trusting(&db, Protocol::Http, &["127.0.0.1/32"]);
    sending(&mut cfg, send);
    let lb = load_balancer::start(&cfg).await.unwrap();
    let proxy = lb.listeners[0];
    add_addresses(&db, &lb, &[worker.addr]).await;

    // One client (its address given by a PROXY header in front), two requests: one
    // worker connection, one header naming it.
    let mut a = TcpStream::connect(proxy).await.unwrap();
    a.write_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n")
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(exchange(&mut a, GET).await.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(worker.accepted(), 1, "two requests, one connection");
    // A second client, while the first's connection is idle: its own connection.
    let mut b = TcpStream::connect(proxy).await.unwrap();
    let b_local = b.local_addr().unwrap();
    b.write_all(b"PROXY TCP4 192.0.2.8 10.0.0.1 7777 80\r\n")
        .await
        .unwrap();
    assert!(exchange(&mut b, GET).await.starts_with("HTTP/1.1 200"));
    // The first client again: still its own connection.
    assert!(exchange(&mut a, GET).await.starts_with("HTTP/1.1 200"));
    assert_eq!(worker.accepted(), 2);
    let headers = worker.requests();
    assert_eq!(
        headers,
        [
            format!("{name} 192.0.2.7:5555"),
            format!("{name} 192.0.2.8:7777")
        ],
        "{b_local}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v1_in_http_mode_one_connection_per_client() {
    send_proxy_http(SendProxy::V1, "v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v2_in_http_mode_one_connection_per_client() {
    send_proxy_http(SendProxy::V2, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_in_tcp_mode_carries_each_sessions_client() {
    let db = TestDb::new().await;
    // Reads the header, then echoes.
    let worker = Scripted::start(|mut s, log| async move {
        let Some(header) = read_proxy_header(&mut s).await else {
            return;
        };
        log.lock().unwrap().push(header.into_bytes());
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let mut cfg = config(&db, Protocol::Tcp, AlgorithmKind::RoundRobin);
    sending(&mut cfg, SendProxy::V2);
    // A second TCP listener, behind a trusted proxy: the address its header gives is sent on.
    let behind = trusting(&db, Protocol::Tcp, &["127.0.0.1/32"])
        .listeners
        .remove(0);
    cfg.listeners.push(behind);
    let lb = load_balancer::start(&cfg).await.unwrap();
    let (proxy, proxy_behind) = (lb.listeners[0], lb.listeners[1]);
    add_addresses(&db, &lb, &[worker.addr]).await;

    let mut expected = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(if i < 2 { proxy } else { proxy_behind })
            .await
            .unwrap();
        if i < 2 {
            expected.push(format!("v2 {}", s.local_addr().unwrap()));
            s.write_all(b"hello").await.unwrap();
        } else {
            expected.push("v2 192.0.2.7:5555".to_string());
            // The header and the first data in one segment: only the header is consumed.
            s.write_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\nhello")
                .await
                .unwrap();
        }
        let mut echo = [0u8; 5];
        tokio::time::timeout(WAIT, s.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &echo, b"hello",
            "only the data comes back: the header was the worker's"
        );
    }
    assert_eq!(worker.requests(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_from_http2_clients_dials_per_stream_and_health_checks_send_local() {
    let db = TestDb::new().await;
    let worker = header_reading_worker().await;
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    sending(&mut cfg, SendProxy::V2);
    cfg.pools.get_mut("default").unwrap().health_check = Some(quick_health_check());
    let lb = load_balancer::start(&cfg).await.unwrap();
    let proxy = lb.listeners[0];
    add_addresses(&db, &lb, &[worker.addr]).await;
    // The checks reach a worker that requires a header: they send LOCAL.
    eventually("a health check with a LOCAL header", || {
        worker.requests().iter().any(|h| h == "v2 local")
    })
    .await;

    let (mut h2, conn) = h2_connect(proxy).await;
    for _ in 0..2 {
        let request = hyper::Request::get(format!("http://{proxy}/"))
            .body(())
            .unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        h2_body(&mut response.into_body()).await;
    }
    let from_client: Vec<String> = worker
        .requests()
        .into_iter()
        .filter(|h| h != "v2 local")
        .collect();
    assert_eq!(
        from_client.len(),
        2,
        "a connection per stream: {from_client:?}"
    );
    for h in &from_client {
        assert!(h.starts_with("v2 127.0.0.1:"), "{h}");
    }
    drop(h2);
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_serves_untrusted_peers_at_once_and_closes_their_headers() {
    let db = TestDb::new().await;
    // Speaks first (as SMTP does), then echoes.
    let worker = Scripted::start(|mut s, _log| async move {
        if s.write_all(b"220 ready\r\n").await.is_err() {
            return;
        }
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let mut cfg = trusting(&db, Protocol::Tcp, &["10.0.0.0/8"]);
    cfg.listeners[0].header_read_timeout = Duration::from_secs(10);
    let lb = load_balancer::start(&cfg).await.unwrap();
    let proxy = lb.listeners[0];
    add_addresses(&db, &lb, &[worker.addr]).await;

    // An untrusted client that waits for the server: greeted at once, not after the
    // header timeout; then its data goes through.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut greeting))
        .await
        .expect("greeted without waiting for the client")
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello");

    // An untrusted client starting with a header: closed.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\nhello")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("closed");
    assert!(
        read.is_err() || !got.windows(5).any(|w| w == b"hello"),
        "nothing echoed: {:?}",
        String::from_utf8_lossy(&got)
    );
}
