//! Asynchronous invocations over HTTP: `POST /v1/functions/{name}/invoke?async=1` answers
//! 202 with the invocation's id once its job is stored durably; `GET /v1/invocations/{id}`
//! tells its caller the status and, once finished, the result. An `Idempotency-Key` header
//! makes a retried request return the invocation the first one made.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use cella_runtime::{AsyncRequest, ErrorCode};
use cella_store::AsyncInvocation;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// The header a caller names a request with, so a retry runs nothing twice.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether the header marks the answer as the one an earlier request with the same key got.
const REPLAYED: &str = "cella-idempotent-replayed";

/// An invocation as its caller reads it.
pub(crate) fn view(invocation: &AsyncInvocation) -> Value {
    let output = invocation
        .output_hex
        .as_deref()
        .and_then(|h| hex::decode(h).ok());
    json!({
        "id": invocation.id,
        "function": invocation.function,
        "version": invocation.version,
        "status": invocation.status.as_str(),
        "attempts": invocation.attempts,
        "submitted_at": invocation.submitted_at,
        "finished_at": invocation.finished_at,
        "output": output.as_deref().and_then(|o| std::str::from_utf8(o).ok()),
        "output_base64": output.map(|o| base64::engine::general_purpose::STANDARD.encode(o)),
        "error": invocation.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
        "log": invocation.log,
    })
}

pub(crate) async fn submit(
    state: &AppState,
    caller: &cella_store::Principal,
    name: &str,
    headers: &HeaderMap,
    request: AsyncRequest,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        "`Idempotency-Key` must be visible ASCII",
                    )
                })?
                .to_owned(),
        ),
    };
    let (invocation, new) = state
        .platform
        .submit(
            caller,
            name,
            AsyncRequest {
                idempotency_key,
                ..request
            },
        )
        .await?;
    let mut response_headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/invocations/{}", invocation.id)) {
        response_headers.insert(header::LOCATION, location);
    }
    if !new {
        response_headers.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok((
        StatusCode::ACCEPTED,
        response_headers,
        Json(view(&invocation)),
    )
        .into_response())
}

pub(crate) async fn status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let invocation = state.platform.async_invocation(&caller, &id).await?;
    Ok(Json(view(&invocation)))
}

/// The body of an asynchronous request, as its input.
pub(crate) fn request(
    stdin: Bytes,
    args: Vec<String>,
    expect: Option<cella_core::ContentHash>,
) -> AsyncRequest {
    AsyncRequest {
        stdin,
        args,
        idempotency_key: None,
        expect,
    }
}
