//! Who may act through the forge on GitHub: a collaborator's permission on the repository (write
//! or admin may), with the role name when it says more.

use http::Method;

use super::client::{FORGE, GithubClient, encode_segment};
use super::wire::CollaboratorPermission;
use crate::forge::client::model::{ForgeError, ForgeUser, Permission, within};

impl GithubClient {
    /// [`crate::forge::client::ForgeClient::permission`]: `none` for someone who is not a
    /// collaborator, or no user at all.
    pub(super) async fn collaborator_permission(
        &self,
        repo: &str,
        user: ForgeUser<'_>,
    ) -> Result<Permission, ForgeError> {
        let prefix = self.repo_route(repo)?;
        let login = user.login;
        let valid = !login.is_empty()
            && login.trim_end_matches("[bot]").bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(ForgeError::Invalid { forge: FORGE, message: format!("{login:?} is not a GitHub login") });
        }
        let op = "read collaborator permission";
        within(FORGE, op, self.timeout, async {
            let route = format!("{prefix}/collaborators/{}/permission", encode_segment(login));
            match self.call(op, Method::GET, repo, &route, None).await {
                Ok(answer) => {
                    let p: CollaboratorPermission = self.json(op, &answer)?;
                    let write = matches!(p.permission.as_str(), "admin" | "write");
                    let level = match p.role_name {
                        Some(role) if role != p.permission => format!("{} ({role})", p.permission),
                        _ => p.permission,
                    };
                    Ok(Permission { level, write })
                }
                // Not a collaborator, or no such user.
                Err(e) if e.is_not_found() => Ok(Permission { level: "none".into(), write: false }),
                Err(e) => Err(e),
            }
        })
        .await
    }
}
