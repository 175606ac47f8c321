//! A dashboard page's error: the API's error, answered as an HTML page instead of the JSON body.

use axum::body::Body;
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;
use crate::store::StoreError;

/// An error on a dashboard page: rendered as an HTML page instead of the API's JSON body.
#[derive(Debug)]
pub struct Page(pub ApiError);

impl From<ApiError> for Page {
    fn from(e: ApiError) -> Self {
        Page(e)
    }
}

impl From<StoreError> for Page {
    fn from(e: StoreError) -> Self {
        Page(ApiError::Store(e))
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let message = self.0.client_message();
        // Through the API's conversion, so both kinds of errors get the same status, log line and metric;
        // only the body differs.
        let (mut parts, _json) = self.0.into_response().into_parts();
        let html = super::error_page(parts.status, code, &message);
        parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        parts.headers.remove(CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(html))
    }
}
