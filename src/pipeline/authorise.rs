//! Who may act through the forge: `/draft rerun|extend|destroy` comments and the check run's Re-run
//! button are honoured only from users with write access to the repository (GitHub: collaborator
//! permission `write` or `admin`; GitLab: member access level Developer or above). Every decision
//! is an `audit` row; a refusal also gets a short reply on the PR/MR, and nothing else happens.
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
use crate::stand::{Failure, RunKind, Trigger};
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
        let reason = format!("{login} has {} access to {repo}; {what} needs write access", permission.level);
        let mut tx = self.pool.begin().await.map_err(|e| db(e.into()))?;
        let detail = json!({ "forge": forge, "repo": repo, "command": what, "trigger": run.trigger,
                             "permission": permission.level, "kind": run.kind , "reason": (!permission.write).then_some(&reason) });
        let actor = format!("{}:{login}", forge.as_str());
        audit::record_command(&mut *tx, &actor, permission.write, run.stand_id, run.run_id, &detail)
            .await
            .map_err(db)?;
        let verdict = if permission.write {
            if run.kind.tears_down() {
                // Now that it may, the destroy closes the stand, as an authorised one does at once.
                stands::close(&mut *tx, run.stand_id, run.trigger.as_str()).await.map_err(db)?;
            }
            Verdict::Allowed
        } else {
            if let Some(number) = stands::pr_number(&mut *tx, run.stand_id).await.map_err(db)? {
                let reply = ReplyPayload {
                    forge: *forge,
                    repo: repo.clone(),
                    number: number as u64,
                    body: refusal(login, &what, repo, &permission),
                };
                enqueue(&mut *tx, run.stand_id, Some(run.run_id), &Outbound::Reply { run: run.run_id, reply })
                    .await
                    .map_err(db)?;
            }
            Verdict::Denied { reason }
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

/// The command as the person gave it.
fn command_text(run: &ClaimedRun) -> String {
    if run.trigger == Trigger::CheckRun {
        return "the Re-run button".to_owned();
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
