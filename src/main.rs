//! The `load_balancer` binary: command line, logging and signals around `load_balancer::start`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::io::IsTerminal;

use clap::{Parser, Subcommand, ValueEnum};
use load_balancer::cli::workers::WorkersCommand;
use load_balancer::config::{Config, Overrides};
use load_balancer::shutdown::Signals;
use tracing_subscriber::EnvFilter;

// mimalloc: the hot path allocates small, short-lived buffers and headers on every
// request; glibc's malloc/free cost ~5% of the proxy's CPU in a profile, mimalloc less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long in-flight requests may run after SIGTERM/SIGINT before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// HTTP and TCP load balancer whose backends are the rows of a PostgreSQL table.
///
/// Backends are changed live with SQL on the `workers` table, e.g.
/// `UPDATE workers SET weight = 0 WHERE worker_address = '10.0.0.7:8000'` drains one.
/// Logs go to stderr; RUST_LOG sets their level (default: info).
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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr at `RUST_LOG`'s levels (default info). Colours only for a terminal,
/// and never with `NO_COLOR` set (no-color.org): escape codes in a file or a collector are
/// noise. refinery reports each migration itself at info, and PostgreSQL's notices come
/// through tokio-postgres at info too; the proxy's own line says what matters, once, so
/// both are kept to warnings.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,refinery_core=warn,tokio_postgres=warn"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr (a log collector that died) must not take the proxy down: by
        // default a failed log write is reported with eprintln!, which panics.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);

    // Unwrapped lines keep a suggested command (e.g. `createdb ...`) copy-pasteable.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
    }));

    // Each client connection and each backend connection is a file descriptor: take all the
    // hard limit allows (as HAProxy does) instead of a soft default that may be 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }

    let overrides = Overrides {
        database_url: cli.database_url.filter(|u| !u.is_empty()),
        admin_token: cli.admin_token.filter(|t| !t.is_empty()),
    };
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
    let config = match Config::load(&cli.config, overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
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
    }
}

/// Runs one `workers` command; any failure is one line on stderr and exit 1.
fn workers(url: &str, command: &WorkersCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(load_balancer::cli::workers::run(url, command)) {
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let migrated = runtime.block_on(async { load_balancer::db::Db::new(url)?.migrate().await });
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

/// Runs the proxy until SIGTERM or SIGINT.
fn serve(config: Config) -> ExitCode {
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
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Registered before starting, so a SIGTERM that arrives during startup is not lost
        // to the default action (instant death) once "listening" has been logged, and a
        // SIGHUP during startup is ignored like any other.
        let mut signals = match Signals::register() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot handle SIGTERM/SIGINT/SIGHUP: {e}");
                return ExitCode::FAILURE;
            }
        };
        let running = match load_balancer::start(&config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{:?}", miette::Report::new(e));
                return ExitCode::FAILURE;
            }
        };
        let signal = signals.stop_requested().await;
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
