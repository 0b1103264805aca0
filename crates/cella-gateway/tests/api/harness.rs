//! Starts and stops nodes for the tests and finds the guests.

use std::path::PathBuf;
use std::sync::Arc;

use cella_client::Client;
use cella_gateway::GatewayConfig;
use cella_runtime::{Platform, PlatformConfig};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a JavaScript function or the `hello-http` component is deployed: the JavaScript
/// engine reads the clock (`Date`) and random numbers (`Math.random`), and Rust's standard
/// library for components imports both, so their manifests must grant both.
pub fn clocks_random() -> cella_client::DeployOptions {
    cella_client::DeployOptions::default()
        .allow("clocks")
        .allow("random")
}

/// A guest's bytes from the directory `./scripts/test` builds them into.
pub fn guest(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("CELLA_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guests/dist"));
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "guest {} is missing ({e}); build the guests with ./scripts/build-guests or run \
             the suite with ./scripts/test",
            path.display()
        )
    })
}

pub struct Node {
    pub url: String,
    pub admin: Client,
    pub platform: Arc<Platform>,
    admin_token: String,
    dir: Arc<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

pub struct Options {
    pub tenant_concurrency: usize,
    pub instances: u32,
    /// Serve RA-TLS (`https://`) instead of plain HTTP.
    pub tls: bool,
    pub gateway: GatewayConfig,
    /// An object_store URL for bundles instead of the data directory's `blobs/`.
    pub blob_store: Option<String>,
    /// A blob store given as a value (a lying storage host).
    pub blob_backend: Option<Arc<dyn cella_store::ObjectStore>>,
    /// How outgoing HTTPS is made (test roots, loopback allowed).
    pub outgoing: Option<cella_sandbox::OutgoingConfig>,
    /// Versions kept per function, and bytes of code per tenant.
    pub max_versions: usize,
    pub max_tenant_bytes: u64,
    /// Bytes of compiled code kept in memory.
    pub code_cache_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tenant_concurrency: 64,
            instances: 32,
            tls: false,
            gateway: GatewayConfig::default(),
            blob_store: None,
            blob_backend: None,
            outgoing: None,
            max_versions: 16,
            max_tenant_bytes: 1 << 30,
            code_cache_bytes: 512 << 20,
        }
    }
}

impl Node {
    pub async fn start() -> Node {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Node {
        let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
        Self::boot(dir, None, options).await
    }

    async fn boot(dir: Arc<TempDir>, admin_token: Option<String>, options: Options) -> Node {
        let mut config = PlatformConfig::new(dir.path());
        config.tenant_concurrency = options.tenant_concurrency;
        config.sandbox.instances = options.instances;
        config.blob_store = options.blob_store.clone();
        config.blob_backend = options.blob_backend.clone();
        config.max_versions = options.max_versions;
        config.max_tenant_bytes = options.max_tenant_bytes;
        config.code_cache_bytes = options.code_cache_bytes;
        if let Some(outgoing) = &options.outgoing {
            config.sandbox.outgoing = outgoing.clone();
        }
        let platform = Arc::new(Platform::open(config).expect("platform opens"));
        let created = platform.ensure_admin_token().await.unwrap();
        let admin_token = match (created, admin_token) {
            (Some(token), None) => token.secret().to_owned(),
            (None, Some(token)) => token,
            (created, kept) => panic!(
                "admin token created again: {} / kept {}",
                created.is_some(),
                kept.is_some()
            ),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if options.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let header_read_timeout = options.gateway.header_read_timeout;
        let router = cella_gateway::router(platform.clone(), options.gateway);
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let server = if options.tls {
            let tls = platform.tls_config().unwrap();
            tokio::spawn(cella_gateway::serve_tls(
                listener,
                router,
                tls,
                header_read_timeout,
                stopped,
            ))
        } else {
            tokio::spawn(cella_gateway::serve(
                listener,
                router,
                header_read_timeout,
                stopped,
            ))
        };
        Node {
            admin: Client::new(&url, Some(admin_token.clone())),
            url,
            platform,
            admin_token,
            dir,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Stops the server, drops the platform (closing its database) and starts a new node on
    /// the same data directory.
    pub async fn restart(self) -> Node {
        self.restart_with(Options::default()).await
    }

    /// Like [`Node::restart`], with other options.
    pub async fn restart_with(mut self, options: Options) -> Node {
        let dir = self.dir.clone();
        let token = self.admin_token.clone();
        self.shutdown().await;
        drop(self);
        Self::boot(dir, Some(token), options).await
    }

    /// Stops the server and closes the platform; the data directory stays for inspection.
    pub async fn stop(mut self) -> Arc<TempDir> {
        let dir = self.dir.clone();
        self.shutdown().await;
        drop(self);
        dir
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        // Connection tasks drop their handles on the platform just after the server stops;
        // the registry can be opened again only once the last one is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&self.platform) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the platform is still in use 10 s after the server stopped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The node's Prometheus text (`/metrics`, open to anyone).
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    pub fn admin_secret(&self) -> String {
        self.admin_token.clone()
    }

    /// A client with no token at all.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.url, None)
    }

    /// Creates tenant `name` and returns a client holding its token.
    pub async fn tenant(&self, name: &str) -> Client {
        let created = self.admin.create_tenant(name).await.unwrap();
        signed_client(&self.url, created.token).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Asserts that `result` failed with `status` and API error `code`; returns the message.
#[track_caller]
pub fn assert_api_error<T: std::fmt::Debug>(
    result: Result<T, cella_client::ClientError>,
    status: u16,
    code: &str,
) -> String {
    match result {
        Err(cella_client::ClientError::Api {
            status: s,
            code: c,
            message,
            ..
        }) => {
            assert_eq!(
                (s, c.as_str()),
                (status, code),
                "unexpected error: {message}"
            );
            assert!(!message.is_empty());
            message
        }
        other => panic!("expected HTTP {status} `{code}`, got {other:?}"),
    }
}

/// A client holding `token` that signs its deploys with a fresh key it has registered.
pub async fn signed_client(url: &str, token: String) -> Client {
    let key = cella_bundle::SigningKey::generate();
    let public = key.verifying_key().to_string();
    let client = Client::new(url, Some(token)).with_signing_key(key);
    client.add_key(&public).await.unwrap();
    client
}
