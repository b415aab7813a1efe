//! Where a request goes by what it carries, through the real proxy, a real PostgreSQL and
//! real backends: `consistent_hash` (stable across instances and restarts, minimal moves on
//! add/remove/reweight, fallback on an unavailable worker, bounded loads) and sticky
//! sessions.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use load_balancer::config::{
    AlgorithmKind, HashKey, PoolConfig, Protocol, SameSite, SecretSource, StickyConfig,
    StickySecret,
};
use load_balancer::ring::maglev::key_hash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy whose listener hashes `x-user` over pool `default`.
async fn start_hashing(db: &TestDb, balance_factor: u32) -> load_balancer::Running {
    let mut config = config(db, Protocol::Http, AlgorithmKind::ConsistentHash);
    config.listeners[0].hash_key = HashKey::Header("x-user".into());
    config.listeners[0].hash_balance_factor = balance_factor;
    load_balancer::start(&config).await.expect("proxy starts")
}

/// GET `path` with `fields`: the status, the backend's answer, and the response fields.
async fn get_with(
    client: &HttpClient,
    proxy: SocketAddr,
    path: &str,
    fields: &[(&str, &str)],
) -> (u16, String, hyper::HeaderMap) {
    let mut request = hyper::Request::get(format!("http://{proxy}{path}"));
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

/// The backend each of `users` reaches through the proxy.
async fn placement(proxy: SocketAddr, users: &[String]) -> Vec<String> {
    let c = client();
    let mut placed = Vec::with_capacity(users.len());
    for user in users {
        let (status, body, _) = get_with(&c, proxy, "/", &[("x-user", user)]).await;
        assert_eq!(status, 200, "user {user}: {body}");
        placed.push(body);
    }
    placed
}

/// Where every key of `keys` goes in the live ring's table for pool `default`: the address
/// of its owner, as the proxy computes it (checked against real requests by the callers).
fn owners(running: &load_balancer::Running, keys: &[String]) -> Vec<String> {
    let snapshot = running.ring.load();
    let pool = snapshot.pool_named("default").expect("pool default");
    keys.iter()
        .map(|k| {
            let table = pool.maglev.as_ref().expect("a hashed pool has its table");
            let index = table.get(key_hash(k.as_bytes())).expect("a worker");
            pool.workers[index as usize].address.text.to_string()
        })
        .collect()
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

fn moved(before: &[String], after: &[String]) -> usize {
    before.iter().zip(after).filter(|(a, b)| a != b).count()
}

/// Names backends by address, so the table's owners and the proxy's answers compare.
fn by_address(backends: &[Backend]) -> HashMap<String, String> {
    backends
        .iter()
        .map(|b| (b.addr.to_string(), b.name.clone()))
        .collect()
}

#[tokio::test]
async fn the_same_key_reaches_the_same_worker_on_two_instances_and_after_a_restart() {
    let db = TestDb::new().await;
    let backends: Vec<Backend> = futures_join((0..5).map(|i| format!("w{i}"))).await;
    let a = start_hashing(&db, 0).await;
    add(&db, &a, &backends.iter().collect::<Vec<_>>()).await;
    let b = start_hashing(&db, 0).await;
    let keys = users(300);

    let on_a = placement(a.listeners[0], &keys).await;
    let on_b = placement(b.listeners[0], &keys).await;
    assert_eq!(on_a, on_b, "two instances place every key alike");
    let names = by_address(&backends);
    let table: Vec<String> = owners(&a, &keys).iter().map(|a| names[a].clone()).collect();
    assert_eq!(on_a, table, "requests go where the table says");
    let used: std::collections::BTreeSet<&String> = on_a.iter().collect();
    assert_eq!(used.len(), 5, "300 keys spread over all five workers");

    assert!(a.stop(Duration::from_secs(5)).await);
    let restarted = start_hashing(&db, 0).await;
    let after_restart = placement(restarted.listeners[0], &keys).await;
    assert_eq!(on_a, after_restart, "a restart moves no key");

    // A request without the key is balanced by weight: it still gets an answer.
    let (status, _) = get(&client(), restarted.listeners[0], "/").await;
    assert_eq!(status, 200);
}

/// Starts `names` backends at once.
async fn futures_join(names: impl Iterator<Item = String>) -> Vec<Backend> {
    let mut backends = Vec::new();
    for name in names {
        backends.push(Backend::start(&name).await);
    }
    backends
}

#[tokio::test]
async fn adding_removing_or_reweighting_one_worker_moves_only_its_share_of_100k_keys() {
    let db = TestDb::new().await;
    let backends: Vec<Backend> = futures_join((0..11).map(|i| format!("w{i}"))).await;
    let lb = start_hashing(&db, 0).await;
    add(&db, &lb, &backends[..10].iter().collect::<Vec<_>>()).await;
    let keys = users(100_000);
    let sample = &keys[..400];
    let names = by_address(&backends);
    // The live table decides, and the proxy follows it: checked on a sample each time.
    let check = |owners: &[String], placed: Vec<String>| {
        let expected: Vec<&String> = owners[..placed.len()].iter().map(|a| &names[a]).collect();
        let placed: Vec<&String> = placed.iter().collect();
        assert_eq!(placed, expected, "requests go where the live table says");
    };
    let ten = owners(&lb, &keys);
    check(&ten, placement(lb.listeners[0], sample).await);

    // Add one of 11: at most 1.2/11 of the keys move, all of them to the new worker, but
    // for Maglev's few (at most 1%) between workers that stayed.
    let new = backends[10].addr.to_string();
    change(
        &db,
        &lb,
        &format!("INSERT INTO workers(worker_address) VALUES ('{new}')"),
    )
    .await;
    let eleven = owners(&lb, &keys);
    check(&eleven, placement(lb.listeners[0], sample).await);
    let added = moved(&ten, &eleven);
    let between = ten
        .iter()
        .zip(&eleven)
        .filter(|(a, b)| a != b && **b != new)
        .count();
    println!(
        "add 1 to 10: {added} of 100000 keys moved ({:.2}%), {between} between workers that stayed",
        added as f64 / 1000.0
    );
    assert!(added as f64 <= 1.2 / 11.0 * 100_000.0, "{added} moved");
    assert!(
        between <= 1_000,
        "{between} moved between workers that stayed"
    );

    // Remove it again: its keys go back where they were.
    change(
        &db,
        &lb,
        &format!("DELETE FROM workers WHERE worker_address = '{new}'"),
    )
    .await;
    let back = owners(&lb, &keys);
    assert_eq!(back, ten, "the table depends on the workers only");
    let removed = moved(&eleven, &back);
    println!(
        "remove 1 of 11: {removed} keys moved ({:.2}%)",
        removed as f64 / 1000.0
    );
    assert!(removed as f64 <= 1.2 / 11.0 * 100_000.0, "{removed} moved");

    // Reweight one: keys move only to (or from) that worker, but for at most 1%.
    let heavier = backends[3].addr.to_string();
    change(
        &db,
        &lb,
        &format!("UPDATE workers SET weight = 3 WHERE worker_address = '{heavier}'"),
    )
    .await;
    let reweighted = owners(&lb, &keys);
    check(&reweighted, placement(lb.listeners[0], sample).await);
    let to_it = ten
        .iter()
        .zip(&reweighted)
        .filter(|(a, b)| a != b && **b == heavier)
        .count();
    let others = moved(&ten, &reweighted) - to_it;
    println!("reweight 1 of 10 to 3: {to_it} keys moved to it, {others} elsewhere");
    assert!(
        to_it > 10_000,
        "weight 3 of 12 takes about a quarter: {to_it}"
    );
    assert!(others <= 1_000, "{others} keys moved between other workers");
}

#[tokio::test]
async fn a_down_workers_keys_go_to_their_next_preference_and_no_other_key_moves() {
    let db = TestDb::new().await;
    let backends: Vec<Backend> = futures_join((0..4).map(|i| format!("w{i}"))).await;
    let lb = start_hashing(&db, 0).await;
    add(&db, &lb, &backends.iter().collect::<Vec<_>>()).await;
    let keys = users(200);
    let before = placement(lb.listeners[0], &keys).await;

    // w1 dies (its pooled connections too) and refuses new ones: each of its keys is
    // retried on its next preference.
    backends[1].kill();
    let after = placement(lb.listeners[0], &keys).await;
    for (k, (was, now)) in before.iter().zip(&after).enumerate() {
        if was == "w1" {
            assert_ne!(now, "w1", "key {k}");
        } else {
            assert_eq!(was, now, "key {k} moved though its worker is up");
        }
    }
    let again = placement(lb.listeners[0], &keys).await;
    assert_eq!(
        after, again,
        "a down worker's keys go to the same next worker each time"
    );

    // Drained (weight 0): the table is rebuilt without it, and nothing else moves.
    change(
        &db,
        &lb,
        &format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}'",
            backends[2].addr
        ),
    )
    .await;
    let drained = placement(lb.listeners[0], &keys).await;
    let elsewhere = before
        .iter()
        .zip(&drained)
        .filter(|(was, now)| was != now && *was != "w1" && *was != "w2")
        .count();
    assert!(drained.iter().all(|w| w != "w1" && w != "w2"));
    assert!(
        elsewhere <= 2,
        "{elsewhere} of 200 keys of live workers moved"
    );
}

#[tokio::test]
async fn bounded_loads_keep_every_worker_within_the_factor_of_the_average() {
    let db = TestDb::new().await;
    let backends: Vec<Backend> = futures_join((0..4).map(|i| format!("w{i}"))).await;
    let lb = start_hashing(&db, 150).await;
    add(&db, &lb, &backends.iter().collect::<Vec<_>>()).await;
    let proxy = lb.listeners[0];

    // A skewed key distribution at its worst: 40 requests in flight, all one key.
    let held: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let (status, body, _) =
                    get_with(&client(), proxy, "/hold", &[("x-user", "hot")]).await;
                (status, body)
            })
        })
        .collect();
    eventually("40 requests held", || {
        backends
            .iter()
            .map(|b| b.holding.load(std::sync::atomic::Ordering::SeqCst))
            .sum::<usize>()
            == 40
    })
    .await;
    let loads: Vec<usize> = backends
        .iter()
        .map(|b| b.holding.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    println!("in flight per worker, 40 requests of one key, factor 150: {loads:?}");
    // 150% of the average, 10.
    assert!(loads.iter().all(|&l| l <= 15), "{loads:?}");
    assert!(
        loads.contains(&15),
        "the key's owner fills to its bound: {loads:?}"
    );
    for b in &backends {
        b.release();
    }
    for h in held {
        assert_eq!(h.await.unwrap().0, 200);
    }
}

/// A listener on pool `default`, whose `[sticky]` cookie is `lb_sticky`.
async fn start_sticky(db: &TestDb) -> load_balancer::Running {
    let mut config = config(db, Protocol::Http, AlgorithmKind::RoundRobin);
    let sticky = StickyConfig {
        cookie: "lb_sticky".into(),
        max_age: Some(Duration::from_secs(3600)),
        secure: false,
        http_only: true,
        same_site: Some(SameSite::Lax),
        secret: StickySecret {
            bytes: Arc::from(&b"a test secret of enough length"[..]),
            source: SecretSource::File,
        },
    };
    config.pools.insert(
        "default".into(),
        PoolConfig {
            sticky: Some(sticky),
            ..PoolConfig::default()
        },
    );
    load_balancer::start(&config).await.expect("proxy starts")
}

/// The `lb_sticky=VALUE` pair of a response's `Set-Cookie`, if it sets one.
fn stuck(fields: &hyper::HeaderMap) -> Option<String> {
    let set = fields.get("set-cookie")?.to_str().unwrap();
    assert!(set.contains("; Path=/"), "{set}");
    assert!(set.contains("; HttpOnly"), "{set}");
    assert!(set.contains("; SameSite=Lax"), "{set}");
    assert!(set.contains("; Max-Age=3600"), "{set}");
    Some(set.split(';').next().unwrap().to_string())
}

#[tokio::test]
async fn sticky_cookie_is_set_honoured_restuck_on_drain_and_ignored_when_forged() {
    let db = TestDb::new().await;
    let backends: Vec<Backend> = futures_join((0..3).map(|i| format!("w{i}"))).await;
    let lb = start_sticky(&db).await;
    add(&db, &lb, &backends.iter().collect::<Vec<_>>()).await;
    let proxy = lb.listeners[0];
    let c = client();

    let (status, first, fields) = get_with(&c, proxy, "/", &[]).await;
    assert_eq!(status, 200);
    let cookie = stuck(&fields).expect("a request without the cookie is stuck");
    let value = cookie.strip_prefix("lb_sticky=").unwrap();
    assert!(
        backends
            .iter()
            .all(|b| !value.contains(&b.addr.to_string())),
        "the cookie does not show the address: {cookie}"
    );
    // Round robin would spread these; the cookie keeps them on one worker, and a stuck
    // request is not stuck again.
    for _ in 0..9 {
        let (status, body, fields) = get_with(&c, proxy, "/", &[("cookie", &cookie)]).await;
        assert_eq!((status, &body), (200, &first));
        assert_eq!(stuck(&fields), None, "already stuck: no new cookie");
    }
    // Among other cookies, as browsers send it.
    let among = format!("theme=dark; {cookie}; lang=en");
    let (_, body, _) = get_with(&c, proxy, "/", &[("cookie", &among)]).await;
    assert_eq!(body, first);

    // Forged or foreign values are ignored, never an error: balanced and re-stuck.
    let forged_id = {
        // The same length and alphabet as a real value, but not signed by the secret.
        let mut v: Vec<u8> = value.bytes().collect();
        v[2] = if v[2] == b'A' { b'B' } else { b'A' };
        String::from_utf8(v).unwrap()
    };
    for forged in [
        "lb_sticky=".to_string(),
        "lb_sticky=garbage".to_string(),
        format!("lb_sticky={forged_id}"),
        format!("lb_sticky={}", "A".repeat(300)),
        "lb_sticky=%00%ff".to_string(),
    ] {
        let (status, _, fields) = get_with(&c, proxy, "/", &[("cookie", &forged)]).await;
        assert_eq!(status, 200, "{forged}");
        let fresh = stuck(&fields).unwrap_or_else(|| panic!("{forged}: re-stuck"));
        assert_ne!(fresh, forged);
    }

    // Its worker drained: balanced elsewhere and re-stuck there.
    let worker = backends.iter().find(|b| b.name == first).unwrap();
    change(
        &db,
        &lb,
        &format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}'",
            worker.addr
        ),
    )
    .await;
    let (status, moved_to, fields) = get_with(&c, proxy, "/", &[("cookie", &cookie)]).await;
    assert_eq!(status, 200);
    assert_ne!(moved_to, first);
    let restuck = stuck(&fields).expect("re-stuck after a drain");
    assert_ne!(restuck, cookie);
    for _ in 0..5 {
        let (_, body, _) = get_with(&c, proxy, "/", &[("cookie", &restuck)]).await;
        assert_eq!(body, moved_to);
    }
}

#[tokio::test]
async fn sticky_cookie_works_over_http2_too() {
    let db = TestDb::new().await;
    let backends: Vec<Backend> = futures_join((0..3).map(|i| format!("w{i}"))).await;
    let lb = start_sticky(&db).await;
    add(&db, &lb, &backends.iter().collect::<Vec<_>>()).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let proxy = lb.listeners[0];
    let (status, first, fields) = get_with(&h2, proxy, "/", &[]).await;
    assert_eq!(status, 200);
    let cookie = stuck(&fields).expect("stuck over HTTP/2");
    for _ in 0..6 {
        let (_, body, fields) = get_with(&h2, proxy, "/", &[("cookie", &cookie)]).await;
        assert_eq!(body, first);
        assert_eq!(stuck(&fields), None);
    }
    // The cookie of one version holds on the other.
    let (_, body, _) = get_with(&client(), proxy, "/", &[("cookie", &cookie)]).await;
    assert_eq!(body, first);
}

/// A TCP worker that answers each connection with its name.
async fn tcp_namer(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn tcp_consistent_hash_places_each_client_address_from_its_proxy_header() {
    let db = TestDb::new().await;
    let mut config = config(&db, Protocol::Tcp, AlgorithmKind::ConsistentHash);
    config.listeners[0].accept_proxy = true;
    config.listeners[0].trusted_proxies =
        load_balancer::config::TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap()]);
    let lb = load_balancer::start(&config).await.expect("proxy starts");
    let names = ["t0", "t1", "t2", "t3"];
    let mut values = Vec::new();
    for name in names {
        values.push(format!("('{}')", tcp_namer(name).await));
    }
    change(
        &db,
        &lb,
        &format!(
            "INSERT INTO workers(worker_address) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    let proxy = lb.listeners[0];
    let reach = |client: String| async move {
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let header = format!("PROXY TCP4 {client} 10.0.0.1 4000 80\r\n");
        s.write_all(header.as_bytes()).await.unwrap();
        let mut name = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut name))
            .await
            .expect("the worker answers")
            .unwrap();
        name
    };
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let client = format!("192.0.2.{i}");
        let first = reach(client.clone()).await;
        for _ in 0..3 {
            assert_eq!(reach(client.clone()).await, first, "client {client}");
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 3, "40 client addresses spread: {seen:?}");
}
