//! Reading request bodies under a size limit, with the API's JSON error when it is crossed.

use axum::body::Body;
use bytes::Bytes;
use cella_runtime::ErrorCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::ApiError;

pub(crate) async fn read_limited(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the {what} is larger than this platform's limit of {limit} bytes; send less \
                 (the operator sets the limit in cella.toml under [gateway])"
            ),
        )),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the {what} could not be read: {e}"),
        )),
    }
}
