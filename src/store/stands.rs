//! Reading stands and their runs: for the CLI, the API and the dashboard, and what the steps and
//! the reaper's resync need to know of a stand.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::stand::{Health, RunId, RunKind, RunState, StandChange, StandId, StandState, StepState, Trigger};

/// A stand with the outcome of its newest run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StandSummary {
    pub stand_id: StandId,
    pub project: String,
    pub branch: String,
    pub namespace: String,
    pub pr_number: Option<i64>,
    pub state: StandState,
    pub state_reason: Option<String>,
    /// Why its deploy or wake waits for a place (`max_active`), while it does.
    pub waiting_reason: Option<String>,
    /// What the health watch last found; only an awake stand's is current.
    pub health: Health,
    /// Since when it has that health (set by the watch and by verify).
    pub health_since: Option<DateTime<Utc>>,
    /// While degraded: the probe's outcome, one line, and the cluster's account of its pods.
    pub health_reason: Option<String>,
    pub health_diagnostics: Option<String>,
    pub head_sha: Option<String>,
    /// A fork's commit waiting for approval (`forks = "approve"`), while one does.
    pub awaiting_approval: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The newest run's number (runs are numbered per stand).
    pub last_run: Option<i32>,
    pub last_run_kind: Option<RunKind>,
    pub last_run_state: Option<RunState>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunSummary {
    pub run_id: RunId,
    pub number: i32,
    /// `deploy`, `teardown` or `extend`.
    pub kind: RunKind,
    pub trigger: Trigger,
    pub sha: Option<String>,
    pub requested_by: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, `superseded`, `cancelled` or `rejected`.
    pub state: RunState,
    pub attempt: i32,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub steps: Vec<StepSummary>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepSummary {
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped` or `cancelled`.
    pub state: StepState,
    pub attempt: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub detail: serde_json::Value,
    pub error: Option<serde_json::Value>,
}

/// A stand with its runs, newest first.
#[derive(Debug, Clone)]
pub struct StandDetail {
    pub stand: StandSummary,
    pub runs: Vec<RunSummary>,
}

/// How `stands show` names a stand: its id, or `project/branch` (branches may contain `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandRef {
    Id(StandId),
    Branch { project: String, branch: String },
}

impl std::str::FromStr for StandRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.parse::<StandId>() {
            return Ok(StandRef::Id(id));
        }
        match s.split_once('/') {
            Some((project, branch)) if !project.is_empty() && !branch.is_empty() => {
                Ok(StandRef::Branch { project: project.to_owned(), branch: branch.to_owned() })
            }
            _ => Err(format!("{s:?} is neither a stand id nor project/branch")),
        }
    }
}

const SUMMARY: &str = "select s.stand_id, s.project, s.branch, s.namespace, s.pr_number, s.state, s.state_reason,
        s.waiting_reason, s.health, s.health_since, s.health_reason, s.health_diagnostics,
        s.head_sha, s.awaiting_approval, s.expires_at, s.created_at, s.updated_at,
        r.number as last_run, r.kind as last_run_kind, r.state as last_run_state
    from stands s
    left join lateral (select number, kind, state from runs where runs.stand_id = s.stand_id
                       order by number desc limit 1) r on true";

pub async fn list(pool: &PgPool, project: Option<&str>, state: Option<&str>) -> Result<Vec<StandSummary>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "{SUMMARY} where ($1::text is null or s.project = $1) and ($2::text is null or s.state = $2)
         order by s.project, s.branch"
    ))
    .bind(project)
    .bind(state)
    .fetch_all(pool)
    .await?)
}

pub async fn show(pool: &PgPool, stand: &StandRef, max_runs: i64) -> Result<Option<StandDetail>, StoreError> {
    let summary: Option<StandSummary> = match stand {
        StandRef::Id(id) => {
            sqlx::query_as(&format!("{SUMMARY} where s.stand_id = $1")).bind(id).fetch_optional(pool).await?
        }
        StandRef::Branch { project, branch } => {
            sqlx::query_as(&format!("{SUMMARY} where s.project = $1 and s.branch = $2"))
                .bind(project)
                .bind(branch)
                .fetch_optional(pool)
                .await?
        }
    };
    let Some(stand) = summary else { return Ok(None) };
    let mut runs: Vec<RunSummary> = sqlx::query_as(
        "select run_id, number, kind, trigger, sha, requested_by, state, attempt, queued_at, started_at, finished_at
         from runs where stand_id = $1 order by number desc limit $2",
    )
    .bind(stand.stand_id)
    .bind(max_runs)
    .fetch_all(pool)
    .await?;
    let ids: Vec<RunId> = runs.iter().map(|r| r.run_id).collect();
    let steps: Vec<(RunId, StepSummary)> = sqlx::query_as::<
        _,
        (
            RunId,
            String,
            StepState,
            i32,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            serde_json::Value,
            Option<serde_json::Value>,
        ),
    >(
        "select run_id, name, state, attempt, started_at, finished_at, detail, error
         from steps where run_id = any($1) order by step_id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(run_id, name, state, attempt, started_at, finished_at, detail, error)| {
        (run_id, StepSummary { name, state, attempt, started_at, finished_at, detail, error })
    })
    .collect();
    for (run_id, step) in steps {
        if let Some(run) = runs.iter_mut().find(|r| r.run_id == run_id) {
            run.steps.push(step);
        }
    }
    Ok(Some(StandDetail { stand, runs }))
}

/// Whether the stand was built from a fork's pull request (`forks = "allow"` or `"approve"`); what
/// that lets it have is [`super::approvals::provenance`].
pub async fn is_fork(pool: &PgPool, stand_id: StandId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select fork from stands where stand_id = $1").bind(stand_id).fetch_one(pool).await
}

/// When the stand expires, if a deploy set it.
pub async fn expires_at(pool: &PgPool, stand_id: StandId) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("select expires_at from stands where stand_id = $1").bind(stand_id).fetch_one(pool).await
}

/// Active stands of `project` for a PR/MR that is not among `listed` (the forge's open ones), as
/// `(branch, number)`, least recently updated first, at most `limit`.
pub async fn unlisted_prs(
    pool: &PgPool,
    project: &str,
    listed: &[i64],
    limit: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "select branch, pr_number from stands
         where project = $1 and state in ('active', 'sleeping', 'waiting') and pr_number is not null and not (pr_number = any($2))
         order by updated_at limit $3",
    )
    .bind(project)
    .bind(listed)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Whether the stand of (`project`, `branch`) has had a run of commit `sha`.
pub async fn has_run_of(pool: &PgPool, project: &str, branch: &str, sha: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from stands s join runs r on r.stand_id = s.stand_id
                        where s.project = $1 and s.branch = $2 and r.sha = $3)",
    )
    .bind(project)
    .bind(branch)
    .bind(sha)
    .fetch_one(pool)
    .await
}

/// The newest commit draftd heard of for a stand; an error when the stand row is gone.
pub async fn head_sha<'e>(conn: impl sqlx::PgExecutor<'e>, stand_id: StandId) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("select head_sha from stands where stand_id = $1").bind(stand_id).fetch_one(conn).await?)
}

/// The PR/MR a stand reports on, when draftd knows it (and the stand still exists).
pub async fn pr_number<'e>(conn: impl sqlx::PgExecutor<'e>, stand_id: StandId) -> Result<Option<i64>, StoreError> {
    let number: Option<Option<i64>> = sqlx::query_scalar("select pr_number from stands where stand_id = $1")
        .bind(stand_id)
        .fetch_optional(conn)
        .await?;
    Ok(number.flatten())
}

// The life of a stand: each change below is made only from the states `StandChange` allows it
// from, into the state it names, so the SQL cannot drift from the table in stand/.

/// The statement of one change: `$1` the stand, `$2` the state it arrives in, `$3` the states it
/// may leave, `$4` the change's own value; `set` and `guard` are this module's constants.
fn change_sql(set: &str, guard: &str) -> String {
    format!(
        "update stands set state = $2, {set}, updated_at = now()
         where stand_id = $1 and state = any($3){guard}"
    )
}

fn bind_change(
    sql: &str,
    stand_id: StandId,
    change: StandChange,
) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql).bind(stand_id).bind(change.to()).bind(change.from_names())
}

/// [`StandChange::Close`]: the stand starts closing, for `reason` (the PR closed, an authorised
/// destroy). False when the table does not allow it from the stand's state.
pub async fn close<'e>(conn: impl sqlx::PgExecutor<'e>, stand_id: StandId, reason: &str) -> Result<bool, StoreError> {
    // A closing stand gives its place back, and waits for none.
    let sql = change_sql("state_reason = $4, placed_at = null, waiting_reason = null", "");
    let done = bind_change(&sql, stand_id, StandChange::Close).bind(reason).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// [`StandChange::Revive`]: the stand is active again, in `epoch` (a new life: runs of the old one
/// no longer count for it). False when the table does not allow it from the stand's state.
pub async fn revive<'e>(conn: impl sqlx::PgExecutor<'e>, stand_id: StandId, epoch: i32) -> Result<bool, StoreError> {
    let sql = change_sql("state_reason = null, epoch = $4", "");
    let done = bind_change(&sql, stand_id, StandChange::Revive).bind(epoch).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// [`StandChange::Sleep`] and [`StandChange::Wake`], which carry no value of their own (see
/// [`super::sleep`]). False when the table does not allow it from the stand's state.
pub(super) async fn change<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    stand_id: StandId,
    change: StandChange,
) -> Result<bool, StoreError> {
    debug_assert!(matches!(change, StandChange::Sleep | StandChange::Wake), "{change:?} has a function of its own");
    // A sleeping stand holds no place: its wake takes one again (see `super::caps`).
    let set =
        if change == StandChange::Sleep { "state_reason = null, placed_at = null" } else { "state_reason = null" };
    let sql = change_sql(set, "");
    let done = bind_change(&sql, stand_id, change).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// The stand takes a place (see [`super::caps`]): [`StandChange::Place`] when it was waiting,
/// its state kept otherwise (an awake stand's first deploy, a sleeping stand's wake). Whether it
/// was waiting.
pub async fn place(conn: &mut sqlx::PgConnection, stand_id: StandId) -> Result<bool, StoreError> {
    sqlx::query("update stands set placed_at = now(), waiting_reason = null where stand_id = $1")
        .bind(stand_id)
        .execute(&mut *conn)
        .await?;
    let sql = change_sql("state_reason = null", "");
    let done = bind_change(&sql, stand_id, StandChange::Place).execute(&mut *conn).await?;
    Ok(done.rows_affected() == 1)
}

/// The stand's deploy or wake waits for a place, for `reason`: [`StandChange::Wait`] for a new
/// stand, which holds none; a sleeping one stays asleep and only says why. Whether it was new.
pub async fn wait(conn: &mut sqlx::PgConnection, stand_id: StandId, reason: &str) -> Result<bool, StoreError> {
    sqlx::query("update stands set waiting_reason = $2 where stand_id = $1")
        .bind(stand_id)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
    let sql = change_sql("state_reason = null", " and placed_at is null");
    let done = bind_change(&sql, stand_id, StandChange::Wait).execute(&mut *conn).await?;
    Ok(done.rows_affected() == 1)
}

/// [`StandChange::Tombstone`], at the end of a teardown: the stand is kept as a tombstone, so a late
/// webhook cannot bring it back (only a reopen, or a push after it expired, does). Only in the
/// teardown's own epoch: a stand revived while it ran stays active, and its queued deploy builds
/// it again.
pub async fn tombstone<'e>(conn: impl sqlx::PgExecutor<'e>, stand_id: StandId, epoch: i32) -> Result<bool, StoreError> {
    // A removed stand holds no place, whichever state its teardown started from.
    let sql = change_sql("expiry_warned_for = null, placed_at = null, waiting_reason = null", " and epoch = $4");
    let done = bind_change(&sql, stand_id, StandChange::Tombstone).bind(epoch).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// A stand's project and expiry, as the labels of what is applied into its namespace name them.
pub async fn project_and_expiry(
    pool: &PgPool,
    stand_id: StandId,
) -> Result<(String, Option<DateTime<Utc>>), StoreError> {
    let row = sqlx::query_as("select project, expires_at from stands where stand_id = $1")
        .bind(stand_id)
        .fetch_one(pool)
        .await?;
    Ok(row)
}
