//! The health watch in draftd's database: which awake stands are due for a probe, claimed in one
//! statement per tick, and each stand's move between healthy and degraded with its audit row.
//!
//! Spreading: a stand's probes fall at its own offset in the interval, `interval × frac(id × φ⁻¹)`
//! (φ the golden ratio). Consecutive ids land as far apart as the stands already there allow (a
//! Weyl sequence), so a thousand stands numbered one after another fill a five-minute interval
//! almost evenly, with no burst at any second, and every replica computes the same slots.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgExecutor, PgPool};

use super::StoreError;
use crate::stand::{Health, StandId};

/// Who the audit rows name: the watch itself, not a person.
pub const WATCH_ACTOR: &str = "draftd:watch";
/// The `audit.action` of a stand found not answering (`detail.reason` says how).
pub const DEGRADED: &str = "health.degraded";
/// The `audit.action` of a degraded stand answering again (`detail.reason`: a probe or a deploy).
pub const RECOVERED: &str = "health.recovered";

/// The first instant after `now` at the stand's own offset in the interval, in SQL: `stand` the
/// stand's id, `now` a timestamptz, `interval` seconds as numeric (exact, so every replica agrees).
/// A slot is stored to the microsecond, a hair off the exact one: `now` is taken a millisecond
/// later, so a stand claimed at its slot is never found due at that same slot again.
fn next_slot(stand: &str, now: &str, interval: &str) -> String {
    let offset = format!("({interval} * mod({stand}::numeric * 0.6180339887498949, 1))");
    format!(
        "to_timestamp(((floor((extract(epoch from {now}) + 0.001 - {offset}) / {interval}) + 1) * {interval} + {offset})::float8)"
    )
}

fn seconds(interval: Duration) -> f64 {
    interval.as_secs_f64()
}

/// A stand a tick claimed for a probe.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Due {
    pub stand_id: StandId,
    pub project: String,
    pub namespace: String,
    pub health: Health,
    /// A run of the stand is queued or running: a deploy may be rolling it, so it is not probed
    /// this time (its verify is the judge), only moved to its next slot.
    pub busy: bool,
}

/// Claims the awake stands due at `now`, at most `limit`, and moves each to its next slot: one
/// indexed statement, whatever the fleet. Rows another replica is claiming are skipped, so two
/// replicas never probe one stand in the same interval.
pub async fn claim_due(
    pool: &PgPool,
    now: DateTime<Utc>,
    interval: Duration,
    limit: i64,
) -> Result<Vec<Due>, StoreError> {
    let sql = format!(
        "with due as (
            select stand_id from stands
            where state = 'active' and next_probe_at is not null and next_probe_at <= $1
            order by next_probe_at limit $2
            for update skip locked)
         update stands s set next_probe_at = {}
         from due where s.stand_id = due.stand_id
         returning s.stand_id, s.project, s.namespace, s.health,
            exists (select 1 from runs r where r.stand_id = s.stand_id and r.state in ('queued', 'running')) as busy",
        next_slot("s.stand_id", "$1::timestamptz", "$3::numeric")
    );
    let mut due: Vec<Due> = sqlx::query_as(&sql).bind(now).bind(limit).bind(seconds(interval)).fetch_all(pool).await?;
    due.sort_by_key(|d| d.stand_id);
    Ok(due)
}

/// A deploy or wake of the stand passed verify at `now`: it is healthy, and watched from its next
/// slot on. A stand that was degraded says it recovered (audit row). Call it in the verify step.
pub async fn verified<'e>(
    conn: impl PgExecutor<'e>,
    stand_id: StandId,
    now: DateTime<Utc>,
    interval: Duration,
) -> Result<(), StoreError> {
    let sql = format!(
        "with before as (select health from stands where stand_id = $1 for update),
         changed as (
            update stands set next_probe_at = {},
                health = 'healthy', health_reason = null, health_diagnostics = null,
                health_since = case when health = 'degraded' or health_since is null then $2 else health_since end
            where stand_id = $1 returning stand_id)
         insert into audit (actor, action, stand_id, detail)
         select $4, $5, $1, $6 from before join changed on true where before.health = 'degraded'",
        next_slot("stand_id", "$2::timestamptz", "$3::numeric")
    );
    sqlx::query(&sql)
        .bind(stand_id)
        .bind(now)
        .bind(seconds(interval))
        .bind(WATCH_ACTOR)
        .bind(RECOVERED)
        .bind(json!({ "reason": "a deploy of the stand passed verify" }))
        .execute(conn)
        .await?;
    Ok(())
}

/// What a failed probe found, as the stand keeps it while degraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The probe's outcome, one line: `probe of http://… answered 500`.
    pub reason: String,
    /// The cluster's account of the stand's pods (verify's diagnostics), if it could be read.
    pub diagnostics: Option<String>,
}

/// The stand turns degraded at `now`, unless it already is, is no longer awake, or a run touched it
/// since `probed_at` (what the probe saw may be the old release): with its audit row, in one
/// statement. Whether it changed.
pub async fn degrade(
    pool: &PgPool,
    stand_id: StandId,
    finding: &Finding,
    probed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    change(pool, stand_id, Health::Degraded, finding, probed_at, now).await
}

/// The stand answers again: healthy at `now`, with its audit row, under [`degrade`]'s conditions.
/// Whether it changed.
pub async fn recover(
    pool: &PgPool,
    stand_id: StandId,
    reason: &str,
    probed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let finding = Finding { reason: reason.to_owned(), diagnostics: None };
    change(pool, stand_id, Health::Healthy, &finding, probed_at, now).await
}

async fn change(
    pool: &PgPool,
    stand_id: StandId,
    to: Health,
    finding: &Finding,
    probed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let (action, keep) = match to {
        Health::Degraded => (DEGRADED, true),
        Health::Healthy => (RECOVERED, false),
    };
    let changed: Option<StandId> = sqlx::query_scalar(
        "with changed as (
            update stands s set health = $2, health_since = $3,
                health_reason = case when $4 then $5 end, health_diagnostics = case when $4 then $6 end
            where s.stand_id = $1 and s.health <> $2 and s.state = 'active'
              and not exists (select 1 from runs r where r.stand_id = s.stand_id
                              and (r.state in ('queued', 'running') or r.finished_at > $7))
            returning s.stand_id)
         insert into audit (actor, action, stand_id, detail)
         select $8, $9, stand_id, $10 from changed returning stand_id",
    )
    .bind(stand_id)
    .bind(to)
    .bind(now)
    .bind(keep)
    .bind(&finding.reason)
    .bind(&finding.diagnostics)
    .bind(probed_at)
    .bind(WATCH_ACTOR)
    .bind(action)
    .bind(json!({ "reason": finding.reason }))
    .fetch_optional(pool)
    .await?;
    Ok(changed.is_some())
}
