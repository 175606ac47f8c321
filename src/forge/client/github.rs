//! GitHub issue comments through octocrab: list (paginated), edit with PATCH, create with POST.
//!
//! The typed `issues()` handler is not used for editing: octocrab 0.54's `update_comment` sends
//! POST where the REST API documents PATCH, so the routes below go through octocrab's generic
//! `get`/`patch`/`post` with the documented paths and `{"body": …}` bodies. Responses are read into
//! a two-field struct, so a change in GitHub's user or reaction objects cannot break reporting.

use std::time::Duration;

use octocrab::{Octocrab, Page};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{CommentRef, ForgeClient, ForgeError, Redactor, parse_retry_after, within};
use crate::config::ForgeKind;

const FORGE: ForgeKind = ForgeKind::Github;
/// GitHub's maximum page size for issue comments.
const PER_PAGE: &str = "100";

#[derive(Debug, Deserialize)]
struct IssueComment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
}

/// GitHub (or GitHub Enterprise: `api_url` = `https://host/api/v3`) with a token.
pub struct GithubClient {
    crab: Octocrab,
    api_url: String,
    redact: Redactor,
    timeout: Duration,
}

impl std::fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubClient").field("api_url", &self.api_url).finish_non_exhaustive()
    }
}

impl GithubClient {
    /// `api_url` is `[github] api_url`; the token is sent as `Authorization: Bearer …`. Each call
    /// (with its pagination) is bounded by `timeout`. Needs a Tokio runtime.
    pub fn new(api_url: &str, token: &SecretString, timeout: Duration) -> Result<Self, ForgeError> {
        let redact = Redactor::new(token);
        let invalid = |e: octocrab::Error| ForgeError::Invalid {
            forge: FORGE,
            message: redact.scrub(&format!("api_url {api_url:?}: {}", chain(&e))),
        };
        let crab = Octocrab::builder()
            .base_uri(api_url)
            .map_err(invalid)?
            .personal_token(token.expose_secret().to_owned())
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(timeout))
            .set_write_timeout(Some(timeout))
            .build()
            .map_err(invalid)?;
        Ok(Self { crab, api_url: api_url.to_owned(), redact, timeout })
    }

    /// `owner/name` → the `/repos/owner/name` prefix of every route, refusing anything that could
    /// change the path (GitHub names are ASCII letters, digits, `.`, `-`, `_`).
    fn repo_route(&self, repo: &str) -> Result<String, ForgeError> {
        let ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        match repo.split_once('/') {
            Some((owner, name)) if ok(owner) && ok(name) => Ok(format!("/repos/{owner}/{name}")),
            _ => Err(ForgeError::Invalid { forge: FORGE, message: format!("repo {repo:?} is not owner/name") }),
        }
    }

    async fn find(&self, prefix: &str, number: u64, marker: &str) -> Result<Option<u64>, ForgeError> {
        let op = "list comments";
        let route = format!("{prefix}/issues/{number}/comments");
        let mut page: Page<IssueComment> =
            self.crab.get(&route, Some(&[("per_page", PER_PAGE)])).await.map_err(|e| self.error(op, e))?;
        loop {
            if let Some(c) = page.items.iter().find(|c| c.body.as_deref().is_some_and(|b| b.contains(marker))) {
                return Ok(Some(c.id));
            }
            match self.crab.get_page::<IssueComment>(&page.next).await.map_err(|e| self.error(op, e))? {
                Some(next) => page = next,
                None => return Ok(None),
            }
        }
    }

    async fn patch(&self, prefix: &str, comment_id: u64, body: &str) -> Result<CommentRef, ForgeError> {
        let c: IssueComment = self
            .crab
            .patch(format!("{prefix}/issues/comments/{comment_id}"), Some(&json!({ "body": body })))
            .await
            .map_err(|e| self.error("edit comment", e))?;
        Ok(CommentRef { id: c.id, created: false })
    }

    fn error(&self, operation: &'static str, e: octocrab::Error) -> ForgeError {
        let scrub = |s: &str| self.redact.scrub(s);
        match e {
            octocrab::Error::GitHub { source, .. } => {
                let headers = source.headers.as_ref();
                let header = |name: &str| headers.and_then(|h| h.get(name)).and_then(|v| v.to_str().ok());
                // Primary rate limit: 403 or 429 with x-ratelimit-remaining 0 until x-ratelimit-reset;
                // secondary: retry-after (GitHub's "Rate limits for the REST API").
                let retry_after = header("retry-after").and_then(parse_retry_after).or_else(|| {
                    (header("x-ratelimit-remaining") == Some("0")).then(|| {
                        let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok());
                        let wait = reset.map(|r| r - chrono::Utc::now().timestamp()).unwrap_or(60).max(1);
                        Duration::from_secs(wait as u64)
                    })
                });
                ForgeError::Status {
                    forge: FORGE,
                    operation,
                    status: source.status_code.as_u16(),
                    message: scrub(&source.message),
                    retry_after,
                }
            }
            e @ (octocrab::Error::Hyper { .. } | octocrab::Error::Service { .. }) => {
                ForgeError::Connection { forge: FORGE, operation, message: scrub(&chain(&e)) }
            }
            e
            @ (octocrab::Error::Serde { .. } | octocrab::Error::Json { .. } | octocrab::Error::InvalidUtf8 { .. }) => {
                ForgeError::Response { forge: FORGE, operation, message: scrub(&chain(&e)) }
            }
            e => ForgeError::Invalid { forge: FORGE, message: scrub(&format!("{operation}: {}", chain(&e))) },
        }
    }
}

impl ForgeClient for GithubClient {
    async fn upsert_sticky_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "upsert comment", self.timeout, async {
            if let Some(id) = self.find(&prefix, number, marker).await? {
                return self.patch(&prefix, id, body).await;
            }
            let c: IssueComment = self
                .crab
                .post(format!("{prefix}/issues/{number}/comments"), Some(&json!({ "body": body })))
                .await
                .map_err(|e| self.error("create comment", e))?;
            Ok(CommentRef { id: c.id, created: true })
        })
        .await
    }

    async fn edit_comment(
        &self,
        repo: &str,
        _number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "edit comment", self.timeout, self.patch(&prefix, comment_id, body)).await
    }
}

/// An error with its causes, `: `-separated (octocrab's own `Display` omits the cause for some variants).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repo_names_cannot_change_the_path() {
        let c = GithubClient::new("http://127.0.0.1:9", &SecretString::from("t"), Duration::from_secs(1)).unwrap();
        assert_eq!(c.repo_route("acme/shop.web").unwrap(), "/repos/acme/shop.web");
        for bad in ["acme", "acme/", "/shop", "acme/shop/x", "acme/..", "acme/sh op", "acme/shop?x=1"] {
            assert!(c.repo_route(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn debug_leaves_the_token_out() {
        let c =
            GithubClient::new("http://127.0.0.1:9", &SecretString::from("ghp_zzz"), Duration::from_secs(1)).unwrap();
        assert!(!format!("{c:?}").contains("ghp_zzz"));
    }
}
