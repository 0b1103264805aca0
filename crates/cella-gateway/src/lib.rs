//! cella's HTTP API (v1), built with axum. The gateway authenticates the caller from a bearer
//! token, turns HTTP into calls on the [`Platform`](cella_runtime::Platform) (which authorizes
//! them), and turns results and errors back into HTTP with JSON errors
//! `{"error":{"code","message"}}`. [`router`] builds the app as a value, so tests can call it
//! without a socket; [`serve`] runs it on a listener.
#![forbid(unsafe_code)]

mod api;
mod auth;
mod body;
mod error;
mod passthrough;

use std::sync::Arc;

use axum::Router;
use cella_runtime::Platform;
use tokio::net::TcpListener;

pub use error::ApiError;

/// Limits the gateway enforces before the runtime sees a request.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body for invocations, in bytes.
    pub max_body_bytes: usize,
    /// Largest .wasm upload, in bytes.
    pub max_upload_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 16 * 1024 * 1024,
            max_upload_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) platform: Arc<Platform>,
    pub(crate) config: Arc<GatewayConfig>,
}

/// The whole API as an axum `Router`.
pub fn router(platform: Arc<Platform>, config: GatewayConfig) -> Router {
    api::routes().with_state(AppState {
        platform,
        config: Arc::new(config),
    })
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
