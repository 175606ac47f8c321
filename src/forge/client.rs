//! Talking back to the forge: the one sticky comment per PR/MR (DESIGN.md, "Sticky report").
//!
//! [`ForgeClient`] is the trait the reporter uses; [`GithubClient`] (octocrab, in
//! [`crate::forge::github`]) and [`GitlabClient`] (the `gitlab` crate, in [`crate::forge::gitlab`])
//! are the real implementations, [`AnyForge`] picks one per outbox row. Tokens never appear in a
//! [`ForgeError`]: every message from a forge or an HTTP library is scrubbed of the token before it
//! is kept, and the clients' `Debug` output leaves the token out.

/// The contract: the trait, its reports and answers, errors, and what both clients share.
pub(crate) mod model;
/// Pacing of the GitHub client's requests per installation.
pub(crate) mod pace;

use secrecy::SecretString;

pub use self::model::*;
pub use self::pace::Pacing;
use crate::config::{Config, ForgeKind};
pub use crate::forge::github::{AppCredentials, GithubClient};
pub use crate::forge::gitlab::GitlabClient;

/// Either real client, so one reporter serves GitHub and GitLab projects alike. Clones share their
/// connection pool, token cache and rate-limit hold.
#[derive(Debug, Clone)]
// One or two per process, made at start and cloned rarely: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyForge {
    Github(GithubClient),
    Gitlab(GitlabClient),
}

impl AnyForge {
    /// Problems this client finds (only GitHub's has any: an App not installed) go to `problems`.
    pub fn watch_problems(self, problems: &ForgeProblems) -> Self {
        match self {
            AnyForge::Github(c) => AnyForge::Github(c.watch_problems(problems.clone())),
            other => other,
        }
    }

    pub fn kind(&self) -> ForgeKind {
        match self {
            AnyForge::Github(_) => ForgeKind::Github,
            AnyForge::Gitlab(_) => ForgeKind::Gitlab,
        }
    }

    /// The clients the configuration allows: GitHub as an App (`app_id` + `private_key_file`) or
    /// with a token (`token_env`), GitLab with a token. `Err` names the forge and the variable or
    /// file (never a value) when one is unset, unreadable or unusable.
    /// Call within a Tokio runtime (octocrab's client needs one).
    pub fn from_config(config: &Config) -> Result<Vec<AnyForge>, ForgeError> {
        let mut forges = Vec::new();
        let token = |forge: ForgeKind, var: &str| -> Result<SecretString, ForgeError> {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
                _ => Err(ForgeError::Invalid {
                    forge,
                    message: format!("environment variable {var} (token_env) is not set or empty"),
                }),
            }
        };
        let gh = &config.github;
        // `write_gap = "0s"`: no pacing at all (GitHub Enterprise Server has no rate limits unless its
        // administrator sets them).
        let pacing = if gh.write_gap.is_zero() {
            Pacing::OFF
        } else {
            Pacing {
                write_gap: gh.write_gap,
                creates_per_minute: gh.creates_per_minute,
                creates_per_hour: gh.creates_per_hour,
                ..Pacing::GITHUB
            }
        };
        if let (Some(app_id), Some(key_file)) = (gh.app_id, &gh.private_key_file) {
            let pem = std::fs::read(key_file).map_err(|e| ForgeError::Invalid {
                forge: ForgeKind::Github,
                message: format!("private_key_file {}: {e}", key_file.display()),
            })?;
            let app = AppCredentials { app_id, private_key_pem: pem, installation_id: gh.installation_id };
            let client = GithubClient::app(&gh.api_url, app, DEFAULT_CALL_TIMEOUT)?;
            forges.push(AnyForge::Github(client.with_pacing(pacing)));
        } else if let Some(var) = &gh.token_env {
            let t = token(ForgeKind::Github, var)?;
            let client = GithubClient::new(&gh.api_url, &t, DEFAULT_CALL_TIMEOUT)?;
            forges.push(AnyForge::Github(client.with_pacing(pacing)));
        }
        if let Some(var) = &config.gitlab.token_env {
            let t = token(ForgeKind::Gitlab, var)?;
            forges.push(AnyForge::Gitlab(GitlabClient::new(&config.gitlab.url, &t, DEFAULT_CALL_TIMEOUT)?));
        }
        Ok(forges)
    }
}

/// Runs the same call on whichever client this is.
macro_rules! each {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            AnyForge::Github($c) => $call.await,
            AnyForge::Gitlab($c) => $call.await,
        }
    };
}

impl ForgeClient for AnyForge {
    async fn upsert_sticky_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        each!(self, c => c.upsert_sticky_comment(repo, number, marker, body))
    }

    async fn edit_comment(
        &self,
        repo: &str,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        each!(self, c => c.edit_comment(repo, number, comment_id, body))
    }

    async fn post_comment(&self, repo: &str, number: u64, body: &str) -> Result<CommentRef, ForgeError> {
        each!(self, c => c.post_comment(repo, number, body))
    }

    async fn report_check(
        &self,
        repo: &str,
        check: &CheckReport,
        previous: Option<u64>,
    ) -> Result<Option<u64>, ForgeError> {
        each!(self, c => c.report_check(repo, check, previous))
    }

    async fn report_environment(
        &self,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<Option<EnvironmentRef>, ForgeError> {
        each!(self, c => c.report_environment(repo, env, previous))
    }

    async fn set_label(&self, repo: &str, number: u64, label: &str, present: bool) -> Result<(), ForgeError> {
        each!(self, c => c.set_label(repo, number, label, present))
    }

    async fn permission(&self, repo: &str, user: ForgeUser<'_>) -> Result<Permission, ForgeError> {
        each!(self, c => c.permission(repo, user))
    }

    async fn open_pull_requests(&self, repo: &str) -> Result<Vec<PullRequestInfo>, ForgeError> {
        each!(self, c => c.open_pull_requests(repo))
    }

    async fn pull_request(&self, repo: &str, number: u64) -> Result<PullRequestInfo, ForgeError> {
        each!(self, c => c.pull_request(repo, number))
    }
}
