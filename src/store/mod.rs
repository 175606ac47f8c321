//! draftd's own database: connection, migrations, and one repository module per concern.

/// Private stands: each stand's current access-token run, sign-ins under way, their audit rows.
pub mod access;
/// Fork commits waiting for, and given, a maintainer's approval (`forks = "approve"`).
pub mod approvals;
/// Who asked draftd to act through the forge, and what was decided.
pub mod audit;
pub mod caps;
/// Logins handed to stands, by reference, until revoked; this installation's id.
pub mod credentials;
/// The health watch: awake stands due for a probe, and their moves between healthy and degraded.
pub mod health;
/// What the dashboard's charts draw: stands by state per sweep, time to URL and wake time per day.
pub mod history;
pub mod intake;
/// Expiry, extension, tombstones, and what the reaper queues.
pub mod lifecycle;
pub mod manual;
/// Figures read at scrape time for `/metrics`.
pub mod metrics;
/// Orphans the reaper's scans found, counted across scans, and the stands they are compared with.
pub mod orphans;
/// What draftd owes the forges: outbox rows, claimed with coalescing and delivered by the reporter.
pub mod outbox;
pub mod runs;
pub mod sleep;
pub mod stands;
pub mod summary;
/// The reaper's sweeps: the lock that lets one run at a time, and the record of each.
pub mod sweeps;
pub mod usage;

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::stand::Failure;

/// The migrations in `migrations/`, embedded so the binary carries its schema.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is never shown: it may carry a password.
    #[error("database_url is not a valid Postgres URL: {0}")]
    BadUrl(String),
    // Not `#[from]`: the cause is part of the message, and a `source` as well would print it twice.
    #[error("database: {0}")]
    Db(sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("namespace {0} and its hashed form are both taken by other stands")]
    NamespaceTaken(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

impl Failure for StoreError {
    /// A failure that may pass if tried again: the database is unreachable or restarting, or the pool
    /// is exhausted. Everything else (bad SQL, a missing database, a failed migration) will not.
    fn is_transient(&self) -> bool {
        let db = match self {
            StoreError::Db(e) | StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => e,
            _ => return false,
        };
        match db {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            // admin_shutdown, crash_shutdown, cannot_connect_now: a restart in progress.
            sqlx::Error::Database(e) => matches!(e.code().as_deref(), Some("57P01" | "57P02" | "57P03")),
            _ => false,
        }
    }

    /// `database` as the steps label a failure of draftd's own database.
    fn label(&self) -> &'static str {
        match self {
            StoreError::BadUrl(_) => "database_url",
            StoreError::Db(_) => "database",
            StoreError::Migrate(_) => "migrations",
            StoreError::NamespaceTaken(_) => "namespace_taken",
        }
    }
}

/// Opens a pool lazily: `serve` must come up (and answer `/health`) even while the database is down.
pub fn pool(url: &str, size: u32) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl(redact(&e.to_string(), url)))?;
    Ok(PgPoolOptions::new()
        .max_connections(size)
        // A webhook answer must not wait long for a connection; the forge retries a failed delivery.
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// The workers' pool: like [`pool`], but a connection is not pinged before each use. A worker makes
/// one statement per step boundary, and the ping would add a round trip to each; a statement that
/// meets a dead connection fails instead, and its run is resumed once the lease expires. (Intake
/// keeps the ping: a webhook refused there is not redelivered by GitHub on its own.)
pub fn worker_pool(url: &str, size: u32) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl(redact(&e.to_string(), url)))?;
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(options))
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// True when every embedded migration is applied.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, StoreError> {
    let applied: Vec<i64> = sqlx::query_scalar("select version from _sqlx_migrations where success")
        .fetch_all(pool)
        .await
        .or_else(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(Vec::new()),
            _ => Err(e),
        })?;
    Ok(MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).all(|m| applied.contains(&m.version)))
}

fn redact(message: &str, url: &str) -> String {
    message.replace(url, "<database_url>")
}
