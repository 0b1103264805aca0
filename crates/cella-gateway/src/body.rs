//! Reading request bodies under a size limit, with the API's JSON error when it is crossed.

use axum::body::Body;
use axum::body::HttpBody as _;
use bytes::Bytes;
use cella_runtime::ErrorCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::ApiError;

/// Reads `body` whole if it is at most `limit` bytes. A body whose `Content-Length` already
/// says it is larger is refused before a byte of it is read; one without (chunked) is
/// refused as soon as it crosses the limit.
pub(crate) async fn read_limited(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the {what} is larger than this platform's limit of {limit} bytes; send less \
                 (the operator sets the limit in cella.toml under [gateway])"
            ),
        )
    };
    // hyper takes the lower bound from `Content-Length`.
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the {what} could not be read: {e}"),
        )),
    }
}
