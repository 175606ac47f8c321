//! Tokens beyond draftd's own: the short-lived deploy token a build fetches the project with, made
//! for one build and revoked after it.

use ::gitlab::api::endpoint_prelude::Method;
use secrecy::SecretString;
use serde::Deserialize;

use super::client::{GitlabClient, Raw, project_segment};
use crate::forge::client::model::ForgeError;

impl GitlabClient {
    /// A deploy token that can only read `repo` and expires within the hour, for a build to fetch the
    /// repository ("Create a project deploy token": scope `read_repository`, `expires_at` a
    /// timestamp). Needs the Maintainer role on the project. Returns `(id, username, token,
    /// expires_at)`; revoke it with [`Self::revoke_deploy_token`] once the build is over.
    pub async fn read_only_token(
        &self,
        repo: &str,
        name: &str,
    ) -> Result<(u64, String, SecretString, chrono::DateTime<chrono::Utc>), ForgeError> {
        #[derive(Deserialize)]
        struct DeployToken {
            id: u64,
            username: String,
            token: SecretString,
        }
        let api = self.api().await?;
        let op = "create deploy token";
        let expires = chrono::Utc::now() + chrono::Duration::hours(1);
        let form = vec![
            ("name", name.to_owned()),
            ("scopes[]", "read_repository".to_owned()),
            ("expires_at", expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ];
        let path = format!("projects/{}/deploy_tokens", project_segment(repo));
        let made: DeployToken = self.raw(api, op, Method::POST, path, form).await?;
        self.redact.add(&made.token);
        Ok((made.id, made.username, made.token, expires))
    }

    /// Revokes a deploy token made by [`Self::read_only_token`]; one already gone is not an error.
    pub async fn revoke_deploy_token(&self, repo: &str, id: u64) -> Result<(), ForgeError> {
        let api = self.api().await?;
        let op = "revoke deploy token";
        let path = format!("projects/{}/deploy_tokens/{id}", project_segment(repo));
        match self.send(api, op, Raw { method: Method::DELETE, path, form: vec![] }).await {
            Err(e) if e.is_not_found() => Ok(()),
            done => done,
        }
    }
}
