//! The `draftd` check on a pull request's head commit: a check run with a Re-run button as an App,
//! a commit status with a token (only Apps may create check runs; re-runs are then asked for with
//! `/draft rerun`). A completed check run is final, so a new state after it is a new check run.

use chrono::Utc;
use http::Method;
use serde_json::{Value, json};

use super::client::{FORGE, GithubClient, MAX_DESCRIPTION};
use super::wire::WithId;
use crate::forge::client::model::{CheckReport, CheckState, ForgeError, clip, within};
use crate::forge::{CHECK_NAME, RERUN_ACTION};

/// GitHub's limits on check run output.
const MAX_SUMMARY: usize = 65_535;
const MAX_TITLE: usize = 255;

impl GithubClient {
    /// [`crate::forge::client::ForgeClient::report_check`]: the check run `previous` updated, or a
    /// new one; with a token, a commit status.
    pub(super) async fn set_check(
        &self,
        repo: &str,
        check: &CheckReport,
        previous: Option<u64>,
    ) -> Result<Option<u64>, ForgeError> {
        let prefix = self.repo_route(repo)?;
        if !is_sha(&check.sha) {
            return Err(ForgeError::Invalid { forge: FORGE, message: format!("{:?} is not a commit sha", check.sha) });
        }
        within(FORGE, "report check", self.timeout, async {
            if !self.is_app() {
                let state = match check.state {
                    CheckState::Queued | CheckState::InProgress => "pending",
                    CheckState::Success => "success",
                    CheckState::Failure => "failure",
                    CheckState::Cancelled => "error",
                };
                let mut body = json!({
                    "state": state,
                    "description": clip(&check.title, MAX_DESCRIPTION),
                    "context": CHECK_NAME,
                });
                if let Some(url) = &check.details_url {
                    body["target_url"] = json!(url);
                }
                let route = format!("{prefix}/statuses/{}", check.sha);
                self.call("create commit status", Method::POST, repo, &route, Some(&body)).await?;
                return Ok(None);
            }
            let body = Self::check_run_body(check);
            if let Some(id) = previous {
                let op = "update check run";
                match self.call(op, Method::PATCH, repo, &format!("{prefix}/check-runs/{id}"), Some(&body)).await {
                    Ok(answer) => return Ok(Some(self.json::<WithId>(op, &answer)?.id)),
                    // Deleted, or completed: a completed check run is final (GitHub's checks guide:
                    // a re-run is a new check run), so a new one carries the new state.
                    Err(e) if e.is_not_found() || e.status() == Some(422) => {}
                    Err(e) => return Err(e),
                }
            }
            let op = "create check run";
            let mut body = body;
            body["head_sha"] = json!(check.sha);
            let answer = self.call(op, Method::POST, repo, &format!("{prefix}/check-runs"), Some(&body)).await?;
            Ok(Some(self.json::<WithId>(op, &answer)?.id))
        })
        .await
    }

    /// The check run's fields for `check` (GitHub "Check runs": create and update take the same).
    fn check_run_body(check: &CheckReport) -> Value {
        let mut body = json!({
            "name": CHECK_NAME,
            "output": { "title": clip(&check.title, MAX_TITLE), "summary": clip(&check.summary, MAX_SUMMARY) },
            "actions": [{ "label": "Re-run", "description": "Deploy this draft stand again", "identifier": RERUN_ACTION }],
        });
        if let Some(url) = &check.details_url {
            body["details_url"] = json!(url);
        }
        match check.state {
            CheckState::Queued => body["status"] = json!("queued"),
            CheckState::InProgress => body["status"] = json!("in_progress"),
            done => {
                body["status"] = json!("completed");
                body["completed_at"] = json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                body["conclusion"] = json!(match done {
                    CheckState::Success => "success",
                    CheckState::Failure => "failure",
                    _ => "cancelled",
                });
            }
        }
        body
    }
}

fn is_sha(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_run_states() {
        let mut check = CheckReport {
            sha: "a".repeat(40),
            state: CheckState::InProgress,
            title: "t".into(),
            summary: "s".repeat(70_000),
            details_url: None,
            branch: None,
        };
        let b = GithubClient::check_run_body(&check);
        assert_eq!(b["status"], "in_progress");
        assert!(b.get("conclusion").is_none());
        assert!(b["output"]["summary"].as_str().unwrap().len() <= MAX_SUMMARY);
        assert_eq!(b["actions"][0]["identifier"], RERUN_ACTION);
        check.state = CheckState::Failure;
        let b = GithubClient::check_run_body(&check);
        assert_eq!((b["status"].as_str(), b["conclusion"].as_str()), (Some("completed"), Some("failure")));
    }
}
