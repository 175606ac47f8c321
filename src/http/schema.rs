//! The stand API's JSON: what `/api/v1/stands…` and `draftd stands --json` answer. Apart from the
//! store's rows on purpose: a column added for the workers does not reach clients by accident, and
//! a change to what clients see is made here, where the OpenAPI document is described.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::stand::{Cost, Health, RunId, RunKind, RunState, StandId, StandState, StepState, Trigger};
use crate::store::stands as rows;

/// A stand with the outcome of its newest run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StandSummary {
    pub stand_id: StandId,
    pub project: String,
    pub branch: String,
    pub namespace: String,
    pub pr_number: Option<i64>,
    /// `active`, `sleeping`, `waiting`, `closing` or `removed`.
    #[schema(value_type = String)]
    pub state: StandState,
    pub state_reason: Option<String>,
    /// Why its deploy or wake waits for a place (`[stands] max_active`), while it does.
    pub waiting_reason: Option<String>,
    /// `healthy` or `degraded`: what the health watch (`[watch]`) last found when it probed the
    /// stand; current only while the stand is `active`.
    #[schema(value_type = String)]
    pub health: Health,
    /// Since when it has had that health.
    pub health_since: Option<DateTime<Utc>>,
    /// While degraded, how its last probe failed (one line); the stand's page shows its pods too.
    pub health_reason: Option<String>,
    pub head_sha: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The newest run's number (runs are numbered per stand).
    pub last_run: Option<i32>,
    #[schema(value_type = Option<String>)]
    pub last_run_kind: Option<RunKind>,
    #[schema(value_type = Option<String>)]
    pub last_run_state: Option<RunState>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunSummary {
    pub run_id: RunId,
    pub number: i32,
    /// `deploy`, `teardown` or `extend`.
    #[schema(value_type = String)]
    pub kind: RunKind,
    #[schema(value_type = String)]
    pub trigger: Trigger,
    pub sha: Option<String>,
    pub requested_by: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, `superseded`, `cancelled` or `rejected`.
    #[schema(value_type = String)]
    pub state: RunState,
    pub attempt: i32,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepSummary>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepSummary {
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped` or `cancelled`.
    #[schema(value_type = String)]
    pub state: StepState,
    pub attempt: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub detail: serde_json::Value,
    pub error: Option<serde_json::Value>,
}

/// A stand with its runs, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StandDetail {
    #[serde(flatten)]
    pub stand: StandSummary,
    pub runs: Vec<RunSummary>,
    /// What it has cost so far (kubernetes mode, once it was awake): an estimate from its requests
    /// and `[cost]`'s prices, not a bill.
    pub cost: Option<Cost>,
    /// Who may open its URL; with `[access]`, and for a private stand, the token programs use.
    pub access: Option<StandAccess>,
}

/// A stand's access, as the API shows it to holders of the API token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StandAccess {
    /// `forge` (people who can read the repository, signed in) or `public`.
    pub mode: String,
    /// The current run's access token, for CI and scripts: send it in the `X-Draftd-Access` header.
    /// Each run makes a new one; `null` until a run's secrets step handed one out.
    pub token: Option<String>,
    /// The run whose token it is.
    pub token_run: Option<RunId>,
}

impl From<rows::StandSummary> for StandSummary {
    fn from(s: rows::StandSummary) -> Self {
        Self {
            stand_id: s.stand_id,
            project: s.project,
            branch: s.branch,
            namespace: s.namespace,
            pr_number: s.pr_number,
            state: s.state,
            state_reason: s.state_reason,
            waiting_reason: s.waiting_reason,
            health: s.health,
            health_since: s.health_since,
            health_reason: s.health_reason,
            head_sha: s.head_sha,
            expires_at: s.expires_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
            last_run: s.last_run,
            last_run_kind: s.last_run_kind,
            last_run_state: s.last_run_state,
        }
    }
}

impl From<rows::RunSummary> for RunSummary {
    fn from(r: rows::RunSummary) -> Self {
        Self {
            run_id: r.run_id,
            number: r.number,
            kind: r.kind,
            trigger: r.trigger,
            sha: r.sha,
            requested_by: r.requested_by,
            state: r.state,
            attempt: r.attempt,
            queued_at: r.queued_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            steps: r.steps.into_iter().map(StepSummary::from).collect(),
        }
    }
}

impl From<rows::StepSummary> for StepSummary {
    fn from(s: rows::StepSummary) -> Self {
        Self {
            name: s.name,
            state: s.state,
            attempt: s.attempt,
            started_at: s.started_at,
            finished_at: s.finished_at,
            detail: s.detail,
            error: s.error,
        }
    }
}

impl From<rows::StandDetail> for StandDetail {
    fn from(d: rows::StandDetail) -> Self {
        Self {
            stand: d.stand.into(),
            runs: d.runs.into_iter().map(RunSummary::from).collect(),
            cost: None,
            access: None,
        }
    }
}
