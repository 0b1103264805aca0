//! `/v1/functions/{name}/http/{*path}`: the request is handed to a `wasi:http/proxy`
//! component as if it had been sent to `/{path}` on the component's own server, and the
//! component's response comes back unchanged.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use cella_runtime::ErrorCode;

use crate::api::invocation_headers;
use crate::auth::Caller;
use crate::body::read_limited;
use crate::{ApiError, AppState};

pub(crate) async fn root(
    state: State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    forward(state, caller, name, String::new(), request).await
}

pub(crate) async fn path(
    state: State<AppState>,
    caller: Caller,
    Path((name, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    forward(state, caller, name, path, request).await
}

async fn forward(
    State(state): State<AppState>,
    Caller(caller): Caller,
    name: String,
    path: String,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let target = match parts.uri.query() {
        Some(query) => format!("/{path}?{query}"),
        None => format!("/{path}"),
    };
    parts.uri = target.parse::<Uri>().map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the path `{target}` cannot be passed to the function: {e}"),
        )
    })?;
    // The caller's credential is for cella, not for the function.
    parts.headers.remove(header::AUTHORIZATION);
    if !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    let expect = crate::api::expected_hash(&parts.headers)?;
    parts.headers.remove(crate::api::EXPECT_HASH_HEADER);
    let body: Body = body;
    let bytes = read_limited(body, state.config.max_body_bytes, "request body").await?;
    let request = http::Request::from_parts(parts, bytes);
    let output = state
        .platform
        .serve_http(&caller, &name, expect.as_ref(), request)
        .await?;
    let (mut parts, body) = output.response.into_parts();
    // `cella-*` headers are the platform's word (`cella-error` marks a platform error): a
    // function may not forge them.
    let forged: Vec<_> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("cella-"))
        .cloned()
        .collect();
    for name in forged {
        parts.headers.remove(name);
    }
    invocation_headers(&mut parts.headers, &output.invocation_id);
    Ok(Response::from_parts(parts, Body::from(body)).into_response())
}
