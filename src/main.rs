//! The `load_balancer` binary: command line, logging and signals around `load_balancer::start`.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use load_balancer::Running;
use load_balancer::cli::demo::{self, DemoOptions};
use load_balancer::cli::healthcheck::Probe;
use load_balancer::cli::workers::WorkersCommand;
use load_balancer::config::{Config, Overrides};
use load_balancer::shutdown::{SignalEvent, Signals};
use miette::Diagnostic;
use tracing_subscriber::EnvFilter;

// mimalloc: the hot path allocates small, short-lived buffers and headers on every
// request; glibc's malloc/free cost ~5% of the proxy's CPU in a profile, mimalloc less
// (its version 2: see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long in-flight requests may run after SIGTERM/SIGINT, or on a listener a reload
/// removed, before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The demo's grace on Ctrl-C: its requests are curl's, a second each at most; a person
/// waiting for the prompt should not wait 30 seconds.
const DEMO_GRACE: Duration = Duration::from_secs(2);

/// HTTP and TCP load balancer whose backends are the rows of a PostgreSQL table.
///
/// Backends are changed live with SQL on the `workers` table, e.g.
/// `UPDATE workers SET weight = 0 WHERE worker_address = '10.0.0.7:8000'` drains one.
/// Logs go to stderr; `[log] level` or RUST_LOG (which wins) sets their level (default:
/// info). SIGHUP rereads the configuration file and applies it.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Path of the configuration file.
    #[arg(long, default_value = "config.toml", global = true)]
    config: PathBuf,

    /// PostgreSQL URL; when set it overrides `[database] url` of the configuration file.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,

    /// Token the admin endpoint requires (`Authorization: Bearer <token>`); when set it
    /// overrides `[admin] token`.
    #[arg(long, env = "LB_ADMIN_TOKEN", hide_env_values = true, global = true)]
    admin_token: Option<String>,

    /// Key of the sticky-session cookies (at least 16 bytes) of every pool whose
    /// `[pools.NAME.sticky]` sets no `secret`; without either, a random key for this
    /// process, whose cookies other instances and restarts do not honour.
    #[arg(long, env = "LB_STICKY_SECRET", hide_env_values = true, global = true)]
    sticky_secret: Option<String>,

    /// How log lines are written to stderr: `text` for people, `json` (one object a line)
    /// for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (what `load_balancer` alone does).
    Serve,
    /// Validate the configuration (file and environment) and exit: 0 when it is valid,
    /// 1 with every diagnostic.
    CheckConfig,
    /// Apply the database migrations (under the same lock as the proxy's) and exit. With
    /// DATABASE_URL set, no config file is needed.
    Migrate,
    /// List, add, reweight, drain or remove workers: each one SQL statement on the
    /// `workers` table (shown in each command's --help).
    ///
    /// The database is `--config`'s `[database] url`, or DATABASE_URL; with DATABASE_URL
    /// set, no config file is needed.
    Workers {
        #[command(subcommand)]
        command: WorkersCommand,
    },
    /// Try it in one command: three demo backends, their rows in `workers`, the proxy in
    /// front of them, and the SQL to type next.
    ///
    /// Creates the database if it does not exist, starts three HTTP backends on free ports
    /// of 127.0.0.1 (each answers every request with its name: demo-1, demo-2, demo-3),
    /// inserts them into `workers` (pool demo, weight 1), serves the proxy (weighted
    /// round robin) and prints what to try next with this run's ports: a curl loop, the
    /// UPDATE that reweights demo-1 and the one that drains demo-2, the admin /status.
    ///
    /// The database is DATABASE_URL (or --database-url), else
    /// postgres://postgres@127.0.0.1:5432/load_balancer; the config file is not read.
    ///
    /// The rows it inserts are recorded in the table demo_workers. At start, the rows an
    /// earlier demo recorded there are deleted if they still have the address and pool it
    /// gave them and nothing accepts connections at that address any more; no other row is
    /// touched, so rows you added stay. Ctrl-C (or SIGTERM) stops the proxy and the
    /// backends; the rows stay, for inspection.
    Demo {
        /// The proxy's address [default: 127.0.0.1:8080, or a free port if it is taken].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// The admin endpoint's address [default: 127.0.0.1:9901, or a free port if it is
        /// taken]; one that is not a loopback address needs LB_ADMIN_TOKEN.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
    /// Exit 0 if the proxy is ready (GET /readyz answers 200), else 1 with one line saying
    /// why: a container healthcheck that needs no curl.
    ///
    /// Asks the admin endpoint of `--config`'s `[admin]` (bind; 0.0.0.0 or [::] is
    /// reached on 127.0.0.1 or [::1]), with `Authorization: Bearer <token>` when
    /// LB_ADMIN_TOKEN or `[admin] token` sets one. Connect, request and answer must take
    /// under 2 seconds.
    Healthcheck {
        /// Ask this URL instead, e.g. http://127.0.0.1:9901/readyz (without a path:
        /// /readyz); the config file is then read only for the token, if it exists.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// refinery reports each migration itself at info, and PostgreSQL's notices come through
/// tokio-postgres at info too; the proxy's own line says what matters, once, so both are
/// kept to warnings unless `[log] level` names them. rustls warns about each client's
/// mistake (an IP address sent as SNI, as wrk does): a line per connection, thousands a
/// second under load, for what the client did; the proxy logs failed handshakes itself
/// (at debug), so rustls says errors only.
const QUIET: &str = "refinery_core=warn,tokio_postgres=warn,rustls=error";

/// The running process's log filter, which a reload sets again from `[log] level`.
struct LogLevel {
    /// `RUST_LOG` was set (and valid): it wins, at startup and on every reload.
    from_env: bool,
    /// Replaces the filter of the installed subscriber.
    set: Box<dyn Fn(EnvFilter) -> Result<(), String>>,
}

impl LogLevel {
    /// Applies `level` (`[log] level`, already validated) unless `RUST_LOG` decides.
    fn apply(&self, level: Option<&str>) {
        if self.from_env {
            if level.is_some() {
                tracing::warn!("RUST_LOG is set and wins over `[log] level`: log level unchanged");
            }
            return;
        }
        if let Err(e) = (self.set)(configured_filter(level)) {
            tracing::error!(error = %e, "cannot change the log level");
        }
    }
}

fn configured_filter(level: Option<&str>) -> EnvFilter {
    EnvFilter::new(format!("{QUIET},{}", level.unwrap_or("info")))
}

/// Logs go to stderr at `RUST_LOG`'s levels if it is set, else at `level` (`[log] level`,
/// default info). Colours only for a terminal, and never with `NO_COLOR` set
/// (no-color.org): escape codes in a file or a collector are noise.
fn init_logging(format: LogFormat, level: Option<&str>) -> LogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let is_env = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| configured_filter(level));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr (a log collector that died) must not take the proxy down: by
        // default a failed log write is reported with eprintln!, which panics.
        .log_internal_errors(false);
    let set: Box<dyn Fn(EnvFilter) -> Result<(), String>> = match format {
        LogFormat::Text => {
            let logs = logs.with_ansi(ansi).with_filter_reloading();
            let handle = logs.reload_handle();
            logs.init();
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let logs = logs.json().flatten_event(true).with_filter_reloading();
            let handle = logs.reload_handle();
            logs.init();
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
    };
    LogLevel {
        from_env: is_env,
        set,
    }
}

/// A diagnostic as plain text for one log event: no colours, whatever the terminal.
fn render(diagnostic: &dyn Diagnostic) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_links(false)
            .with_width(usize::MAX);
    let mut text = String::new();
    match handler.render_report(&mut text, diagnostic) {
        Ok(()) => text,
        Err(_) => diagnostic.to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    // Unwrapped lines keep a suggested command (e.g. `createdb ...`) copy-pasteable.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
    }));

    let overrides = Overrides {
        database_url: cli.database_url.filter(|u| !u.is_empty()),
        admin_token: cli.admin_token.filter(|t| !t.is_empty()),
        sticky_secret: cli.sticky_secret.filter(|s| !s.is_empty()),
    };
    // Both run before the proxy's config handling: the demo never reads a file, and
    // healthcheck loads it itself, for `[admin]` only (with --url, only if it exists).
    match &cli.command {
        Some(Command::Demo { listen, admin }) => {
            let options = DemoOptions {
                url: overrides
                    .database_url
                    .clone()
                    .unwrap_or_else(|| demo::DEFAULT_URL.to_string()),
                listen: *listen,
                admin: *admin,
                admin_token: overrides.admin_token.clone(),
            };
            return run_demo(&options, cli.log_format);
        }
        Some(Command::Healthcheck { url }) => {
            return healthcheck(&cli.config, &overrides, url.as_deref());
        }
        _ => {}
    }
    // An operator's shell often has DATABASE_URL and no config.toml at hand; `migrate` and
    // the workers commands need nothing else. With a config file, its rules apply as to
    // the proxy.
    if let Some(url) = &overrides.database_url
        && !cli.config.exists()
    {
        match &cli.command {
            Some(Command::Workers { command }) => return workers(url, command),
            Some(Command::Migrate) => return migrate(url),
            _ => {}
        }
    }
    let config = match Config::load(&cli.config, overrides.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return ExitCode::FAILURE;
        }
    };
    let log_level = init_logging(cli.log_format, config.log.level.as_deref());
    warn_of_unserved_pool_tables(&config);

    // Each client connection and each backend connection is a file descriptor: take all the
    // hard limit allows (as HAProxy does) instead of a soft default that may be 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }

    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, &cli.config, &overrides, &log_level),
        Command::CheckConfig => {
            println!(
                "{} is valid: {} listener(s), admin {}",
                cli.config.display(),
                config.listeners.len(),
                config
                    .admin
                    .as_ref()
                    .map_or_else(|| "off".to_string(), |a| a.bind.to_string()),
            );
            ExitCode::SUCCESS
        }
        Command::Migrate => migrate(&config.database.url),
        Command::Workers { command } => workers(&config.database.url, &command),
        Command::Demo { .. } | Command::Healthcheck { .. } => {
            unreachable!("run before the configuration is read")
        }
    }
}

/// A diagnostic as one line on stderr, with its fix when it has one.
fn print_error(e: &dyn Diagnostic) {
    match e.help() {
        Some(help) => eprintln!("error: {e}; {help}"),
        None => eprintln!("error: {e}"),
    }
}

/// Runs the demo until SIGTERM or SIGINT; the instructions go to stdout once it serves,
/// after the startup logs (stderr).
fn run_demo(options: &DemoOptions, log_format: LogFormat) -> ExitCode {
    let _log_level = init_logging(log_format, None);
    let Some(runtime) = started(tokio::runtime::Runtime::new()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        // Before anything starts, as for serve: a Ctrl-C during startup is held until the
        // demo has started, then stops it as any other (startup is bounded by the database's
        // connect timeout), instead of killing it between its rows and its proxy.
        let Some(mut signals) = registered() else {
            return ExitCode::FAILURE;
        };
        let demo = match demo::start(options).await {
            Ok(d) => d,
            Err(e) => {
                print_error(&e);
                return ExitCode::FAILURE;
            }
        };
        println!("{}", demo.instructions());
        let signal = loop {
            match signals.next().await {
                SignalEvent::Stop(signal) => break signal,
                SignalEvent::Reload => {
                    tracing::info!("SIGHUP ignored: the demo has no configuration file")
                }
            }
        };
        tracing::info!(signal, "stopping the demo");
        demo.stop(DEMO_GRACE).await;
        println!(
            "demo stopped; its rows stay in workers (DELETE FROM workers WHERE id IN (SELECT worker_id FROM demo_workers) removes them)"
        );
        ExitCode::SUCCESS
    })
}

/// Asks the running proxy's /readyz: exit 0 when it answers 200, else 1 and why.
fn healthcheck(path: &Path, overrides: &Overrides, url: Option<&str>) -> ExitCode {
    let config = if url.is_none() || path.exists() {
        match Config::load(path, overrides.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("{:?}", miette::Report::new(e));
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let probe = match Probe::new(
        url,
        config.as_ref(),
        overrides.admin_token.clone(),
        &path.display().to_string(),
    ) {
        Ok(p) => p,
        Err(e) => {
            print_error(&e);
            return ExitCode::FAILURE;
        }
    };
    match run_once(probe.run()) {
        Some(Ok(ready)) => {
            println!("{ready}");
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            print_error(&e);
            ExitCode::FAILURE
        }
        None => ExitCode::FAILURE,
    }
}

/// Runs `future` to its end on a single-threaded runtime, for the one-shot commands; `None`
/// (said on stderr) when no runtime can be started.
fn run_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = started(built)?;
    let output = runtime.block_on(future);
    // Not a wait for blocking tasks left behind (a name lookup that outlived the command's
    // own timeout): the answer is known, the process is about to exit.
    runtime.shutdown_background();
    Some(output)
}

/// The runtime, or `None` with the one line that says why there is none.
fn started(built: std::io::Result<tokio::runtime::Runtime>) -> Option<tokio::runtime::Runtime> {
    built
        .inspect_err(|e| eprintln!("cannot start the async runtime: {e}"))
        .ok()
}

/// The signal handlers, or `None` with the one line that says why there are none.
fn registered() -> Option<Signals> {
    Signals::register()
        .inspect_err(|e| eprintln!("cannot handle SIGTERM/SIGINT/SIGHUP: {e}"))
        .ok()
}

/// Runs one `workers` command; any failure is one line on stderr and exit 1.
fn workers(url: &str, command: &WorkersCommand) -> ExitCode {
    let Some(result) = run_once(load_balancer::cli::workers::run(url, command)) else {
        return ExitCode::FAILURE;
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line, with the fix when the diagnostic has one (e.g. `createdb …`).
            match miette::Diagnostic::help(&e) {
                Some(help) => eprintln!("error: {e}; {help}"),
                None => eprintln!("error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Applies the migrations and says so; a database that cannot be reached, or refuses, is
/// the same diagnostic the proxy gives at startup.
fn migrate(url: &str) -> ExitCode {
    let Some(migrated) = run_once(async { load_balancer::db::Db::new(url)?.migrate().await })
    else {
        return ExitCode::FAILURE;
    };
    match migrated {
        Ok(()) => {
            println!("migrations applied; the schema is current");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            ExitCode::FAILURE
        }
    }
}

/// Runs the proxy until SIGTERM or SIGINT, reloading `path` on each SIGHUP.
fn serve(config: Config, path: &Path, overrides: &Overrides, log_level: &LogLevel) -> ExitCode {
    // On one core, the single-threaded scheduler does the same work without the
    // work-stealing machinery.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let Some(runtime) = started(runtime) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        // Registered before starting, so a SIGTERM that arrives during startup is not lost
        // to the default action (instant death) once "listening" has been logged, and a
        // SIGHUP during startup is a reload once started.
        let Some(mut signals) = registered() else {
            return ExitCode::FAILURE;
        };
        let mut running = match load_balancer::start(&config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{:?}", miette::Report::new(e.in_file(path)));
                return ExitCode::FAILURE;
            }
        };
        let signal = loop {
            match signals.next().await {
                SignalEvent::Stop(signal) => break signal,
                SignalEvent::Reload => reload(&mut running, path, overrides, log_level).await,
            }
        };
        tracing::info!(
            signal,
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "shutting down: draining in-flight requests"
        );
        if running.stop(SHUTDOWN_GRACE).await {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!("shutdown deadline passed; remaining connections were cut");
        }
        ExitCode::SUCCESS
    })
}

/// Says which `[pools.NAME]` tables only routes can use: most often a misspelt name.
fn warn_of_unserved_pool_tables(config: &Config) {
    for warning in config.unserved_pool_tables() {
        tracing::warn!("{warning}");
    }
}

/// Rereads `path` and applies it. A file that does not validate, or a reload that cannot
/// apply (an address to add is taken), changes nothing: the running configuration keeps
/// serving, the diagnostic is logged as one event, and `lb_config_reloads_total{result =
/// "error"}` counts it.
async fn reload(running: &mut Running, path: &Path, overrides: &Overrides, log_level: &LogLevel) {
    tracing::info!(path = %path.display(), "SIGHUP received: reopening access logs, re-reading certificates, reloading the configuration");
    // Rotation and renewal must work whatever the new file says: they come first.
    running.on_sighup();
    let config = match Config::load(path, overrides.clone()) {
        Ok(c) => c,
        Err(e) => {
            running.metrics.config_reloaded(false);
            tracing::error!(
                "configuration not reloaded, the running one stays: {}",
                render(&e)
            );
            return;
        }
    };
    warn_of_unserved_pool_tables(&config);
    let level = config.log.level.clone();
    match running.reload(config, SHUTDOWN_GRACE).await {
        Ok(summary) => {
            // Said before the level changes, so a reload to `warn` is still reported.
            tracing::info!(%summary, "configuration reloaded");
            log_level.apply(level.as_deref());
        }
        Err(e) => tracing::error!("{}", render(&e.in_file(path))),
    }
}
