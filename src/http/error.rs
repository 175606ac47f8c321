//! The one place errors become HTTP responses: a JSON body `{"error": {"code", "message", "field"?}}`.
//! Internal errors are logged with their cause and shown to the client only as "internal error".

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::forge::PayloadError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(String),
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
    #[error(transparent)]
    Store(#[from] StoreError),
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
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::StandNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable label for logs and, later, the error metric.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Conflict { code, .. } => code,
            ApiError::StandNotFound { .. } => "stand_not_found",
            ApiError::Store(e) if e.is_transient() => "database_unavailable",
            ApiError::Store(_) => "internal",
        }
    }
}

impl From<PayloadError> for ApiError {
    fn from(e: PayloadError) -> Self {
        ApiError::BadRequest { message: e.to_string(), field: Some(e.field) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, "request failed");
                if e.is_transient() {
                    "database unavailable, retry later".to_string()
                } else {
                    "internal error".to_string()
                }
            }
            other => {
                tracing::info!(code = other.code(), status = status.as_u16(), reason = %other, "request refused");
                other.to_string()
            }
        };
        let mut error = json!({ "code": self.code(), "message": message });
        if let ApiError::BadRequest { field: Some(f), .. } = &self {
            error["field"] = json!(f);
        }
        (status, Json(json!({ "error": error }))).into_response()
    }
}
