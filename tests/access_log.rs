//! Access logs through the real proxy: one JSON (or combined) line per HTTP request — HTTP/1
//! and HTTP/2, answered by a worker, refused by the proxy, failed by the workers — and per
//! TCP connection, with the fields a log reader relies on, and the file reopened after a
//! rotation.

mod common;

use std::path::PathBuf;

use common::*;
use load_balancer::config::{
    AccessLogFormat, AccessLogTarget, AlgorithmKind, ListenerConfig, Protocol,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp_log(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lb_access_{}_{}_{name}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("access.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_http_request_and_tcp_connection_gets_one_json_line_with_its_fields() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let (http_log, tcp_log) = (temp_log("http"), temp_log("tcp"));
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    cfg.listeners[0].access_log = AccessLogTarget::File(http_log.clone());
    let mut tcp = ListenerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Protocol::Tcp,
        "default",
        AlgorithmKind::RoundRobin,
    );
    tcp.access_log = AccessLogTarget::File(tcp_log.clone());
    cfg.listeners.push(tcp);
    let lb = load_balancer::start(&cfg).await.unwrap();
    let (proxy, tcp_proxy) = (lb.listeners[0], lb.listeners[1]);
    add(&db, &lb, &[&a]).await;

    // 1. A POST with a body, a referer and a user agent, answered by a.
    let reply = raw_once(
        proxy,
        b"POST /submit?x=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t/1\r\n\
          Referer: /from\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Its line may be written just after the client has its answer: waited for, or the
    // refused request's line below can come first.
    log_lines(&http_log, 1).await;
    // 2. A request the proxy refuses.
    let reply = raw(proxy, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // A line is written when its report ends, which may be just after the client has its
    // answer: waited for, so the lines come in this order.
    log_lines(&http_log, 2).await;
    // 3. An HTTP/2 request.
    let (mut h2, conn) = h2_connect(proxy).await;
    let request = hyper::Request::get(format!("http://{proxy}/h2"))
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    h2_body(&mut response.into_body()).await;
    // Ordered after the HTTP/2 stream's report: the lines must come in this order.
    log_lines(&http_log, 3).await;
    // An HTTP/2 HEAD: its response has no body to stream, and it still ended complete.
    let request = hyper::Request::head(format!("http://{proxy}/head"))
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    h2_body(&mut response.into_body()).await;
    log_lines(&http_log, 4).await;
    // 4. No worker left: 503.
    change(&db, &lb, "UPDATE workers SET weight = 0").await;
    assert_eq!(get(&client(), proxy, "/gone").await.0, 503);

    let lines_ = log_lines(&http_log, 5).await;
    let (post, refused, h2_line, head_line, unavailable) = (
        json(&lines_[0]),
        json(&lines_[1]),
        json(&lines_[2]),
        json(&lines_[3]),
        json(&lines_[4]),
    );
    assert_eq!(head_line["method"], "HEAD");
    assert_eq!(head_line["ended"], "complete", "{head_line}");
    let a_addr = a.addr.to_string();
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], "/submit?x=1");
    assert_eq!(post["authority"], "app.test");
    assert_eq!(post["protocol"], "HTTP/1.1");
    assert_eq!(post["status"], 200);
    assert_eq!(post["bytes_in"], 5);
    assert_eq!(post["bytes_out"], 1, "a's body is its name: {post}");
    assert_eq!(post["worker"], a_addr.as_str());
    assert_eq!(post["pool"], "default");
    assert_eq!(post["retries"], 0);
    assert_eq!(post["ended"], "complete");
    assert_eq!(post["referer"], "/from");
    assert_eq!(post["user_agent"], "t/1");
    assert_eq!(post["listener"], proxy.to_string());
    assert!(post["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(post["time"].as_str().unwrap().ends_with('Z'), "{post}");
    let total = post["total_ms"].as_f64().unwrap();
    let ttfb = post["ttfb_ms"].as_f64().unwrap();
    assert!(ttfb > 0.0 && ttfb <= total, "{post}");
    assert!(
        post["connect_ms"].as_f64().is_some(),
        "a new connection: {post}"
    );

    assert_eq!(refused["status"], 400);
    assert_eq!(refused["ended"], "refused");
    assert_eq!(refused["worker"], Value::Null);

    assert_eq!(h2_line["protocol"], "HTTP/2");
    assert_eq!(h2_line["path"], "/h2");
    assert_eq!(h2_line["status"], 200);
    assert_eq!(h2_line["ended"], "complete");
    assert_eq!(h2_line["bytes_out"], 1);

    assert_eq!(unavailable["status"], 503);
    assert_eq!(unavailable["ended"], "refused");
    drop(h2);
    conn.abort();

    // A TCP connection: one line when it closes, with the bytes each way.
    change(&db, &lb, "UPDATE workers SET weight = 1").await;
    let mut s = tokio::net::TcpStream::connect(tcp_proxy).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    s.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    drop(s);
    let tcp_lines = log_lines(&tcp_log, 1).await;
    let line = json(&tcp_lines[0]);
    assert_eq!(line["protocol"], "TCP");
    assert_eq!(line["bytes_in"], request.len());
    assert_eq!(line["bytes_out"], reply.len());
    assert_eq!(line["worker"], a_addr.as_str());
    assert_eq!(line["ended"], "complete");
    lb.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_and_a_rotated_file_is_reopened() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let path = temp_log("combined");
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    cfg.listeners[0].access_log = AccessLogTarget::File(path.clone());
    cfg.listeners[0].access_log_format = AccessLogFormat::Combined;
    let lb = load_balancer::start(&cfg).await.unwrap();
    let proxy = lb.listeners[0];
    add(&db, &lb, &[&a]).await;

    let reply = raw_once(
        proxy,
        b"GET /one HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"));
    let first = log_lines(&path, 1).await;
    let line = &first[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] \"GET /one HTTP/1.1\" 200 1 \"-\" \"ua\" \"h\" "),
        "{line}"
    );
    assert!(line.ends_with(" 0 complete default"), "{line}");

    // Rotation: the file is moved away, the proxy told to reopen, and the next line goes to
    // a new file at the configured path.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    lb.reopen_access_logs();
    let reply = raw_once(
        proxy,
        b"GET /two HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"));
    let second = log_lines(&path, 1).await;
    assert!(second[0].contains("GET /two"), "{second:?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    assert!(old.contains("GET /one"));
    lb.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_a_listeners_access_log_on_for_new_connections() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let path = temp_log("reload");
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    let mut lb = load_balancer::start(&cfg).await.unwrap();
    let proxy = lb.listeners[0];
    add(&db, &lb, &[&a]).await;
    assert_eq!(get(&client(), proxy, "/before").await.0, 200);

    cfg.listeners[0].bind = proxy;
    cfg.listeners[0].access_log = AccessLogTarget::File(path.clone());
    lb.reload(cfg, WAIT).await.expect("the reload applies");
    assert_eq!(get(&client(), proxy, "/after").await.0, 200);
    let logged = log_lines(&path, 1).await;
    assert!(logged[0].contains("\"path\":\"/after\""), "{logged:?}");
    lb.stop(WAIT).await;
}
