//! Webhook extractors: content type, size, headers, the project, and the signature or token, checked
//! before a handler sees anything. A request that fails here records nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::{ForgeKind, Project};
use crate::forge::{github, gitlab, parse};

/// A verified delivery from either forge.
#[derive(Debug)]
pub struct Webhook {
    pub forge: ForgeKind,
    pub project: Arc<Project>,
    /// `X-GitHub-Event` or `X-Gitlab-Event`.
    pub event: String,
    /// The id deliveries are deduplicated by.
    pub delivery_id: String,
    pub body: Bytes,
    pub body_sha256: String,
}

/// `POST /webhooks/github`: `X-Hub-Signature-256` checked against the project's secret.
#[derive(Debug)]
pub struct GithubWebhook(pub Webhook);

/// `POST /webhooks/gitlab`: `X-Gitlab-Token` compared with the project's secret.
#[derive(Debug)]
pub struct GitlabWebhook(pub Webhook);

impl FromRequest<AppState> for GithubWebhook {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, body) = read(req, state).await?;
        let event = header_text(&headers, "x-github-event")?;
        let delivery_id = header_text(&headers, "x-github-delivery")?;
        let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
        // A GitHub App signs with its one secret: when that matches, nothing is read before the
        // signature is known to be good. Otherwise the project's own secret must match.
        let app_verified = state.github_secret().is_some_and(|s| verify_github(s, signature, &body).is_ok());
        let found: github::RepositoryOnly = parse(&body)?;
        let Some(repo) = found.repository else {
            return Err(ApiError::BadRequest {
                field: Some("repository".into()),
                message: "field `repository`: missing; draftd serves repository webhooks".into(),
            });
        };
        let project = state.project(ForgeKind::Github, &repo.full_name).ok_or_else(|| {
            ApiError::NotFound(format!("no project is configured for repository {:?}", repo.full_name))
        })?;
        if !app_verified {
            verify_github(&project.webhook_secret, signature, &body)?;
        }
        let body_sha256 = sha256_hex(&body);
        Ok(GithubWebhook(Webhook { forge: ForgeKind::Github, project, event, delivery_id, body, body_sha256 }))
    }
}

impl FromRequest<AppState> for GitlabWebhook {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, body) = read(req, state).await?;
        let event = header_text(&headers, "x-gitlab-event")?;
        let token = headers.get("x-gitlab-token").and_then(|v| v.to_str().ok());
        // As for GitHub: a group-wide token, else the project's own.
        let group_verified = state.gitlab_secret().is_some_and(|s| verify_gitlab(s, token).is_ok());
        let found: gitlab::ProjectOnly = parse(&body)?;
        let Some(p) = found.project else {
            return Err(ApiError::BadRequest {
                field: Some("project".into()),
                message: "field `project`: missing; draftd serves project webhooks".into(),
            });
        };
        let project = state
            .project(ForgeKind::Gitlab, &p.path_with_namespace)
            .ok_or_else(|| ApiError::NotFound(format!("no project is configured for {:?}", p.path_with_namespace)))?;
        if !group_verified {
            verify_gitlab(&project.webhook_secret, token)?;
        }
        // GitLab retries with the same Idempotency-Key (17.x+) or the same event UUID; very old
        // instances send neither, and then a retry is the same bytes.
        let body_sha256 = sha256_hex(&body);
        let delivery_id = ["idempotency-key", "x-gitlab-event-uuid"]
            .iter()
            .find_map(|h| header_text(&headers, h).ok())
            .unwrap_or_else(|| format!("sha256:{body_sha256}"));
        Ok(GitlabWebhook(Webhook { forge: ForgeKind::Gitlab, project, event, delivery_id, body, body_sha256 }))
    }
}

/// Content type and size first: both are cheap and say nothing about the project.
async fn read(req: Request, state: &AppState) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType(content_type.to_owned()));
    }
    let limit = state.max_body_bytes();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::bad_request(format!("could not read the body: {e}"))
        }
    })?;
    Ok((parts.headers, body))
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<String, ApiError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::missing_header(name))
}

/// HMAC-SHA256 of the raw body; `verify_slice` compares in constant time.
fn verify_github(secret: &SecretString, signature: Option<&str>, body: &[u8]) -> Result<(), ApiError> {
    let signature = signature.ok_or(ApiError::Unauthorized("X-Hub-Signature-256 is missing"))?;
    let expected = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(ApiError::Unauthorized("X-Hub-Signature-256 is not sha256=<hex>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| ApiError::Unauthorized("X-Hub-Signature-256 does not match the body"))
}

/// Compares digests rather than the tokens so neither the content nor the length leaks through timing.
fn verify_gitlab(secret: &SecretString, token: Option<&str>) -> Result<(), ApiError> {
    let token = token.ok_or(ApiError::Unauthorized("X-Gitlab-Token is missing"))?;
    let a = Sha256::digest(token.as_bytes());
    let b = Sha256::digest(secret.expose_secret().as_bytes());
    if bool::from(a.ct_eq(&b)) { Ok(()) } else { Err(ApiError::Unauthorized("X-Gitlab-Token does not match")) }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
