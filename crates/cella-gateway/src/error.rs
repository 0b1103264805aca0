//! The one error shape of the API: an HTTP status and `{"error":{"code","message"[,"log"]}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cella_runtime::{ErrorCode, RuntimeError};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// The tail of the guest's stderr, when a guest failed.
    pub log: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: status_of(code),
            code,
            message: message.into(),
            log: None,
        }
    }
}

/// The HTTP status of each error code (documented in the README's error table).
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidName
        | ErrorCode::InvalidLimits
        | ErrorCode::InvalidRequest
        | ErrorCode::InvalidWasm
        | ErrorCode::InvalidBundle
        | ErrorCode::WrongKind => StatusCode::BAD_REQUEST,
        ErrorCode::UntrustedKey => StatusCode::FORBIDDEN,
        ErrorCode::HashMismatch => StatusCode::PRECONDITION_FAILED,
        ErrorCode::MissingPermission => StatusCode::FORBIDDEN,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::MemoryLimit | ErrorCode::OutputLimit => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::FunctionFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::IntegrityError | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let code = e.code();
        if code == ErrorCode::Internal || code == ErrorCode::IntegrityError {
            tracing::error!("{e}");
        }
        ApiError {
            status: status_of(code),
            code,
            message: e.to_string(),
            log: e.log(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(log) = self.log {
            error["log"] = log.into();
        }
        // The header tells a platform error apart from a function's own non-2xx response on
        // the HTTP pass-through.
        (
            self.status,
            [("cella-error", self.code.as_str())],
            Json(json!({ "error": error })),
        )
            .into_response()
    }
}
