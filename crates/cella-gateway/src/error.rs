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
        ErrorCode::Overloaded | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::MemoryLimit | ErrorCode::OutputLimit => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::FunctionFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::IntegrityError | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let code = e.code();
        if e.is_operator_detail() {
            // Paths and operating-system messages are the operator's business: they go to
            // the log under an id, and the caller gets the code and the id to quote.
            let id = error_id();
            tracing::error!(error_id = %id, "{e}");
            let message = match code {
                ErrorCode::Unavailable => format!(
                    "the node could not serve this request because of a fault on its side \
                     (its storage failed); nothing was changed. Retry later, and if it persists \
                     give the operator error id {id}"
                ),
                _ => format!(
                    "the node failed on its side; give the operator error id {id} (its log has \
                     the details)"
                ),
            };
            return ApiError::new(code, message);
        }
        if code == ErrorCode::IntegrityError {
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

/// An id that ties an error the caller saw to the line in the operator's log: the process's
/// start time and a counter, so ids never repeat across restarts in practice.
fn error_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let started = *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    format!("{started:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
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
