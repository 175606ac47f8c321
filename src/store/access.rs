//! Private stands: which run's access token each stand takes, sign-ins under way, and the audit
//! rows of who came in (or was turned away) and how.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};

use super::StoreError;
use crate::stand::{RunId, StandId, StandState};

/// What the audit trail records of a stand's URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessEvent {
    /// A person signed in with the forge, and it says they can read the repository.
    SignedIn,
    /// A person signed in, and the forge says they cannot read it.
    Refused,
    /// A program came in with the stand's current access token.
    TokenUsed,
    /// A token of an earlier run (or of another stand) was turned away.
    TokenRefused,
}

impl AccessEvent {
    pub fn action(self) -> &'static str {
        match self {
            AccessEvent::SignedIn => "access.signed_in",
            AccessEvent::Refused => "access.refused",
            AccessEvent::TokenUsed => "access.token_used",
            AccessEvent::TokenRefused => "access.token_refused",
        }
    }
}

pub async fn record(
    pool: &PgPool,
    event: AccessEvent,
    actor: &str,
    stand_id: StandId,
    run_id: Option<RunId>,
    detail: &Value,
) -> Result<(), StoreError> {
    sqlx::query("insert into audit (actor, action, stand_id, run_id, detail) values ($1, $2, $3, $4, $5)")
        .bind(actor)
        .bind(event.action())
        .bind(stand_id)
        .bind(run_id)
        .bind(detail)
        .execute(pool)
        .await?;
    Ok(())
}

/// From now on only `run`'s token lets programs into the stand.
pub async fn set_token_run<'e>(conn: impl PgExecutor<'e>, stand_id: StandId, run: RunId) -> Result<(), StoreError> {
    sqlx::query("update stands set access_run_id = $2 where stand_id = $1")
        .bind(stand_id)
        .bind(run)
        .execute(conn)
        .await?;
    Ok(())
}

/// The run whose token the stand takes, once one was handed out.
pub async fn token_run(pool: &PgPool, stand_id: StandId) -> Result<Option<RunId>, StoreError> {
    let run: Option<Option<RunId>> = sqlx::query_scalar("select access_run_id from stands where stand_id = $1")
        .bind(stand_id)
        .fetch_optional(pool)
        .await?;
    Ok(run.flatten())
}

/// A stand whose URL may be asked about: what the check needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Reachable {
    pub stand_id: StandId,
    pub project: String,
    pub namespace: String,
    pub state: StandState,
    pub access_run_id: Option<RunId>,
    /// Built from a fork's pull request.
    pub fork: bool,
}

/// Every stand that has, or may soon have, a URL.
pub async fn reachable(pool: &PgPool) -> Result<Vec<Reachable>, StoreError> {
    Ok(sqlx::query_as(
        "select stand_id, project, namespace, state, access_run_id, fork from stands where state <> 'removed'",
    )
    .fetch_all(pool)
    .await?)
}

/// A sign-in under way.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Flow {
    pub stand_id: StandId,
    pub verifier: String,
    pub rd: String,
}

pub async fn begin(pool: &PgPool, state: &str, flow: &Flow, expires_at: DateTime<Utc>) -> Result<(), StoreError> {
    // Expired flows go as new ones come, so the table holds minutes of sign-ins at most.
    sqlx::query("delete from access_flows where expires_at < now() - interval '1 hour'").execute(pool).await?;
    sqlx::query("insert into access_flows (state, stand_id, verifier, rd, expires_at) values ($1, $2, $3, $4, $5)")
        .bind(state)
        .bind(flow.stand_id)
        .bind(&flow.verifier)
        .bind(&flow.rd)
        .bind(expires_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// The flow of `state`, removed so it is used once; `None` when unknown, used or expired.
pub async fn take(pool: &PgPool, state: &str) -> Result<Option<Flow>, StoreError> {
    Ok(sqlx::query_as(
        "delete from access_flows where state = $1 returning stand_id, verifier, rd, expires_at > now() as live",
    )
    .bind(state)
    .fetch_optional(pool)
    .await
    .map(|row: Option<FlowRow>| {
        row.filter(|r| r.live).map(|r| Flow { stand_id: r.stand_id, verifier: r.verifier, rd: r.rd })
    })?)
}

#[derive(sqlx::FromRow)]
struct FlowRow {
    stand_id: StandId,
    verifier: String,
    rd: String,
    live: bool,
}
