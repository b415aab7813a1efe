//! The admin endpoint as orchestrators and scrapers use it: `/livez`, `/readyz`, `/status`
//! answering 503 until a ring is loaded, and the bearer token an endpoint reachable from
//! other hosts requires — through the real proxy, with a real database cut and restored by a
//! relay the test controls.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use load_balancer::config::{AlgorithmKind, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request to the admin endpoint, raw, with `extra` header lines; (status, whole reply).
async fn admin_get(admin: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut reply))
        .await
        .expect("the admin endpoint answers in time")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {reply:?}"));
    (status, reply)
}

#[tokio::test]
async fn status_and_readyz_answer_503_until_the_ring_loads_and_livez_always_200() {
    let db = TestDb::new().await;
    let relay = Relay::to_postgres().await;
    relay.set(Mode::Cut);
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    cfg.database.url = relay.url(&db);
    let lb = load_balancer::start(&cfg)
        .await
        .expect("starts without its database");
    let admin = lb.admin.unwrap();

    let (code, reply) = admin_get(admin, "/status", "").await;
    assert_eq!(code, 503, "{reply}");
    assert!(
        reply.contains("\"ring_source\": \"none\""),
        "still the JSON: {reply}"
    );
    let (code, reply) = admin_get(admin, "/readyz", "").await;
    assert_eq!(code, 503, "{reply}");
    assert!(reply.contains("no ring loaded yet"), "{reply}");
    assert_eq!(
        admin_get(admin, "/livez", "").await.0,
        200,
        "the process is up"
    );

    relay.set(Mode::Pass);
    let mut loaded = false;
    for _ in 0..100 {
        if admin_get(admin, "/readyz", "").await.0 == 200 {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        loaded,
        "/readyz still 503 10 s after the database came back"
    );
    let (code, reply) = admin_get(admin, "/status", "").await;
    assert_eq!(code, 200, "{reply}");
    assert!(reply.contains("\"ring_source\": \"database\""), "{reply}");
    lb.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn with_a_token_every_admin_request_must_carry_it() {
    let db = TestDb::new().await;
    let mut cfg = config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    cfg.admin.as_mut().unwrap().token = Some("s3cret-token".into());
    let lb = load_balancer::start(&cfg).await.expect("proxy starts");
    let admin = lb.admin.unwrap();
    for path in ["/status", "/livez", "/readyz", "/nowhere"] {
        for header in [
            "",
            "Authorization: Bearer wrong-token\r\n",
            "Authorization: s3cret-token\r\n",
        ] {
            let (code, reply) = admin_get(admin, path, header).await;
            assert_eq!(code, 401, "{path} with {header:?}: {reply}");
            assert!(
                reply.to_lowercase().contains("www-authenticate: bearer"),
                "{reply}"
            );
        }
    }
    let good = "Authorization: Bearer s3cret-token\r\n";
    assert_eq!(admin_get(admin, "/status", good).await.0, 200);
    assert_eq!(admin_get(admin, "/livez", good).await.0, 200);
    assert_eq!(admin_get(admin, "/readyz", good).await.0, 200);
    assert_eq!(admin_get(admin, "/nowhere", good).await.0, 404);
    lb.stop(Duration::from_secs(5)).await;
}
