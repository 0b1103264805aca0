//! `/v1/functions/{name}/triggers`: the owner's event triggers of a function.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cella_runtime::NewTrigger;
use serde::Deserialize;
use serde_json::json;

use crate::api::json_body;
use crate::auth::Caller;
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTrigger {
    subject: String,
    #[serde(default)]
    reply_subject: Option<String>,
    #[serde(default)]
    public_output: bool,
}

pub(crate) async fn add(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let add: AddTrigger = json_body(
        body,
        r#"{"subject":"acme.orders.>","reply_subject":"acme.results","public_output":false}"#,
    )
    .await?;
    let (trigger, result_key) = state
        .platform
        .add_trigger(
            &caller,
            &name,
            NewTrigger {
                subject: add.subject,
                reply_subject: add.reply_subject,
                public_output: add.public_output,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "trigger": trigger, "result_key": result_key })),
    ))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let request = crate::api::page_request(&query)?;
    let page = state.platform.triggers_page(&caller, &name, &request)?;
    Ok(crate::api::page_json("triggers", page))
}

pub(crate) async fn remove(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let removed = state.platform.remove_trigger(&caller, &name, &id).await?;
    Ok(Json(json!({ "trigger": removed })))
}
