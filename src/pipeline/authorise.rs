//! Who may act through the forge: `/draft rerun|extend|destroy|approve` comments and the check run's
//! Re-run button are honoured only from users with write access to the repository (GitHub:
//! collaborator permission `write` or `admin`; GitLab: member access level Developer or above).
//! Every decision is an `audit` row; a refusal also gets a short reply on the PR/MR, and nothing
//! else happens. An approval is also recorded (who, which commit, when), and only for the commit
//! still waiting when it is authorised: a push in between needs an approval of its own.
//!
//! The pipeline asks the forge through [`Access`](crate::pipeline::authorise::Access), the one thing
//! it needs of a forge client here; every [`ForgeClient`](crate::forge::client::ForgeClient) answers
//! it.

use std::future::Future;
use std::pin::Pin;

use serde_json::json;
use sqlx::PgPool;

use super::step::StepError;
use crate::config::{Config, ForgeKind};
use crate::forge::client::{ForgeClient, ForgeError, ForgeUser, Permission};
use crate::reporter::{Outbound, ReplyPayload, enqueue};
use crate::stand::{Failure, RunKind, Trigger, short_sha};
use crate::store::approvals;
use crate::store::audit::{self, CommandDecision};
use crate::store::runs::ClaimedRun;
use crate::store::stands;

/// What the forge said of a requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Not acted on; `reason` is recorded as the run's error.
    Denied {
        reason: String,
    },
}

/// Decides whether a person's run may act. A transient error (the forge is down) is retried.
pub trait Authorise: Send + Sync + 'static {
    fn authorise<'a>(
        &'a self,
        run: &'a ClaimedRun,
    ) -> Pin<Box<dyn Future<Output = Result<Verdict, StepError>> + Send + 'a>>;
}

/// A person's access to a repository, as their forge states it: what the pipeline needs of a forge
/// to decide whether they may act.
pub trait Access: Send + Sync + 'static {
    /// The user's access to `repo`. A user the forge does not know has level `none`.
    fn access(&self, repo: &str, user: ForgeUser<'_>) -> impl Future<Output = Result<Permission, ForgeError>> + Send;
}

impl<F: ForgeClient> Access for F {
    fn access(&self, repo: &str, user: ForgeUser<'_>) -> impl Future<Output = Result<Permission, ForgeError>> + Send {
        self.permission(repo, user)
    }
}

/// Runs that need the check: asked for on the forge by a person.
pub fn needs_check(run: &ClaimedRun) -> bool {
    run.requested_by.is_some() && matches!(run.trigger, Trigger::Command | Trigger::CheckRun)
}

/// The forge-backed check, with the clients the reporter uses.
pub struct ForgeAuthoriser<F> {
    pool: PgPool,
    forges: Vec<(ForgeKind, F)>,
    /// Where each project lives: the run names its project, the check needs its forge and repo.
    config: Config,
}

impl<F: Access> ForgeAuthoriser<F> {
    pub fn with_clients(pool: PgPool, config: &Config, forges: Vec<(ForgeKind, F)>) -> Self {
        Self { pool, forges, config: config.clone() }
    }

    async fn check(&self, run: &ClaimedRun) -> Result<Verdict, StepError> {
        // Any failure of draftd's own database here is retried, whatever its kind: a person's command
        // must not be refused, or run unchecked, because the check could not be recorded.
        let db = |e: crate::store::StoreError| StepError::transient("database", e.to_string());
        // A run resumed by another worker was decided once already: neither asked nor answered twice.
        match audit::command_decision(&self.pool, run.run_id).await.map_err(db)? {
            Some(CommandDecision::Allowed) => return Ok(Verdict::Allowed),
            Some(CommandDecision::Denied { reason }) => {
                return Ok(Verdict::Denied { reason: reason.unwrap_or_else(|| "write access was refused".into()) });
            }
            None => {}
        }
        let login = run.requested_by.as_deref().unwrap_or_default();
        let Some(project) = self.config.project(&run.project) else {
            return Ok(Verdict::Denied { reason: format!("project {:?} is not configured", run.project) });
        };
        let (forge, repo) = (&project.forge, &project.repo);
        let Some((_, client)) = self.forges.iter().find(|(k, _)| k == forge) else {
            return Err(StepError::permanent(
                "no_forge_client",
                format!("no {} client is configured to check {login}'s access", forge.as_str()),
            ));
        };
        let user = ForgeUser { login, id: run.params.get("author_id").and_then(|v| v.as_u64()) };
        let permission = client.access(repo, user).await.map_err(|e| forge_error(&e))?;
        let what = command_text(run);
        let mut tx = self.pool.begin().await.map_err(|e| db(e.into()))?;
        let refused = if !permission.write {
            let reason = format!("{login} has {} access to {repo}; {what} needs write access", permission.level);
            Some((reason.clone(), refusal(login, &what, repo, &permission)))
        } else if is_approval(run) {
            stale_approval(&mut tx, run, login).await.map_err(db)?
        } else {
            None
        };
        let detail = json!({ "forge": forge, "repo": repo, "command": what, "trigger": run.trigger,
                             "permission": permission.level, "kind": run.kind,
                             "approve": is_approval(run).then_some(&run.sha),
                             "reason": refused.as_ref().map(|(reason, _)| reason) });
        let actor = format!("{}:{login}", forge.as_str());
        audit::record_command(&mut *tx, &actor, refused.is_none(), run.stand_id, run.run_id, &detail)
            .await
            .map_err(db)?;
        let verdict = match refused {
            None => {
                if run.kind.tears_down() {
                    // Now that it may, the destroy closes the stand, as an authorised one does at once.
                    stands::close(&mut *tx, run.stand_id, run.trigger.as_str()).await.map_err(db)?;
                }
                if let (true, Some(sha)) = (is_approval(run), &run.sha) {
                    approvals::approve(&mut tx, run.stand_id, sha, &actor, run.run_id).await.map_err(db)?;
                }
                Verdict::Allowed
            }
            Some((reason, body)) => {
                if let Some(number) = stands::pr_number(&mut *tx, run.stand_id).await.map_err(db)? {
                    let reply = ReplyPayload { forge: *forge, repo: repo.clone(), number: number as u64, body };
                    enqueue(&mut *tx, run.stand_id, Some(run.run_id), &Outbound::Reply { run: run.run_id, reply })
                        .await
                        .map_err(db)?;
                }
                Verdict::Denied { reason }
            }
        };
        tx.commit().await.map_err(|e| db(e.into()))?;
        tracing::info!(run = run.run_id.get(), user = login, permission = %permission.level, ?verdict, "forge command checked");
        Ok(verdict)
    }
}

impl<F: Access> Authorise for ForgeAuthoriser<F> {
    fn authorise<'a>(
        &'a self,
        run: &'a ClaimedRun,
    ) -> Pin<Box<dyn Future<Output = Result<Verdict, StepError>> + Send + 'a>> {
        Box::pin(self.check(run))
    }
}

fn forge_error(e: &ForgeError) -> StepError {
    let message = format!("checking the requester's access: {e}");
    if e.is_transient() {
        StepError::transient("forge_unavailable", message)
    } else {
        StepError::permanent("permission_check_failed", message)
    }
}

/// A `/draft approve`: its run deploys the fork's commit it approves.
fn is_approval(run: &ClaimedRun) -> bool {
    run.params.get("approve").and_then(|v| v.as_bool()).unwrap_or(false)
}

/// Why an approval by someone with write access cannot run, with the reply saying so: the commit it
/// names no longer waits (a push came in between), unless it was approved already.
async fn stale_approval(
    tx: &mut sqlx::PgConnection,
    run: &ClaimedRun,
    login: &str,
) -> Result<Option<(String, String)>, crate::store::StoreError> {
    let sha = run.sha.as_deref().unwrap_or_default();
    let waiting = approvals::awaiting(&mut *tx, run.stand_id).await?;
    if waiting.as_deref() == Some(sha) || approvals::approved(&mut *tx, run.stand_id, sha).await? {
        return Ok(None);
    }
    let reason = format!("commit {} no longer waits for approval", short_sha(sha));
    let body = match waiting {
        Some(newer) => format!(
            "@{login} commit `{}` no longer waits for approval: commit `{}` was pushed since, so nothing was run. \
             Review it and comment `/draft approve {}` to run it.",
            short_sha(sha),
            short_sha(&newer),
            short_sha(&newer)
        ),
        None => format!("@{login} commit `{}` no longer waits for approval, so nothing was run.", short_sha(sha)),
    };
    Ok(Some((reason, body)))
}

/// The command as the person gave it.
fn command_text(run: &ClaimedRun) -> String {
    if run.trigger == Trigger::CheckRun {
        return "the Re-run button".to_owned();
    }
    if is_approval(run) {
        return "`/draft approve`".to_owned();
    }
    match run.kind {
        RunKind::Deploy => "`/draft rerun`".to_owned(),
        RunKind::Teardown => "`/draft destroy`".to_owned(),
        RunKind::Extend => "`/draft extend`".to_owned(),
        RunKind::Wake => "`/draft wake`".to_owned(),
        // Never asked for by a person: the sweep queues it.
        RunKind::Sleep => "a sleep".to_owned(),
    }
}

/// The reply to a refused command: who, what, why, and that nothing happened.
fn refusal(login: &str, what: &str, repo: &str, permission: &Permission) -> String {
    format!(
        "@{login} {what} needs write access to `{repo}` (yours: {}), so nothing was done. \
         Ask someone who can push to the repository.",
        permission.level
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_says_who_what_and_that_nothing_happened() {
        let p = Permission { level: "read".into(), write: false };
        assert_eq!(
            refusal("mallory", "`/draft destroy`", "acme/shop", &p),
            "@mallory `/draft destroy` needs write access to `acme/shop` (yours: read), so nothing was done. \
             Ask someone who can push to the repository."
        );
    }
}
