//! The stand as a GitHub deployment of the pull request's head commit, in a transient environment
//! with the stand's URL: a status per state, and older deployments marked inactive as GitHub's
//! `auto_inactive` would, since it skips transient ones.

use http::{Method, StatusCode};
use serde_json::json;

use super::client::{FORGE, GithubClient, MAX_DESCRIPTION, encode_segment};
use super::wire::{DeploymentState, WithId};
use crate::forge::client::model::{EnvironmentRef, EnvironmentReport, EnvironmentState, ForgeError, clip, within};

/// Earlier deployments of an environment looked at when retiring them: each success retires the ones
/// before it, so only those since the last success are still active.
const RETIRE_PAGE: usize = 100;

impl GithubClient {
    /// [`crate::forge::client::ForgeClient::report_environment`]: a status on the deployment of the
    /// same commit, or a new deployment; a success or teardown retires the ones before it.
    pub(super) async fn set_deployment(
        &self,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<Option<EnvironmentRef>, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "report deployment", self.timeout, async {
            if env.state == EnvironmentState::Inactive {
                // Every deployment of the environment, not only the last: they are transient, and
                // GitHub's `auto_inactive` never touches transient ones.
                self.retire(repo, &prefix, env, None).await?;
                return Ok(previous.cloned());
            }
            let mut made = None;
            if let Some(p) = previous.filter(|p| p.sha == env.sha) {
                match self.deployment_status(repo, &prefix, p.id, env).await {
                    Ok(()) => made = Some(p.clone()),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            let made = match made {
                Some(made) => made,
                None => {
                    let id = self.create_deployment(repo, &prefix, env).await?;
                    self.deployment_status(repo, &prefix, id, env).await?;
                    EnvironmentRef { id, sha: env.sha.clone() }
                }
            };
            if env.state == EnvironmentState::Success {
                self.retire(repo, &prefix, env, Some(made.id)).await?;
            }
            Ok(Some(made))
        })
        .await
    }

    async fn deployment_status(
        &self,
        repo: &str,
        prefix: &str,
        id: u64,
        env: &EnvironmentReport,
    ) -> Result<(), ForgeError> {
        let state = match env.state {
            EnvironmentState::InProgress => "in_progress",
            EnvironmentState::Success => "success",
            EnvironmentState::Failure => "failure",
            EnvironmentState::Inactive => "inactive",
        };
        let mut body = json!({
            "state": state,
            "environment": env.environment,
            "description": clip(&env.description, MAX_DESCRIPTION),
            "auto_inactive": true,
        });
        if let Some(url) = env.url.as_ref().filter(|_| env.state != EnvironmentState::Inactive) {
            body["environment_url"] = json!(url);
        }
        if let Some(url) = &env.log_url {
            body["log_url"] = json!(url);
        }
        let route = format!("{prefix}/deployments/{id}/statuses");
        self.call("create deployment status", Method::POST, repo, &route, Some(&body)).await.map(|_| ())
    }

    /// Marks inactive the deployments of `env`'s environment older than `newest` (all of them
    /// without one) that are not inactive yet. draftd's deployments are transient, which GitHub's
    /// `auto_inactive` leaves alone, so each older commit's deployment would otherwise stay
    /// `success` for ever, even after teardown.
    ///
    /// Deployments are listed newest first and each one's newest status read until one is already
    /// inactive: every success and teardown retires all before it, so the ones since the last are
    /// all that can still be active (usually one). They are marked oldest first, so a failure
    /// half-way leaves the same boundary for the retry.
    async fn retire(
        &self,
        repo: &str,
        prefix: &str,
        env: &EnvironmentReport,
        newest: Option<u64>,
    ) -> Result<(), ForgeError> {
        let op = "list deployments";
        let route =
            format!("{prefix}/deployments?environment={}&per_page={RETIRE_PAGE}", encode_segment(&env.environment));
        let listed: Vec<WithId> = self.json(op, &self.call(op, Method::GET, repo, &route, None).await?)?;
        let mut active = Vec::new();
        for d in listed.iter().filter(|d| newest.is_none_or(|n| d.id < n)) {
            let op = "list deployment statuses";
            let route = format!("{prefix}/deployments/{}/statuses?per_page=1", d.id);
            let newest_status: Vec<DeploymentState> =
                self.json(op, &self.call(op, Method::GET, repo, &route, None).await?)?;
            if newest_status.first().is_some_and(|s| s.state == "inactive") {
                break;
            }
            active.push(d.id);
        }
        let description = match newest {
            Some(_) => format!("Superseded by {}", env.sha.get(..7).unwrap_or(&env.sha)),
            None => env.description.clone(),
        };
        let retired = EnvironmentReport {
            state: EnvironmentState::Inactive,
            url: None,
            log_url: None,
            description,
            ..env.clone()
        };
        for id in active.into_iter().rev() {
            match self.deployment_status(repo, prefix, id, &retired).await {
                // Deleted meanwhile: nothing is left to mark.
                Err(e) if e.is_not_found() => {}
                other => other?,
            }
        }
        Ok(())
    }

    async fn create_deployment(&self, repo: &str, prefix: &str, env: &EnvironmentReport) -> Result<u64, ForgeError> {
        let op = "create deployment";
        let body = json!({
            "ref": env.sha,
            "task": "deploy",
            "auto_merge": false,
            // The stand is deployed whatever other checks say; GitHub would otherwise refuse.
            "required_contexts": [],
            "environment": env.environment,
            "description": clip(&env.description, MAX_DESCRIPTION),
            // The stand goes away with its PR: an inactive transient deployment shows as destroyed.
            // GitHub's `auto_inactive` skips transient ones, so `retire` marks them itself.
            "transient_environment": true,
            "production_environment": false,
        });
        let answer = self.call(op, Method::POST, repo, &format!("{prefix}/deployments"), Some(&body)).await?;
        if answer.status != StatusCode::CREATED {
            // 202 means GitHub merged the default branch instead of deploying (auto_merge): never asked.
            return Err(ForgeError::Response {
                forge: FORGE,
                operation: op,
                message: format!("HTTP {} where 201 was expected", answer.status.as_u16()),
            });
        }
        Ok(self.json::<WithId>(op, &answer)?.id)
    }
}
