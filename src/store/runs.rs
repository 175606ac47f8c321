//! Runs as a work queue: claiming with `FOR UPDATE SKIP LOCKED`, leases, and fenced step records.
//!
//! Every write a worker makes about a run it holds carries `lease_owner = $owner and state =
//! 'running'`: a worker whose lease expired (and whose run another worker took over) finds its
//! writes refused ([`RunStoreError::LeaseLost`]) and stops, so a run is never driven by two workers.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use super::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RunStoreError {
    #[error("the lease on run {0} was lost to another worker")]
    LeaseLost(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RunStoreError {
    fn from(e: sqlx::Error) -> Self {
        RunStoreError::Store(StoreError::Db(e))
    }
}

/// A run a worker holds, with what its steps need to know about the stand.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedRun {
    pub run_id: i64,
    pub stand_id: i64,
    pub number: i32,
    pub kind: String,
    pub trigger: String,
    pub sha: Option<String>,
    pub epoch: i32,
    pub requested_by: Option<String>,
    pub params: Value,
    /// How many times the run has been claimed, this claim included.
    pub attempt: i32,
    pub project: String,
    pub branch: String,
    pub namespace: String,
}

/// A step's record as a resumed run finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRecord {
    pub name: String,
    pub state: String,
    pub attempt: i32,
}

/// Claims the oldest runnable run: queued (and past its backoff) or running with an expired lease,
/// whose stand has no older unfinished run, so runs of one stand go one at a time and in order.
/// `max_running` caps runs in flight across every worker and replica on this database.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    max_running: i64,
) -> Result<Option<ClaimedRun>, RunStoreError> {
    let mut tx = pool.begin().await?;
    // Locking the stand row too keeps two workers from claiming two runs of one stand at once.
    let candidate: Option<i64> = sqlx::query_scalar(
        "select r.run_id from runs r join stands s on s.stand_id = r.stand_id
         where ((r.state = 'queued' and coalesce(r.not_before, now()) <= now())
                or (r.state = 'running' and r.lease_expires_at < now()))
           and not exists (select 1 from runs o where o.stand_id = r.stand_id and o.number < r.number
                           and o.state in ('queued', 'running'))
           and (select count(*) from runs a where a.state = 'running' and a.lease_expires_at >= now()) < $1
         order by r.queued_at, r.run_id
         limit 1
         for update of r, s skip locked",
    )
    .bind(max_running)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(run_id) = candidate else {
        tx.rollback().await?;
        return Ok(None);
    };
    let claimed: ClaimedRun = sqlx::query_as(
        "with r as (
             update runs set state = 'running', lease_owner = $2, lease_expires_at = now() + $3,
                             heartbeat_at = now(), attempt = attempt + 1, started_at = coalesce(started_at, now())
             where run_id = $1
             returning run_id, stand_id, number, kind, trigger, sha, epoch, requested_by, params, attempt
         )
         select r.*, s.project, s.branch, s.namespace from r join stands s on s.stand_id = r.stand_id",
    )
    .bind(run_id)
    .bind(owner)
    .bind(lease)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(claimed))
}

/// Extends the lease; `LeaseLost` when another worker holds the run now.
pub async fn heartbeat(pool: &PgPool, run_id: i64, owner: &str, lease: Duration) -> Result<(), RunStoreError> {
    let n = sqlx::query(
        "update runs set lease_expires_at = now() + $3, heartbeat_at = now()
         where run_id = $1 and lease_owner = $2 and state = 'running'",
    )
    .bind(run_id)
    .bind(owner)
    .bind(lease)
    .execute(pool)
    .await?
    .rows_affected();
    if n == 1 { Ok(()) } else { Err(RunStoreError::LeaseLost(run_id)) }
}

pub async fn steps(pool: &PgPool, run_id: i64) -> Result<Vec<StepRecord>, RunStoreError> {
    Ok(sqlx::query_as("select name, state, attempt from steps where run_id = $1").bind(run_id).fetch_all(pool).await?)
}

/// Records that an attempt of `step` starts; returns the attempt number.
pub async fn start_step(pool: &PgPool, run_id: i64, owner: &str, step: &str) -> Result<i32, RunStoreError> {
    let attempt: Option<i32> = sqlx::query_scalar(
        "insert into steps (run_id, name, state, attempt, started_at)
         select $1, $3, 'running', 1, now()
         from runs where run_id = $1 and lease_owner = $2 and state = 'running'
         on conflict (run_id, name) do update
             set state = 'running', attempt = steps.attempt + 1, started_at = now(), finished_at = null
         returning attempt",
    )
    .bind(run_id)
    .bind(owner)
    .bind(step)
    .fetch_optional(pool)
    .await?;
    attempt.ok_or(RunStoreError::LeaseLost(run_id))
}

/// Records how an attempt of `step` ended (`succeeded`, `skipped`, `failed`, or `running` again when
/// a transient error will be retried).
pub async fn finish_step(
    pool: &PgPool,
    run_id: i64,
    owner: &str,
    step: &str,
    state: &str,
    detail: &Value,
    error: Option<&Value>,
) -> Result<(), RunStoreError> {
    let n = sqlx::query(
        "update steps set state = $4, detail = $5, error = $6,
                          finished_at = case when $4 = 'running' then null else now() end
         where run_id = $1 and name = $3
           and exists (select 1 from runs where run_id = $1 and lease_owner = $2 and state = 'running')",
    )
    .bind(run_id)
    .bind(owner)
    .bind(step)
    .bind(state)
    .bind(detail)
    .bind(error)
    .execute(pool)
    .await?
    .rows_affected();
    if n == 1 { Ok(()) } else { Err(RunStoreError::LeaseLost(run_id)) }
}

/// Ends the run in a terminal state and releases its lease.
pub async fn finish_run(
    pool: &PgPool,
    run_id: i64,
    owner: &str,
    state: &str,
    error: Option<&Value>,
) -> Result<(), RunStoreError> {
    let n = sqlx::query(
        "update runs set state = $3, error = $4, finished_at = now(), lease_owner = null, lease_expires_at = null
         where run_id = $1 and lease_owner = $2 and state = 'running'",
    )
    .bind(run_id)
    .bind(owner)
    .bind(state)
    .bind(error)
    .execute(pool)
    .await?
    .rows_affected();
    if n == 1 { Ok(()) } else { Err(RunStoreError::LeaseLost(run_id)) }
}

/// What a newer run of the same stand means for this one at a step boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overtaken {
    /// A newer deploy: this one is `superseded`.
    ByDeploy,
    /// A teardown: this deploy is `cancelled`.
    ByTeardown,
}

/// Only deploys give way: a teardown always runs to the end, and a revived stand's deploy waits for it.
pub async fn overtaken(pool: &PgPool, run: &ClaimedRun) -> Result<Option<Overtaken>, RunStoreError> {
    if run.kind != "deploy" {
        return Ok(None);
    }
    let newer: Option<String> = sqlx::query_scalar(
        "select kind from runs where stand_id = $1 and number > $2 and kind in ('deploy', 'teardown')
           and state in ('queued', 'running')
         order by (kind = 'teardown') desc, number desc limit 1",
    )
    .bind(run.stand_id)
    .bind(run.number)
    .fetch_optional(pool)
    .await?;
    Ok(newer.map(|k| if k == "teardown" { Overtaken::ByTeardown } else { Overtaken::ByDeploy }))
}
