//! The audit trail: who asked draftd to act through the forge, and what was decided.

use serde_json::Value;
use sqlx::PgExecutor;

use super::StoreError;
use crate::stand::{RunId, StandId};

/// The `audit.action` of a command honoured: the requester has write access.
pub const COMMAND_ALLOWED: &str = "command.allowed";
/// The `audit.action` of a command refused; its `detail.reason` says why.
pub const COMMAND_DENIED: &str = "command.denied";

/// What was decided about a person's run, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandDecision {
    Allowed,
    /// `reason` as recorded (older rows may have none).
    Denied {
        reason: Option<String>,
    },
}

/// The newest decision recorded for `run_id`, if any: a run resumed by another worker was decided
/// once already, and is neither asked about nor answered twice.
pub async fn command_decision<'e>(
    conn: impl PgExecutor<'e>,
    run_id: RunId,
) -> Result<Option<CommandDecision>, StoreError> {
    let decided: Option<(String, Option<String>)> = sqlx::query_as(
        "select action, detail->>'reason' from audit
         where run_id = $1 and action in ('command.allowed', 'command.denied') order by audit_id desc limit 1",
    )
    .bind(run_id)
    .fetch_optional(conn)
    .await?;
    Ok(decided.map(|(action, reason)| match action.as_str() {
        COMMAND_ALLOWED => CommandDecision::Allowed,
        _ => CommandDecision::Denied { reason },
    }))
}

/// Records a decision about `run_id`, asked for by `actor` (`<forge>:<login>`), with what it was
/// decided on in `detail`. Call it in the transaction that acts on the decision.
pub async fn record_command<'e>(
    conn: impl PgExecutor<'e>,
    actor: &str,
    allowed: bool,
    stand_id: StandId,
    run_id: RunId,
    detail: &Value,
) -> Result<(), StoreError> {
    sqlx::query("insert into audit (actor, action, stand_id, run_id, detail) values ($1, $2, $3, $4, $5)")
        .bind(actor)
        .bind(if allowed { COMMAND_ALLOWED } else { COMMAND_DENIED })
        .bind(stand_id)
        .bind(run_id)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}
