//! gRPC end to end: a real tonic client → the real proxy (in-process, its pool with
//! `protocol = "h2"`) → real gRPC workers (`test.Echo` on tonic's server machinery, see
//! `common::grpc`) registered in the workers table. Each call picks its worker afresh;
//! the four call kinds stream both ways; statuses and metadata (binary ones too) pass in
//! trailers untouched; the proxy's own failures are gRPC answers (UNAVAILABLE,
//! DEADLINE_EXCEEDED); drain, GOAWAY and `type = "grpc"` health checks behave as for HTTP.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::grpc::{EchoClient, EchoRequest, GrpcWorker, echo, next, sender, trace_bytes};
use common::{TestDb, WAIT, eventually, eventually_within, status, worker_status};
use load_balancer::config::{
    AlgorithmKind, HealthCheckConfig, HealthCheckKind, PoolConfig, Protocol, UpstreamProtocol,
};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::ServingStatus;

/// A pool whose workers speak HTTP/2 (gRPC), nothing else changed.
fn h2_pool() -> PoolConfig {
    PoolConfig {
        protocol: UpstreamProtocol::H2,
        ..Default::default()
    }
}

/// The proxy with one HTTP listener (weighted) for pool "default" = `pool`.
async fn start(db: &TestDb, pool: PoolConfig) -> load_balancer::Running {
    let mut config = common::config(db, Protocol::Http, AlgorithmKind::Weighted);
    config.pools.insert("default".into(), pool);
    load_balancer::start(&config).await.expect("proxy starts")
}

/// Registers `workers` with their weights and waits for the ring to publish them.
async fn register(db: &TestDb, lb: &load_balancer::Running, workers: &[(&GrpcWorker, u32)]) {
    let values: Vec<String> = workers
        .iter()
        .map(|(w, weight)| format!("('{}', {weight})", w.addr))
        .collect();
    let sql = format!(
        "INSERT INTO workers(worker_address, weight) VALUES {}",
        values.join(", ")
    );
    common::change(db, lb, &sql).await;
}

/// A unary call through `client` that must succeed; the reply's worker name.
async fn served_by(client: &mut EchoClient, what: &str) -> String {
    let reply = tokio::time::timeout(WAIT, client.unary(echo(b"ping")))
        .await
        .unwrap_or_else(|_| panic!("no answer within {WAIT:?}: {what}"))
        .unwrap_or_else(|s| panic!("{what}: {s:?}"));
    reply.into_inner().server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_one_channel_spread_over_three_workers_by_weight() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let (a, b, c) = (
        GrpcWorker::start("a").await,
        GrpcWorker::start("b").await,
        GrpcWorker::start("c").await,
    );
    register(&db, &lb, &[(&a, 1), (&b, 2), (&c, 3)]).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..600 {
        *counts
            .entry(served_by(&mut client, &format!("call {i}")).await)
            .or_default() += 1;
    }
    // Smooth weighted round robin gives exactly 100/200/300; ±10% leaves room for any
    // fair weighted pick, not for one that pins the channel to one worker.
    for (name, want) in [("a", 100), ("b", 200), ("c", 300)] {
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(
            got.abs_diff(want) <= want / 10,
            "worker {name}: {got} calls, want {want} ± 10%; all: {counts:?}"
        );
    }
    assert_eq!(
        (a.calls(), b.calls(), c.calls()),
        (counts["a"], counts["b"], counts["c"]),
        "each call reached the worker that answered it, once"
    );
    // A second client's calls share the proxy's connections to the workers: one each, as
    // one call at a time needs no more.
    let mut other = EchoClient::connect(lb.listeners[0]).await;
    for i in 0..30 {
        served_by(&mut other, &format!("second client's call {i}")).await;
    }
    assert_eq!(
        (a.open(), b.open(), c.open()),
        (1, 1, 1),
        "connections to workers are reused across calls and clients"
    );
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_call_kinds_stream_both_ways() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let worker = GrpcWorker::start("w").await;
    register(&db, &lb, &[(&worker, 1)]).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;

    // Unary.
    let reply = client.unary(echo(b"hello")).await.unwrap().into_inner();
    assert_eq!(
        (reply.payload, reply.server),
        (b"hello".to_vec(), "w".into())
    );

    // Server streaming: 50 replies in order, then OK.
    let request = EchoRequest {
        payload: b"tick".to_vec(),
        count: 50,
        ..Default::default()
    };
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    for seq in 0..50 {
        let reply = next(&mut stream, "server stream").await.unwrap();
        assert_eq!(reply.map(|r| r.seq), Some(seq));
    }
    assert_eq!(next(&mut stream, "server stream end").await.unwrap(), None);

    // Client streaming: 10 messages sent one by one, concatenated by the worker.
    let (tx, requests) = sender();
    let call = tokio::spawn({
        let mut client = client.clone();
        async move { client.client_stream(requests).await }
    });
    for i in 0..10u8 {
        tx.send(echo(&[b'0' + i])).await.unwrap();
    }
    drop(tx);
    let reply = tokio::time::timeout(WAIT, call)
        .await
        .expect("client stream answered")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!((reply.payload, reply.seq), (b"0123456789".to_vec(), 10));

    // Bidirectional, in lock step: each message is sent only after the previous one's echo
    // came back, so a proxy that buffered either direction until the end would hang here.
    let (tx, requests) = sender();
    tx.send(echo(b"m0")).await.unwrap();
    let mut replies = client.bidi(requests).await.unwrap().into_inner();
    for i in 0..20u32 {
        let reply = next(&mut replies, &format!("bidi echo {i}"))
            .await
            .unwrap()
            .expect("an echo, not the end");
        assert_eq!(
            (reply.payload, reply.seq),
            (format!("m{i}").into_bytes(), i)
        );
        if i < 19 {
            tx.send(echo(format!("m{}", i + 1).as_bytes()))
                .await
                .unwrap();
        }
    }
    drop(tx);
    assert_eq!(next(&mut replies, "bidi end").await.unwrap(), None);
    assert_eq!(worker.calls(), 4);
    assert_eq!(
        worker.last_te().as_deref(),
        Some("trailers"),
        "te: trailers is kept"
    );
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_messages_pass_both_ways() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let worker = GrpcWorker::start("w").await;
    register(&db, &lb, &[(&worker, 1)]).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();

    let reply = tokio::time::timeout(WAIT, client.unary(echo(&big)))
        .await
        .expect("4 MiB unary within the bound")
        .unwrap()
        .into_inner();
    assert!(reply.payload == big, "the 4 MiB unary reply differs");

    // Three 4 MiB messages each way on one bidi stream.
    let (tx, requests) = sender();
    let mut replies = client.bidi(requests).await.unwrap().into_inner();
    for i in 0..3 {
        tx.send(echo(&big)).await.unwrap();
        let reply = next(&mut replies, &format!("4 MiB echo {i}"))
            .await
            .unwrap()
            .expect("an echo");
        assert!(reply.payload == big, "4 MiB echo {i} differs");
    }
    drop(tx);
    assert_eq!(next(&mut replies, "bidi end").await.unwrap(), None);
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metadata_pass_untouched_in_both_directions() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let worker = GrpcWorker::start("w").await;
    register(&db, &lb, &[(&worker, 1)]).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    let tag = [0u8, 1, 2, 0xfe, 0xff, b'\r', b'\n'];

    // A request's binary metadata reaches the worker byte for byte.
    let mut request = tonic::Request::new(echo(b"x"));
    request
        .metadata_mut()
        .insert_bin("x-tag-bin", MetadataValue::from_bytes(&tag));
    let reply = client.unary(request).await.unwrap().into_inner();
    assert_eq!(reply.tag, tag);

    // A successful call: its header metadata in the head, its own trailers after the
    // message, a binary one included.
    let response = client.unary_as_stream(echo(b"y")).await.unwrap();
    assert_eq!(response.metadata().get("x-server").unwrap(), "w");
    let mut body = response.into_inner();
    let reply = next(&mut body, "the reply").await.unwrap().unwrap();
    assert_eq!(reply.payload, b"y");
    assert_eq!(next(&mut body, "the end").await.unwrap(), None);
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("x-served-by").unwrap(), "w");
    assert_eq!(
        trailers.get_bin("x-trace-bin").unwrap().to_bytes().unwrap(),
        trace_bytes("w")
    );
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // A failure after 3 messages: its status, message (not ASCII: percent-encoded on the
    // wire) and binary metadata arrive in real trailers.
    let message = "précondition: 50% ✗";
    let request = EchoRequest {
        count: 3,
        fail_code: Code::FailedPrecondition as i32,
        fail_message: message.into(),
        ..Default::default()
    };
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    for seq in 0..3 {
        let reply = next(&mut stream, "a message before the failure").await;
        assert_eq!(reply.unwrap().map(|r| r.seq), Some(seq));
    }
    let status = next(&mut stream, "the failure").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), message);
    assert_eq!(
        status
            .metadata()
            .get_bin("x-error-bin")
            .unwrap()
            .to_bytes()
            .unwrap(),
        trace_bytes("w")
    );

    // A trailers-only failure (the status in the only HEADERS frame) passes as well.
    let request = EchoRequest {
        fail_code: Code::NotFound as i32,
        fail_message: "no such thing".into(),
        ..Default::default()
    };
    let status = client.unary(request).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "no such thing")
    );
    assert_eq!(status.metadata().get("x-served-by").unwrap(), "w");
    assert_eq!(
        status
            .metadata()
            .get_bin("x-error-bin")
            .unwrap()
            .to_bytes()
            .unwrap(),
        trace_bytes("w")
    );
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_is_unavailable() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;

    let status = client.unary(echo(b"x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "empty pool: {status:?}");

    // A registered worker that refuses connections: UNAVAILABLE too, not UNKNOWN.
    let gone = GrpcWorker::start("gone").await;
    register(&db, &lb, &[(&gone, 1)]).await;
    gone.kill();
    let status = client.unary(echo(b"x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "dead worker: {status:?}");
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_is_deadline_exceeded_and_cancels_the_workers_call() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let worker = GrpcWorker::start("slow").await;
    register(&db, &lb, &[(&worker, 1)]).await;
    let slow = || EchoRequest {
        sleep_ms: 20_000,
        ..Default::default()
    };

    // A client without a timer of its own: the answer is the proxy's, sent when the
    // deadline it read in grpc-timeout expired.
    let mut client = EchoClient::without_local_deadline(lb.listeners[0]);
    let mut request = tonic::Request::new(slow());
    request.set_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let status = tokio::time::timeout(WAIT, client.unary(request))
        .await
        .expect("the proxy cut the call by its grpc-timeout")
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "cut after {took:?}, want 300 ms"
    );
    eventually(
        "the worker's call is cancelled when the deadline cuts it",
        || worker.cancelled() == 1,
    )
    .await;

    // tonic's channel (its own timer fires at the same moment, answering CANCELLED when it
    // wins): either code, and the worker's call is cancelled all the same.
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    let mut request = tonic::Request::new(slow());
    request.set_timeout(Duration::from_millis(300));
    let status = tokio::time::timeout(WAIT, client.unary(request))
        .await
        .expect("the call ends by its deadline")
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    eventually("the second call is cancelled at the worker", || {
        worker.cancelled() == 2
    })
    .await;
    assert_eq!(worker.calls(), 2, "a cut call is not retried");
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_0_during_a_long_server_stream_lets_it_finish_and_sends_new_calls_elsewhere() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let (a, b, c) = (
        GrpcWorker::start("a").await,
        GrpcWorker::start("b").await,
        GrpcWorker::start("c").await,
    );
    // a alone first, so the long stream is a's.
    register(&db, &lb, &[(&a, 1)]).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    let request = EchoRequest {
        count: 100,
        hold_after: 10,
        ..Default::default()
    };
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    for seq in 0..10 {
        let reply = next(&mut stream, "before the drain")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((reply.server.as_str(), reply.seq), ("a", seq));
    }
    eventually("a's stream is held mid-way", || a.holding() == 1).await;

    register(&db, &lb, &[(&b, 1), (&c, 1)]).await;
    let a_address = a.addr.to_string();
    common::change(
        &db,
        &lb,
        &format!("UPDATE workers SET weight = 0 WHERE worker_address = '{a_address}'"),
    )
    .await;
    for i in 0..30 {
        let server = served_by(&mut client, &format!("call {i} during the drain")).await;
        assert_ne!(server, "a", "call {i} went to the drained worker");
    }
    assert_eq!(a.calls(), 1, "only the stream reached a");

    a.release();
    for seq in 10..100 {
        let reply = next(&mut stream, "after the drain").await.unwrap();
        assert_eq!(reply.map(|r| (r.server, r.seq)), Some(("a".into(), seq)));
    }
    assert_eq!(
        next(&mut stream, "the stream's end").await.unwrap(),
        None,
        "the drained worker's stream ends with OK"
    );
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_goaway_mid_load_fails_no_call() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let mut a = GrpcWorker::start("a").await;
    let (b, c) = (GrpcWorker::start("b").await, GrpcWorker::start("c").await);
    register(&db, &lb, &[(&a, 1), (&b, 1), (&c, 1)]).await;
    let client = EchoClient::connect(lb.listeners[0]).await;

    const TASKS: usize = 16;
    const CALLS: usize = 125; // per task: 2,000 in all
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (mut client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..CALLS {
                    let payload = format!("{t}/{i}");
                    match client.unary(echo(payload.as_bytes())).await {
                        Ok(r) if r.get_ref().payload == payload.as_bytes() => {}
                        Ok(r) => failures.push(format!("{payload}: wrong reply {:?}", r.get_ref())),
                        Err(s) => failures.push(format!("{payload}: {s:?}")),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                failures
            })
        })
        .collect();
    eventually("500 calls done before the GOAWAY", || {
        done.load(Ordering::SeqCst) >= 500
    })
    .await;
    let a_before = a.calls();
    a.start_shutdown();
    let done_at_goaway = done.load(Ordering::SeqCst);

    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("the load ends within 60 s")
                .unwrap(),
        );
    }
    assert_eq!(done.load(Ordering::SeqCst), TASKS * CALLS);
    assert!(
        failures.is_empty(),
        "{} of {} calls failed across a's GOAWAY; first: {:#?}",
        failures.len(),
        TASKS * CALLS,
        &failures[..failures.len().min(5)]
    );
    a.shutdown().await; // it did finish: its streams all ended
    assert_eq!(a.open(), 0);
    assert!(a_before > 0, "a served calls before its GOAWAY");
    assert!(
        done_at_goaway < TASKS * CALLS * 3 / 4,
        "the GOAWAY came mid-load ({done_at_goaway} calls done)"
    );
    assert_eq!(
        a.calls() + b.calls() + c.calls(),
        TASKS * CALLS,
        "every call reached exactly one worker (retries only of what no worker processed)"
    );
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_a_drained_workers_stream_with_unavailable() {
    let db = TestDb::new().await;
    let pool = PoolConfig {
        drain_timeout: Duration::from_millis(300),
        ..h2_pool()
    };
    let lb = start(&db, pool).await;
    let a = GrpcWorker::start("a").await;
    register(&db, &lb, &[(&a, 1)]).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    let request = EchoRequest {
        count: 10,
        hold_after: 1,
        ..Default::default()
    };
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    assert_eq!(
        next(&mut stream, "the first reply")
            .await
            .unwrap()
            .map(|r| r.seq),
        Some(0)
    );
    eventually("the stream is held", || a.holding() == 1).await;
    let drained = tokio::time::Instant::now();
    common::change(
        &db,
        &lb,
        &format!(
            "UPDATE workers SET weight = 0 WHERE worker_address = '{}'",
            a.addr
        ),
    )
    .await;
    // Never released: drain_timeout ends it, as a gRPC client understands.
    let status = next(&mut stream, "the cut").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        drained.elapsed() >= Duration::from_millis(250),
        "cut after {:?}, before drain_timeout",
        drained.elapsed()
    );
    eventually("the worker's stream is cancelled by the cut", || {
        a.holding() == 0
    })
    .await;
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_bounds_a_call_without_deadline() {
    let db = TestDb::new().await;
    let pool = PoolConfig {
        response_timeout: Duration::from_millis(300),
        ..h2_pool()
    };
    let lb = start(&db, pool).await;
    let worker = GrpcWorker::start("slow").await;
    register(&db, &lb, &[(&worker, 1)]).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    let slow = EchoRequest {
        sleep_ms: 20_000,
        ..Default::default()
    };
    // No grpc-timeout at all, then one longer than response_timeout: both cut at 300 ms.
    for timeout in [None, Some(Duration::from_secs(20))] {
        let mut request = tonic::Request::new(slow.clone());
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let started = tokio::time::Instant::now();
        let status = tokio::time::timeout(WAIT, client.unary(request))
            .await
            .expect("cut by response_timeout")
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "{timeout:?}: {status:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{timeout:?}");
    }
    eventually("both calls cancelled at the worker", || {
        worker.cancelled() == 2
    })
    .await;
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_reached_its_worker_is_never_retried() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let (a, b) = (GrpcWorker::start("a").await, GrpcWorker::start("b").await);
    register(&db, &lb, &[(&a, 1)]).await;
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    served_by(&mut client, "a warm-up call").await;
    register(&db, &lb, &[(&b, 0)]).await;
    common::change(
        &db,
        &lb,
        &format!(
            "UPDATE workers SET weight = 1 WHERE worker_address = '{}'",
            b.addr
        ),
    )
    .await;

    // The worker's own UNAVAILABLE is its answer, passed on: not a reason to try b.
    let mut unavailable = Vec::new();
    for _ in 0..4 {
        let request = EchoRequest {
            fail_code: Code::Unavailable as i32,
            fail_message: "overloaded".into(),
            ..Default::default()
        };
        let status = client.unary(request).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "overloaded")
        );
        unavailable.push(
            status
                .metadata()
                .get("x-served-by")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    let (a_calls, b_calls) = (a.calls(), b.calls());
    assert_eq!(
        a_calls + b_calls,
        1 + 4,
        "one worker call per client call: {unavailable:?}"
    );

    // A worker that dies with a call in hand: UNAVAILABLE, and the call is not replayed
    // on the other worker (it may have been processed).
    let mut calls = Vec::new();
    for _ in 0..2 {
        let request = EchoRequest {
            sleep_ms: 20_000,
            ..Default::default()
        };
        let mut client = client.clone();
        calls.push(tokio::spawn(async move { client.unary(request).await }));
    }
    eventually("both sleeping calls reached a worker", || {
        a.calls() + b.calls() == a_calls + b_calls + 2
    })
    .await;
    assert_eq!(
        (a.calls(), b.calls()),
        (a_calls + 1, b_calls + 1),
        "one sleeping call on each worker"
    );
    a.kill();
    eventually("a's call ends when a dies", || {
        calls.iter().filter(|c| c.is_finished()).count() == 1
    })
    .await;
    let (ended, sleeping): (Vec<_>, Vec<_>) = calls.into_iter().partition(|c| c.is_finished());
    let status = ended
        .into_iter()
        .next()
        .unwrap()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(b.calls(), b_calls + 1, "a's call was not replayed on b");
    b.kill();
    let status = tokio::time::timeout(WAIT, sleeping.into_iter().next().unwrap())
        .await
        .expect("b's call ends when b dies")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(a.calls(), a_calls + 1, "b's call was not replayed on a");
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_per_connection_opens_another_connection_beyond_it() {
    let db = TestDb::new().await;
    let pool = PoolConfig {
        max_streams_per_connection: 2,
        ..h2_pool()
    };
    let lb = start(&db, pool).await;
    let worker = GrpcWorker::start("w").await;
    register(&db, &lb, &[(&worker, 1)]).await;
    let client = EchoClient::connect(lb.listeners[0]).await;
    let mut streams = Vec::new();
    for i in 0..5 {
        let request = EchoRequest {
            count: 2,
            hold_after: 1,
            ..Default::default()
        };
        let mut stream = client
            .clone()
            .server_stream(request)
            .await
            .unwrap()
            .into_inner();
        assert!(
            next(&mut stream, &format!("stream {i}"))
                .await
                .unwrap()
                .is_some()
        );
        streams.push(stream);
    }
    eventually("five streams held at the worker", || worker.holding() == 5).await;
    assert_eq!(
        worker.open(),
        3,
        "5 streams at 2 per connection: 3 connections"
    );
    worker.release();
    for (i, mut stream) in streams.into_iter().enumerate() {
        assert!(
            next(&mut stream, &format!("stream {i} after release"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(next(&mut stream, "end").await.unwrap(), None);
    }
    // Idle again: new calls share what is open, no new connection per call.
    let mut client = client;
    for i in 0..20 {
        served_by(&mut client, &format!("call {i}")).await;
    }
    assert!(worker.open() <= 3, "{} connections", worker.open());
    lb.stop(Duration::from_secs(1)).await;
}

/// `type = "grpc"` checks every 50 ms (500 ms timeout); one failure or pass flips a worker.
fn grpc_checked(service: &str) -> PoolConfig {
    PoolConfig {
        health_check: Some(HealthCheckConfig {
            kind: HealthCheckKind::Grpc {
                service: service.into(),
            },
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        }),
        ..h2_pool()
    }
}

async fn healthy(lb: &load_balancer::Running, address: &str) -> bool {
    worker_status(&status(lb).await, address)["healthy"] == true
}

async fn until_health(lb: &load_balancer::Running, address: &str, want: bool, what: &str) {
    eventually_within(what, WAIT, async || healthy(lb, address).await == want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_serving_worker_is_marked_unhealthy_by_a_grpc_check() {
    let db = TestDb::new().await;
    let lb = start(&db, grpc_checked("")).await;
    let serving = GrpcWorker::start("serving").await;
    let not_serving = GrpcWorker::start("not-serving").await;
    not_serving.set_serving(ServingStatus::NotServing).await;
    // A worker that speaks HTTP/1.1 only, answering 200 to everything it understands.
    let http1 = common::Backend::start("http1").await;
    register(&db, &lb, &[(&serving, 1), (&not_serving, 1)]).await;
    common::add(&db, &lb, &[&http1]).await;
    let (s, n, h) = (
        serving.addr.to_string(),
        not_serving.addr.to_string(),
        http1.addr.to_string(),
    );

    until_health(&lb, &n, false, "NOT_SERVING marks the worker unhealthy").await;
    until_health(&lb, &h, false, "an HTTP/1-only worker fails a gRPC check").await;
    assert!(healthy(&lb, &s).await, "the SERVING worker stays healthy");
    let mut client = EchoClient::connect(lb.listeners[0]).await;
    for i in 0..20 {
        let server = served_by(&mut client, &format!("call {i}")).await;
        assert_eq!(server, "serving", "only the healthy worker gets calls");
    }

    not_serving.set_serving(ServingStatus::Serving).await;
    until_health(&lb, &n, true, "SERVING again: healthy again").await;
    serving.set_serving(ServingStatus::Unknown).await;
    until_health(&lb, &s, false, "UNKNOWN is no pass either").await;
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_check_of_a_named_service_asks_about_that_service() {
    let db = TestDb::new().await;
    let lb = start(&db, grpc_checked("test.Echo")).await;
    let knows = GrpcWorker::start("knows").await;
    knows
        .health
        .set_service_status("test.Echo", ServingStatus::Serving)
        .await;
    // Serving as a whole, but it has never heard of test.Echo: NOT_FOUND, a failure.
    let unaware = GrpcWorker::start("unaware").await;
    register(&db, &lb, &[(&knows, 1), (&unaware, 1)]).await;
    let (k, u) = (knows.addr.to_string(), unaware.addr.to_string());
    until_health(&lb, &u, false, "an unknown service fails the check").await;
    until_health(&lb, &k, true, "the named service SERVING passes").await;

    knows
        .health
        .set_service_status("test.Echo", ServingStatus::NotServing)
        .await;
    until_health(&lb, &k, false, "the named service NOT_SERVING fails").await;
    lb.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_to_an_h2_pool_gets_its_answer() {
    let db = TestDb::new().await;
    let lb = start(&db, h2_pool()).await;
    let worker = GrpcWorker::start("h2-only").await;
    register(&db, &lb, &[(&worker, 1)]).await;
    let reply = common::raw(
        lb.listeners[0],
        b"GET /name HTTP/1.1\r\nHost: grpc.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "an HTTP/1.1 client of an h2 pool: {reply}"
    );
    assert!(reply.ends_with("h2-only"), "the worker's body: {reply}");
    lb.stop(Duration::from_secs(1)).await;
}

/// The gRPC probe itself, on one worker, as the health check task runs it.
async fn probe(
    address: std::net::SocketAddr,
    service: &str,
    tls: Option<Arc<load_balancer::upstream::tls::UpstreamTls>>,
) -> bool {
    use load_balancer::balance::health::Probe;
    let worker = load_balancer::ring::Worker {
        state: Default::default(),
        id: 1,
        version: 1,
        weight: 1,
        pool: "default".into(),
        address: load_balancer::ring::Address::new(&address.to_string()),
        pool_load: Default::default(),
    };
    let check = match grpc_checked(service).health_check {
        Some(check) => check,
        None => unreachable!(),
    };
    let probe = load_balancer::upstream::probe::NetworkProbe {
        tls,
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let passed = tokio::time::timeout(WAIT, probe.probe(Arc::new(worker), Arc::new(check)))
        .await
        .expect("the probe ends");
    // Bounded by the check's timeout (500 ms) by itself, whatever the worker does.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the probe took {:?}",
        started.elapsed()
    );
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_probe_passes_on_serving_only() {
    let worker = GrpcWorker::start("w").await;
    assert!(probe(worker.addr, "", None).await, "SERVING");
    worker.set_serving(ServingStatus::NotServing).await;
    assert!(!probe(worker.addr, "", None).await, "NOT_SERVING");
    worker.set_serving(ServingStatus::Unknown).await;
    assert!(!probe(worker.addr, "", None).await, "UNKNOWN");
    worker.set_serving(ServingStatus::Serving).await;
    assert!(
        !probe(worker.addr, "test.Echo", None).await,
        "a service it does not know"
    );
    worker
        .health
        .set_service_status("test.Echo", ServingStatus::Serving)
        .await;
    assert!(
        probe(worker.addr, "test.Echo", None).await,
        "a named service SERVING"
    );
    worker.set_health_service(false);
    assert!(
        !probe(worker.addr, "", None).await,
        "UNIMPLEMENTED (no health service)"
    );

    let http1 = common::Backend::start("http1").await;
    assert!(!probe(http1.addr, "", None).await, "an HTTP/1-only worker");

    // Accepts, reads, never answers: failed by the check's timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    assert!(
        !probe(silent_addr, "", None).await,
        "a worker that never answers"
    );
    hold.abort();
}

/// A TLS server config for 127.0.0.1 (self-signed) offering `alpn`.
fn tls_server(alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_probe_over_tls_offers_h2_by_alpn() {
    let text = "[database]\nurl = \"postgres://x@127.0.0.1/x\"\n\n\
                [[listeners]]\nbind = \"127.0.0.1:9\"\n\n\
                [pools.default]\nprotocol = \"h2\"\n\
                [pools.default.tls]\nverify = false\n\
                [pools.default.health_check]\ntype = \"grpc\"\n";
    let config = load_balancer::config::Config::parse("config.toml", text, None).unwrap();
    let tls = load_balancer::upstream::tls::for_pool_tasks("default", &config.pools["default"]);
    assert!(tls.is_some());

    let h2 = GrpcWorker::start_tls("h2", tls_server(&[b"h2"])).await;
    assert!(probe(h2.addr, "", tls.clone()).await, "ALPN h2 agreed");
    h2.set_serving(ServingStatus::NotServing).await;
    assert!(
        !probe(h2.addr, "", tls.clone()).await,
        "NOT_SERVING over TLS"
    );

    // A TLS worker that offers http/1.1 alone refuses the handshake: no common protocol.
    // (This worker would in fact speak HTTP/2: only a probe that offers h2 fails here.)
    let http1 = GrpcWorker::start_tls("http1", tls_server(&[b"http/1.1"])).await;
    assert!(!probe(http1.addr, "", tls.clone()).await, "no h2 by ALPN");
    // A cleartext worker fails the TLS check.
    let plain = GrpcWorker::start("plain").await;
    assert!(
        !probe(plain.addr, "", tls).await,
        "cleartext under a TLS pool"
    );
}
