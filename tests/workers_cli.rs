//! `load_balancer workers …` and `migrate`, run as the real binary against a real
//! database: each command does its one statement; bad input is one line and exit 1; a
//! drain with `--wait` confirms itself against a running instance.

mod common;

use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Backend, TestDb, WAIT, client, get, lb_with_database_url as lb};
use load_balancer::config::{AlgorithmKind, Protocol};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The run succeeded; its stdout.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// The run failed with exit 1 and exactly one line on stderr, and nothing on stdout; that
/// line.
fn one_line_error(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {stderr}\nstdout: {}",
        stdout(&out)
    );
    assert_eq!(stderr.lines().count(), 1, "one line, not: {stderr}");
    assert_eq!(stdout(&out), "", "nothing on stdout");
    stderr.trim_end().to_string()
}

/// The rows of `workers` as `address|weight|pool`, by id.
async fn workers(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT worker_address, weight, pool FROM workers ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}",
                r.get::<_, String>(0),
                r.get::<_, i32>(1),
                r.get::<_, String>(2)
            )
        })
        .collect()
}

#[tokio::test]
async fn each_command_writes_its_statement() {
    let db = TestDb::new().await;
    assert!(ok(lb(&db.url, &["migrate"]).await).contains("migrations applied"));
    assert_eq!(
        ok(lb(&db.url, &["workers", "list"]).await).trim(),
        "no workers"
    );

    let added = ok(lb(&db.url, &["workers", "add", "127.0.0.1:8000"]).await);
    assert!(
        added.starts_with("added worker ")
            && added.contains("127.0.0.1:8000 in pool default, weight 1"),
        "{added}"
    );
    ok(lb(
        &db.url,
        &[
            "workers",
            "add",
            "10.0.0.7:9000",
            "--weight",
            "3",
            "--pool",
            "api",
        ],
    )
    .await);
    assert_eq!(
        workers(&db).await,
        ["127.0.0.1:8000|1|default", "10.0.0.7:9000|3|api"]
    );

    let listed = ok(lb(&db.url, &["workers", "list"]).await);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 4, "header, rule, two rows:\n{listed}");
    // Sorted by pool: api first; nobody runs an instance, so nobody reports them.
    let cells =
        |line: &str| -> Vec<String> { line.split('|').map(|c| c.trim().to_string()).collect() };
    assert_eq!(
        cells(lines[0]),
        [
            "id",
            "pool",
            "address",
            "weight",
            "healthy",
            "ejected",
            "in flight"
        ]
    );
    assert_eq!(
        cells(lines[2])[1..],
        [
            "api",
            "10.0.0.7:9000",
            "3",
            "no instance reports it",
            "-",
            "0"
        ]
    );
    assert_eq!(
        cells(lines[3])[1..],
        [
            "default",
            "127.0.0.1:8000",
            "1",
            "no instance reports it",
            "-",
            "0"
        ]
    );
    let api = ok(lb(&db.url, &["workers", "list", "--pool", "api"]).await);
    assert!(
        api.contains("10.0.0.7:9000") && !api.contains("127.0.0.1:8000"),
        "{api}"
    );

    ok(lb(&db.url, &["workers", "set-weight", "127.0.0.1:8000", "7"]).await);
    assert_eq!(workers(&db).await[0], "127.0.0.1:8000|7|default");
    let drained = ok(lb(
        &db.url,
        &["workers", "drain", "10.0.0.7:9000", "--pool", "api"],
    )
    .await);
    assert!(drained.contains("drained: weight 0"), "{drained}");
    assert_eq!(workers(&db).await[1], "10.0.0.7:9000|0|api");
    // Nothing runs: nothing can be serving it, and --wait says so at once.
    let confirmed = ok(lb(
        &db.url,
        &[
            "workers",
            "drain",
            "10.0.0.7:9000",
            "--pool",
            "api",
            "--wait",
        ],
    )
    .await);
    assert!(confirmed.contains("nothing is serving it"), "{confirmed}");

    ok(lb(
        &db.url,
        &["workers", "remove", "10.0.0.7:9000", "--pool", "api"],
    )
    .await);
    assert_eq!(workers(&db).await, ["127.0.0.1:8000|7|default"]);
}

#[tokio::test]
async fn bad_input_is_one_line_and_exit_1() {
    let db = TestDb::new().await;
    // Before the migration: the table is missing, and the fix is named.
    assert_eq!(
        one_line_error(lb(&db.url, &["workers", "list"]).await),
        "error: the workers table does not exist in this database: run `load_balancer migrate`"
    );
    ok(lb(&db.url, &["migrate"]).await);
    ok(lb(&db.url, &["workers", "add", "127.0.0.1:8000"]).await);

    for command in [
        &["workers", "set-weight", "127.0.0.1:8001", "2"][..],
        &["workers", "drain", "127.0.0.1:8001"],
        &["workers", "remove", "127.0.0.1:8001"],
    ] {
        assert_eq!(
            one_line_error(lb(&db.url, command).await),
            "error: no worker at 127.0.0.1:8001 in pool \"default\"",
            "{command:?}"
        );
    }
    assert_eq!(
        one_line_error(
            lb(
                &db.url,
                &[
                    "workers",
                    "set-weight",
                    "127.0.0.1:8000",
                    "2",
                    "--pool",
                    "api"
                ]
            )
            .await
        ),
        "error: no worker at 127.0.0.1:8000 in pool \"api\""
    );
    assert_eq!(
        one_line_error(
            lb(
                &db.url,
                &["workers", "set-weight", "127.0.0.1:8000", "10001"]
            )
            .await
        ),
        "error: weight 10001 is out of range: a weight is 0 to 10000 (0 drains the worker)"
    );
    assert_eq!(
        one_line_error(
            lb(
                &db.url,
                &["workers", "add", "127.0.0.1:9", "--weight", "-1"]
            )
            .await
        ),
        "error: weight -1 is out of range: a weight is 0 to 10000 (0 drains the worker)"
    );
    assert_eq!(
        one_line_error(lb(&db.url, &["workers", "add", "127.0.0.1:8000"]).await),
        "error: 127.0.0.1:8000 is already a worker of pool \"default\""
    );
    // The CHECK constraint's refusal, with PostgreSQL's reason.
    let refused = one_line_error(lb(&db.url, &["workers", "add", "backend:99999"]).await);
    assert!(
        refused.starts_with("error: PostgreSQL refused \"backend:99999\": new row for relation \"workers\" violates check constraint \"workers_address_host_port\""),
        "{refused}"
    );
    assert_eq!(
        workers(&db).await,
        ["127.0.0.1:8000|1|default"],
        "nothing changed"
    );

    // A database that does not answer: a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("postgres://postgres@127.0.0.1:{port}/lb");
    let line = one_line_error(lb(&down, &["workers", "list"]).await);
    assert!(
        line.starts_with(&format!(
            "error: PostgreSQL at 127.0.0.1:{port} does not answer"
        )),
        "{line}"
    );
    let line = one_line_error(lb(&down, &["workers", "drain", "127.0.0.1:8000", "--wait"]).await);
    assert!(line.contains("does not answer"), "{line}");
}

/// A drain that confirms itself: with a request in flight on the worker, `--wait` times out
/// naming the instance and what is in flight; once the request ends it returns 0.
#[tokio::test]
async fn drain_wait_returns_once_nothing_is_in_flight() {
    let db = TestDb::new().await;
    let a = Backend::start("a").await;
    let mut config = common::config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    // The default interval (5 s): the drain and the end of the last request must be written
    // as transitions, at once, not at the next interval.
    config.status.instance = Some("edge-1".into());
    let running = load_balancer::start(&config).await.expect("proxy starts");
    common::add(&db, &running, &[&a]).await;
    let address = a.addr.to_string();

    // A slow request in flight on the worker.
    let proxy = running.listeners[0];
    let slow = tokio::spawn(async move { get(&client(), proxy, "/hold").await });
    common::eventually("the request reaches the worker", || {
        a.holding.load(Ordering::SeqCst) == 1
    })
    .await;

    let started = Instant::now();
    let line = one_line_error(
        lb(
            &db.url,
            &["workers", "drain", &address, "--wait", "--timeout", "1s"],
        )
        .await,
    );
    assert_eq!(
        line,
        format!(
            "error: worker {address} (pool \"default\") is drained but still busy after 1s: \
             edge-1: 1 in flight"
        )
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(workers(&db).await, [format!("{address}|0|default")]);

    // Waiting again while the request is held; it returns only after the release.
    let waiting = tokio::process::Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .args(["workers", "drain", &address, "--wait", "--timeout", "20s"])
        .current_dir(std::env::temp_dir())
        .env("DATABASE_URL", &db.url)
        .kill_on_drop(true)
        .output();
    let waiting = tokio::spawn(waiting);
    // Not a synchronisation: a check that it has not returned early while still busy.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "drain --wait returned with a request in flight"
    );
    let released = Instant::now();
    a.release();
    assert_eq!(
        slow.await.unwrap(),
        (200, "a".to_string()),
        "the request finished"
    );
    let out = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("drain --wait returns after the request ends")
        .unwrap()
        .unwrap();
    let confirmed = ok(out);
    assert!(
        confirmed.contains("1 instance(s) report nothing in flight"),
        "{confirmed}"
    );
    // The end of the last request is a transition: written within a tick, not an interval.
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "confirmed {:?} after the release",
        released.elapsed()
    );

    running.stop(Duration::from_secs(5)).await;
}
