//! A stand's life after intake: the expiry a deploy sets and an extend moves, the tombstone a
//! teardown leaves, and what the reaper queues (teardowns of expired stands, retries of failed
//! teardowns, expiry warnings). What its scans remember of orphans is in `orphans`.
//!
//! The reaper's statements take `now` from the caller, so tests drive them with a clock of their own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use super::runs::queue_for_chosen;
use crate::stand::{RunId, RunKind, StandChange, StandId, Trigger};

/// A deploy run started: the stand lives `ttl` from the run's first start. An extension that reaches
/// further is kept: a push must not cut short the time someone asked for.
pub async fn reset_expiry(pool: &PgPool, run_id: RunId, ttl: Duration) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar(
        "update stands s set expires_at = greatest(s.expires_at, r.started_at + $2), updated_at = now()
         from runs r
         where r.run_id = $1 and s.stand_id = r.stand_id and s.state in ('active', 'sleeping')
         returning s.expires_at",
    )
    .bind(run_id)
    .bind(ttl)
    .fetch_optional(pool)
    .await?)
}

/// What an extend run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Extended {
    pub from: Option<DateTime<Utc>>,
    pub to: DateTime<Utc>,
    /// `max_expiry` cut the extension short.
    pub capped: bool,
}

/// Moves the stand's expiry `by` from its current expiry (or from now, when that has passed),
/// never beyond `now + max`. The target (and whether it was capped) is recorded in the run's params
/// in the same statement, so a resumed run lands on the same time instead of extending twice. `None`: the stand is not active.
pub async fn extend(pool: &PgPool, run_id: RunId, by: Duration, max: Duration) -> Result<Option<Extended>, StoreError> {
    let row: Option<(Option<DateTime<Utc>>, DateTime<Utc>, bool)> = sqlx::query_as(
        "with target as (
             select s.stand_id,
                    case when r.params ? 'extended_to' then (r.params->>'extended_from')::timestamptz
                         else s.expires_at end as from_at,
                    coalesce((r.params->>'extended_to')::timestamptz,
                             least(greatest(s.expires_at, now()) + $2, now() + $3)) as to_at,
                    r.params ? 'extended_to' as again,
                    case when r.params ? 'extended_to' then coalesce((r.params->>'extended_capped')::boolean, false)
                         else greatest(s.expires_at, now()) + $2 > now() + $3 end as capped
             from runs r join stands s on s.stand_id = r.stand_id
             where r.run_id = $1 and s.state in ('active', 'sleeping', 'waiting')
             for update of s
         ), stand as (
             update stands set expires_at = target.to_at, expiry_warned_for = null, updated_at = now()
             from target where stands.stand_id = target.stand_id
         ), run as (
             update runs set params = params || jsonb_build_object('extended_from', target.from_at,
                                                                   'extended_to', target.to_at,
                                                                   'extended_capped', target.capped)
             from target where runs.run_id = $1 and not target.again
         )
         select from_at, to_at, capped from target",
    )
    .bind(run_id)
    .bind(by)
    .bind(max)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(from, to, capped)| Extended { from, to, capped }))
}

/// A teardown the reaper queued.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct QueuedTeardown {
    pub stand_id: StandId,
    pub run_id: RunId,
    pub namespace: String,
}

/// Queues a teardown (trigger `expired`) for every active stand whose expiry has passed and that
/// has no run queued or running (a queued deploy is a push: it moves the expiry when it starts).
/// One statement, however many stands expired.
pub async fn queue_expired(pool: &PgPool, now: DateTime<Utc>, limit: i64) -> Result<Vec<QueuedTeardown>, StoreError> {
    let sql = queue_for_chosen(
        "select s.stand_id from stands s
         where s.state = any($4) and s.expires_at <= $1 and not exists (select 1 from runs r
               where r.stand_id = s.stand_id and r.state in ('queued', 'running'))
         order by s.expires_at limit $2
         for update of s skip locked",
        ", state = $3, state_reason = 'expired'",
        RunKind::Teardown,
        Trigger::Expired,
    );
    // Expiry is a close (StandChange::Close), made for many stands in one statement.
    let change = StandChange::Close;
    Ok(sqlx::query_as(&sql).bind(now).bind(limit).bind(change.to()).bind(change.from_names()).fetch_all(pool).await?)
}

/// Teardowns of one life of a stand, the first included, before the reaper stops retrying (and the
/// stand counts as stuck closing).
pub const MAX_TEARDOWN_ATTEMPTS: i64 = 3;

/// Teardowns that failed are queued again (trigger `retry`), at most `max_attempts` per life of
/// the stand: a namespace stuck on a finalizer or a database server that was down must not leave
/// the stand behind, and one that can never go must not be retried forever.
pub async fn queue_retries(pool: &PgPool, max_attempts: i64) -> Result<Vec<QueuedTeardown>, StoreError> {
    let sql = queue_for_chosen(
        "select s.stand_id from stands s
         where s.state = 'closing' and not exists (select 1 from runs r
               where r.stand_id = s.stand_id and r.state in ('queued', 'running'))
           and (select count(*) from runs r where r.stand_id = s.stand_id and r.epoch = s.epoch
                   and r.kind = 'teardown' and r.state = 'failed') between 1 and $1 - 1
         for update of s skip locked",
        "",
        RunKind::Teardown,
        Trigger::Retry,
    );
    Ok(sqlx::query_as(&sql).bind(max_attempts).fetch_all(pool).await?)
}

/// Active stands that expire within `warn_before` and whose sticky comment has not warned about
/// this expiry yet; marked as warned in the same statement, so two sweeps never warn twice.
pub async fn take_warnings(
    pool: &PgPool,
    now: DateTime<Utc>,
    warn_before: Duration,
) -> Result<Vec<StandId>, StoreError> {
    Ok(sqlx::query_scalar(
        "update stands set expiry_warned_for = expires_at
         where state in ('active', 'sleeping', 'waiting') and expires_at > $1 and expires_at <= $1 + $2
           and expiry_warned_for is distinct from expires_at
         returning stand_id",
    )
    .bind(now)
    .bind(warn_before)
    .fetch_all(pool)
    .await?)
}
