//! Runs as a work queue: claiming with `FOR UPDATE SKIP LOCKED`, leases, and fenced step records.
//!
//! Every write a worker makes about a run it holds carries `lease_owner = $owner and state =
//! 'running'`: a worker whose lease expired (and whose run another worker took over) finds its
//! writes refused ([`RunStoreError::LeaseLost`]) and stops, so a run is never driven by two workers.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::StoreError;
use crate::stand::{
    BranchName, Namespace, ProjectName, RunId, RunKind, RunState, StandId, StepName, StepState, Trigger,
};

#[derive(Debug, thiserror::Error)]
pub enum RunStoreError {
    #[error("the lease on run {0} was lost to another worker")]
    LeaseLost(RunId),
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
    pub run_id: RunId,
    pub stand_id: StandId,
    pub number: i32,
    pub kind: RunKind,
    pub trigger: Trigger,
    pub sha: Option<String>,
    pub epoch: i32,
    pub requested_by: Option<String>,
    pub params: Value,
    /// How many times the run has been claimed, this claim included.
    pub attempt: i32,
    #[sqlx(try_from = "String")]
    pub project: ProjectName,
    #[sqlx(try_from = "String")]
    pub branch: BranchName,
    #[sqlx(try_from = "String")]
    pub namespace: Namespace,
}

/// A step's record as a resumed run finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRecord {
    pub name: String,
    pub state: StepState,
    pub attempt: i32,
}

/// Claims the oldest runnable run: queued (and past its backoff) or running with an expired lease,
/// whose stand has no older unfinished run, so runs of one stand go one at a time and in order.
/// `max_running` caps runs in flight across every worker and replica on this database;
/// `project_limits` (project → limit) caps them per project.
///
/// The SQL is the `draftd_claim` function (migration 4): claims are serialised by an advisory lock
/// taken before the statement that counts runs in flight, or two claims reading one snapshot could
/// both take the last free slot; a function takes both in one round trip.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    max_running: i64,
    project_limits: &Value,
) -> Result<Option<ClaimedRun>, RunStoreError> {
    Ok(sqlx::query_as("select * from draftd_claim($1, $2, $3, $4)")
        .bind(owner)
        .bind(lease)
        .bind(max_running)
        .bind(project_limits)
        .fetch_optional(pool)
        .await?)
}

/// What asked for a run: the HTTP request and the forge delivery, where there were any.
#[derive(Debug, Default, sqlx::FromRow)]
pub struct Origin {
    pub request_id: Option<String>,
    pub delivery: Option<String>,
}

/// Records the id of the HTTP request that queued a run (API, dashboard); a webhook's run finds its
/// request through its delivery.
pub async fn set_request_id(tx: &mut sqlx::PgConnection, run_id: RunId, request_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("update runs set request_id = $2 where run_id = $1").bind(run_id).bind(request_id).execute(tx).await?;
    Ok(())
}

pub async fn origin(pool: &PgPool, run_id: RunId) -> Result<Origin, sqlx::Error> {
    sqlx::query_as(
        "select coalesce(r.request_id, d.request_id) as request_id, d.delivery_id as delivery
         from runs r left join lateral (
             select delivery_id, request_id from deliveries where run_id = r.run_id order by received_at limit 1
         ) d on true
         where r.run_id = $1",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await
}

/// Extends the lease; `LeaseLost` when another worker holds the run now. Returns whether the run
/// is a deploy of a stand whose teardown is queued: the deploy stops at once instead of finishing
/// a step (a helm upgrade, a smoke Job) only to have it removed.
pub async fn heartbeat(pool: &PgPool, run_id: RunId, owner: &str, lease: Duration) -> Result<bool, RunStoreError> {
    let row: Option<bool> = sqlx::query_scalar(
        "update runs set lease_expires_at = now() + $3, heartbeat_at = now()
         where run_id = $1 and lease_owner = $2 and state = 'running'
         returning kind = 'deploy' and exists (
             select 1 from runs t where t.stand_id = runs.stand_id and t.number > runs.number
                                    and t.kind = 'teardown' and t.state in ('queued', 'running'))",
    )
    .bind(run_id)
    .bind(owner)
    .bind(lease)
    .fetch_optional(pool)
    .await?;
    row.ok_or(RunStoreError::LeaseLost(run_id))
}

pub async fn steps(pool: &PgPool, run_id: RunId) -> Result<Vec<StepRecord>, RunStoreError> {
    Ok(sqlx::query_as("select name, state, attempt from steps where run_id = $1").bind(run_id).fetch_all(pool).await?)
}

/// Records how an attempt of `step` ended (`succeeded`, `skipped`, `failed`, or `running` again when
/// a transient error will be retried).
pub async fn finish_step(
    pool: &PgPool,
    run_id: RunId,
    owner: &str,
    step: &str,
    state: StepState,
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

/// How an attempt of a step ended, recorded at the next boundary ([`advance`], [`finish_run`]).
#[derive(Debug, Clone, Serialize)]
pub struct StepEnd {
    pub name: &'static str,
    /// `succeeded`, `skipped`, `failed` or `cancelled`.
    pub state: StepState,
    pub detail: Value,
    pub error: Option<Value>,
}

/// What [`advance`] found at a step boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// A newer run of the stand overtook this one; nothing was started.
    Overtaken(Overtaken),
    /// The next steps were recorded as started, with their attempt numbers, in the order asked.
    Started(Vec<i32>),
}

#[derive(sqlx::FromRow)]
struct BoundaryRow {
    held: i64,
    recorded: i64,
    newer: Option<RunKind>,
    started: sqlx::types::Json<Vec<(String, i32)>>,
}

/// A step boundary in one statement, so it costs one round trip however many records it makes:
/// records how the steps just run `ended`, sees (when `check_overtaken`) whether a newer run of the
/// stand overtook this one, and, if not, records the `next` steps as started.
///
/// The run's row is locked for the statement, so a worker taking over an expired lease cannot
/// claim the run between the lease check and the writes.
pub async fn advance(
    pool: &PgPool,
    run: &ClaimedRun,
    owner: &str,
    ended: &[StepEnd],
    check_overtaken: bool,
    next: &[&str],
) -> Result<Advance, RunStoreError> {
    let check_overtaken = check_overtaken && run.kind.gives_way_to_newer_runs();
    let row: BoundaryRow = sqlx::query_as(
            "with lease as (
                 select run_id from runs where run_id = $1 and lease_owner = $2 and state = 'running' for update
             ),
             ended as (
                 update steps set state = e.state, detail = e.detail, error = e.error, finished_at = now()
                 from jsonb_to_recordset($3) as e(name text, state text, detail jsonb, error jsonb)
                 where steps.run_id = $1 and steps.name = e.name and exists (select 1 from lease)
                 returning steps.name
             ),
             newer as (
                 select kind from runs
                 where $4 and stand_id = $5 and number > $6 and kind in ('deploy', 'teardown')
                   and state in ('queued', 'running')
                 order by (kind = 'teardown') desc, number desc limit 1
             ),
             started as (
                 insert into steps (run_id, name, state, attempt, started_at)
                 select $1, n, 'running', 1, now() from lease, unnest($7::text[]) as n
                 where not exists (select 1 from newer)
                 on conflict (run_id, name) do update
                     set state = 'running', attempt = steps.attempt + 1, started_at = now(), finished_at = null
                 returning name, attempt
             )
             select (select count(*) from lease) as held, (select count(*) from ended) as recorded,
                    (select kind from newer) as newer,
                    coalesce((select jsonb_agg(jsonb_build_array(name, attempt)) from started), '[]'::jsonb) as started",
        )
        .bind(run.run_id)
        .bind(owner)
        .bind(sqlx::types::Json(ended))
        .bind(check_overtaken)
        .bind(run.stand_id)
        .bind(run.number)
        .bind(next)
        .fetch_one(pool)
        .await?;
    // A missing step row cannot happen under a held lease (every step is started before it ends);
    // stopping is the safe answer either way.
    let BoundaryRow { held, recorded, newer, started } = row;
    if held != 1 || recorded != ended.len() as i64 {
        return Err(RunStoreError::LeaseLost(run.run_id));
    }
    if let Some(kind) = newer {
        return Ok(Advance::Overtaken(Overtaken::by(kind)));
    }
    let attempts = next
        .iter()
        .map(|n| started.0.iter().find(|(name, _)| name == n).map(|(_, a)| *a))
        .collect::<Option<Vec<i32>>>()
        .ok_or(RunStoreError::LeaseLost(run.run_id))?;
    Ok(Advance::Started(attempts))
}

/// Puts a claimed run back in the queue, to be claimed again no sooner than `after` from now (a
/// deploy waiting for a place). Its claim is undone, attempt included: it did nothing.
pub async fn defer(pool: &PgPool, run_id: RunId, owner: &str, after: Duration) -> Result<(), RunStoreError> {
    let done = sqlx::query(
        "update runs set state = 'queued', lease_owner = null, lease_expires_at = null, heartbeat_at = null,
                         attempt = attempt - 1, not_before = now() + $3,
                         started_at = case when attempt = 1 then null else started_at end
         where run_id = $1 and lease_owner = $2 and state = 'running'",
    )
    .bind(run_id)
    .bind(owner)
    .bind(after)
    .execute(pool)
    .await?;
    if done.rows_affected() == 1 { Ok(()) } else { Err(RunStoreError::LeaseLost(run_id)) }
}

/// Ends the run in a terminal state and releases its lease, recording the steps that `ended` since
/// the last boundary in the same statement.
pub async fn finish_run(
    pool: &PgPool,
    run_id: RunId,
    owner: &str,
    state: RunState,
    error: Option<&Value>,
    ended: &[StepEnd],
) -> Result<(), RunStoreError> {
    let (finished, recorded): (i64, i64) = sqlx::query_as(
        "with run as (
             update runs set state = $3, error = $4, finished_at = now(), lease_owner = null, lease_expires_at = null
             where run_id = $1 and lease_owner = $2 and state = 'running'
             returning run_id
         ),
         ended as (
             update steps set state = e.state, detail = e.detail, error = e.error, finished_at = now()
             from jsonb_to_recordset($5) as e(name text, state text, detail jsonb, error jsonb)
             where steps.run_id = $1 and steps.name = e.name and exists (select 1 from run)
             returning steps.name
         )
         select (select count(*) from run), (select count(*) from ended)",
    )
    .bind(run_id)
    .bind(owner)
    .bind(state)
    .bind(error)
    .bind(sqlx::types::Json(ended))
    .fetch_one(pool)
    .await?;
    if finished == 1 && recorded == ended.len() as i64 { Ok(()) } else { Err(RunStoreError::LeaseLost(run_id)) }
}

/// Whether a newer deploy or teardown of `run`'s stand is queued or running, as [`advance`] sees it.
pub async fn overtaken_by(pool: &PgPool, run: &ClaimedRun) -> Result<Option<Overtaken>, RunStoreError> {
    let kind: Option<RunKind> = sqlx::query_scalar(
        "select kind from runs
         where stand_id = $1 and number > $2 and kind in ('deploy', 'teardown') and state in ('queued', 'running')
         order by (kind = 'teardown') desc, number desc limit 1",
    )
    .bind(run.stand_id)
    .bind(run.number)
    .fetch_optional(pool)
    .await?;
    Ok(kind.map(Overtaken::by))
}

/// What a newer run of the same stand means for this one at a step boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overtaken {
    /// A newer deploy: this one is `superseded`.
    ByDeploy,
    /// A teardown: this deploy is `cancelled`.
    ByTeardown,
}

impl Overtaken {
    /// What a newer `kind` of run (a deploy or a teardown) means for this one.
    fn by(kind: RunKind) -> Self {
        if kind.tears_down() { Overtaken::ByTeardown } else { Overtaken::ByDeploy }
    }
}

/// How long ago `run_id` was queued, in seconds, by the database's clock: the run's `queued_at` is
/// written in the same transaction as the delivery that asked for it.
pub async fn since_queued(pool: &PgPool, run_id: RunId) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar("select extract(epoch from clock_timestamp() - queued_at)::float8 from runs where run_id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await
}

/// The `detail` a step of `run_id` recorded, when it has a record.
pub async fn step_detail(pool: &PgPool, run_id: RunId, step: StepName) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar("select detail from steps where run_id = $1 and name = $2")
        .bind(run_id)
        .bind(step.as_str())
        .fetch_optional(pool)
        .await
}

/// When a step of `run_id` first started waiting (its `detail.since`), if an earlier attempt
/// recorded a wait (`detail.waiting_for`).
pub async fn waiting_since(pool: &PgPool, run_id: RunId, step: StepName) -> Result<Option<String>, sqlx::Error> {
    let since: Option<Option<String>> = sqlx::query_scalar(
        "select detail->>'since' from steps where run_id = $1 and name = $2 and detail ? 'waiting_for'",
    )
    .bind(run_id)
    .bind(step.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(since.flatten())
}

/// Records what a running step is waiting for as its `detail`; nothing when it is not running.
pub async fn record_waiting(pool: &PgPool, run_id: RunId, step: StepName, detail: &Value) -> Result<(), sqlx::Error> {
    sqlx::query("update steps set detail = $3 where run_id = $1 and name = $2 and state = 'running'")
        .bind(run_id)
        .bind(step.as_str())
        .bind(detail)
        .execute(pool)
        .await?;
    Ok(())
}

/// The digest the image step of `run_id` found, once it succeeded.
pub async fn pinned_digest(pool: &PgPool, run_id: RunId) -> Result<Option<String>, sqlx::Error> {
    let digest: Option<Option<String>> = sqlx::query_scalar(
        "select detail->>'digest' from steps where run_id = $1 and name = 'image' and state = 'succeeded'",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?;
    Ok(digest.flatten())
}

/// Helm revisions that passed verify in the stand's runs other than `run_id`, newest run first, as
/// `(revision, updated)`.
pub async fn verified_revisions(
    pool: &PgPool,
    stand_id: StandId,
    run_id: RunId,
) -> Result<Vec<(i32, String)>, sqlx::Error> {
    sqlx::query_as(
        "select (s.detail->>'revision')::int, coalesce(s.detail->>'updated', '')
             from steps s join runs r on r.run_id = s.run_id
             where r.stand_id = $1 and r.run_id <> $2 and s.name = 'verify'
               and s.state = 'succeeded' and jsonb_typeof(s.detail->'revision') = 'number'
             order by r.number desc",
    )
    .bind(stand_id)
    .bind(run_id)
    .fetch_all(pool)
    .await
}

#[allow(clippy::too_many_arguments)]
/// A new run of a stand, queued for a worker: one insert for every way a run is asked for (a webhook
/// through intake, a person through manual requests), so they cannot drift apart.
pub(super) async fn queue_run(
    tx: &mut PgConnection,
    stand_id: StandId,
    number: i32,
    kind: RunKind,
    trigger: Trigger,
    epoch: i32,
    sha: Option<&str>,
    requested_by: Option<&str>,
    params: Value,
) -> Result<RunId, StoreError> {
    let run = sqlx::query_scalar(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha, requested_by, params)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning run_id",
    )
    .bind(stand_id)
    .bind(number)
    .bind(kind)
    .bind(trigger)
    .bind(requested_by.is_none())
    .bind(epoch)
    .bind(sha)
    .bind(requested_by)
    .bind(params)
    .fetch_one(&mut *tx)
    .await?;
    if kind.is_activity() {
        // Someone wants the stand: the idle sweep counts from here.
        sqlx::query("update stands set last_activity_at = now() where stand_id = $1")
            .bind(stand_id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(run)
}

/// The deploys of a stand that gave way to its teardown `teardown_run_id`: cancelled since it was
/// queued, by number.
pub async fn cancelled_for_teardown(
    pool: &PgPool,
    stand_id: StandId,
    teardown_run_id: RunId,
) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "select d.number from runs d join runs t on t.run_id = $2
         where d.stand_id = $1 and d.kind = 'deploy' and d.number < t.number and d.state = 'cancelled'
           and d.finished_at >= t.queued_at
         order by d.number",
    )
    .bind(stand_id)
    .bind(teardown_run_id)
    .fetch_all(pool)
    .await
}

/// One statement that queues a run of `kind` (`trigger`, automatic) for each stand `chosen` selects
/// (locked), numbering it under the stand's row and applying `set` to the stand; it answers
/// `(stand_id, run_id, namespace)` rows. The fragments are constants of the store; values go in as
/// bind parameters.
pub(super) fn queue_for_chosen(chosen: &str, set: &str, kind: RunKind, trigger: Trigger) -> String {
    format!(
        "with chosen as ({chosen}),
         bumped as (
             update stands s set runs_count = s.runs_count + 1, updated_at = now(){set}
             from chosen where s.stand_id = chosen.stand_id
             returning s.stand_id, s.runs_count, s.epoch, s.head_sha, s.namespace
         ), queued as (
             insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha)
             select stand_id, runs_count, '{kind}', '{trigger}', true, epoch, head_sha from bumped
             returning stand_id, run_id
         )
         select q.stand_id, q.run_id, b.namespace from queued q join bumped b using (stand_id)
         order by q.stand_id",
        kind = kind.as_str(),
        trigger = trigger.as_str(),
    )
}
