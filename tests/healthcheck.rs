//! `load_balancer healthcheck`: the real binary asking a proxy started in-process (admin on
//! 127.0.0.1:0, its port then written into the healthcheck's config file) for `/readyz`.
//! Exit 0 when ready; otherwise exit 1 and one line that says why, asserted word for word.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;

use common::TestDb;
use load_balancer::config::{AdminConfig, AlgorithmKind, Config, DatabaseConfig, Protocol};

/// A config file in a directory of its own, removed with it.
struct ConfigFile {
    /// Held for its `Drop`: the directory goes with the file.
    _dir: common::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// A valid file whose `[admin]` table is `admin` (none if empty).
    fn new(admin: &str) -> ConfigFile {
        let dir = common::TempDir::new("healthcheck");
        let path = dir.0.join("config.toml");
        let text = format!(
            "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/load_balancer\"\n\n\
             [[listeners]]\nbind = \"127.0.0.1:0\"\n\n{admin}"
        );
        std::fs::write(&path, text).unwrap();
        ConfigFile { _dir: dir, path }
    }

    /// `[admin] bind = "ADDRESS"`, and the token line if any.
    fn admin(bind: &str, token: Option<&str>) -> ConfigFile {
        let token = token.map_or(String::new(), |t| format!("token = \"{t}\"\n"));
        ConfigFile::new(&format!("[admin]\nbind = \"{bind}\"\n{token}"))
    }
}

/// Runs `load_balancer --config PATH healthcheck ARGS`, with `LB_ADMIN_TOKEN` set to
/// `token` (unset when `None`) and no other override from the test's environment.
async fn healthcheck(config: &std::path::Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_load_balancer"));
    command
        .arg("--config")
        .arg(config)
        .arg("healthcheck")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("LB_ADMIN_TOKEN")
        .env_remove("LB_STICKY_SECRET")
        .env("NO_COLOR", "1");
    if let Some(t) = token {
        command.env("LB_ADMIN_TOKEN", t);
    }
    // The bound: TIMEOUT (2 s) plus a start; a hung check fails here, not in CI's timeout.
    tokio::time::timeout(common::WAIT, command.output())
        .await
        .expect("healthcheck ends within the bound")
        .unwrap()
}

/// Asserts exit 1 and exactly `line` on stderr.
fn assert_fails_with(out: &Output, line: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr, format!("{line}\n"));
}

/// Asserts exit 0 and the one line that says so.
fn assert_ready(out: &Output, admin: SocketAddr) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!("ready: http://{admin}/readyz answered 200\n")
    );
}

/// A proxy with an HTTP listener and the admin endpoint on 127.0.0.1:0, on `url`.
async fn start(url: String, token: Option<&str>) -> load_balancer::Running {
    let config = Config {
        database: DatabaseConfig::new(url),
        listeners: vec![load_balancer::config::ListenerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Protocol::Http,
            "default",
            AlgorithmKind::Weighted,
        )],
        admin: Some(AdminConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            token: token.map(str::to_string),
        }),
        pools: Default::default(),
        status: Default::default(),
        log: Default::default(),
    };
    load_balancer::start(&config).await.expect("proxy starts")
}

/// A port that was just free: nothing listens there.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_proxy_exits_0() {
    let db = TestDb::new().await;
    let running = start(db.url.clone(), None).await;
    let admin = running.admin.unwrap();
    let config = ConfigFile::admin(&admin.to_string(), None);
    assert_ready(&healthcheck(&config.path, None, &[]).await, admin);

    // --url needs no config file at all.
    let url = format!("http://{admin}/readyz");
    let out = healthcheck(
        std::path::Path::new("/nonexistent/lb.toml"),
        None,
        &["--url", &url],
    )
    .await;
    assert_ready(&out, admin);
    running.stop(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_without_a_ring_is_not_ready() {
    // The proxy starts while its database does not answer, and serves 503 until it does.
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/load_balancer",
        free_port()
    );
    let running = start(url, None).await;
    let admin = running.admin.unwrap();
    let config = ConfigFile::admin(&admin.to_string(), None);
    let out = healthcheck(&config.path, None, &[]).await;
    assert_fails_with(
        &out,
        &format!(
            "error: http://{admin}/readyz answered 503: not ready: no ring loaded yet (the database has not answered)"
        ),
    );
    running.stop(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_comes_from_lb_admin_token_or_the_file() {
    let db = TestDb::new().await;
    let running = start(db.url.clone(), Some("s3cret-token")).await;
    let admin = running.admin.unwrap();
    let port = admin.port();

    let without = ConfigFile::admin(&admin.to_string(), None);
    let out = healthcheck(&without.path, None, &[]).await;
    assert_fails_with(
        &out,
        &format!(
            "error: http://{admin}/readyz answered 401: a token is required; set LB_ADMIN_TOKEN (or [admin] token)"
        ),
    );
    let out = healthcheck(&without.path, Some("wrong"), &[]).await;
    assert_fails_with(
        &out,
        &format!(
            "error: http://{admin}/readyz answered 401: the token was refused; check LB_ADMIN_TOKEN or [admin] token"
        ),
    );
    assert_ready(
        &healthcheck(&without.path, Some("s3cret-token"), &[]).await,
        admin,
    );

    // The file's token; and a bind on every interface (which needs one) is asked on
    // 127.0.0.1.
    let with = ConfigFile::admin(&format!("0.0.0.0:{port}"), Some("s3cret-token"));
    assert_ready(&healthcheck(&with.path, None, &[]).await, admin);
    // LB_ADMIN_TOKEN wins over the file's.
    let out = healthcheck(&with.path, Some("wrong"), &[]).await;
    assert_fails_with(
        &out,
        &format!(
            "error: http://{admin}/readyz answered 401: the token was refused; check LB_ADMIN_TOKEN or [admin] token"
        ),
    );
    running.stop(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn nothing_listening_is_connection_refused() {
    let port = free_port();
    let config = ConfigFile::admin(&format!("127.0.0.1:{port}"), None);
    let out = healthcheck(&config.path, None, &[]).await;
    assert_fails_with(
        &out,
        &format!(
            "error: nothing accepts connections at 127.0.0.1:{port} (connection refused): is the proxy running?"
        ),
    );
}

#[tokio::test]
async fn a_silent_endpoint_times_out_after_2s() {
    // Accepts and never answers, as a hung process would.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let config = ConfigFile::admin(&address.to_string(), None);
    let started = std::time::Instant::now();
    let out = healthcheck(&config.path, None, &[]).await;
    assert_fails_with(
        &out,
        &format!("error: no answer from http://{address}/readyz within 2s"),
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    hold.abort();
}

#[tokio::test]
async fn a_config_without_admin_says_so() {
    let config = ConfigFile::new("");
    let out = healthcheck(&config.path, None, &[]).await;
    assert_fails_with(
        &out,
        &format!(
            "error: healthcheck needs [admin] in {}: the proxy answers /readyz only on its admin endpoint (or pass --url)",
            config.path.display()
        ),
    );
}

#[tokio::test]
async fn a_bad_url_is_refused() {
    let config = ConfigFile::new("");
    let out = healthcheck(
        &config.path,
        None,
        &["--url", "https://127.0.0.1:9901/readyz"],
    )
    .await;
    assert_fails_with(
        &out,
        "error: --url \"https://127.0.0.1:9901/readyz\": https is not supported: the admin endpoint speaks plain HTTP",
    );
}
