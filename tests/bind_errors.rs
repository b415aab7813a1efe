//! An address that cannot be bound stops the binary with one diagnostic that says which
//! entry of the configuration asked for it (`[[listeners]] #2 (listeners[1], name
//! "public")`, or `[admin]`), the address, the OS's reason once, and the key to change in
//! the file actually given with `--config`. The bind comes before the database is touched.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{TempDir, TestDb};
use load_balancer::config::{AlgorithmKind, Config, ListenerConfig, Protocol};
use load_balancer::reload::ReloadError;

/// A port this test holds, so binding it again fails; and what the OS says then, exactly.
fn occupied() -> (TcpListener, SocketAddr, String) {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap();
    let cause = TcpListener::bind(address)
        .expect_err("the port is held")
        .to_string();
    (held, address, cause)
}

/// Runs the proxy on `text`, written to `proxy-edge.toml` (not `config.toml`, so a help
/// that names the default file cannot pass); killed after 20 s if it does not exit.
fn serve(dir: &TempDir, text: &str) -> (PathBuf, Output) {
    let path = dir.0.join("proxy-edge.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_load_balancer")])
        .arg("--config")
        .arg(&path)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (path, out)
}

/// The line of `stderr` that holds `needle`, from it on (miette puts a marker before it).
fn line_from<'a>(stderr: &'a str, needle: &str) -> &'a str {
    let line = stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stderr}"));
    &line[line.find(needle).unwrap()..]
}

/// What a failed start on an occupied address must look like: exit 1; the line that says
/// which entry (`what`), the address and the OS's `cause`; the help naming `key` and the
/// file given, not the default `config.toml`; the cause once; and the database untouched
/// (no migration ran: `workers` does not exist).
struct Expected<'a> {
    address: SocketAddr,
    cause: &'a str,
    what: &'a str,
    key: &'a str,
}

async fn assert_bind_failure(db: &TestDb, path: &Path, out: &Output, expected: Expected<'_>) {
    let Expected {
        address,
        cause,
        what,
        key,
    } = expected;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(
        line_from(&stderr, "cannot listen"),
        format!("cannot listen on {address} for {what}: {cause}"),
        "stderr:\n{stderr}"
    );
    assert_eq!(
        line_from(&stderr, "help:"),
        format!(
            "help: another process holds this address (`ss -ltnp 'sport = :{}'` shows which): stop it, or change `{key}` in {}",
            address.port(),
            path.display()
        ),
        "stderr:\n{stderr}"
    );
    assert_eq!(stderr.matches(cause).count(), 1, "stderr:\n{stderr}");
    assert!(!stderr.contains("config.toml"), "stderr:\n{stderr}");
    let migrated = db
        .client()
        .await
        .query_one("SELECT to_regclass('workers') IS NOT NULL", &[])
        .await
        .unwrap()
        .get::<_, bool>(0);
    assert!(!migrated, "the database was touched before the bind failed");
}

#[tokio::test]
async fn a_taken_listener_address_names_the_listener_and_the_file_given() {
    let db = TestDb::new().await;
    let (_held, taken, cause) = occupied();
    let dir = TempDir::new("bind-errors");
    let text = format!(
        r#"[database]
url = "{url}"

[[listeners]]
bind = "127.0.0.1:0"

[[listeners]]
name = "public"
bind = "{taken}"

[admin]
bind = "127.0.0.1:0"
"#,
        url = db.url
    );
    let (path, out) = serve(&dir, &text);
    let expected = Expected {
        address: taken,
        cause: &cause,
        what: r#"[[listeners]] #2 (listeners[1], name "public")"#,
        key: "listeners[1].bind",
    };
    assert_bind_failure(&db, &path, &out, expected).await;
}

#[tokio::test]
async fn a_taken_admin_address_names_admin() {
    let db = TestDb::new().await;
    let (_held, taken, cause) = occupied();
    let dir = TempDir::new("bind-errors");
    let text = format!(
        r#"[database]
url = "{url}"

[[listeners]]
bind = "127.0.0.1:0"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[admin]
bind = "{taken}"
"#,
        url = db.url
    );
    let (path, out) = serve(&dir, &text);
    let expected = Expected {
        address: taken,
        cause: &cause,
        what: "[admin]",
        key: "admin.bind",
    };
    assert_bind_failure(&db, &path, &out, expected).await;
}

/// A reload that adds a taken address says the same, once, and `in_file` names the file.
#[tokio::test]
async fn a_reload_to_a_taken_address_names_the_listener_once() {
    let db = TestDb::new().await;
    let config = common::config(&db, Protocol::Http, AlgorithmKind::RoundRobin);
    let mut running = load_balancer::start(&config).await.expect("proxy starts");
    let (_held, taken, cause) = occupied();
    let mut added = ListenerConfig::new(taken, Protocol::Http, "default", AlgorithmKind::Weighted);
    added.name = Some("extra".to_string());
    let mut listeners = config.listeners.clone();
    listeners[0].bind = running.listeners[0];
    listeners.push(added);
    let new = Config {
        listeners,
        ..config.clone()
    };
    let err = running
        .reload(new, std::time::Duration::from_secs(1))
        .await
        .expect_err("a taken address fails the reload");
    assert!(matches!(err, ReloadError::Bind(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            r#"configuration not reloaded: cannot listen on {taken} for [[listeners]] #2 (listeners[1], name "extra"): {cause}"#
        )
    );
    assert!(std::error::Error::source(&err).is_none(), "{err:?}");
    let err = err.in_file(Path::new("/etc/lb/edge.toml"));
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(
        help.ends_with("change `listeners[1].bind` in /etc/lb/edge.toml"),
        "{help}"
    );
    // As the binary logs a failed reload: one event, the causes rendered, no wrapping.
    let mut report = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(usize::MAX)
        .render_report(&mut report, &err)
        .unwrap();
    assert_eq!(report.matches(&cause).count(), 1, "{report}");
    running.stop(std::time::Duration::from_secs(1)).await;
}
