//! The binary's edges: every config mistake and every startup database problem exits
//! non-zero with a diagnostic that says what is wrong, where, and how to fix it.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::TestDb;

const GOOD: &str = r#"[database]
url = "postgres://postgres@127.0.0.1:5432/load_balancer"

[[listeners]]
bind = "127.0.0.1:0"
protocol = "http"
pool = "default"
algorithm = "weighted"

[admin]
bind = "127.0.0.1:0"
"#;

fn write_config(text: &str) -> (common::TempDir, PathBuf) {
    let dir = common::TempDir::new("cli");
    let path = dir.0.join("config.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs the binary on `text` as its config file, without DATABASE_URL; one that does not
/// exit within 20 s is killed (exit 124), so a regression fails instead of hanging.
fn run(text: &str) -> Output {
    let (_dir, path) = write_config(text);
    Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_load_balancer")])
        .arg("--config")
        .arg(&path)
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// `check-config` on `text`, without the environment's overrides.
fn check_config(text: &str) -> Output {
    let (_dir, path) = write_config(text);
    Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env_remove("DATABASE_URL")
        .env_remove("LB_STICKY_SECRET")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// Asserts a failed run whose stderr names `key` and points at `line` of config.toml.
fn assert_config_error(text: &str, key: &str, line: usize) {
    let out = run(text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail:\n{text}");
    assert!(
        stderr.contains(key),
        "stderr does not name {key:?}:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("config.toml:{line}:")),
        "stderr does not point at line {line}:\n{stderr}"
    );
}

#[test]
fn config_errors_name_the_key_and_line() {
    assert_config_error(
        &GOOD.replace(
            "[admin]\nbind = \"127.0.0.1:0\"",
            "[admin]\nbind = \"0.0.0.0:0\"",
        ),
        "admin.bind",
        11,
    );
    assert_config_error(
        &GOOD.replace("pool = \"default\"", "pool = \"default\"\nweigth = 2"),
        "weigth",
        8,
    );
    assert_config_error(
        &GOOD.replace("\"http\"", "\"udp\""),
        "listeners[0].protocol",
        6,
    );
    assert_config_error(
        &GOOD.replace("\"weighted\"", "\"fastest\""),
        "listeners[0].algorithm",
        8,
    );
    assert_config_error(
        &GOOD.replace(
            "bind = \"127.0.0.1:0\"\nprotocol",
            "bind = \"localhost\"\nprotocol",
        ),
        "listeners[0].bind",
        5,
    );
    assert_config_error(&GOOD.replace("[admin]", "[admin"), "admin", 10);
    let two = GOOD.replace("127.0.0.1:0", "127.0.0.1:18080")
        + "\n[[listeners]]\nbind = \"127.0.0.1:18080\"\n";
    assert_config_error(&two, "127.0.0.1:18080", 14);
}

#[test]
fn misspelt_pool_table_is_accepted_for_routes_but_warned_of_with_a_suggestion() {
    // A table no listener serves may be for a pool rows of `routes` name, which the file
    // cannot know; but it is more often a typo, and check-config says so.
    let text = GOOD.to_string() + "\n[pools.defualt.health_check]\npath = \"/healthz\"\n";
    let out = check_config(&text);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`[pools.defualt]` configures a pool no listener serves"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `default`?"), "{stderr}");
}

#[test]
fn check_config_accepts_consistent_hash() {
    let text = GOOD.replace(
        "algorithm = \"weighted\"",
        "algorithm = \"consistent_hash\"\nhash_key = \"header:X-Tenant\"",
    );
    let out = check_config(&text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("is valid: 1 listener(s)"), "{stdout}");
}

#[test]
fn missing_config_file_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .args(["--config", "/nonexistent/lb.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/lb.toml"), "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn help_explains_config_and_database_url() {
    let out = Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .arg("--help")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("--config"), "{stdout}");
    assert!(stdout.contains("DATABASE_URL"), "{stdout}");
}

#[test]
fn missing_database_says_how_to_create_it() {
    let out = run(&GOOD.replace("/load_balancer\"", "/lb_no_such_db_here\""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("\"lb_no_such_db_here\" does not exist"),
        "{stderr}"
    );
    assert!(
        stderr.contains("createdb -h 127.0.0.1 -p 5432 -U postgres lb_no_such_db_here"),
        "{stderr}"
    );
}

#[test]
fn refused_login_is_reported() {
    let out = run(&GOOD.replace("postgres://postgres@", "postgres://lb_no_such_role@"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refused the login of user \"lb_no_such_role\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn unreachable_server_is_reported_and_retried_while_serving_503() {
    // A port that was just free: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = GOOD.replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    let (_dir, path) = write_config(&text);
    let mut child = spawn(&path, None);
    let lines = read_until(&mut child, &["does not answer", "listening"]).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("127.0.0.1:{port} does not answer"))),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("answering 503")),
        "{lines:#?}"
    );
    stop(child).await;
}

/// Starts the binary on `path` with RUST_LOG=info; `database_url` sets DATABASE_URL.
fn spawn(path: &std::path::Path, database_url: Option<&str>) -> tokio::process::Child {
    spawn_logging(path, database_url, Some("info"))
}

/// [`spawn`] with RUST_LOG set to `rust_log`, or unset (the file's `[log] level` decides).
fn spawn_logging(
    path: &std::path::Path,
    database_url: Option<&str>,
    rust_log: Option<&str>,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_load_balancer"));
    command
        .arg("--config")
        .arg(path)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    command.spawn().unwrap()
}

/// Reads the child's log until a line contains each of `wanted` in turn; returns the lines.
async fn read_until(child: &mut tokio::process::Child, wanted: &[&str]) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut next = 0;
    tokio::time::timeout(common::WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(wanted[next]) {
                next += 1;
            }
            seen.push(line);
            if next == wanted.len() {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("log never showed {:?}: {seen:#?}", &wanted[next..]));
    assert_eq!(
        next,
        wanted.len(),
        "exited before logging {:?}: {seen:#?}",
        &wanted[next..]
    );
    seen
}

/// SIGTERM, then a clean exit within the wait. The log pipe is closed by now (`read_until`
/// dropped its reader): the shutdown's log lines must not crash the process.
async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(common::WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn database_url_overrides_the_file_and_serves() {
    let db = TestDb::new().await;
    let (_dir, path) = write_config(&GOOD.replace("/load_balancer\"", "/lb_no_such_db_here\""));
    let mut child = spawn(&path, Some(&db.url));
    // It migrates the database named by DATABASE_URL, then logs that it listens.
    read_until(&mut child, &["admin endpoint listening"]).await;
    let n: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM workers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    stop(child).await;
}

type Log = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Reads until a line contains `wanted`; returns it. Keeps every line in `seen`.
async fn next_line(log: &mut Log, seen: &mut Vec<String>, wanted: &str) -> String {
    let found = tokio::time::timeout(common::WAIT, async {
        while let Some(line) = log.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains(wanted) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!("exited before logging {wanted:?}: {seen:#?}"),
        Err(_) => panic!("log never showed {wanted:?}: {seen:#?}"),
    }
}

/// The `address=` field of a log line.
fn address_in(line: &str) -> std::net::SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// SIGHUP under load, the way an operator does it: a good file (a listener added, the log
/// level turned to `warn`) applies; then a broken one is refused with its diagnostic in the
/// log while the running configuration keeps serving; `/metrics` counts one of each, and
/// no request fails throughout.
#[tokio::test]
async fn sighup_reloads_a_good_config_and_keeps_serving_through_a_bad_one() {
    use tokio::io::AsyncBufReadExt;

    let db = TestDb::new().await;
    let backend = common::Backend::start("a").await;
    let (_dir, path) = write_config(GOOD);
    // No RUST_LOG: it would win over `[log] level`.
    let mut child = spawn_logging(&path, Some(&db.url), None);
    let mut log: Log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let proxy = address_in(&next_line(&mut log, &mut seen, "protocol=\"http\"").await);
    let admin = address_in(&next_line(&mut log, &mut seen, "admin endpoint listening").await);
    db.exec(&format!(
        "INSERT INTO workers(worker_address) VALUES ('{}')",
        backend.addr
    ))
    .await;
    next_line(&mut log, &mut seen, "ring change applied").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = common::load(proxy, done.clone());

    let added = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let good = format!("{GOOD}\n[[listeners]]\nbind = \"{added}\"\n\n[log]\nlevel = \"warn\"\n");
    std::fs::write(&path, good).unwrap();
    let pid = child.id().unwrap().to_string();
    let hup = || {
        let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(sent.success(), "kill -HUP {pid}: {sent:?}");
    };
    hup();
    let reloaded = next_line(&mut log, &mut seen, "configuration reloaded").await;
    assert!(
        reloaded.contains(&format!("added: {added}")) && reloaded.contains("kept: 1"),
        "{reloaded}"
    );
    let got = common::get(&common::client(), added, "/").await;
    assert_eq!(got, (200, "a".to_string()), "the added listener serves");

    std::fs::write(&path, GOOD.replace("\"weighted\"", "\"fastest\"")).unwrap();
    hup();
    let refused = next_line(&mut log, &mut seen, "configuration not reloaded").await;
    assert!(refused.contains("ERROR"), "{refused}");
    next_line(&mut log, &mut seen, "listeners[0].algorithm").await;
    let since = seen
        .iter()
        .rposition(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(
        !seen[since..].iter().any(|l| l.contains("SIGHUP received")),
        "the reloaded level (warn) hides the info line of the next SIGHUP: {seen:#?}"
    );
    let got = common::get(&common::client(), added, "/").await;
    assert_eq!(
        got,
        (200, "a".to_string()),
        "the running configuration stays"
    );

    let (code, metrics) = common::get(&common::client(), admin, "/metrics").await;
    assert_eq!(code, 200);
    for counted in [
        "lb_config_reloads_total{result=\"ok\"} 1",
        "lb_config_reloads_total{result=\"error\"} 1",
    ] {
        assert!(metrics.contains(counted), "no {counted} in:\n{metrics}");
    }
    let (ok, failed) = common::finish(&done, clients).await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running: {seen:#?}"
    );
    drop(log);
    stop(child).await;
}

/// `--log-format json` (here through `LOG_FORMAT`): every line a JSON object a collector can
/// read; values written plainly (no `Some(…)`, milliseconds to three decimals); each
/// migration said once; no colour codes when stderr is not a terminal.
#[tokio::test]
async fn json_logs_are_one_plain_object_a_line_and_each_migration_is_said_once() {
    let db = TestDb::new().await;
    let (_dir, path) = write_config(GOOD);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .arg("--config")
        .arg(&path)
        .env("DATABASE_URL", &db.url)
        .env("LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = read_until(&mut child, &["admin endpoint listening"]).await;
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(
            object["level"].is_string() && object["message"].is_string(),
            "{line}"
        );
        assert!(
            !line.contains("Some(") && !line.contains('\u{1b}'),
            "{line}"
        );
    }
    let synced = lines
        .iter()
        .find(|l| l.contains("ring synced from workers table"))
        .expect("the first sync is logged");
    let synced: serde_json::Value = serde_json::from_str(synced).unwrap();
    let took = synced["took_ms"].as_f64().expect("took_ms is a number");
    assert_eq!(
        (took * 1000.0).round() / 1000.0,
        took,
        "three decimals: {took}"
    );
    assert_eq!(synced["generation"], 1);
    for migration in ["V1__workers", "V2__notify"] {
        let said = lines.iter().filter(|l| l.contains(migration)).count();
        assert_eq!(said, 1, "{migration} said {said} times: {lines:#?}");
    }
    stop(child).await;
}

/// Runs the binary with `args` after `--config <text as a file>`, without DATABASE_URL
/// unless given; (exit code, stdout, stderr).
fn run_command(text: &str, args: &[&str], database_url: Option<&str>) -> (i32, String, String) {
    let (_dir, path) = write_config(text);
    let mut command = Command::new("timeout");
    command
        .args(["20", env!("CARGO_BIN_EXE_load_balancer")])
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_exits_0_when_valid_and_1_with_the_diagnostic() {
    let (code, stdout, _) = run_command(GOOD, &["check-config"], None);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("is valid: 1 listener(s)"), "{stdout}");
    let bad = GOOD.replace("\"weighted\"", "\"fastest\"");
    let (code, _, stderr) = run_command(&bad, &["check-config"], None);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("listeners[0].algorithm") && stderr.contains("config.toml:8:"),
        "{stderr}"
    );
}

#[tokio::test]
async fn migrate_creates_the_schema_and_exits() {
    let db = TestDb::new().await;
    let (code, stdout, stderr) = run_command(GOOD, &["migrate"], Some(&db.url));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("migrations applied"), "{stdout}");
    let n: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM workers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the workers table exists");
    // Again: nothing left to do, still success.
    assert_eq!(run_command(GOOD, &["migrate"], Some(&db.url)).0, 0);
    // A database that does not exist: the startup diagnostic, and a failure.
    let missing = db.url.replace(&db.name, "lb_no_such_db_here");
    let (code, _, stderr) = run_command(GOOD, &["migrate"], Some(&missing));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

/// Log rotation the way logrotate does it: the access log is renamed, SIGHUP sent, and the
/// next line goes to a new file at the configured path — even when the configuration file
/// was broken in the meantime (the reload is refused, the reopen is not).
#[tokio::test]
async fn sighup_reopens_a_rotated_access_log_even_when_the_new_config_is_refused() {
    use tokio::io::AsyncBufReadExt;

    let db = TestDb::new().await;
    let backend = common::Backend::start("a").await;
    let logs = common::TempDir::new("cli");
    let access = logs.0.join("access.log");
    let with_log = GOOD.replace(
        "algorithm = \"weighted\"\n",
        &format!(
            "algorithm = \"weighted\"\naccess_log = \"{}\"\n",
            access.display()
        ),
    );
    let (_dir, path) = write_config(&with_log);
    let mut child = spawn_logging(&path, Some(&db.url), None);
    let mut log: Log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let proxy = address_in(&next_line(&mut log, &mut seen, "protocol=\"http\"").await);
    db.exec(&format!(
        "INSERT INTO workers(worker_address) VALUES ('{}')",
        backend.addr
    ))
    .await;
    next_line(&mut log, &mut seen, "ring change applied").await;
    let lines_in = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(common::get(&common::client(), proxy, "/first").await.0, 200);
    common::eventually_within("the first line written", common::WAIT, async || {
        lines_in(&access).len() == 1
    })
    .await;

    let rotated = logs.0.join("access.log.1");
    std::fs::rename(&access, &rotated).unwrap();
    std::fs::write(&path, with_log.replace("\"weighted\"", "\"fastest\"")).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    next_line(&mut log, &mut seen, "configuration not reloaded").await;
    assert_eq!(
        common::get(&common::client(), proxy, "/second").await.0,
        200
    );
    common::eventually_within("the second line in a new file", common::WAIT, async || {
        lines_in(&access).len() == 1
    })
    .await;
    assert!(
        lines_in(&access)[0].contains("\"/second\""),
        "{:?}",
        lines_in(&access)
    );
    let old = lines_in(&rotated);
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(old[0].contains("\"/first\""), "{old:?}");
    drop(log);
    stop(child).await;
}
