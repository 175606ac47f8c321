//! Sleep and wake in draftd's database: which stands are idle, the replicas a sleep recorded, and
//! the stand's move between awake and asleep (through [`super::stands`]' transitions).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};

use super::StoreError;
use crate::stand::{RunId, RunKind, StandChange, StandId, Trigger, Workload};

/// A sleep the sweep queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QueuedSleep {
    pub stand_id: StandId,
    pub run_id: RunId,
    pub namespace: String,
}

/// Queues a sleep run (trigger `idle`) for each active stand of the given projects with no
/// activity for the project's idle time and no run queued or running, at most `limit`, the longest
/// idle first. One statement; the stands are locked, so two sweeps never queue two sleeps.
pub async fn queue_idle(
    pool: &PgPool,
    now: DateTime<Utc>,
    idle_after: &[(String, Duration)],
    limit: i64,
) -> Result<Vec<QueuedSleep>, StoreError> {
    let projects: Vec<&str> = idle_after.iter().map(|(p, _)| p.as_str()).collect();
    let seconds: Vec<f64> = idle_after.iter().map(|(_, d)| d.as_secs_f64()).collect();
    let sql = super::runs::queue_for_chosen(
        "select s.stand_id from stands s
           join unnest($3::text[], $4::float8[]) as idle (project, seconds) on idle.project = s.project
         where s.state = any($5) and s.last_activity_at <= $1 - make_interval(secs => idle.seconds)
           and not exists (select 1 from runs r where r.stand_id = s.stand_id and r.state in ('queued', 'running'))
         order by s.last_activity_at limit $2
         for update of s skip locked",
        "",
        RunKind::Sleep,
        Trigger::Idle,
    );
    Ok(sqlx::query_as(&sql)
        .bind(now)
        .bind(limit)
        .bind(projects)
        .bind(seconds)
        .bind(StandChange::Sleep.from_names())
        .fetch_all(pool)
        .await?)
}

/// What the stand's sleep recorded, if it is (or is going) to sleep.
pub async fn record(pool: &PgPool, stand_id: StandId) -> Result<Option<Vec<Workload>>, StoreError> {
    let value: Option<sqlx::types::Json<Vec<Workload>>> =
        sqlx::query_scalar("select sleep_record from stands where stand_id = $1")
            .bind(stand_id)
            .fetch_optional(pool)
            .await?
            .flatten();
    Ok(value.map(|v| v.0))
}

/// Keeps the replicas the stand's workloads have before any is scaled to zero; a record already
/// there (a sleep resumed after a crash, when some are at zero already) is kept and returned.
pub async fn keep_record(
    pool: &PgPool,
    stand_id: StandId,
    workloads: &[Workload],
) -> Result<Vec<Workload>, StoreError> {
    let kept: sqlx::types::Json<Vec<Workload>> = sqlx::query_scalar(
        "update stands set sleep_record = coalesce(sleep_record, $2) where stand_id = $1 returning sleep_record",
    )
    .bind(stand_id)
    .bind(sqlx::types::Json(workloads))
    .fetch_one(pool)
    .await?;
    Ok(kept.0)
}

/// The stand is asleep: its workloads are at zero ([`StandChange::Sleep`]). False when it was not
/// awake (closed meanwhile).
pub async fn asleep<'e>(conn: impl PgExecutor<'e>, stand_id: StandId) -> Result<bool, StoreError> {
    super::stands::change(conn, stand_id, StandChange::Sleep).await
}

/// The stand is awake again: its workloads are back ([`StandChange::Wake`]) and the record goes.
/// A stand that was not asleep (a deploy of an awake one) keeps its state: false.
pub async fn awake(pool: &PgPool, stand_id: StandId) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let woke = super::stands::change(&mut *tx, stand_id, StandChange::Wake).await?;
    sqlx::query("update stands set sleep_record = null, last_activity_at = now() where stand_id = $1")
        .bind(stand_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(woke)
}

/// A stand as a request for its host finds it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Visited {
    pub stand_id: StandId,
    pub state: crate::stand::StandState,
    /// A wake (or a deploy, which wakes it too) of the stand is queued or running.
    pub waking: bool,
    /// Seconds since its newest wake (or deploy) finished, if one did.
    pub awake_for: Option<f64>,
    /// Why its wake waits for a place (`max_active`), while it does.
    pub waiting_reason: Option<String>,
}

/// The stand of `namespace`, with whether it is being woken.
pub async fn visited(pool: &PgPool, namespace: &str) -> Result<Option<Visited>, StoreError> {
    Ok(sqlx::query_as(
        "select s.stand_id, s.state,
                exists (select 1 from runs r where r.stand_id = s.stand_id and r.kind in ('wake', 'deploy')
                        and r.state in ('queued', 'running')) as waking,
                (select extract(epoch from now() - max(r.finished_at))::float8 from runs r
                  where r.stand_id = s.stand_id and r.kind in ('wake', 'deploy') and r.state = 'succeeded') as awake_for,
                s.waiting_reason
         from stands s where s.namespace = $1",
    )
    .bind(namespace)
    .fetch_optional(pool)
    .await?)
}

/// Queues a wake (trigger `visit`) of a sleeping stand, unless a wake or a deploy (a push wakes it)
/// is queued or running: a burst of requests wakes it once. The run, when this call queued it.
pub async fn wake_on_visit(pool: &PgPool, stand_id: StandId) -> Result<Option<RunId>, StoreError> {
    let mut tx = pool.begin().await?;
    // The stand's row lock orders this against another request's check.
    let waking: Option<bool> = sqlx::query_scalar(
        "select exists (select 1 from runs r where r.stand_id = s.stand_id and r.kind in ('wake', 'deploy')
                        and r.state in ('queued', 'running'))
         from stands s where s.stand_id = $1 and s.state = 'sleeping' for update of s",
    )
    .bind(stand_id)
    .fetch_optional(&mut *tx)
    .await?;
    if waking != Some(false) {
        return Ok(None);
    }
    let request = super::manual::ManualRequest {
        command: crate::stand::Command::Wake,
        trigger: crate::stand::Trigger::Visit,
        requested_by: "visit",
        author_id: None,
        sha: None,
        authorised: true,
    };
    let outcome = super::manual::queue(&mut tx, super::manual::StandLookup::Id(stand_id), &request).await?;
    tx.commit().await?;
    Ok(match outcome {
        super::manual::ManualOutcome::Queued { run, .. } => Some(run),
        super::manual::ManualOutcome::Refused { .. } => None,
    })
}

/// Marks active stands of `namespaces` as just used (requests reached them): the idle sweep counts
/// from now. The number of stands marked.
pub async fn requests_seen(pool: &PgPool, namespaces: &[String]) -> Result<u64, StoreError> {
    Ok(sqlx::query("update stands set last_activity_at = now() where state = 'active' and namespace = any($1)")
        .bind(namespaces)
        .execute(pool)
        .await?
        .rows_affected())
}
