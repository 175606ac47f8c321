//! draftd's own database: connection, migrations, and one repository module per concern.

pub mod intake;
pub mod stands;

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The migrations in `migrations/`, embedded so the binary carries its schema.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is never shown: it may carry a password.
    #[error("database_url is not a valid Postgres URL: {0}")]
    BadUrl(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("namespace {0} and its hashed form are both taken by other stands")]
    NamespaceTaken(String),
}

impl StoreError {
    /// A failure that may pass if tried again (the database is restarting, the pool is exhausted).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed))
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
