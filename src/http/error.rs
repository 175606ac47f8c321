//! The one place errors become HTTP responses: a JSON body `{"error": {"code", "message", "field"?}}`.
//! Internal errors are logged with their cause and shown to the client only as "internal error".
//! Dashboard pages wrap the same errors in `dashboard::Page`: the same status, code and log line, as HTML.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::forge::PayloadError;
use crate::stand::Failure;
use crate::store::StoreError;

/// The body of every error answer; the OpenAPI document describes it from this type.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ErrorDetail {
    /// Stable, for programs: `unauthorized`, `bad_request`, `stand_not_found`, `stand_not_active`, …
    code: String,
    /// For people; may change.
    message: String,
    /// The request field at fault, on some 400 answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated, but the request itself is not trusted (the dashboard's CSRF checks).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    /// The path is served, not with this method; the answer's `Allow` header lists the methods.
    #[error("method {0} is not allowed here; the Allow header lists the methods that are")]
    MethodNotAllowed(String),
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{message}")]
    BadRequest { field: Option<String>, message: String },
    #[error("content type {0:?} is not application/json; configure the webhook to send JSON")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(&'static str),
    /// The request is understood but the stand's state does not allow it; `code` is stable.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    StandNotFound { message: String },
    /// Signed in, and the forge says this person cannot read the stand's repository.
    #[error("{0}")]
    AccessRefused(String),
    /// The forge a person signs in with failed or could not be reached.
    #[error("{0}")]
    ForgeUnavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster did not answer or refused (the stand page's logs); `code` is the cluster error's
    /// label, the message its own.
    #[error("the cluster: {message}")]
    Cluster { code: &'static str, message: String, transient: bool },
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest { field: None, message: message.into() }
    }

    pub fn missing_header(name: &str) -> Self {
        ApiError::BadRequest {
            field: Some(name.to_owned()),
            message: format!("header {name} is missing, empty, not text or longer than 200 bytes"),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::StandNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::AccessRefused(_) => StatusCode::FORBIDDEN,
            ApiError::ForgeUnavailable(_) => StatusCode::BAD_GATEWAY,
            ApiError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Cluster { transient: true, .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Cluster { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// A stable label for logs and the error metric.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Conflict { code, .. } => code,
            ApiError::StandNotFound { .. } => "stand_not_found",
            ApiError::AccessRefused(_) => "access_refused",
            ApiError::ForgeUnavailable(_) => "forge_unavailable",
            ApiError::Store(e) if e.is_transient() => "database_unavailable",
            ApiError::Store(_) => "internal",
            ApiError::Cluster { code, .. } => code,
        }
    }

    /// What the client is told: a store error only as internal or unavailable, never its cause.
    pub(super) fn client_message(&self) -> String {
        match self {
            ApiError::Store(e) if e.is_transient() => "database unavailable, retry later".to_string(),
            ApiError::Store(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

impl From<PayloadError> for ApiError {
    fn from(e: PayloadError) -> Self {
        ApiError::BadRequest { message: e.to_string(), field: Some(e.field) }
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        ApiError::Cluster { code: e.label(), message: e.to_string(), transient: e.is_transient() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        crate::metrics::error("http", self.code());
        match &self {
            ApiError::Store(e) => tracing::error!(error = %e, "request failed"),
            other => tracing::info!(code = other.code(), status = status.as_u16(), reason = %other, "request refused"),
        }
        let field = match &self {
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        let body =
            ErrorBody { error: ErrorDetail { code: self.code().to_owned(), message: self.client_message(), field } };
        (status, Json(body)).into_response()
    }
}
