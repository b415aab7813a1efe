//! `load_balancer demo`, as a new user would run it: the real binary against a database it
//! must create, its printed instructions followed to the letter (the curl address, the
//! reweight and drain SQL, the admin /status), then Ctrl-C, which must leave the rows.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{WAIT, client, connect, get, server_url, tally};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Drops the demo's database (and its connections) however the test ends.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        common::drop_database(&self.0);
    }
}

/// What the demo printed, picked out of its instructions.
struct Printed {
    proxy: SocketAddr,
    admin: SocketAddr,
    /// The `psql` URL of both SQL lines.
    url: String,
    reweight: String,
    drain: String,
    lines: Vec<String>,
}

/// Reads stdout until the last instruction; fails with everything seen if it does not come
/// within [`WAIT`] (or the process exits first).
async fn read_instructions(child: &mut Child, stdout: &mut BufReader<ChildStdout>) -> Printed {
    let mut lines = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line).await.unwrap() == 0 {
                return false;
            }
            lines.push(line.trim_end().to_string());
            if line.starts_with("Ctrl-C stops the demo") {
                return true;
            }
        }
    })
    .await;
    if read != Ok(true) {
        let _ = child.start_kill();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut stderr)).await;
        }
        panic!(
            "no instructions within {WAIT:?} (timed out: {}); stdout:\n{}\nstderr:\n{stderr}",
            read.is_err(),
            lines.join("\n")
        );
    }
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
            .trim()
            .to_string()
    };
    // `  while true; do curl -s localhost:PORT/; sleep 0.2; done`
    let port = |line: &str, after: &str, before: &str| -> u16 {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest[..rest.find(before).unwrap()].parse().unwrap()
    };
    let watch = find("while true; do curl -s localhost:");
    let proxy = SocketAddr::from(([127, 0, 0, 1], port(&watch, "localhost:", "/")));
    let status = find("/status");
    let admin = SocketAddr::from(([127, 0, 0, 1], port(&status, "localhost:", "/status")));
    // `psql 'URL' -c "SQL"`
    let psql = |line: &str| -> (String, String) {
        let url = line
            .strip_prefix("psql '")
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        let sql = &line[line.find("-c \"").unwrap() + 4..line.len() - 1];
        (url.to_string(), sql.to_string())
    };
    let (url, reweight) = psql(&find("SET weight = 3"));
    let (drain_url, drain) = psql(&find("SET weight = 0"));
    assert_eq!(url, drain_url);
    Printed {
        proxy,
        admin,
        url,
        reweight,
        drain,
        lines,
    }
}

/// The weight `/status` shows for the worker at `address`.
async fn weight_in_status(admin: SocketAddr, address: &str) -> Option<u64> {
    let (code, body) = get(&client(), admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    common::worker_status(&status, address)["weight"].as_u64()
}

/// Polls `/status` until the worker at `address` has `weight` in the proxy's ring.
async fn wait_for_weight(admin: SocketAddr, address: &str, weight: u64) {
    common::eventually_within(
        &format!("{address} at weight {weight} in /status"),
        WAIT,
        async || weight_in_status(admin, address).await == Some(weight),
    )
    .await;
}

/// The address in `UPDATE workers SET weight = N WHERE worker_address = 'ADDR'`.
fn address_of(sql: &str) -> String {
    sql.rsplit('\'').nth(1).unwrap().to_string()
}

fn counts(tally: &HashMap<String, usize>) -> [usize; 3] {
    ["demo-1\n", "demo-2\n", "demo-3\n"].map(|n| tally.get(n).copied().unwrap_or(0))
}

/// Starts `load_balancer demo` on free ports with `DATABASE_URL=url` and no config file.
fn spawn_demo(url: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        // Where nothing is: the demo must not need a config file.
        .args(["--config", "/nonexistent/demo-config.toml"])
        .env("DATABASE_URL", url)
        .env_remove("LB_ADMIN_TOKEN")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// Ctrl-C (SIGINT): the demo stops cleanly, exit 0, within [`WAIT`], and says the rows stay.
async fn interrupt(child: &mut Child, stdout: &mut BufReader<ChildStdout>) {
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the demo exits within the bound after SIGINT")
        .unwrap();
    assert!(status.success(), "exit status after SIGINT: {status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert!(
        rest.contains("demo stopped; its rows stay in workers"),
        "{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_follows_sql_and_stops_leaving_its_rows() {
    let name = format!("lb_demo_{}_{}", std::process::id(), common::rand_suffix());
    let url = format!("{}/{name}", server_url());
    let _drop = DropDatabase(name.clone());

    let (mut child, mut stdout) = spawn_demo(&url);
    let printed = read_instructions(&mut child, &mut stdout).await;
    assert_eq!(printed.url, url, "the psql lines name the demo's database");
    assert!(
        printed.reweight.starts_with(
            "UPDATE workers SET weight = 3 WHERE pool = 'demo' AND worker_address = '127.0.0.1:"
        ),
        "{}",
        printed.reweight
    );
    assert!(
        printed
            .lines
            .iter()
            .any(|l| l.contains("demo-1 on 127.0.0.1:")),
        "{}",
        printed.lines.join("\n")
    );

    // Weight 1 each, weighted round robin from one client: exactly a third each.
    let c = client();
    let split = counts(&tally(&c, printed.proxy, 30).await);
    assert_eq!(split, [10, 10, 10], "30 requests at weights 1:1:1");

    // The printed reweight, as printed (psql would send the same text).
    let db = connect(&printed.url).await;
    assert_eq!(db.execute(printed.reweight.as_str(), &[]).await.unwrap(), 1);
    wait_for_weight(printed.admin, &address_of(&printed.reweight), 3).await;
    // Smooth weighted round robin repeats a period of 5 (A B A C A): 30 requests are six.
    let split = counts(&tally(&c, printed.proxy, 30).await);
    assert_eq!(split, [18, 6, 6], "30 requests at weights 3:1:1");

    assert_eq!(db.execute(printed.drain.as_str(), &[]).await.unwrap(), 1);
    wait_for_weight(printed.admin, &address_of(&printed.drain), 0).await;
    let split = counts(&tally(&c, printed.proxy, 40).await);
    assert_eq!(
        split,
        [30, 0, 10],
        "40 requests at weights 3:0:1, demo-2 drained"
    );

    interrupt(&mut child, &mut stdout).await;

    // The rows stay, as the SQL left them.
    let rows: Vec<(String, i32)> = db
        .query(
            "SELECT w.worker_address, w.weight FROM workers w
             JOIN demo_workers d ON d.worker_id = w.id ORDER BY w.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let weights: Vec<i32> = rows.iter().map(|r| r.1).collect();
    assert_eq!(weights, [3, 0, 1], "{rows:?}");
    assert_eq!(rows[0].0, address_of(&printed.reweight));
    assert_eq!(rows[1].0, address_of(&printed.drain));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_demo_replaces_only_the_rows_of_a_demo_that_is_gone() {
    let name = format!("lb_demo_{}_{}", std::process::id(), common::rand_suffix());
    let url = format!("{}/{name}", server_url());
    let _drop = DropDatabase(name.clone());

    let (mut first, mut stdout) = spawn_demo(&url);
    let first_printed = read_instructions(&mut first, &mut stdout).await;
    interrupt(&mut first, &mut stdout).await;
    let db = connect(&url).await;
    // A user's row in the same pool and on 127.0.0.1, whose backend does not run either:
    // it must survive, dead or not, because the demo did not add it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    db.execute(
        "INSERT INTO workers (worker_address, pool) VALUES ($1, 'demo')",
        &[&dead.to_string()],
    )
    .await
    .unwrap();

    let (mut second, mut stdout) = spawn_demo(&url);
    let printed = read_instructions(&mut second, &mut stdout).await;
    let text = printed.lines.join("\n");
    assert!(
        text.contains("(3 row(s) of an earlier demo, whose backends were gone, were replaced.)"),
        "{text}"
    );
    assert!(
        text.contains("(Pool \"demo\" has 1 other row(s), not the demo's: they get their share too. SELECT * FROM workers shows them.)"),
        "{text}"
    );
    let addresses: Vec<String> = db
        .query("SELECT worker_address FROM workers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(addresses.len(), 4, "{addresses:?}");
    assert_eq!(addresses[0], dead.to_string(), "the user's row stays");
    assert!(
        !addresses.contains(&address_of(&first_printed.reweight)),
        "the first demo's rows are gone: {addresses:?}"
    );
    assert_eq!(addresses[1], address_of(&printed.reweight));
    interrupt(&mut second, &mut stdout).await;
}

#[test]
fn an_unreachable_server_is_one_line_and_exit_1() {
    // A port that was just free: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/lb_demo"),
        )
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: PostgreSQL at 127.0.0.1:{port} does not answer: error connecting to server: Connection refused (os error 111); start PostgreSQL, or fix the host and port in [database] url or DATABASE_URL\n"
        )
    );
    assert!(out.stdout.is_empty(), "nothing to try: no instructions");
}
