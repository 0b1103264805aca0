//! cella's HTTP API (v1), built with axum. The gateway authenticates the caller from a bearer
//! token, turns HTTP into calls on the [`Platform`](cella_runtime::Platform) (which authorizes
//! them), and turns results and errors back into HTTP with JSON errors
//! `{"error":{"code","message"}}`. [`router`] builds the app as a value, so tests can call it
//! without a socket; [`serve`] runs it on a listener.
#![forbid(unsafe_code)]

mod api;
mod asynchronous;
mod auth;
mod body;
mod error;
mod guessing;
mod passthrough;
mod triggers;

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
    /// Largest bundle upload, in bytes.
    pub max_upload_bytes: usize,
    /// How long a client may take to send a request's headers (slow clients hold a
    /// connection open; past this it is closed).
    pub header_read_timeout: std::time::Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 16 * 1024 * 1024,
            max_upload_bytes: 64 * 1024 * 1024,
            header_read_timeout: std::time::Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) platform: Arc<Platform>,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) guessing: Arc<guessing::GuessingLimiter>,
}

/// Every response names the registry version it was served from, so a client that remembers
/// the highest version it has seen notices a node whose state was rolled back.
pub const REGISTRY_VERSION_HEADER: &str = "cella-registry-version";

/// The whole API as an axum `Router`.
pub fn router(platform: Arc<Platform>, config: GatewayConfig) -> Router {
    let state = AppState {
        platform,
        config: Arc::new(config),
        guessing: Arc::default(),
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
/// How long open connections get to finish their requests once the server stops.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` over TLS (the node's RA-TLS certificate) on `listener` until `shutdown`
/// completes. TLS ends inside this process: the key never leaves it. A client gets
/// `header_read_timeout` to send each request's headers.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: rustls::ServerConfig,
    header_read_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    serve_connections(
        listener,
        router,
        header_read_timeout,
        shutdown,
        move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Ok(tls),
                    Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                    Err(_) => Err("TLS handshake timed out".to_owned()),
                }
            }
        },
    )
    .await
}

/// Serves `router` in plain HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_connections(
        listener,
        router,
        header_read_timeout,
        shutdown,
        |tcp| async move { Ok::<_, String>(tcp) },
    )
    .await
}

/// The accept loop both servers share: each connection is set up by `open` (TLS or not), then
/// served by hyper with a deadline for request headers, so slow clients cannot hold
/// connections forever. On `shutdown`, open connections finish their requests (up to
/// [`DRAIN_TIMEOUT`]) and close.
async fn serve_connections<Io, Open>(
    listener: TcpListener,
    router: Router,
    header_read_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    open: impl Fn(tokio::net::TcpStream) -> Open,
) -> std::io::Result<()>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    Open: Future<Output = Result<Io, String>> + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
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
        let opening = open(tcp);
        let builder = builder.clone();
        // Requests carry their client's address (for the token-guessing limit).
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(guessing::Peer(peer.ip()))),
        );
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let io = match opening.await {
                Ok(io) => io,
                Err(e) => return tracing::debug!(%peer, "{e}"),
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open {DRAIN_TIMEOUT:?} after shutdown; closing them");
    }
    Ok(())
}
