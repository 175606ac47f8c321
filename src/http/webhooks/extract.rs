//! Webhook extractors: size, headers, content type, the project, and the signature or token, checked
//! before a handler sees anything. A request that fails here records nothing.
//!
//! Only what cannot be verified is refused. A forge counts every 4xx as a failed delivery (GitLab
//! switches a project or group hook off after four in a row), and it sends the same kind of delivery
//! again and again: one that the GitHub App's or GitLab group's secret verifies but that names no
//! project draftd serves (another repository of the installation or group, a group event, a body
//! draftd cannot read) is [`Verified::NotServed`], answered 202 with the reason.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ForgeKind, Project};
use crate::forge::{github, gitlab, parse};
use crate::http::{ApiError, AppState};

/// What passed the extractor: a delivery for a served project, or one a forge-wide secret verified
/// that no served project's is.
#[derive(Debug)]
pub enum Verified {
    Served(Webhook),
    NotServed(NotServed),
}

/// A delivery verified by the GitHub App's or the GitLab group's secret that draftd does not act on.
/// Nothing is recorded (there is no project to record it under); the answer and the log say why.
#[derive(Debug)]
pub struct NotServed {
    pub forge: ForgeKind,
    pub event: String,
    pub delivery_id: String,
    /// The repository or project path the payload names, when it names one.
    pub repo: Option<String>,
    pub reason: NotServedReason,
}

/// Why a verified delivery concerns no project draftd serves; stable, shown as `ignored`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServedReason {
    /// The repository or project is not configured.
    UnknownProject,
    /// The payload names no repository or project (GitHub App installation events, GitLab group
    /// events about subgroups or members).
    NoProject,
    /// The body is not the JSON (or GitHub's form with a `payload` field) it was declared as.
    UnreadablePayload,
    /// The body is declared as neither JSON nor (GitHub) a form.
    UnsupportedContentType,
}

impl NotServedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NotServedReason::UnknownProject => "unknown_project",
            NotServedReason::NoProject => "no_project",
            NotServedReason::UnreadablePayload => "unreadable_payload",
            NotServedReason::UnsupportedContentType => "unsupported_content_type",
        }
    }
}

/// A verified delivery from either forge.
#[derive(Debug)]
pub struct Webhook {
    pub forge: ForgeKind,
    pub project: Arc<Project>,
    /// `X-GitHub-Event` or `X-Gitlab-Event`.
    pub event: String,
    /// The id deliveries are deduplicated by.
    pub delivery_id: String,
    /// The event's JSON payload (for a GitHub form delivery, its `payload` field).
    pub body: Bytes,
    /// Of the body as it arrived.
    pub body_sha256: String,
}

/// `POST /webhooks/github`: `X-Hub-Signature-256` checked against the App's or the project's secret.
#[derive(Debug)]
pub struct GithubWebhook(pub Verified);

/// `POST /webhooks/gitlab`: `X-Gitlab-Token` compared with the group's or the project's secret.
#[derive(Debug)]
pub struct GitlabWebhook(pub Verified);

/// How the body is declared.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    Json,
    /// `application/x-www-form-urlencoded`: a GitHub webhook may be set to send its JSON payload as
    /// the form's `payload` field.
    Form,
    Other(String),
}

impl Content {
    fn declared(&self) -> String {
        match self {
            Content::Json => "application/json".into(),
            Content::Form => "application/x-www-form-urlencoded".into(),
            Content::Other(declared) => declared.clone(),
        }
    }
}

/// What a delivery's body says it is about: a served project, or why it is not served.
enum Named {
    Project(Arc<Project>),
    NotServed(Option<String>, NotServedReason),
}

/// How a forge's payload names what it is about, for the refusals of unverified deliveries.
struct Names {
    /// The payload's field.
    field: &'static str,
    /// Why a payload without it is refused.
    missing: &'static str,
    /// What names the configured project, before its name in "no project is configured for …".
    unknown: &'static str,
}

const GITHUB_NAMES: Names = Names {
    field: "repository",
    missing: "field `repository`: missing; draftd serves repository webhooks",
    unknown: "repository ",
};
const GITLAB_NAMES: Names =
    Names { field: "project", missing: "field `project`: missing; draftd serves project webhooks", unknown: "" };

/// The served project `named` (the body read down to its project's name). A delivery the forge-wide
/// secret verified is never refused for what it names or fails to name: a forge switches off a hook
/// after a few failed deliveries (GitLab: four, 4xx included), so it is answered as not served,
/// saying why. One that only a project's own secret could verify is refused, as nothing in it is
/// known to be genuine yet.
fn served<E: Into<ApiError>>(
    state: &AppState,
    forge: ForgeKind,
    named: Result<Option<String>, E>,
    wide_verified: bool,
    names: &Names,
) -> Result<Named, ApiError> {
    let name = match named {
        Ok(Some(name)) => name,
        Ok(None) if wide_verified => return Ok(Named::NotServed(None, NotServedReason::NoProject)),
        Ok(None) => {
            return Err(ApiError::BadRequest { field: Some(names.field.into()), message: names.missing.into() });
        }
        Err(_) if wide_verified => return Ok(Named::NotServed(None, NotServedReason::UnreadablePayload)),
        Err(e) => return Err(e.into()),
    };
    match state.project(forge, &name) {
        Some(project) => Ok(Named::Project(project)),
        None if wide_verified => Ok(Named::NotServed(Some(name), NotServedReason::UnknownProject)),
        None => Err(ApiError::NotFound(format!("no project is configured for {}{name:?}", names.unknown))),
    }
}

impl FromRequest<AppState> for GithubWebhook {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, content, raw) = read(req, state).await?;
        let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
        // A GitHub App signs with its one secret: when that matches, nothing is read before the
        // signature is known to be good. Otherwise the project's own secret must match.
        let app_verified = state.github_secret().is_some_and(|s| verify_github(s, signature, &raw).is_ok());
        if matches!(content, Content::Other(_)) && !app_verified {
            return Err(ApiError::UnsupportedMediaType(content.declared()));
        }
        let event = header_text(&headers, "x-github-event")?;
        let delivery_id = header_text(&headers, "x-github-delivery")?;
        let not_served = |repo: Option<String>, reason| {
            let n = NotServed {
                forge: ForgeKind::Github,
                event: event.clone(),
                delivery_id: delivery_id.clone(),
                repo,
                reason,
            };
            GithubWebhook(Verified::NotServed(n))
        };
        let body = match &content {
            Content::Json => raw.clone(),
            Content::Form => match form_payload(&raw) {
                Some(payload) => payload,
                None if app_verified => return Ok(not_served(None, NotServedReason::UnreadablePayload)),
                None => return Err(ApiError::UnsupportedMediaType(content.declared())),
            },
            Content::Other(_) => return Ok(not_served(None, NotServedReason::UnsupportedContentType)),
        };
        let named = parse::<github::RepositoryOnly>(&body).map(|f| f.repository.map(|r| r.full_name));
        let project = match served(state, ForgeKind::Github, named, app_verified, &GITHUB_NAMES)? {
            Named::Project(project) => project,
            Named::NotServed(repo, reason) => return Ok(not_served(repo, reason)),
        };
        if !app_verified {
            verify_github(&project.webhook_secret, signature, &raw)?;
        }
        let body_sha256 = sha256_hex(&raw);
        let hook = Webhook { forge: ForgeKind::Github, project, event, delivery_id, body, body_sha256 };
        Ok(GithubWebhook(Verified::Served(hook)))
    }
}

impl FromRequest<AppState> for GitlabWebhook {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, content, body) = read(req, state).await?;
        let token = headers.get("x-gitlab-token").and_then(|v| v.to_str().ok());
        // As for GitHub: a group-wide token, else the project's own.
        let group_verified = state.gitlab_secret().is_some_and(|s| verify_gitlab(s, token).is_ok());
        // GitLab sends nothing but JSON.
        if content != Content::Json && !group_verified {
            return Err(ApiError::UnsupportedMediaType(content.declared()));
        }
        let event = header_text(&headers, "x-gitlab-event")?;
        // A resend (automatic or from the hook's page) keeps the Idempotency-Key (GitLab 17.4+) and
        // the body, but X-Gitlab-Event-UUID is new on every request: it tells nothing apart.
        let body_sha256 = sha256_hex(&body);
        let delivery_id = header_text(&headers, "idempotency-key").unwrap_or_else(|_| format!("sha256:{body_sha256}"));
        let not_served = |repo: Option<String>, reason| {
            let n = NotServed {
                forge: ForgeKind::Gitlab,
                event: event.clone(),
                delivery_id: delivery_id.clone(),
                repo,
                reason,
            };
            GitlabWebhook(Verified::NotServed(n))
        };
        if content != Content::Json {
            return Ok(not_served(None, NotServedReason::UnsupportedContentType));
        }
        let named = parse::<gitlab::ProjectOnly>(&body).map(|f| f.project.map(|p| p.path_with_namespace));
        let project = match served(state, ForgeKind::Gitlab, named, group_verified, &GITLAB_NAMES)? {
            Named::Project(project) => project,
            Named::NotServed(repo, reason) => return Ok(not_served(repo, reason)),
        };
        if !group_verified {
            verify_gitlab(&project.webhook_secret, token)?;
        }
        let hook = Webhook { forge: ForgeKind::Gitlab, project, event, delivery_id, body, body_sha256 };
        Ok(GitlabWebhook(Verified::Served(hook)))
    }
}

/// The `payload` field of a form-encoded GitHub delivery.
fn form_payload(raw: &[u8]) -> Option<Bytes> {
    url::form_urlencoded::parse(raw).find(|(k, _)| k == "payload").map(|(_, v)| Bytes::from(v.into_owned()))
}

/// Size first: it is cheap and says nothing about the project. The content type is only read here:
/// whether a body of another type is refused depends on whether a forge-wide secret verifies it.
async fn read(req: Request, state: &AppState) -> Result<(HeaderMap, Content, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let content = if mime.eq_ignore_ascii_case("application/json") {
        Content::Json
    } else if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Content::Form
    } else {
        Content::Other(content_type.to_owned())
    };
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
    Ok((parts.headers, content, body))
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
