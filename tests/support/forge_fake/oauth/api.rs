//! The person's own API calls: who they are, and whether they may read the repository.

use std::time::Instant;

use axum::http::HeaderMap;
use axum::response::Response;
use draftd::config::ForgeKind;
use serde_json::{Value, json};

use super::super::{Inner, json_response};
use super::*;

/// Why a presented token names nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unusable {
    Unknown,
    Revoked,
    Expired,
}

/// The person behind an `Authorization` header (`Bearer` on both; `token` too on GitHub), or why not.
fn person(s: &Inner, headers: &HeaderMap) -> Result<PersonToken, Unusable> {
    let auth = header(headers, "authorization").unwrap_or_default();
    let gh_token = (s.kind == ForgeKind::Github).then(|| auth.strip_prefix("token ")).flatten();
    let presented = auth.strip_prefix("Bearer ").or(gh_token).ok_or(Unusable::Unknown)?;
    let t = s.oauth.tokens.iter().find(|t| t.token == presented).ok_or(Unusable::Unknown)?;
    if t.revoked {
        return Err(Unusable::Revoked);
    }
    if t.expires.is_some_and(|e| e <= Instant::now()) {
        return Err(Unusable::Expired);
    }
    Ok(t.clone())
}

/// What GitHub's REST docs ask of every request, as the fake's other GitHub routes check it.
fn gh_headers(s: &mut Inner, path: &str, headers: &HeaderMap) {
    if header(headers, "accept").as_deref() != Some("application/vnd.github+json") {
        s.violations.push(format!("GET {path}: Accept {:?}", header(headers, "accept")));
    }
    if header(headers, "x-github-api-version").as_deref() != Some("2022-11-28") {
        s.violations.push(format!("GET {path}: X-GitHub-Api-Version {:?}", header(headers, "x-github-api-version")));
    }
    if header(headers, "user-agent").is_none() {
        s.violations.push(format!("GET {path}: no User-Agent"));
    }
}

fn gh_error(status: u16, message: &str) -> Response {
    json_response(
        status,
        &json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string()}),
        &[],
    )
}

pub(super) fn gh_user(s: &mut Inner, path: &str, headers: &HeaderMap) -> Response {
    gh_headers(s, path, headers);
    let Ok(t) = person(s, headers) else { return gh_error(401, "Bad credentials") };
    let id = user_id(s, &t.login);
    let v = json!({
        "login": t.login,
        "id": id,
        "node_id": format!("U_fake{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "url": format!("https://api.github.com/users/{}", t.login),
        "html_url": format!("https://github.com/{}", t.login),
        "type": "User",
        "site_admin": false,
        "name": t.login,
        "email": null,
    });
    json_response(200, &v, &scope_headers(&t))
}

fn scope_headers(t: &PersonToken) -> Vec<(&'static str, String)> {
    match t.kind {
        ClientKind::OauthApp => vec![("x-oauth-scopes", t.scope.join(", "))],
        ClientKind::GithubApp => vec![],
    }
}

/// "Get a repository" with the person's token: a private repository they cannot read is 404, and
/// an OAuth app's token needs the `repo` scope to see any private one.
pub(super) fn gh_repo(s: &mut Inner, path: &str, headers: &HeaderMap, repo: &str) -> Response {
    gh_headers(s, path, headers);
    let Ok(t) = person(s, headers) else { return gh_error(401, "Bad credentials") };
    let role = s.gh.roles.get(&(repo.to_owned(), t.login.clone())).cloned();
    let public = s.oauth.public.contains(repo);
    let scoped = t.kind == ClientKind::GithubApp || t.scope.iter().any(|x| x == "repo");
    if !(public || (role.is_some() && scoped)) {
        return gh_error(404, "Not Found");
    }
    let rank = match role.as_deref() {
        Some("admin") => 5,
        Some("maintain") => 4,
        Some("write") => 3,
        Some("triage") => 2,
        Some(_) => 1,
        None => usize::from(public),
    };
    let template: Value = serde_json::from_str(include_str!("../../../fixtures/forge/github/pull.json")).unwrap();
    let mut v = super::super::github::repository_json(&template["base"]["repo"], repo);
    v["private"] = json!(!public);
    v["visibility"] = json!(if public { "public" } else { "private" });
    v["permissions"] = json!({
        "admin": rank >= 5, "maintain": rank >= 4, "push": rank >= 3, "triage": rank >= 2, "pull": rank >= 1,
    });
    json_response(200, &v, &scope_headers(&t))
}

fn gl_unauthorized(why: Unusable) -> Response {
    match why {
        Unusable::Expired => json_response(
            401,
            &json!({"error": "invalid_token", "error_description": "Token is expired. You can either do re-authorization or token refresh."}),
            &[],
        ),
        Unusable::Revoked => json_response(
            401,
            &json!({"error": "invalid_token", "error_description": "Token was revoked. You have to re-authorize from the user."}),
            &[],
        ),
        Unusable::Unknown => json_response(401, &json!({"message": "401 Unauthorized"}), &[]),
    }
}

fn gl_insufficient(t: &PersonToken, allowed: &str) -> Option<Response> {
    if t.scope.iter().any(|x| allowed.split(' ').any(|a| a == x)) {
        return None;
    }
    let v = json!({
        "error": "insufficient_scope",
        "error_description": "The request requires higher privileges than provided by the access token.",
        "scope": allowed,
    });
    Some(json_response(403, &v, &[]))
}

pub(super) fn gl_user(s: &mut Inner, headers: &HeaderMap) -> Response {
    let t = match person(s, headers) {
        Ok(t) => t,
        Err(why) => return gl_unauthorized(why),
    };
    if let Some(r) = gl_insufficient(&t, "api read_api read_user") {
        return r;
    }
    let mut v: Value = serde_json::from_str(include_str!("../../../fixtures/forge/gitlab/user.json")).unwrap();
    v["id"] = json!(user_id(s, &t.login));
    v["username"] = json!(t.login);
    v["name"] = json!(t.login);
    v["state"] = json!("active");
    v["bot"] = json!(false);
    v["web_url"] = json!(format!("{}/{}", s.base, t.login));
    json_response(200, &v, &[])
}

/// "Get a single project" with the person's token: `permissions` shows their own and their
/// group's access level; a private project they are no member of is 404.
pub(super) fn gl_project(s: &mut Inner, headers: &HeaderMap, repo: &str) -> Response {
    let t = match person(s, headers) {
        Ok(t) => t,
        Err(why) => return gl_unauthorized(why),
    };
    if let Some(r) = gl_insufficient(&t, "api read_api") {
        return r;
    }
    let own = s.gl.members.iter().find(|((r, _), m)| r == repo && m.username == t.login).map(|(_, m)| m.access_level);
    let group = s.oauth.group_access.get(&(repo.to_owned(), t.login.clone())).copied();
    let public = s.oauth.public.contains(repo);
    if own.is_none() && group.is_none() && !public {
        return json_response(404, &json!({"message": "404 Project Not Found"}), &[]);
    }
    let access =
        |level: Option<u64>| level.map_or(Value::Null, |l| json!({"access_level": l, "notification_level": 3}));
    let (namespace, name) = repo.rsplit_once('/').unwrap_or(("", repo));
    let v = json!({
        "id": 3,
        "name": name,
        "path": name,
        "path_with_namespace": repo,
        "name_with_namespace": repo.replace('/', " / "),
        "visibility": if public { "public" } else { "private" },
        "default_branch": "main",
        "web_url": format!("{}/{repo}", s.base),
        "namespace": {"name": namespace, "path": namespace, "full_path": namespace, "kind": "group"},
        "archived": false,
        "permissions": {"project_access": access(own), "group_access": access(group)},
    });
    json_response(200, &v, &[])
}
