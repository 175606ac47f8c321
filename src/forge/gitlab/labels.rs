//! Labels on a merge request: added or removed by editing it.

use ::gitlab::api::projects::merge_requests::EditMergeRequest;

use super::client::{FORGE, GitlabClient};
use crate::forge::client::model::{ForgeError, within};

impl GitlabClient {
    /// [`crate::forge::client::ForgeClient::set_label`].
    pub(super) async fn set_merge_request_label(
        &self,
        repo: &str,
        number: u64,
        label: &str,
        present: bool,
    ) -> Result<(), ForgeError> {
        let repo = self.repo(repo)?;
        let op = if present { "add label" } else { "remove label" };
        within(FORGE, op, self.timeout, async {
            let api = self.api().await?;
            let mut builder = EditMergeRequest::builder();
            builder.project(repo).merge_request(number);
            if present {
                builder.add_label(label);
            } else {
                builder.remove_label(label);
            }
            let endpoint = builder.build().map_err(|e| self.invalid(op, &e))?;
            self.send(api, op, endpoint).await
        })
        .await
    }
}
