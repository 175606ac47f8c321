//! The reaper's sweeps: one at a time across replicas and CronJob pods (a Postgres advisory lock),
//! each recorded with its holder, start, end and summary.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};

/// One key for every sweeper on the database: 'draftd' in ASCII, then 2 (the claim's is 1).
const SWEEP_LOCK: i64 = 28273260327363586;

/// The sweep lock, held on a connection of its own, so a sweeper that dies (or is dropped
/// mid-sweep) never keeps it: the session's end releases it.
pub struct SweepLock(PgConnection);

/// Takes the sweep lock, or `None` when another sweeper holds it.
pub async fn try_lock(pool: &PgPool) -> Result<Option<SweepLock>, sqlx::Error> {
    let mut lock = PgConnection::connect_with(&pool.connect_options()).await?;
    let held: bool =
        sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(SWEEP_LOCK).fetch_one(&mut lock).await?;
    if !held {
        lock.close().await.ok();
        return Ok(None);
    }
    Ok(Some(SweepLock(lock)))
}

impl SweepLock {
    /// Released explicitly, so the next sweep finds it free at once: a closed session's backend
    /// lets go of its locks only when it has exited, which a busy server takes its time over.
    /// Closing the session releases it anyway, should the unlock fail.
    pub async fn release(self) {
        let mut lock = self.0;
        let _ = sqlx::query("select pg_advisory_unlock($1)").bind(SWEEP_LOCK).execute(&mut lock).await;
        lock.close().await.ok();
    }
}

/// Records the start of a sweep by `holder`; its id.
pub async fn start(pool: &PgPool, holder: &str, now: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("insert into sweeps (holder, started_at) values ($1, $2) returning sweep_id")
        .bind(holder)
        .bind(now)
        .fetch_one(pool)
        .await
}

/// Records the end of a sweep and what it did.
pub async fn finish(pool: &PgPool, sweep_id: i64, summary: &Value) -> Result<(), sqlx::Error> {
    sqlx::query("update sweeps set finished_at = now(), summary = $2 where sweep_id = $1")
        .bind(sweep_id)
        .bind(summary)
        .execute(pool)
        .await?;
    Ok(())
}
