//! Authentication: every API call (but health and metrics) carries `Authorization: Bearer
//! <token>`; the extractor turns it into the calling [`Principal`].

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use cella_runtime::ErrorCode;
use cella_store::Principal;

use crate::guessing::Peer;
use crate::{ApiError, AppState};

/// The authenticated caller of a request.
pub(crate) struct Caller(pub(crate) Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts.extensions.get::<Peer>().map(|p| p.0);
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "missing bearer token: send `Authorization: Bearer <token>` (the CLI reads \
                 CELLA_TOKEN or --token)",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
        // The budget limits unauthenticated attempts, never authenticated work: clients
        // behind one address (a NAT, a proxy) keep working with valid tokens while another
        // of them guesses. A blocked address only gets the cheap local look-up.
        let blocked = peer.and_then(|p| state.guessing.blocked_for(p));
        let found = match blocked {
            Some(_) => state.platform.authenticate_known(token)?,
            None => state.platform.authenticate(token)?,
        };
        match (found, blocked) {
            (Some(principal), _) => Ok(Caller(principal)),
            (None, Some(wait)) => Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "too many requests with invalid tokens from this address; retry in {} s \
                     with a valid token",
                    wait.as_secs() + 1
                ),
            )),
            (None, None) => {
                if let Some(peer) = peer {
                    state.guessing.failed(peer);
                }
                Err(ApiError::new(
                    ErrorCode::Unauthenticated,
                    "the bearer token is not valid (it may have been rotated); ask the platform \
                     admin for a new one",
                ))
            }
        }
    }
}
