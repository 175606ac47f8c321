//! Orphans: what the reaper's scans found that no live stand owns, remembered across scans so a
//! thing is removed only once two consecutive scans found it; and the stands the scans compare with.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::StoreError;
use crate::stand::StandId;

/// A stand as the namespace scan needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StandRow {
    pub namespace: String,
    pub stand_id: StandId,
    pub state: crate::stand::StandState,
    pub expires_at: Option<DateTime<Utc>>,
    /// A run of the stand is queued or running (a deploy resetting the expiry, or the teardown itself).
    pub busy: bool,
}

/// The stands (whatever their state) that own any of `namespaces`.
pub async fn stands_of(pool: &PgPool, namespaces: &[&str]) -> Result<Vec<StandRow>, StoreError> {
    Ok(sqlx::query_as(
        "select s.namespace, s.stand_id, s.state, s.expires_at,
                exists (select 1 from runs r where r.stand_id = s.stand_id and r.state in ('queued', 'running')) as busy
         from stands s where s.namespace = any($1)",
    )
    .bind(namespaces)
    .fetch_all(pool)
    .await?)
}

/// The namespaces of stands that are alive (active or closing): nothing of theirs is an orphan.
pub async fn live_namespaces(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("select namespace from stands where state in ('active', 'closing', 'sleeping', 'waiting')")
        .fetch_all(pool)
        .await?)
}

/// One orphan a scan found, with how many consecutive successful scans of its kind found it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Sighting {
    pub name: String,
    pub sightings: i32,
}

/// Records what a successful scan of `kind` found: each thing found again counts one more
/// sighting, each new one starts at one, and what the scan no longer finds is forgotten (so the
/// count is of consecutive scans). A failed scan must not call this: it would forget everything.
pub async fn record_sightings(
    pool: &PgPool,
    kind: &str,
    found: &[(String, serde_json::Value)],
) -> Result<Vec<Sighting>, StoreError> {
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    let details: Vec<&serde_json::Value> = found.iter().map(|(_, d)| d).collect();
    let mut tx = pool.begin().await?;
    sqlx::query("delete from orphans where kind = $1 and not (name = any($2))")
        .bind(kind)
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    let seen: Vec<Sighting> = sqlx::query_as(
        "insert into orphans (kind, name, detail)
         select $1, n, d from unnest($2::text[], $3::jsonb[]) as f(n, d)
         on conflict (kind, name) do update
             set sightings = orphans.sightings + 1, last_seen_at = now(), detail = excluded.detail
         returning name, sightings",
    )
    .bind(kind)
    .bind(&names)
    .bind(&details)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(seen)
}

/// Forgets an orphan once it is removed.
pub async fn forget_orphan(pool: &PgPool, kind: &str, name: &str) -> Result<(), StoreError> {
    sqlx::query("delete from orphans where kind = $1 and name = $2").bind(kind).bind(name).execute(pool).await?;
    Ok(())
}

/// Audits a removal: `detail` names its kind and name, and what removing it did.
pub async fn audit_removed(pool: &PgPool, detail: &Value) -> Result<(), StoreError> {
    sqlx::query("insert into audit (actor, action, detail) values ('reaper', 'orphan.removed', $1)")
        .bind(detail)
        .execute(pool)
        .await?;
    Ok(())
}
