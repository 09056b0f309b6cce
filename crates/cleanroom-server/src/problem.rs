//! Errors as RFC 9457 problem details (`application/problem+json`) with a stable `code`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cleanroom_service::ServiceError;

use crate::wire::Problem;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub line: Option<u64>,
    pub column: Option<String>,
    pub rule: Option<String>,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            line: None,
            column: None,
            rule: None,
            retry_after: None,
        }
    }

    /// 429 `too_many_failures`: the caller's source failed authentication too often.
    pub fn throttled(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError {
            retry_after: Some(secs.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!(
                    "too many failed authentications from your address; retry in {} s with a valid token",
                    secs.max(1)
                ),
            )
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) | ServiceError::GrantState { .. } => StatusCode::CONFLICT,
            ServiceError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ServiceError::InvalidData { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::Gone(_) => StatusCode::GONE,
            ServiceError::PolicyRefused { .. } | ServiceError::BudgetExhausted(_) => {
                StatusCode::FORBIDDEN
            }
            ServiceError::Unavailable(_) | ServiceError::MemoryLimit(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServiceError::Internal(_)
            | ServiceError::AnalysisFailed(_)
            | ServiceError::ChainBroken(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = e.code();
        if let ServiceError::Internal(msg) = &e {
            // Logged once, here, with the full text; the client gets an opaque message.
            tracing::error!(error = %msg, "internal error");
            return ApiError::new(
                status,
                code,
                "an internal error occurred; the operator can find it in the server log",
            );
        }
        let (line, column, rule) = match &e {
            ServiceError::InvalidData { line, column, .. } => (*line, column.clone(), None),
            ServiceError::PolicyRefused { rule, column, .. } => {
                (None, column.clone(), Some(rule.clone()))
            }
            _ => (None, None, None),
        };
        ApiError {
            status,
            code,
            detail: e.to_string(),
            line,
            column,
            rule,
            retry_after: None,
        }
    }
}

/// Any JSON body the server cannot use (not JSON, not `application/json`, missing or mistyped
/// fields) is one kind of invalid input for the caller: 400 `invalid_input`, with axum's
/// description of what is wrong.
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is larger than the {} bytes a JSON request may have",
                    crate::MAX_JSON_BODY
                ),
            );
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!(
                "the request body is not the expected JSON: {}",
                r.body_text()
            ),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let body = Problem {
            r#type: format!("urn:cleanroom:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            code: self.code.to_owned(),
            detail: self.detail,
            line: self.line,
            column: self.column,
            rule: self.rule,
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut()
            .insert(crate::metrics::ProblemCode(self.code));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}
