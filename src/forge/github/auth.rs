//! How the GitHub client authenticates as an App: a JWT signed with the App's private key buys an
//! installation token per repository owner, cached and replaced before its hour is up (or at once
//! when GitHub answers 401); a repository the App is not installed on is reported for
//! `/health/ready`. Builds get a narrower token of their own, for one repository's contents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use secrecy::SecretString;

use super::client::{App, Auth, FORGE, GithubClient, Installation};
use super::wire::{AccessToken, WithId};
use crate::forge::client::model::{ForgeError, Redactor};

/// A GitHub App's identity: the app id and its private key (PEM, as GitHub hands it out).
pub struct AppCredentials {
    pub app_id: u64,
    pub private_key_pem: Vec<u8>,
    /// When unset, the installation is looked up per repository owner.
    pub installation_id: Option<u64>,
}

impl GithubClient {
    /// A client acting as a GitHub App installation: a JWT signed with the app's key buys an
    /// installation token, replaced before it expires.
    pub fn app(api_url: &str, app: AppCredentials, timeout: Duration) -> Result<Self, ForgeError> {
        let key = octocrab::EncodingKey::from_rsa_pem(&app.private_key_pem).map_err(|e| ForgeError::Invalid {
            forge: FORGE,
            message: format!("private key of app {} is not an RSA key in PEM: {e}", app.app_id),
        })?;
        let app = App {
            app_id: app.app_id,
            key,
            installation_id: app.installation_id,
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        };
        Self::build(api_url, Auth::App(Arc::new(app)), Redactor::new(&SecretString::from(String::new())), timeout)
    }

    /// A token that can only read `repo`'s contents and expires within the hour (GitHub's installation
    /// tokens last one hour), for a build to fetch the repository: an installation token narrowed to
    /// the one repository and `contents: read` ("Create an installation access token for an app").
    /// `None` with a personal token, which cannot be narrowed.
    pub async fn read_only_token(&self, repo: &str) -> Result<Option<(SecretString, DateTime<Utc>)>, ForgeError> {
        let app = match &self.auth {
            Auth::Token(_) => return Ok(None),
            Auth::App(app) => app,
        };
        let route = self.repo_route(repo)?;
        let name = repo.split_once('/').map(|(_, n)| n).unwrap_or(repo);
        // The installation of the repository's owner, found (and cached) as for every other call.
        self.token_for(repo, false).await?;
        let owner = repo.split('/').next().unwrap_or(repo);
        let id = match app.tokens.lock().await.get(owner).map(|i| i.id).or(app.installation_id) {
            Some(id) => id,
            None => {
                return Err(ForgeError::Invalid { forge: FORGE, message: format!("no app installation for {route}") });
            }
        };
        let jwt = octocrab::auth::create_jwt(octocrab::models::AppId(app.app_id), &app.key)
            .map_err(|e| ForgeError::Invalid { forge: FORGE, message: format!("signing the app's JWT: {e}") })?;
        let jwt = SecretString::from(jwt);
        self.redact.add(&jwt);
        let op = "create read-only installation token";
        let body = serde_json::json!({ "repositories": [name], "permissions": { "contents": "read" } });
        let answer =
            self.send(op, Method::POST, &format!("/app/installations/{id}/access_tokens"), Some(&body), &jwt).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(op, &answer));
        }
        let fresh: AccessToken = self.json(op, &answer)?;
        self.redact.add(&fresh.token);
        Ok(Some((fresh.token, fresh.expires_at)))
    }

    /// The App is not installed on `repo`: recorded for `/health/ready`, logged when it is news.
    pub(super) fn not_installed(&self, repo: &str) -> ForgeError {
        if self.problems.set(FORGE, repo, "app_not_installed") {
            tracing::error!(
                repo,
                "the GitHub App is not installed on this repository: install it there, or remove the project"
            );
        }
        ForgeError::AppNotInstalled { forge: FORGE, repo: repo.to_owned() }
    }

    /// The token for a call on `repo`'s behalf: the client's own, or the installation token of the
    /// repository's owner, fetched anew when `renew` or when less than `refresh_before` is left.
    pub(super) async fn token_for(&self, repo: &str, renew: bool) -> Result<SecretString, ForgeError> {
        let app = match &self.auth {
            Auth::Token(t) => return Ok(t.clone()),
            Auth::App(app) => app,
        };
        let owner = repo.split('/').next().unwrap_or(repo).to_owned();
        let mut tokens = app.tokens.lock().await;
        if let Some(i) = tokens.get(&owner)
            && !renew
            && (i.expires_at - Utc::now()).to_std().is_ok_and(|left| left > self.refresh_before)
        {
            return Ok(i.token.clone());
        }
        let jwt = octocrab::auth::create_jwt(octocrab::models::AppId(app.app_id), &app.key)
            .map_err(|e| ForgeError::Invalid { forge: FORGE, message: format!("signing the app's JWT: {e}") })?;
        let jwt = SecretString::from(jwt);
        self.redact.add(&jwt);
        let id = match tokens.get(&owner).map(|i| i.id).or(app.installation_id) {
            Some(id) => id,
            None => {
                let op = "find app installation";
                let route = format!("{}/installation", self.repo_route(repo)?);
                // The JWT may not read `/repositories/{id}`: a move is named by the calls that follow.
                let answer = self.follow(op, None, Method::GET, &route, None, &jwt).await?;
                if answer.status == StatusCode::NOT_FOUND {
                    return Err(self.not_installed(repo));
                }
                if !answer.status.is_success() {
                    return Err(self.status_error(op, &answer));
                }
                self.problems.clear(FORGE, repo);
                self.json::<WithId>(op, &answer)?.id
            }
        };
        let op = "create installation token";
        let route = format!("/app/installations/{id}/access_tokens");
        let answer = self.send(op, Method::POST, &route, None, &jwt).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(op, &answer));
        }
        let fresh: AccessToken = self.json(op, &answer)?;
        self.redact.add(&fresh.token);
        tracing::debug!(installation = id, expires_at = %fresh.expires_at, "GitHub App installation token fetched");
        let token = fresh.token.clone();
        tokens.insert(owner, Installation { id, token: fresh.token, expires_at: fresh.expires_at });
        Ok(token)
    }
}
