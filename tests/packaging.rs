//! Packaging: the container image, the compose stack, the systemd unit and the crate's
//! metadata. No Docker engine is needed. The files are checked against their own tools
//! (the Compose specification's JSON schema, systemd-analyze, systemd-sysusers) and as
//! text; what the container does is exercised outside it, with the real binary, the real
//! docker/config.toml and the environment the compose file gives it; the seed step's
//! script runs against the local PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Backend, TempDir, TestDb, WAIT};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// The proxy's drain deadline after SIGTERM (`SHUTDOWN_GRACE` in src/main.rs).
const DRAIN: Duration = Duration::from_secs(30);

/// The healthcheck both the Dockerfile and the compose file run, in exec form.
const HEALTHCHECK: [&str; 4] = [
    "load_balancer",
    "--config",
    "/etc/load_balancer/config.toml",
    "healthcheck",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command`, panicking with `what` (what to install) if it cannot be started.
fn run(command: &mut Command, what: &str) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} ({e}): {what}"))
}

// ---------------------------------------------------------------------------------------
// The compose file
// ---------------------------------------------------------------------------------------

const NO_CHECK_JSONSCHEMA: &str =
    "needs check-jsonschema: python3 -m pip install check-jsonschema (as .ci/run does)";

/// docker-compose.yml as JSON, read by ruamel.yaml (check-jsonschema's own YAML parser, so
/// it is there whenever the schema test can run).
fn compose() -> Value {
    let out = run(
        Command::new("python3")
            .arg("-c")
            .arg(
                "import json, sys\n\
                 from ruamel.yaml import YAML\n\
                 print(json.dumps(YAML(typ='safe', pure=True).load(open(sys.argv[1]))))",
            )
            .arg(repo().join("docker-compose.yml")),
        NO_CHECK_JSONSCHEMA,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(s.is_object(), "no service {name:?} in docker-compose.yml");
    s
}

/// `python3 -m check_jsonschema --builtin-schema vendor.compose-spec FILE`.
fn validate_compose(file: &Path) -> Output {
    run(
        Command::new("python3")
            .args([
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
            ])
            .arg(file),
        NO_CHECK_JSONSCHEMA,
    )
}

#[test]
fn compose_file_validates_against_the_compose_specification() {
    let out = validate_compose(&repo().join("docker-compose.yml"));
    assert!(
        out.status.success(),
        "docker-compose.yml does not validate:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The schema does check: a misspelt key is refused.
    let dir = TempDir::new("compose");
    let misspelt = read("docker-compose.yml").replace("stop_grace_period:", "stop_grace_perod:");
    let file = dir.0.join("docker-compose.yml");
    std::fs::write(&file, misspelt).unwrap();
    let out = validate_compose(&file);
    assert!(
        !out.status.success(),
        "a misspelt key passed the schema:\n{}",
        text(&out.stdout)
    );
}

/// One published port: the host address (None: every interface), the host port (None: an
/// ephemeral one) and the container port.
#[derive(Debug)]
struct Published {
    host_ip: Option<String>,
    host_port: Option<String>,
    target: String,
}

/// A `ports` entry, in the short ("[IP:][HOST:]CONTAINER[/PROTO]") or the long syntax.
fn published(entry: &Value) -> Published {
    match entry {
        Value::Object(long) => Published {
            host_ip: long
                .get("host_ip")
                .and_then(Value::as_str)
                .map(String::from),
            host_port: long.get("published").map(|p| match p {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            target: long["target"].to_string(),
        },
        Value::String(short) => {
            let short = short.split('/').next().unwrap();
            let (ip, rest) = match short.strip_prefix('[') {
                Some(v6) => {
                    let (ip, rest) = v6.split_once("]:").expect("[IPv6]:...");
                    (Some(ip.to_string()), rest.to_string())
                }
                None => match short.matches(':').count() {
                    2 => {
                        let (ip, rest) = short.split_once(':').unwrap();
                        (Some(ip.to_string()), rest.to_string())
                    }
                    _ => (None, short.to_string()),
                },
            };
            let (host, target) = match rest.split_once(':') {
                Some((h, t)) => (Some(h.to_string()), t.to_string()),
                None => (None, rest),
            };
            Published {
                host_ip: ip,
                host_port: host,
                target,
            }
        }
        // A bare number: that container port, on every interface.
        other => Published {
            host_ip: None,
            host_port: None,
            target: other.to_string(),
        },
    }
}

#[test]
fn compose_publishes_on_loopback_only_and_never_on_the_hosts_5432() {
    let compose = compose();
    let mut seen = Vec::new();
    for (name, service) in compose["services"].as_object().unwrap() {
        for entry in service["ports"].as_array().into_iter().flatten() {
            let p = published(entry);
            assert_eq!(
                p.host_ip.as_deref(),
                Some("127.0.0.1"),
                "{name} publishes {entry} beyond the host's loopback"
            );
            if name == "db" {
                assert_ne!(
                    p.host_port.as_deref(),
                    Some("5432"),
                    "db takes the host's 5432, which a local PostgreSQL (README, tests) needs"
                );
            }
            seen.push(format!(
                "{name} {}->{}",
                p.host_port.unwrap_or_default(),
                p.target
            ));
        }
    }
    for wanted in ["load_balancer 8080->8080", "load_balancer 9901->9901"] {
        assert!(seen.iter().any(|s| s == wanted), "{wanted} in {seen:?}");
    }
}

#[test]
fn compose_keeps_postgres_data_in_a_named_volume() {
    let compose = compose();
    let named: Vec<&String> = compose["volumes"]
        .as_object()
        .expect("a top-level `volumes`")
        .keys()
        .collect();
    let db = service(&compose, "db");
    let data = db["volumes"]
        .as_array()
        .expect("db has volumes")
        .iter()
        .find_map(|v| match v {
            Value::String(short) => {
                let mut parts = short.split(':');
                let (source, target) = (parts.next()?, parts.next()?);
                (target == "/var/lib/postgresql/data").then(|| source.to_string())
            }
            Value::Object(long) => (long["target"] == "/var/lib/postgresql/data"
                && long.get("type").is_none_or(|t| t == "volume"))
            .then(|| long["source"].as_str().unwrap_or_default().to_string()),
            _ => None,
        })
        .expect("db mounts something on /var/lib/postgresql/data");
    assert!(
        named.iter().any(|n| **n == data),
        "{data:?} is not a named volume of {named:?}"
    );
}

/// A compose or systemd duration: "40s", "1m30s", "1min", "90" (seconds).
fn duration(text: &str) -> Duration {
    let mut total = 0u64;
    let mut number = String::new();
    let mut unit = String::new();
    let mut flush = |number: &mut String, unit: &mut String| {
        if number.is_empty() {
            return;
        }
        let n: u64 = number.parse().unwrap();
        total += match unit.as_str() {
            "" | "s" | "sec" => n,
            "m" | "min" => n * 60,
            "h" => n * 3600,
            "ms" => 0,
            other => panic!("unit {other:?} in {text:?}"),
        };
        number.clear();
        unit.clear();
    };
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            if !unit.is_empty() {
                flush(&mut number, &mut unit);
            }
            number.push(c);
        } else if !c.is_whitespace() {
            unit.push(c);
        }
    }
    flush(&mut number, &mut unit);
    Duration::from_secs(total)
}

#[test]
fn durations_parse() {
    assert_eq!(duration("40s"), Duration::from_secs(40));
    assert_eq!(duration("1m30s"), Duration::from_secs(90));
    assert_eq!(duration("1min"), Duration::from_secs(60));
    assert_eq!(duration("45"), Duration::from_secs(45));
}

#[test]
fn compose_proxy_is_health_checked_and_drains_before_it_is_killed() {
    let compose = compose();
    let lb = service(&compose, "load_balancer");
    let test: Vec<&str> = lb["healthcheck"]["test"]
        .as_array()
        .expect("load_balancer has a healthcheck")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(test[0], "CMD", "exec form: no shell in the image is needed");
    assert_eq!(test[1..], HEALTHCHECK);
    let grace = duration(
        lb["stop_grace_period"]
            .as_str()
            .expect("load_balancer sets stop_grace_period"),
    );
    assert!(
        grace >= DRAIN + Duration::from_secs(5),
        "stop_grace_period {grace:?} does not outlast the {DRAIN:?} drain"
    );
    if let Some(signal) = lb.get("stop_signal") {
        assert_eq!(signal, "SIGTERM");
    }
    assert_eq!(
        lb["depends_on"]["db"]["condition"], "service_healthy",
        "the proxy starts once PostgreSQL answers"
    );
    assert!(
        lb["environment"]["LB_ADMIN_TOKEN"].is_string(),
        "the admin endpoint listens on 0.0.0.0 in the container: it needs LB_ADMIN_TOKEN"
    );
}

/// A tag or digest that names one build: a digest, a full version (1.95.0; for PostgreSQL,
/// whose versions have two numbers since 10, major.minor, e.g. 15.18) or a date
/// (bookworm-20260824-slim); never `latest`, a bare major like `rust:1` or a minor that
/// floats like `python:3.12`.
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let name_end = image.rfind('/').map_or(0, |i| i + 1);
    let Some((name, tag)) = image[name_end..].split_once(':') else {
        return false;
    };
    tag != "latest"
        && tag.split('-').any(|piece| {
            let numbers: Vec<&str> = piece.split('.').collect();
            let numeric = numbers
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            numeric
                && (numbers.len() == 3
                    || (numbers.len() == 2 && name == "postgres")
                    || (numbers.len() == 1 && piece.len() == 8))
        })
}

#[test]
fn pinning_rules() {
    for fixed in [
        "rust:1.95.0-slim-bookworm",
        "debian:bookworm-20260824-slim",
        "postgres:15.18-bookworm",
        "python:3.12.12-alpine3.22",
        "debian@sha256:88a7d30d49e1d13f0aac17b0e5fb9e291717e3a7c4a512fe56636db576383b8a",
    ] {
        assert!(pinned(fixed), "{fixed}");
    }
    for floating in [
        "rust:1",
        "rust:1-bookworm",
        "rust:1.95-slim-bookworm",
        "rust:latest",
        "rust",
        "debian:bookworm-slim",
        "postgres:15",
        "python:3.12-alpine",
        "localhost:5000/rust",
    ] {
        assert!(!pinned(floating), "{floating}");
    }
}

#[test]
fn compose_images_are_pinned() {
    let compose = compose();
    for (name, service) in compose["services"].as_object().unwrap() {
        match service["image"].as_str() {
            Some(image) => assert!(pinned(image), "{name}: {image} is not pinned"),
            None => assert!(service.get("build").is_some(), "{name}: no image, no build"),
        }
    }
}

#[test]
fn compose_seed_step_is_bounded_and_runs_the_tested_script() {
    let compose = compose();
    let seed = service(&compose, "seed");
    let timeout: u64 = seed["environment"]["SEED_TIMEOUT"]
        .as_str()
        .expect("SEED_TIMEOUT set")
        .parse()
        .unwrap();
    assert!((10..=300).contains(&timeout), "SEED_TIMEOUT {timeout}");
    let entrypoint = seed["entrypoint"].to_string();
    assert!(entrypoint.contains("seed.sh"), "{entrypoint}");
    let mounts: Vec<&str> = seed["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for file in ["docker/seed.sh", "docker/seed.sql"] {
        assert!(
            mounts.iter().any(|m| m.starts_with(&format!("./{file}:"))),
            "{file} is not mounted: {mounts:?}"
        );
        assert!(repo().join(file).exists(), "{file}");
    }
    let sql = seed["environment"]["SEED_SQL"].as_str().unwrap();
    assert!(
        mounts.iter().any(|m| m.split(':').nth(1) == Some(sql)),
        "SEED_SQL {sql} is not where seed.sql is mounted: {mounts:?}"
    );
    assert!(
        seed.get("restart").is_none_or(|r| r == "no"),
        "a one-shot step is not restarted"
    );
}

/// `sh docker/seed.sh` against `url`, with SEED_TIMEOUT=2.
async fn seed(url: &str) -> (Output, Duration) {
    let started = Instant::now();
    let out = tokio::process::Command::new("timeout")
        .args(["30", "sh"])
        .arg(repo().join("docker/seed.sh"))
        .env("DATABASE_URL", url)
        .env("SEED_TIMEOUT", "2")
        .env("SEED_SQL", repo().join("docker/seed.sql"))
        .output()
        .await
        .expect("sh and psql (the postgresql-client package)");
    (out, started.elapsed())
}

#[tokio::test]
async fn seed_script_gives_up_clearly_then_seeds_once_the_table_exists() {
    let db = TestDb::new().await;
    // No proxy has migrated this database: the table never appears.
    let (out, took) = seed(&db.url).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
    assert!(
        stderr.contains("gave up after 2s: the workers table never appeared"),
        "{stderr}"
    );
    assert!(
        stderr.contains("docker compose logs load_balancer"),
        "{stderr}"
    );

    // What the proxy does at startup.
    let migrated = tokio::process::Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .unwrap();
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    for round in ["first", "second (idempotent)"] {
        let (out, _) = seed(&db.url).await;
        assert!(
            out.status.success(),
            "{round} run: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let rows: Vec<(String, i32)> = db
            .client()
            .await
            .query(
                "SELECT worker_address, weight FROM workers ORDER BY worker_address",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            rows,
            [
                ("backend-1:8000".to_string(), 3),
                ("backend-2:8000".to_string(), 1),
                ("backend-3:8000".to_string(), 1),
            ],
            "{round} run"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The Dockerfile
// ---------------------------------------------------------------------------------------

/// One Dockerfile instruction: its keyword (upper case) and arguments, continuation lines
/// joined and comment lines dropped (as Docker does).
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match line.strip_suffix('\\') {
            Some(body) => (body.trim(), true),
            None => (line, false),
        };
        let joined = match current.take() {
            Some(before) => format!("{before} {body}"),
            None => body.to_string(),
        };
        if continues {
            current = Some(joined);
        } else {
            let (keyword, args) = joined
                .split_once(char::is_whitespace)
                .unwrap_or((&joined, ""));
            out.push(Instruction {
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_string(),
            });
        }
    }
    assert!(
        current.is_none(),
        "the Dockerfile ends inside a continuation"
    );
    out
}

/// The instructions of the last stage (the image that runs).
fn final_stage(all: &[Instruction]) -> &[Instruction] {
    let from = all.iter().rposition(|i| i.keyword == "FROM").unwrap();
    &all[from..]
}

/// An exec-form argument list (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form ({e}): {args}"))
}

fn version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap());
    (
        parts.next().unwrap(),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn cargo_toml() -> toml::Table {
    read("Cargo.toml").parse().unwrap()
}

#[test]
fn dockerfile_pins_its_base_images_at_or_above_the_crates_rust_version() {
    let all = dockerfile();
    let froms: Vec<&str> = all
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| i.args.split_whitespace().next().unwrap())
        .collect();
    assert!(
        froms.len() >= 2,
        "a build stage and a runtime stage: {froms:?}"
    );
    for image in &froms {
        assert!(pinned(image), "{image} is not pinned to one build");
    }
    let rust = froms
        .iter()
        .find_map(|i| i.strip_prefix("rust:"))
        .expect("a rust: build stage");
    let toolchain = version(rust.split('-').next().unwrap());
    let msrv = cargo_toml()["package"]["rust-version"]
        .as_str()
        .expect("rust-version in Cargo.toml")
        .to_string();
    assert!(
        toolchain >= version(&msrv),
        "the image builds with {rust}, older than rust-version {msrv}"
    );
    let runtime = froms.last().unwrap();
    assert!(
        runtime.starts_with("debian:bookworm-"),
        "the runtime's glibc matches the bookworm build stage: {runtime}"
    );
}

#[test]
fn dockerfile_builds_dependencies_in_a_layer_before_the_sources() {
    let all = dockerfile();
    let position = |what: &dyn Fn(&Instruction) -> bool, name: &str| {
        all.iter()
            .position(what)
            .unwrap_or_else(|| panic!("no {name} in the Dockerfile"))
    };
    let lock = position(
        &|i| i.keyword == "COPY" && i.args.contains("Cargo.lock"),
        "COPY of Cargo.lock",
    );
    let sources = position(
        &|i| i.keyword == "COPY" && i.args.split_whitespace().next() == Some("src"),
        "COPY src",
    );
    assert!(lock < sources, "Cargo.lock must be copied before src/");
    let deps_build = all[lock..sources]
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("a cargo build between Cargo.lock and src/: the dependency layer");
    assert!(deps_build.args.contains("--locked"), "{}", deps_build.args);
    assert!(
        deps_build.args.contains("stub-targets.sh"),
        "{}",
        deps_build.args
    );
    let real_build = all[sources..]
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("the build of the real sources");
    assert!(
        real_build.args.contains("touch src/main.rs src/lib.rs"),
        "the stub's build must not be taken for the real one: {}",
        real_build.args
    );
    // Everything the build copies is in the build context: present, and not ignored.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for must in ["target", ".git"] {
        assert!(ignored.iter().any(|i| i == must), ".dockerignore: {must}");
    }
    for copy in all.iter().filter(|i| i.keyword == "COPY") {
        if copy.args.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(repo().join(source).exists(), "COPY {source}: no such file");
            assert!(
                !ignored.iter().any(|i| source.starts_with(i.as_str())),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }
}

#[test]
fn dockerfile_runs_unprivileged_with_a_healthcheck_and_a_draining_stop() {
    let all = dockerfile();
    let image = final_stage(&all);
    let find = |keyword: &str| {
        image
            .iter()
            .rfind(|i| i.keyword == keyword)
            .unwrap_or_else(|| panic!("no {keyword} in the runtime stage"))
    };
    let user = find("USER").args.split(':').next().unwrap().to_string();
    assert!(user != "root" && user != "0", "USER {user}");
    let healthcheck = &find("HEALTHCHECK").args;
    let command = healthcheck
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD [...]")
        .1;
    assert_eq!(exec_form(command), HEALTHCHECK);
    assert_eq!(find("STOPSIGNAL").args, "SIGTERM");
    assert!(
        image
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.contains("ca-certificates")),
        "TLS to workers and PostgreSQL needs the system's roots"
    );

    // The config the entrypoint and the healthcheck read is the one copied in, and EXPOSE
    // names the ports it binds.
    let entrypoint = exec_form(&find("ENTRYPOINT").args);
    let config = entrypoint
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("ENTRYPOINT names --config");
    assert_eq!(config, HEALTHCHECK[2]);
    assert!(
        image
            .iter()
            .any(|i| i.keyword == "COPY" && i.args == format!("docker/config.toml {config}")),
        "docker/config.toml is copied to {config}"
    );
    let exposed: BTreeSet<u16> = find("EXPOSE")
        .args
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    let docker_config: toml::Table = read("docker/config.toml").parse().unwrap();
    let mut binds: Vec<&str> = docker_config["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["bind"].as_str().unwrap())
        .collect();
    binds.push(docker_config["admin"]["bind"].as_str().unwrap());
    let bound: BTreeSet<u16> = binds
        .iter()
        .map(|b| b.parse::<SocketAddr>().unwrap().port())
        .collect();
    assert_eq!(exposed, bound, "EXPOSE against docker/config.toml's binds");
    for bind in binds {
        assert!(
            bind.starts_with("0.0.0.0:"),
            "{bind}: published ports reach the container's interface, not its loopback"
        );
    }
}

#[test]
fn stub_targets_give_cargo_a_file_for_every_target() {
    let dir = TempDir::new("stubs");
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo().join(file), dir.0.join(file)).unwrap();
    }
    let out = run(
        Command::new("sh")
            .arg(repo().join("docker/stub-targets.sh"))
            .current_dir(&dir.0),
        "sh",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let targets = |manifest: &Path| -> BTreeSet<(String, String)> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = run(
            Command::new(cargo)
                .args([
                    "metadata",
                    "--no-deps",
                    "--offline",
                    "--format-version",
                    "1",
                ])
                .arg("--manifest-path")
                .arg(manifest),
            "cargo",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
        metadata["packages"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            // Tests and examples are found by their files, which the image's build never
            // copies or builds: the stubs stand for what Cargo.toml declares.
            .filter(|t| t["kind"][0] != "test" && t["kind"][0] != "example")
            .map(|t| {
                let path = t["src_path"].as_str().unwrap();
                if manifest.starts_with(&dir.0) {
                    assert!(Path::new(path).exists(), "no stub for {t}");
                }
                (t["kind"][0].to_string(), t["name"].to_string())
            })
            .collect()
    };
    let stubbed = targets(&dir.0.join("Cargo.toml"));
    let real = targets(&repo().join("Cargo.toml"));
    assert_eq!(
        stubbed, real,
        "the stubs stand for every lib, bin and bench"
    );
}

// ---------------------------------------------------------------------------------------
// The crate's metadata
// ---------------------------------------------------------------------------------------

#[test]
fn crate_declares_its_licenses_and_minimum_rust() {
    let manifest = cargo_toml();
    let package = &manifest["package"];
    assert_eq!(package["license"].as_str(), Some("MIT OR Apache-2.0"));
    let mit = read("LICENSE-MIT");
    assert!(mit.starts_with("MIT License"), "{mit}");
    assert!(mit.contains("Copyright (c) the load_balancer authors"));
    assert!(mit.contains("Permission is hereby granted, free of charge"));
    let apache = read("LICENSE-APACHE");
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
    let msrv = version(package["rust-version"].as_str().expect("rust-version"));
    // Edition 2024 needs 1.85 at least.
    assert!(msrv >= (1, 85, 0), "{msrv:?}");
}

// ---------------------------------------------------------------------------------------
// The systemd unit
// ---------------------------------------------------------------------------------------

const NO_SYSTEMD: &str = "needs systemd's tools (apt-get install systemd, as .ci/run does)";

/// The unit's `Key=value` lines (every value of a key, in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read("packaging/load_balancer.service");
    // `verify` wants the ExecStart binary to exist: the unit, pointed at the one just built.
    let dir = TempDir::new("systemd");
    let file = dir.0.join("load_balancer.service");
    std::fs::write(
        &file,
        unit.replace(
            "ExecStart=/usr/local/bin/load_balancer ",
            &format!("ExecStart={} ", env!("CARGO_BIN_EXE_load_balancer")),
        ),
    )
    .unwrap();
    let out = run(
        Command::new("systemd-analyze").arg("verify").arg(&file),
        NO_SYSTEMD,
    );
    // A value systemd cannot parse is a warning on stderr, ignored, with exit 0.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&out.stderr)
    );
    // Exposure 2.0 or less of 10 ("OK"), as systemd rates it.
    let out = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(repo().join("packaging/load_balancer.service")),
        NO_SYSTEMD,
    );
    assert!(
        out.status.success(),
        "systemd-analyze security:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let one = |key: &str| -> String {
        let values = unit_values(&unit, key);
        assert_eq!(values.len(), 1, "{key}: {values:?}");
        values[0].clone()
    };
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/load_balancer --config /etc/load_balancer/config.toml"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("User"), "load_balancer");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("LimitNOFILE"), "1048576");
    assert_eq!(one("KillSignal"), "SIGTERM");
    let stop = duration(&one("TimeoutStopSec"));
    assert!(
        stop > DRAIN,
        "TimeoutStopSec {stop:?} cuts the {DRAIN:?} drain"
    );
    assert_eq!(one("StateDirectory"), "load_balancer");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
}

#[test]
fn sysusers_entry_creates_the_units_user() {
    let root = TempDir::new("sysusers");
    std::fs::create_dir_all(root.0.join("etc")).unwrap();
    let out = run(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.0.display()))
            .arg(repo().join("packaging/load_balancer.sysusers")),
        NO_SYSTEMD,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let passwd = std::fs::read_to_string(root.0.join("etc/passwd")).unwrap();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("load_balancer:"))
        .unwrap_or_else(|| panic!("no load_balancer user in {passwd}"));
    let fields: Vec<&str> = entry.split(':').collect();
    assert_eq!(fields[5], "/var/lib/load_balancer", "{entry}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{entry}");
    let unit = read("packaging/load_balancer.service");
    assert_eq!(unit_values(&unit, "Group"), ["load_balancer"]);
}

// ---------------------------------------------------------------------------------------
// The container's behaviour, outside a container
// ---------------------------------------------------------------------------------------

/// docker/config.toml as the image has it, but for its two fixed ports (8080 and 9901 may
/// be taken here, and tests run in parallel): port 0, the kernel's choice, read back from
/// the log. The binds stay 0.0.0.0 and the database stays `db`, a host that does not
/// resolve here: DATABASE_URL, as a deployment would set it, must win.
fn container_config(dir: &TempDir) -> PathBuf {
    let original = read("docker/config.toml");
    let config = original
        .replace("\"0.0.0.0:8080\"", "\"0.0.0.0:0\"")
        .replace("\"0.0.0.0:9901\"", "\"0.0.0.0:0\"");
    assert_eq!(
        config.matches("\"0.0.0.0:0\"").count(),
        2,
        "docker/config.toml binds 0.0.0.0:8080 and 0.0.0.0:9901:\n{original}"
    );
    assert!(config.contains("@db:5432/"), "{config}");
    let path = dir.0.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// The binary run as the image's entrypoint runs it, with only `env` from the environment
/// variables it reads (the compose file sets LB_ADMIN_TOKEN; no RUST_LOG).
struct Proxy {
    child: tokio::process::Child,
    log: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Proxy {
    fn start(config: &Path, env: &[(&str, &str)]) -> Proxy {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_load_balancer"));
        command
            .arg("--config")
            .arg(config)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for var in [
            "DATABASE_URL",
            "LB_ADMIN_TOKEN",
            "LB_STICKY_SECRET",
            "RUST_LOG",
            "LOG_FORMAT",
        ] {
            command.env_remove(var);
        }
        command.env("NO_COLOR", "1").envs(env.iter().copied());
        let mut child = command.spawn().unwrap();
        let (tx, log) = mpsc::unbounded_channel();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Proxy {
            child,
            log,
            seen: Vec::new(),
        }
    }

    /// The next log line that contains `wanted`.
    async fn line(&mut self, wanted: &str) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.log.recv().await {
                self.seen.push(line.clone());
                if line.contains(wanted) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("exited before logging {wanted:?}: {:#?}", self.seen),
            Err(_) => panic!("never logged {wanted:?}: {:#?}", self.seen),
        }
    }

    /// The addresses the proxy listener and the admin endpoint bound, from the log.
    async fn addresses(&mut self) -> (SocketAddr, SocketAddr) {
        let (mut proxy, mut admin) = (None, None);
        while proxy.is_none() || admin.is_none() {
            let line = self.line("listening").await;
            if line.contains("admin endpoint listening") {
                admin = Some(address_in(&line));
            } else if line.contains("listening address=") {
                proxy = Some(address_in(&line));
            }
        }
        (proxy.unwrap(), admin.unwrap())
    }

    fn terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
    }
}

/// The `address=` field of a log line (as tests/cli.rs reads it).
fn address_in(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// The same port on this host's loopback: what a published port reaches.
fn via_loopback(bound: SocketAddr) -> SocketAddr {
    assert!(
        bound.ip().is_unspecified(),
        "bound {bound}, not all interfaces as configured"
    );
    SocketAddr::from(([127, 0, 0, 1], bound.port()))
}

/// GET `path` from the admin endpoint with `token` as bearer token (or none).
async fn admin_get(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use http_body_util::BodyExt;
    let mut request = hyper::Request::get(format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, common::client().request(request))
        .await
        .expect("admin request timed out")
        .expect("admin request failed");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, text(&body))
}

/// Registers `backend` and waits until the proxy serves from it.
async fn serve_from(db: &TestDb, proxy: SocketAddr, backend: &Backend) {
    db.exec(&format!(
        "INSERT INTO workers(worker_address) VALUES ('{}')",
        backend.addr
    ))
    .await;
    let client = common::client();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = common::get(&client, proxy, "/").await;
        if got == (200, backend.name.clone()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never served from the backend: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn container_config_serves_on_all_interfaces_with_the_environments_overrides() {
    let db = TestDb::new().await;
    let backend = Backend::start("a").await;
    let dir = TempDir::new("container");
    let config = container_config(&dir);
    let token = "packaging-test-token";
    let mut lb = Proxy::start(
        &config,
        &[("DATABASE_URL", &db.url), ("LB_ADMIN_TOKEN", token)],
    );
    let (proxy, admin) = lb.addresses().await;
    let (proxy, admin) = (via_loopback(proxy), via_loopback(admin));

    // DATABASE_URL won over the file's `db` host: the proxy migrated the test database and
    // follows its table.
    serve_from(&db, proxy, &backend).await;

    // LB_ADMIN_TOKEN guards the admin endpoint: nothing without it, everything with it.
    assert_eq!(admin_get(admin, "/status", None).await.0, 401);
    assert_eq!(admin_get(admin, "/readyz", Some("wrong")).await.0, 401);
    assert_eq!(admin_get(admin, "/readyz", Some(token)).await.0, 200);
    let (code, status) = admin_get(admin, "/status", Some(token)).await;
    assert_eq!(code, 200, "{status}");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["listener"]["state"], "connected", "{status}");
    assert_eq!(status["listener"]["ring_source"], "database", "{status}");

    lb.terminate();
    let exit = tokio::time::timeout(WAIT, lb.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}: {:#?}", lb.seen);
}

#[tokio::test]
async fn container_config_without_an_admin_token_is_refused_at_startup() {
    let db = TestDb::new().await;
    let dir = TempDir::new("container");
    let config = container_config(&dir);
    let mut lb = Proxy::start(&config, &[("DATABASE_URL", &db.url)]);
    let exit = tokio::time::timeout(WAIT, lb.child.wait())
        .await
        .expect("exits at once")
        .unwrap();
    assert_eq!(exit.code(), Some(1));
    // The log's reader ends with the process's stderr.
    while let Ok(Some(line)) = tokio::time::timeout(WAIT, lb.log.recv()).await {
        lb.seen.push(line);
    }
    let log = lb.seen.join("\n");
    assert!(log.contains("admin.bind"), "{log}");
    assert!(log.contains("LB_ADMIN_TOKEN"), "{log}");
}

#[tokio::test]
async fn sigterm_drains_the_request_in_flight_refuses_new_ones_and_exits_0() {
    let db = TestDb::new().await;
    let backend = Backend::start("a").await;
    let dir = TempDir::new("container");
    let config = container_config(&dir);
    let mut lb = Proxy::start(
        &config,
        &[("DATABASE_URL", &db.url), ("LB_ADMIN_TOKEN", "t")],
    );
    let (proxy, admin) = lb.addresses().await;
    let (proxy, admin) = (via_loopback(proxy), via_loopback(admin));
    serve_from(&db, proxy, &backend).await;

    // A request the backend holds until told.
    let in_flight =
        tokio::spawn(async move { common::get(&common::client(), proxy, "/hold").await });
    let deadline = Instant::now() + WAIT;
    while backend.holding.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // What `docker stop` sends.
    let stopped = Instant::now();
    lb.terminate();
    lb.line("shutting down: draining in-flight requests").await;

    // New connections are refused, on the listener and the admin endpoint (so the
    // healthcheck fails and an orchestrator sends no more traffic), while the request in
    // flight is still held.
    for (what, addr) in [("proxy", proxy), ("admin", admin)] {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "{what} {addr} still accepts during the drain: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    assert!(!in_flight.is_finished(), "the held request ended early");
    assert!(
        lb.child.try_wait().unwrap().is_none(),
        "exited with a request in flight: {:#?}",
        lb.seen
    );

    // The backend answers: the request completes, then the process exits 0, within the
    // grace.
    backend.release();
    let got = in_flight.await.unwrap();
    assert_eq!(got, (200, "a".to_string()));
    let exit = tokio::time::timeout(DRAIN, lb.child.wait())
        .await
        .unwrap_or_else(|_| panic!("still running {DRAIN:?} after SIGTERM"))
        .unwrap();
    assert!(exit.success(), "{exit:?}: {:#?}", lb.seen);
    assert!(stopped.elapsed() < DRAIN, "took {:?}", stopped.elapsed());
    lb.line("shutdown complete").await;
}
