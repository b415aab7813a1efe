//! `load_balancer workers …`: list, add, reweight, drain (and confirm the drain) and remove
//! workers. Each command is one statement on `workers` or `worker_health` (written in its
//! `--help`); `drain --wait` then polls `worker_status` until every fresh instance reports
//! the weight 0 applied and nothing in flight.
//!
//! Every failure is one line: a missing worker, a weight out of range, a row PostgreSQL
//! refuses (with its reason), a database that does not answer.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Subcommand;
use tokio_postgres::error::SqlState;

use crate::db::{Db, StartupError};

/// The weights the table's CHECK constraint (`workers_weight_range`) allows.
const WEIGHTS: std::ops::RangeInclusive<i64> = 0..=10_000;
/// How often `drain --wait` reads `worker_status`: instances write a drained worker's last
/// request ending within 250 ms, so polling faster would only add queries.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// How long `drain --wait` looks for an instance before it concludes that none serves the
/// worker: an instance writes a worker it just learnt of within a quarter of a second, so
/// a drain right after an `add` (or an instance's start) is not confirmed by default.
const NOBODY_GRACE: Duration = Duration::from_millis(600);

#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// List workers, with how many fresh instances see each healthy (from worker_health).
    ///
    /// SELECT * FROM worker_health [WHERE pool = P] ORDER BY pool, worker_id
    List {
        /// Only the workers of this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Add a worker.
    ///
    /// INSERT INTO workers (worker_address, weight, pool) VALUES (ADDR, N, P)
    Add {
        /// `host:port`, or `[ipv6]:port`.
        address: String,
        /// 0 to 10000; 0 adds it drained.
        #[arg(long, default_value = "1", allow_negative_numbers = true)]
        weight: String,
        /// The worker's pool (an address is unique within its pool).
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// Change a worker's weight (0 drains it).
    ///
    /// UPDATE workers SET weight = N WHERE worker_address = ADDR AND pool = P
    SetWeight {
        /// The worker's `worker_address`.
        address: String,
        /// 0 to 10000.
        #[arg(allow_negative_numbers = true)]
        weight: String,
        /// The worker's pool (an address is unique within its pool).
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// Drain a worker: weight 0, no new requests, the ones in flight finish.
    ///
    /// UPDATE workers SET weight = 0 WHERE worker_address = ADDR AND pool = P; with --wait,
    /// then polls worker_status until every fresh instance reports weight 0 and nothing in
    /// flight for it (SELECT instance, weight, in_flight FROM worker_status WHERE worker_id
    /// = ID, for each instance with a row written within 3 of its intervals).
    Drain {
        /// The worker's `worker_address`.
        address: String,
        /// The worker's pool (an address is unique within its pool).
        #[arg(long, default_value = "default")]
        pool: String,
        /// Return once every fresh instance reports nothing in flight on it (exit 0), or
        /// fail (exit 1) saying what is still in flight when --timeout passes first.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. "500ms", "60s", "5m".
        #[arg(long, default_value = "60s", value_parser = duration)]
        timeout: Duration,
    },
    /// Remove a worker: its in-flight requests finish, nothing new reaches it.
    ///
    /// DELETE FROM workers WHERE worker_address = ADDR AND pool = P
    Remove {
        /// The worker's `worker_address`.
        address: String,
        /// The worker's pool (an address is unique within its pool).
        #[arg(long, default_value = "default")]
        pool: String,
    },
}

/// Why a `workers` command failed. Each is one line, saying what to do where that helps.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum WorkersError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Connect(#[from] StartupError),
    #[error("no worker at {address} in pool {pool:?}")]
    #[diagnostic(code(workers::unknown))]
    NoWorker { address: String, pool: String },
    #[error("weight {given} is out of range: a weight is 0 to 10000 (0 drains the worker)")]
    #[diagnostic(code(workers::weight))]
    WeightRange { given: String },
    #[error("weight {given:?} is not a number: a weight is 0 to 10000 (0 drains the worker)")]
    #[diagnostic(code(workers::weight))]
    WeightNotNumber { given: String },
    #[error("{address} is already a worker of pool {pool:?}")]
    #[diagnostic(code(workers::exists))]
    Exists { address: String, pool: String },
    #[error("PostgreSQL refused {address:?}: {reason}")]
    #[diagnostic(code(workers::refused))]
    Refused { address: String, reason: String },
    #[error("the workers table does not exist in this database: run `load_balancer migrate`")]
    #[diagnostic(code(workers::schema))]
    NoSchema,
    #[error("the database failed: {0}")]
    #[diagnostic(code(workers::database))]
    Database(String),
    #[error("worker {address} (pool {pool:?}) is drained but still busy after {waited}: {busy}")]
    #[diagnostic(code(workers::drain_timeout))]
    StillInFlight {
        address: String,
        pool: String,
        waited: String,
        busy: String,
    },
}

/// Runs `command` against the database at `url`; returns what to print.
pub async fn run(url: &str, command: &WorkersCommand) -> Result<String, WorkersError> {
    // Checked before connecting: a typo in the weight needs no database to be told.
    let weight = match command {
        WorkersCommand::Add { weight, .. } | WorkersCommand::SetWeight { weight, .. } => {
            Some(parse_weight(weight)?)
        }
        _ => None,
    };
    let client = Db::new(url)?.connect().await?;
    match command {
        WorkersCommand::List { pool } => list(&client, pool.as_deref()).await,
        WorkersCommand::Add { address, pool, .. } => {
            let weight = weight.expect("parsed above");
            let row = client
                .query_one(
                    "INSERT INTO workers (worker_address, weight, pool) VALUES ($1, $2, $3)
                     RETURNING id",
                    &[address, &weight, pool],
                )
                .await
                .map_err(|e| refused(e, address, pool))?;
            let id: i64 = row.get(0);
            Ok(format!(
                "added worker {id}: {address} in pool {pool}, weight {weight}"
            ))
        }
        WorkersCommand::SetWeight { address, pool, .. } => {
            let weight = weight.expect("parsed above");
            let id = update_weight(&client, address, pool, weight).await?;
            Ok(format!(
                "worker {id} ({address}, pool {pool}): weight {weight}"
            ))
        }
        WorkersCommand::Drain {
            address,
            pool,
            wait,
            timeout,
        } => {
            let started = Instant::now();
            let id = update_weight(&client, address, pool, 0).await?;
            let drained = format!("worker {id} ({address}, pool {pool}) drained: weight 0");
            if !wait {
                return Ok(format!(
                    "{drained}; requests in flight finish (confirm with --wait)"
                ));
            }
            let confirmed = confirm_drain(&client, id, *timeout).await;
            match confirmed {
                Ok(0) => Ok(format!(
                    "{drained}; no fresh instance reports it in worker_status: nothing is serving it"
                )),
                Ok(n) => Ok(format!(
                    "{drained}; {n} instance(s) report nothing in flight ({:.1}s)",
                    started.elapsed().as_secs_f64()
                )),
                Err(Confirm::Busy(busy)) => Err(WorkersError::StillInFlight {
                    address: address.clone(),
                    pool: pool.clone(),
                    waited: format_duration(*timeout),
                    busy,
                }),
                Err(Confirm::Failed(e)) => Err(e),
            }
        }
        WorkersCommand::Remove { address, pool } => {
            let row = client
                .query_opt(
                    "DELETE FROM workers WHERE worker_address = $1 AND pool = $2 RETURNING id",
                    &[address, pool],
                )
                .await
                .map_err(|e| refused(e, address, pool))?;
            let Some(row) = row else {
                return Err(no_worker(address, pool));
            };
            let id: i64 = row.get(0);
            Ok(format!(
                "removed worker {id} ({address}, pool {pool}); requests in flight finish"
            ))
        }
    }
}

/// The `workers list` table: one row per worker of `worker_health`.
async fn list(client: &tokio_postgres::Client, pool: Option<&str>) -> Result<String, WorkersError> {
    let rows = client
        .query(
            "SELECT worker_id, pool, worker_address, weight, instances, healthy_instances,
                    ejected_instances, unhealthy_on, in_flight
             FROM worker_health WHERE $1::text IS NULL OR pool = $1
             ORDER BY pool, worker_id",
            &[&pool],
        )
        .await
        .map_err(|e| refused(e, "", pool.unwrap_or("")))?;
    if rows.is_empty() {
        return Ok(match pool {
            Some(p) => format!("no workers in pool {p:?}"),
            None => "no workers".to_string(),
        });
    }
    let mut table = comfy_table::Table::new();
    table.load_style(psql_style()).set_header([
        "id",
        "pool",
        "address",
        "weight",
        "healthy",
        "ejected",
        "in flight",
    ]);
    for r in &rows {
        let (instances, healthy, ejected): (i64, i64, i64) = (r.get(4), r.get(5), r.get(6));
        let unhealthy_on: Vec<String> = r.get(7);
        let in_flight: i64 = r.get(8);
        let healthy = match (instances, unhealthy_on.is_empty()) {
            (0, _) => "no instance reports it".to_string(),
            (_, true) => format!("{healthy}/{instances}"),
            (_, false) => format!(
                "{healthy}/{instances} (unhealthy on {})",
                unhealthy_on.join(", ")
            ),
        };
        let ejected = if instances == 0 {
            "-".to_string()
        } else {
            format!("{ejected}/{instances}")
        };
        table.add_row([
            r.get::<_, i64>(0).to_string(),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, i32>(3).to_string(),
            healthy,
            ejected,
            in_flight.to_string(),
        ]);
    }
    for number in [0, 3, 6] {
        if let Some(column) = table.column_mut(number) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    // The padding of the last column would leave trailing blanks on every line.
    let text = table.to_string();
    Ok(text
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Like psql's aligned output: a `|` between columns, a rule under the header, no frame.
fn psql_style() -> comfy_table::TableStyle {
    use comfy_table::{ContentLineStyle, LineStyle, TableStyle};
    TableStyle::new()
        .header_lines(ContentLineStyle::none().junction('|'))
        .header_separator(LineStyle::none().fill('-').junction('+'))
        .content_lines(ContentLineStyle::none().junction('|'))
}

/// `UPDATE workers SET weight …`; the worker's id, or "no worker" when no row matched.
async fn update_weight(
    client: &tokio_postgres::Client,
    address: &str,
    pool: &str,
    weight: i32,
) -> Result<i64, WorkersError> {
    let row = client
        .query_opt(
            "UPDATE workers SET weight = $3 WHERE worker_address = $1 AND pool = $2 RETURNING id",
            &[&address, &pool, &weight],
        )
        .await
        .map_err(|e| refused(e, address, pool))?;
    row.map(|r| r.get(0))
        .ok_or_else(|| no_worker(address, pool))
}

/// How a drain's confirmation ended without success.
enum Confirm {
    /// Still busy at the deadline: which instances, and why.
    Busy(String),
    Failed(WorkersError),
}

/// Polls `worker_status` until every fresh instance (one with a row written within 3 of its
/// intervals) has a row for worker `id` showing the weight 0 applied and nothing in flight;
/// returns how many instances confirmed (0: no fresh instance at all, so none serves it).
/// An instance that has not written the worker yet (it was added a moment ago) is waited
/// for like a busy one: it writes a new worker within a quarter of a second.
async fn confirm_drain(
    client: &tokio_postgres::Client,
    id: i64,
    timeout: Duration,
) -> Result<usize, Confirm> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let rows = client
            .query(
                "SELECT fresh.instance, s.weight, s.in_flight
                 FROM (SELECT DISTINCT instance FROM worker_status
                       WHERE updated_at > now() - 3 * interval_ms * interval '1 millisecond')
                      AS fresh
                 LEFT JOIN worker_status s
                        ON s.instance = fresh.instance AND s.worker_id = $1
                 ORDER BY fresh.instance",
                &[&id],
            )
            .await
            .map_err(|e| Confirm::Failed(refused(e, "", "")))?;
        let mut busy = String::new();
        for r in &rows {
            let instance: String = r.get(0);
            let (weight, in_flight): (Option<i32>, Option<i32>) = (r.get(1), r.get(2));
            let why = match (weight, in_flight) {
                (None, _) | (_, None) => "not reported yet".to_string(),
                (Some(w), _) if w != 0 => "weight 0 not applied yet".to_string(),
                (_, Some(n)) if n != 0 => format!("{n} in flight"),
                _ => continue,
            };
            let _ = write!(busy, "{}{instance}: {why}", sep(&busy));
        }
        let looked_long_enough = Instant::now() >= started + NOBODY_GRACE;
        if busy.is_empty() && (!rows.is_empty() || looked_long_enough) {
            return Ok(rows.len());
        }
        if Instant::now() >= deadline {
            return Err(Confirm::Busy(busy));
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline - Instant::now())).await;
    }
}

fn sep(list: &str) -> &'static str {
    if list.is_empty() { "" } else { ", " }
}

/// A weight as typed, checked against the table's range before anything is sent.
fn parse_weight(text: &str) -> Result<i32, WorkersError> {
    let n: i64 = text
        .trim()
        .parse()
        .map_err(|_| WorkersError::WeightNotNumber {
            given: text.to_string(),
        })?;
    if !WEIGHTS.contains(&n) {
        return Err(WorkersError::WeightRange {
            given: text.trim().to_string(),
        });
    }
    Ok(n as i32)
}

/// `--timeout`: the durations of `config.toml` ("500ms", "60s", "5m", "1h").
fn duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as \"500ms\", \"60s\" or \"5m\""))
}

fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn no_worker(address: &str, pool: &str) -> WorkersError {
    WorkersError::NoWorker {
        address: address.to_string(),
        pool: pool.to_string(),
    }
}

/// What PostgreSQL said, as one line: a refused row gets the constraint's reason in plain
/// words beside PostgreSQL's own message.
fn refused(e: tokio_postgres::Error, address: &str, pool: &str) -> WorkersError {
    let Some(db) = e.as_db_error() else {
        // The connection broke mid-way: the chain holds the reason.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        return WorkersError::Database(text);
    };
    let code = db.code();
    if *code == SqlState::UNDEFINED_TABLE {
        return WorkersError::NoSchema;
    }
    if *code == SqlState::UNIQUE_VIOLATION {
        return WorkersError::Exists {
            address: address.to_string(),
            pool: pool.to_string(),
        };
    }
    if *code == SqlState::CHECK_VIOLATION {
        let why = match db.constraint() {
            Some("workers_address_host_port") => {
                " (an address is host:port or [ipv6]:port, with a port from 1 to 65535)"
            }
            Some("workers_pool_not_empty") => " (a pool name is 1 to 200 characters)",
            Some("workers_weight_range") => " (a weight is 0 to 10000)",
            _ => "",
        };
        return WorkersError::Refused {
            address: address.to_string(),
            reason: format!("{}{why}", db.message()),
        };
    }
    WorkersError::Database(db.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_checked_before_anything_is_sent() {
        assert_eq!(parse_weight("0").unwrap(), 0);
        assert_eq!(parse_weight("10000").unwrap(), 10_000);
        assert_eq!(
            parse_weight("10001").unwrap_err().to_string(),
            "weight 10001 is out of range: a weight is 0 to 10000 (0 drains the worker)"
        );
        assert!(matches!(
            parse_weight("-1"),
            Err(WorkersError::WeightRange { .. })
        ));
        assert!(matches!(
            parse_weight("heavy"),
            Err(WorkersError::WeightNotNumber { .. })
        ));
    }

    #[test]
    fn timeouts_read_like_config_durations() {
        assert_eq!(duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(duration("1.5s").is_err());
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
