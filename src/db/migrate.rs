//! Schema migrations, embedded from `migrations/` at build time.
//!
//! refinery takes no lock, so two instances migrating one fresh database at once would race
//! on its history table and fail. We hold a session-level advisory lock for the whole run on
//! the connection that migrates: the second instance waits, then finds nothing left to do.

use refinery::embed_migrations;

embed_migrations!("migrations");

/// Advisory lock key: "lb_migr" in ASCII, so it is unlikely to collide with another tool's.
const LOCK_KEY: i64 = 0x006c_625f_6d69_6772;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("advisory lock: {0}")]
    Lock(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Refinery(#[from] refinery::Error),
}

/// Applies pending migrations under the advisory lock. `client` must be a plain connection
/// of its own (a pooled one could be recycled, and the lock lost, mid-run).
pub async fn run(client: &mut tokio_postgres::Client) -> Result<(), MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let report = migrations::runner().run_async(client).await;
    // Unlock even after a failure, so another instance can try; closing the connection
    // would release it too.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let report = report?;
    unlocked?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}
