//! The stand as a GitLab environment `draft/<branch>`, with its URL as external URL and its branch
//! in the description, stopped at teardown. The crate has no environment-writing endpoints, so
//! those are [`super::client::Raw`] calls on the same client. GitLab allows fewer characters in an
//! environment's name than git does in a branch, so the name is [`GitlabEnvironmentName`]'s: the
//! same as before for every branch GitLab accepted.

use ::gitlab::AsyncGitlab;
use ::gitlab::api::AsyncQuery;
use ::gitlab::api::endpoint_prelude::Method;
use ::gitlab::api::projects::environments::Environments;

use super::client::{FORGE, GitlabClient, Raw, project_segment};
use super::wire::{GitlabEnvironment, WithId};
use crate::forge::client::model::{EnvironmentRef, EnvironmentReport, EnvironmentState, ForgeError, within};
use crate::stand::GitlabEnvironmentName;

impl GitlabClient {
    /// [`crate::forge::client::ForgeClient::report_environment`]: the environment created or
    /// pointed at the stand, or stopped.
    pub(super) async fn set_environment(
        &self,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<Option<EnvironmentRef>, ForgeError> {
        let repo = self.repo(repo)?;
        within(FORGE, "report environment", self.timeout, async {
            let api = self.api().await?;
            if env.state != EnvironmentState::Inactive {
                let id = self.upsert_environment(api, repo, env, previous).await?;
                return Ok(Some(EnvironmentRef { id, sha: env.sha.clone() }));
            }
            let found = match previous {
                Some(p) => Some(p.id),
                None => {
                    let name = GitlabEnvironmentName::new(&env.environment);
                    self.environment_named(api, repo, &name).await?.map(|e| e.id)
                }
            };
            let Some(id) = found else { return Ok(None) };
            let op = "stop environment";
            let path = format!("projects/{}/environments/{id}/stop", project_segment(repo));
            match self.raw::<WithId>(api, op, Method::POST, path, vec![]).await {
                Ok(_) => Ok(Some(EnvironmentRef { id, sha: env.sha.clone() })),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// The project's environment called `name`, if any (`name` filters exactly).
    async fn environment_named(
        &self,
        api: &AsyncGitlab,
        repo: &str,
        name: &GitlabEnvironmentName,
    ) -> Result<Option<GitlabEnvironment>, ForgeError> {
        let op = "find environment";
        let name = name.as_str();
        let endpoint = Environments::builder().project(repo).name(name).build().map_err(|e| self.invalid(op, &e))?;
        let found: Vec<GitlabEnvironment> = endpoint.query_async(api).await.map_err(|e| self.api_error(op, e))?;
        Ok(found.into_iter().find(|e| e.name == name))
    }

    /// Creates the environment, or points an existing one at `url`. A stopped environment cannot be
    /// started through the API, so one left over from an earlier life of the stand is replaced.
    async fn upsert_environment(
        &self,
        api: &AsyncGitlab,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<u64, ForgeError> {
        let project = project_segment(repo);
        let name = GitlabEnvironmentName::new(&env.environment);
        let url = env.url.clone().unwrap_or_default();
        let description = environment_description(env);
        let known = previous.map(|p| p.id);
        let existing = match known {
            Some(id) => {
                let op = "read environment";
                match self
                    .raw::<GitlabEnvironment>(
                        api,
                        op,
                        Method::GET,
                        format!("projects/{project}/environments/{id}"),
                        vec![],
                    )
                    .await
                {
                    Ok(e) => Some(e),
                    Err(e) if e.is_not_found() => self.environment_named(api, repo, &name).await?,
                    Err(e) => return Err(e),
                }
            }
            None => self.environment_named(api, repo, &name).await?,
        };
        if let Some(e) = existing {
            if e.state != "stopped" {
                let op = "edit environment";
                let path = format!("projects/{project}/environments/{}", e.id);
                let form = vec![("external_url", url), ("description", description)];
                let edited: WithId = self.raw(api, op, Method::PUT, path, form).await?;
                return Ok(edited.id);
            }
            let op = "delete environment";
            let path = format!("projects/{project}/environments/{}", e.id);
            self.send(api, op, Raw { method: Method::DELETE, path, form: vec![] }).await?;
        }
        let op = "create environment";
        let form = vec![
            ("name", name.to_string()),
            ("external_url", url),
            ("tier", "development".to_owned()),
            ("description", description),
        ];
        let created: WithId = self.raw(api, op, Method::POST, format!("projects/{project}/environments"), form).await?;
        Ok(created.id)
    }
}

/// The environment's description (Markdown, GitLab 17.8+; older versions ignore it): the branch,
/// which the name may no longer show as it is, then the stand's state.
fn environment_description(env: &EnvironmentReport) -> String {
    format!("Draft stand of branch {}: {}", code_span(&env.branch), env.description)
}

/// `text` as a Markdown code span, fenced with more backticks than it holds in a row, so whatever git
/// allowed in a branch name shows as written.
fn code_span(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    // A space keeps a backtick at either end from joining the fence; Markdown strips one of each.
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_show_as_written_in_code_spans() {
        assert_eq!(code_span("feature/a+b"), "`feature/a+b`");
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(code_span("`x``"), "``` `x`` ```");
    }
}
