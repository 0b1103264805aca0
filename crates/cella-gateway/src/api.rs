//! The routes of API v1 and their handlers. Handlers only translate: authorization and every
//! decision live in the runtime.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use cella_core::FunctionRecord;
use cella_core::TenantName;
use cella_runtime::{
    AccessChange, DEFAULT_PAGE, ErrorCode, InvokeOptions, InvokeOutput, MAX_PAGE, Page, PageRequest,
};
use cella_sandbox::CommandInput;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::Caller;
use crate::body::read_limited;
use crate::{ApiError, AppState, passthrough};

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/attestation", get(attestation))
        .route("/v1/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/tenants/{name}/token", post(rotate_token))
        .route("/v1/keys", post(add_key).get(list_keys))
        .route("/v1/keys/{id}", axum::routing::delete(revoke_key))
        .route("/v1/chain", post(chain))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/plugins/{name}", put(add_plugin))
        .route("/v1/functions", get(list_functions))
        .route(
            "/v1/functions/{name}",
            put(deploy).get(get_function).delete(delete_function),
        )
        .route("/v1/functions/{name}/versions", get(list_versions))
        .route("/v1/functions/{name}/invoke", post(invoke))
        .route("/v1/invocations/{id}", get(crate::asynchronous::status))
        .route("/v1/cluster/rotate", post(rotate_cluster))
        .route(
            "/v1/functions/{name}/triggers",
            get(crate::triggers::list).post(crate::triggers::add),
        )
        .route(
            "/v1/functions/{name}/triggers/{id}",
            axum::routing::delete(crate::triggers::remove),
        )
        .route("/v1/functions/{name}/logs", get(logs))
        .route("/v1/functions/{name}/stats", get(stats))
        .route("/v1/functions/{name}/env", get(env).patch(set_env))
        .route(
            "/v1/functions/{name}/grants/{tenant}",
            put(grant).delete(grant),
        )
        .route("/v1/functions/{name}/public", put(public).delete(public))
        .route("/v1/functions/{name}/http", any(passthrough::root))
        .route("/v1/functions/{name}/http/", any(passthrough::root))
        .route("/v1/functions/{name}/http/{*path}", any(passthrough::path))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
}

/// `ok`, or 503 `unhealthy` with the cause (a failed storage) until the node has recovered.
async fn health(State(state): State<AppState>) -> Response {
    match state.platform.health().await {
        Ok(()) => {
            Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response()
        }
        Err(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unhealthy",
                "cause": cause,
                "version": env!("CARGO_PKG_VERSION"),
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.platform.metrics().encode(),
    )
}

/// The evidence, and the plug-in list signed by the key the evidence binds, for one nonce.
#[derive(serde::Serialize)]
struct Attestation {
    #[serde(flatten)]
    report: cella_tee::AttestationReport,
    plugins: cella_receipt::SignedPluginList,
}

/// Evidence about this node bound to its identity key and `?nonce=HEX`. No token needed: a
/// client verifies the node before it sends anything secret.
async fn attestation(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Attestation>> {
    let mut nonce = Vec::new();
    for (key, value) in query_pairs(&query) {
        match key.as_str() {
            "nonce" => {
                nonce = hex::decode(value.trim()).map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        "`nonce` must be hex (at most 64 bytes, i.e. 128 hex digits)",
                    )
                })?;
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("unknown query parameter `{other}`; the only one is `nonce=HEX`"),
                ));
            }
        }
    }
    Ok(Json(Attestation {
        report: state.platform.attest(&nonce)?,
        plugins: state.platform.plugin_statement(&nonce)?,
    }))
}

async fn no_such_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no endpoint {method} {}; the API is listed in the README",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::InvalidRequest,
        format!(
            "{method} is not allowed on {}; the API is listed in the README",
            uri.path()
        ),
    );
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e
}

pub(crate) async fn json_body<T: DeserializeOwned>(body: Body, example: &str) -> ApiResult<T> {
    let bytes = read_limited(body, 64 * 1024, "request body").await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body is not the expected JSON ({e}); send for example {example}"),
        )
    })
}

/// `key=value` pairs of a query string, percent-decoded.
fn query_pairs(query: &Option<String>) -> Vec<(String, String)> {
    query
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Which page of a list the query asks for: `?limit=N&cursor=C` (both optional).
pub(crate) fn page_request(query: &Option<String>) -> Result<PageRequest, ApiError> {
    let mut request = PageRequest::default();
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "limit" => {
                request.limit = Some(value.parse().map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("limit `{value}` is not a number; ask for 1 to {MAX_PAGE} items"),
                    )
                })?)
            }
            "cursor" => request.cursor = Some(value),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "unknown query parameter `{key}`: a list takes `limit` (1 to \
                         {MAX_PAGE}, default {DEFAULT_PAGE}) and `cursor` (the `next_cursor` \
                         of the page before)"
                    ),
                ));
            }
        }
    }
    Ok(request)
}

/// A page as JSON: the items under `key`, and `next_cursor` when more follow.
pub(crate) fn page_json<T: serde::Serialize>(key: &str, page: Page<T>) -> Json<serde_json::Value> {
    let mut body = serde_json::Map::new();
    body.insert(key.to_owned(), json!(page.items));
    if let Some(next) = page.next {
        body.insert("next_cursor".to_owned(), json!(next));
    }
    Json(serde_json::Value::Object(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
}

async fn create_tenant(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let request: CreateTenant = json_body(body, r#"{"name":"acme"}"#).await?;
    let (tenant, token) = state.platform.create_tenant(&caller, &request.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": tenant.name,
            "created_at": tenant.created_at,
            "token": token.secret(),
        })),
    ))
}

async fn list_tenants(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let page = state
        .platform
        .tenants_page(&caller, &page_request(&query)?)?;
    let page = page.map(|t| json!({ "name": t.name, "created_at": t.created_at }));
    Ok(page_json("tenants", page))
}

async fn rotate_token(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let token = state.platform.rotate_tenant_token(&caller, &name).await?;
    Ok(Json(json!({ "name": name, "token": token.secret() })))
}

async fn list_functions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let page = state
        .platform
        .functions_page(&caller, &page_request(&query)?)?;
    Ok(page_json("functions", page))
}

async fn list_versions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let page = state
        .platform
        .versions_page(&caller, &name, &page_request(&query)?)?;
    Ok(page_json("versions", page))
}

async fn get_function(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<FunctionRecord>> {
    Ok(Json(state.platform.function(&caller, &name)?))
}

/// The body is a signed bundle (`cella bundle build` + `cella bundle sign`): its manifest
/// carries the version, kind and limits.
async fn deploy(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    if let Some((key, _)) = query_pairs(&query).into_iter().next() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "unknown query parameter `{key}`: limits and everything else about a version \
                 are in its signed manifest (`[limits]` in cella.toml)"
            ),
        ));
    }
    let bundle = read_limited(body, state.config.max_upload_bytes, "uploaded bundle").await?;
    if !cella_bundle::looks_like_bundle(&bundle) {
        return Err(ApiError::new(
            ErrorCode::InvalidBundle,
            "the body is not a signed bundle; make one with `cella bundle build` and `cella \
             bundle sign`, or let `cella deploy NAME FILE.wasm` do both with your key",
        ));
    }
    let record = state.platform.deploy(&caller, &name, bundle).await?;
    // New when its one kept version is the one it was created with (with `max_versions = 1`
    // a redeploy also keeps one version, a later one).
    let created = record.versions.len() == 1
        && record.versions.first().map(|v| &v.deployed_at) == Some(&record.created_at);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)))
}

/// The body is the plug-in's WebAssembly module (operator only).
async fn add_plugin(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let module = read_limited(body, state.config.max_upload_bytes, "uploaded plug-in").await?;
    let plugin = state.platform.add_plugin(&caller, &name, module).await?;
    Ok((StatusCode::CREATED, Json(plugin)))
}

async fn list_plugins(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let page = state
        .platform
        .plugins_page(&caller, &page_request(&query)?)?;
    Ok(page_json("plugins", page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddKey {
    /// `ed25519:<64 hex digits>`, as in the `.pub` file `cella keygen` writes.
    public_key: String,
}

async fn add_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let request: AddKey = json_body(body, r#"{"public_key":"ed25519:<64 hex digits>"}"#).await?;
    let key = state.platform.add_key(&caller, &request.public_key).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

async fn list_keys(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let page = state.platform.keys_page(&caller, &page_request(&query)?)?;
    Ok(page_json("keys", page))
}

async fn revoke_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let (key, still_running) = state.platform.revoke_key(&caller, &id).await?;
    Ok(Json(
        json!({ "key": key, "current_versions_signed_by_it": still_running }),
    ))
}

async fn delete_function(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<FunctionRecord>> {
    Ok(Json(state.platform.delete(&caller, &name).await?))
}

async fn logs(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let invocations = state.platform.logs(&caller, &name)?;
    Ok(Json(json!({ "invocations": invocations })))
}

/// Invocations, host calls and denials of a function since the node started.
async fn stats(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(state.platform.stats(&caller, &name)?))
}

/// Which environment variables are set and granted; never their values.
async fn env(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({ "env": state.platform.env(&caller, &name)? })))
}

/// Rotates the cluster key (admin): workers are admitted again to get the new one.
async fn rotate_cluster(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Json<serde_json::Value>> {
    let epoch = state.platform.rotate_cluster(&caller).await?;
    Ok(Json(json!({ "epoch": epoch })))
}

/// A JSON merge patch (RFC 7396) of the environment: a string sets a value, `null` removes it.
async fn set_env(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let changes: std::collections::BTreeMap<String, Option<String>> =
        json_body(body, r#"{"NAME":"value","OTHER":null}"#).await?;
    let env = state.platform.set_env(&caller, &name, changes).await?;
    Ok(Json(json!({ "env": env })))
}

fn tenant_param(tenant: &str) -> ApiResult<TenantName> {
    TenantName::new(tenant).map_err(|e| ApiError::new(ErrorCode::InvalidName, e.to_string()))
}

/// `PUT` grants `tenant` the right to invoke; `DELETE` takes it back.
async fn grant(
    State(state): State<AppState>,
    Caller(caller): Caller,
    method: Method,
    Path((name, tenant)): Path<(String, String)>,
) -> ApiResult<Json<FunctionRecord>> {
    let tenant = tenant_param(&tenant)?;
    let change = if method == Method::PUT {
        AccessChange::Grant(tenant)
    } else {
        AccessChange::Revoke(tenant)
    };
    Ok(Json(
        state.platform.change_access(&caller, &name, change).await?,
    ))
}

/// `PUT` lets every tenant invoke; `DELETE` takes that back.
async fn public(
    State(state): State<AppState>,
    Caller(caller): Caller,
    method: Method,
    Path(name): Path<String>,
) -> ApiResult<Json<FunctionRecord>> {
    let change = AccessChange::Public(method == Method::PUT);
    Ok(Json(
        state.platform.change_access(&caller, &name, change).await?,
    ))
}

/// `name` or `name@version`; a `cella-expect-hash` header makes anything but that bundle 412.
async fn invoke(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mut args = Vec::new();
    let mut asynchronous = false;
    for (key, value) in query_pairs(&query) {
        match (key.as_str(), value.as_str()) {
            ("arg", _) => args.push(value),
            ("async", "1" | "true") => asynchronous = true,
            ("async", "0" | "false") => asynchronous = false,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "unknown query parameter `{key}={value}`; pass function arguments as \
                         `?arg=VALUE` (repeatable), and `?async=1` to run it asynchronously"
                    ),
                ));
            }
        }
    }
    let options = invoke_options(&headers)?;
    let stdin = read_limited(body, state.config.max_body_bytes, "request body").await?;
    if asynchronous {
        let request = crate::asynchronous::request(stdin, args, options.expect);
        return crate::asynchronous::submit(&state, &caller, &name, &headers, request).await;
    }
    let output = state
        .platform
        .invoke(
            &caller,
            &name,
            &options,
            CommandInput {
                stdin,
                args,
                ..CommandInput::default()
            },
        )
        .await?;
    Ok(invocation_response(output))
}

/// The values of the only query parameter a route takes, `name` (repeatable); any other is
/// refused with `hint`.
fn repeated_parameter(query: &Option<String>, name: &str, hint: &str) -> ApiResult<Vec<String>> {
    let mut values = Vec::new();
    for (key, value) in query_pairs(query) {
        if key != name {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("unknown query parameter `{key}`; {hint}"),
            ));
        }
        values.push(value);
    }
    Ok(values)
}

/// `cella-expect-hash` and `cella-nonce`, as an invocation's options.
fn invoke_options(headers: &HeaderMap) -> ApiResult<InvokeOptions> {
    Ok(InvokeOptions {
        expect: expected_hash(headers)?,
        nonce: request_nonce(headers)?,
    })
}

/// The request header naming the bundle hash the caller expects to run.
pub(crate) const EXPECT_HASH_HEADER: &str = "cella-expect-hash";

pub(crate) fn expected_hash(headers: &HeaderMap) -> ApiResult<Option<cella_core::ContentHash>> {
    let Some(value) = headers.get(EXPECT_HASH_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("`{EXPECT_HASH_HEADER}` must be `sha256:` and 64 hex digits"),
            )
        })
}

/// The request header carrying a nonce (hex) for the receipt.
const NONCE_HEADER: &str = "cella-nonce";
/// The response header carrying the signed receipt (base64 of its JSON).
const RECEIPT_HEADER: &str = "cella-receipt";

fn request_nonce(headers: &HeaderMap) -> ApiResult<Option<Vec<u8>>> {
    let Some(value) = headers.get(NONCE_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| hex::decode(v.trim()).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("`{NONCE_HEADER}` must be hex (at most 64 bytes)"),
            )
        })
}

/// `POST /v1/chain?step=a&step=b@1.2.0&step=c`: the body is the first step's input, the
/// response the last step's output; the steps pass data to each other inside the node.
async fn chain(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let steps = repeated_parameter(
        &query,
        "step",
        "name the chain's functions in order as `?step=NAME` (repeatable; `NAME@VERSION` pins \
         one)",
    )?;
    let options = invoke_options(&headers)?;
    let input = read_limited(body, state.config.max_body_bytes, "request body").await?;
    let output = state
        .platform
        .invoke_chain(&caller, &steps, &options, input)
        .await?;
    Ok(invocation_response(output))
}

fn invocation_response(output: InvokeOutput) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    invocation_headers(&mut headers, &output.invocation_id);
    if let Ok(hash) = HeaderValue::from_str(&output.function.hash.to_string()) {
        headers.insert("cella-function-hash", hash);
    }
    if let Ok(version) = HeaderValue::from_str(&output.function.version.to_string()) {
        headers.insert("cella-function-version", version);
    }
    headers.insert(
        "cella-duration-ms",
        HeaderValue::from(output.duration.as_millis() as u64),
    );
    use base64::Engine as _;
    let receipt = serde_json::to_vec(&output.receipt).expect("receipts serialize");
    if let Ok(value) =
        HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(receipt))
    {
        headers.insert(RECEIPT_HEADER, value);
    }
    (headers, output.output).into_response()
}

pub(crate) fn invocation_headers(headers: &mut HeaderMap, invocation_id: &str) {
    if let Ok(id) = HeaderValue::from_str(invocation_id) {
        headers.insert("cella-invocation-id", id);
    }
}
