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

/// Every response names the registry version it was served from, so a client that remembers
/// the highest version it has seen notices a node whose state was rolled back.
pub const REGISTRY_VERSION_HEADER: &str = "cella-registry-version";

/// The whole API as an axum `Router`.
pub fn router(platform: Arc<Platform>, config: GatewayConfig) -> Router {
    let state = AppState {
        platform,
        config: Arc::new(config),
    };
    api::routes()
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            stamp_registry_version,
        ))
        .with_state(state)
}

async fn stamp_registry_version(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    // Read after the handler ran, so a response to a change names the version it made.
    let version = state.platform.registry_version();
    response
        .headers_mut()
        .insert(REGISTRY_VERSION_HEADER, http::HeaderValue::from(version));
    response
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` over TLS (the node's RA-TLS certificate) on `listener` until `shutdown`
/// completes. TLS ends inside this process: the key never leaves it.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: rustls::ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;

    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin or die.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = connection {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
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
