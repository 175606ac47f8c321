//! Who may act through the forge on GitLab: a member's access level on the project, inherited
//! group membership included (`members/all`); Developer and above may.

use ::gitlab::api::AsyncQuery;
use ::gitlab::api::projects::members::{AllProjectMember, AllProjectMembers};

use super::client::{FORGE, GitlabClient, PER_PAGE};
use super::wire::Member;
use crate::forge::client::model::{ForgeError, ForgeUser, Permission, within};

/// Developer: may push, and so may ask for re-runs and teardowns.
const DEVELOPER: u64 = 30;

impl GitlabClient {
    /// [`crate::forge::client::ForgeClient::permission`]: by user id when the event gave one, else
    /// by login, which must match exactly; `none` for someone who is not a member.
    pub(super) async fn member_permission(&self, repo: &str, user: ForgeUser<'_>) -> Result<Permission, ForgeError> {
        let repo = self.repo(repo)?;
        let op = "read member";
        within(FORGE, op, self.timeout, async {
            let api = self.api().await?;
            let member = match user.id {
                Some(id) => {
                    let endpoint =
                        AllProjectMember::builder().project(repo).user(id).build().map_err(|e| self.invalid(op, &e))?;
                    let found: Result<Member, _> = endpoint.query_async(api).await;
                    match found.map_err(|e| self.api_error(op, e)) {
                        Ok(m) => Some(m),
                        Err(e) if e.is_not_found() => None,
                        Err(e) => Err(e)?,
                    }
                }
                None => {
                    // Without the id, the login is searched for and must match exactly.
                    let endpoint = AllProjectMembers::builder()
                        .project(repo)
                        .query(user.login)
                        .build()
                        .map_err(|e| self.invalid(op, &e))?;
                    // The search matches parts of names: read 100 a page until the exact login shows.
                    let mut exact = None;
                    for page in 1..=20 {
                        let found: Vec<Member> = self.page(api, op, endpoint.clone(), page).await?;
                        let last = (found.len() as u64) < PER_PAGE;
                        exact = found.into_iter().find(|m| m.username == user.login);
                        if exact.is_some() || last {
                            break;
                        }
                    }
                    exact
                }
            };
            Ok(match member {
                Some(m) => Permission { level: access_level_name(m.access_level), write: m.access_level >= DEVELOPER },
                None => Permission { level: "none".into(), write: false },
            })
        })
        .await
    }
}

/// GitLab's access levels by name, as its member API documents them.
fn access_level_name(level: u64) -> String {
    let name = match level {
        0 => "no access",
        5 => "minimal access",
        10 => "guest",
        15 => "planner",
        20 => "reporter",
        30 => "developer",
        40 => "maintainer",
        50 => "owner",
        _ => "access",
    };
    format!("{name} ({level})")
}
