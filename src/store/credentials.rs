//! The `credentials` table: every login draftd hands a stand, recorded by reference (lease id or
//! login name), never by value, from before it is handed out until it is revoked; and this
//! installation's id (`instance`), which marks what draftd creates on a shared database server.

use crate::stand::{RunId, StandId};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A login about to be handed out, as it is recorded.
#[derive(Debug, Clone, Copy)]
pub struct NewCredential<'a> {
    pub stand_id: StandId,
    /// The run that asked for it; `None` for the keeper's replacements.
    pub run_id: Option<RunId>,
    /// `app` or `migrate`.
    pub purpose: &'a str,
    /// `vault` or `postgres`.
    pub source: &'a str,
    pub username: &'a str,
    /// Vault's lease; `None` for a Postgres-issued login.
    pub lease_id: Option<&'a str>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_expires_at: DateTime<Utc>,
}

/// A recorded login not revoked yet: what revoking it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedLogin {
    pub credential_id: i64,
    pub source: String,
    pub username: String,
    pub lease_id: Option<String>,
}

/// A live credential as the keeper sees it, with its stand's state and namespace.
#[derive(Debug, sqlx::FromRow)]
pub struct LiveCredential {
    pub credential_id: i64,
    pub stand_id: StandId,
    pub purpose: String,
    pub source: String,
    pub username: String,
    pub lease_id: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_expires_at: DateTime<Utc>,
    pub superseded_at: Option<DateTime<Utc>>,
    pub stand_state: crate::stand::StandState,
    pub namespace: String,
}

/// This installation's id (the one row of `instance`).
pub async fn instance_id(pool: &PgPool) -> Result<uuid::Uuid, sqlx::Error> {
    sqlx::query_scalar("select instance_id from instance").fetch_one(pool).await
}

/// Records a login before it is handed out; returns its `credential_id`.
pub async fn record(pool: &PgPool, c: &NewCredential<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "insert into credentials (stand_id, run_id, purpose, source, username, lease_id, issued_at, expires_at, max_expires_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning credential_id",
    )
    .bind(c.stand_id)
    .bind(c.run_id)
    .bind(c.purpose)
    .bind(c.source)
    .bind(c.username)
    .bind(c.lease_id)
    .bind(c.issued_at)
    .bind(c.expires_at)
    .bind(c.max_expires_at)
    .fetch_one(pool)
    .await
}

/// Marks the stand's other live app logins as replaced by `current`; returns how many.
pub async fn supersede_app(pool: &PgPool, stand_id: StandId, current: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "update credentials set superseded_at = now()
             where stand_id = $1 and purpose = 'app' and credential_id <> $2
               and revoked_at is null and superseded_at is null",
    )
    .bind(stand_id)
    .bind(current)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Marks one credential replaced, unless it is already.
pub async fn supersede(pool: &PgPool, credential_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("update credentials set superseded_at = now() where credential_id = $1 and superseded_at is null")
        .bind(credential_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The credential `credential_id`, unless it is revoked already (or unknown).
pub async fn live_login(pool: &PgPool, credential_id: i64) -> Result<Option<RecordedLogin>, sqlx::Error> {
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "select source, username, lease_id from credentials where credential_id = $1 and revoked_at is null",
    )
    .bind(credential_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(source, username, lease_id)| RecordedLogin { credential_id, source, username, lease_id }))
}

/// Every credential of the stand not revoked yet, oldest first.
pub async fn live_logins_of(pool: &PgPool, stand_id: StandId) -> Result<Vec<RecordedLogin>, sqlx::Error> {
    let rows: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "select credential_id, source, username, lease_id from credentials
             where stand_id = $1 and revoked_at is null order by credential_id",
    )
    .bind(stand_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(credential_id, source, username, lease_id)| RecordedLogin { credential_id, source, username, lease_id })
        .collect())
}

/// Records that the credential is revoked.
pub async fn mark_revoked(pool: &PgPool, credential_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("update credentials set revoked_at = now() where credential_id = $1")
        .bind(credential_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every credential not revoked yet, of every stand, oldest first: the keeper's pass.
pub async fn live(pool: &PgPool) -> Result<Vec<LiveCredential>, sqlx::Error> {
    sqlx::query_as(
        "select c.credential_id, c.stand_id, c.purpose, c.source, c.username, c.lease_id, c.issued_at,
                    c.expires_at, c.max_expires_at, c.superseded_at, s.state as stand_state, s.namespace
             from credentials c join stands s using (stand_id)
             where c.revoked_at is null order by c.credential_id",
    )
    .fetch_all(pool)
    .await
}

/// A renewed lease: the credential now expires `ttl` from now.
pub async fn renewed(pool: &PgPool, credential_id: i64, ttl: chrono::Duration) -> Result<(), sqlx::Error> {
    sqlx::query("update credentials set expires_at = now() + $2 where credential_id = $1")
        .bind(credential_id)
        .bind(ttl)
        .execute(pool)
        .await?;
    Ok(())
}
