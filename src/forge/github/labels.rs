//! Labels on a pull request (through its issue): added, or removed when present.

use http::Method;
use serde_json::json;

use super::client::{FORGE, GithubClient, encode_segment};
use crate::forge::client::model::{ForgeError, within};

impl GithubClient {
    /// [`crate::forge::client::ForgeClient::set_label`]; removing a label that is not there succeeds.
    pub(super) async fn set_issue_label(
        &self,
        repo: &str,
        number: u64,
        label: &str,
        present: bool,
    ) -> Result<(), ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "set label", self.timeout, async {
            if present {
                let route = format!("{prefix}/issues/{number}/labels");
                let body = json!({ "labels": [label] });
                self.call("add label", Method::POST, repo, &route, Some(&body)).await.map(|_| ())
            } else {
                let route = format!("{prefix}/issues/{number}/labels/{}", encode_segment(label));
                match self.call("remove label", Method::DELETE, repo, &route, None).await {
                    Err(e) if e.is_not_found() => Ok(()),
                    other => other.map(|_| ()),
                }
            }
        })
        .await
    }
}
