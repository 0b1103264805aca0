//! A Rust client for cella's HTTP API (v1), used by the `cella` CLI and by tests; programs can
//! use it the same way.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cella_client::ClientError> {
//! # let policy = cella_tee::Policy::default();
//! // Every connection is checked against the policy (RA-TLS) before anything is sent.
//! let client = cella_client::Client::with_policy("https://127.0.0.1:7070", Some("cella_…".into()), &policy)?;
//! let out = client.invoke("brotli", b"hello".to_vec(), &[]).await?;
//! println!("{} bytes", out.output.len());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod lists;

use bytes::Bytes;
use cella_core::{FunctionRecord, Plugin};
pub use cella_tee::AttestationReport;
pub use lists::{MAX_PAGE, Page, Paging, every_page};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cella_ratls::RaTlsVerifier;
use cella_tee::{Check, Policy, Verification, report_data_for};
pub use reqwest::{Method, StatusCode};
use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error: its code and message say what to do.
    #[error("{message} [{code}, HTTP {status}]")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// The tail of the function's stderr, when a function failed.
        log: Option<String>,
    },
    #[error("cannot reach cella at {url}: {source}; is `cella up` running there (see CELLA_URL)?")]
    Connect { url: String, source: reqwest::Error },
    #[error("unexpected response from cella at {url}: {detail}")]
    Protocol { url: String, detail: String },
    /// The request could not be made from what was given.
    #[error("{0}")]
    Invalid(String),
    /// The node answered from an older registry than one this client saw before: its state
    /// was rolled back (or it is another node behind the same address).
    #[error(
        "cella at {url} answered from registry version {now}, older than version {seen} seen \
         before: the node's state was rolled back, or another node answers at this address; \
         do not trust it until the operator explains"
    )]
    RolledBack { url: String, seen: u64, now: u64 },
    /// The node closed the connection while the request's body was still being sent: it
    /// refuses a body whose `Content-Length` is over its limit before reading any of it.
    #[error(
        "cella at {url} closed the connection while the request body was being sent: the body \
         is most likely larger than the node accepts (it refuses such bodies on their \
         Content-Length); send less, or ask the operator for the limit"
    )]
    BodyRefused { url: String },
    /// A secret would go over a connection that no verified evidence binds (plain HTTP), and
    /// the policy does not allow that: anything between here and the node could relay the
    /// node's evidence and read the secret.
    #[error(
        "refusing to send a token to {url}: plain HTTP is not bound to the node's evidence, so \
         anything relaying the connection would read the token; use the node's https:// \
         address, or, for a local `cella up --insecure-http` node only, allow it with \
         `allow_unbound = true` in the policy (--allow-unbound)"
    )]
    Unbound { url: String },
}

impl ClientError {
    /// The API error code (`forbidden`, `timeout`, …), if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A tenant just created: the only time its token is shown.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedTenant {
    pub name: String,
    pub created_at: String,
    pub token: String,
}

/// The result of one invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub output: Bytes,
    /// The node's signed receipt for this invocation.
    pub receipt: Option<cella_receipt::SignedReceipt>,
    pub invocation_id: Option<String>,
    pub function_hash: Option<String>,
    pub duration_ms: Option<u64>,
}

/// A verdict on a node, and the report it was based on.
#[derive(Debug, Clone, Serialize)]
pub struct NodeVerification {
    pub report: AttestationReport,
    #[serde(flatten)]
    pub verification: Verification,
    /// The node's plug-ins, from its signed statement (empty if it has none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<cella_receipt::PluginClaim>,
}

/// `GET /v1/attestation`: the evidence and the signed plug-in list.
#[derive(Deserialize)]
struct Attestation {
    #[serde(flatten)]
    report: AttestationReport,
    #[serde(default)]
    plugins: Option<cella_receipt::SignedPluginList>,
}

impl NodeVerification {
    pub fn passed(&self) -> bool {
        self.verification.passed()
    }
}

/// A tenant as listed by `GET /v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantInfo {
    pub name: String,
    pub created_at: String,
}

/// One remembered invocation of a function (from `GET /v1/functions/{name}/logs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationLog {
    pub id: String,
    pub at: String,
    pub outcome: String,
    pub duration_ms: u64,
    pub log: String,
    #[serde(default)]
    pub host_calls: u64,
    #[serde(default)]
    pub denials: u64,
}

/// A public key a tenant signs bundles with, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantKey {
    pub tenant: String,
    pub id: String,
    pub public_key: String,
    pub added_at: String,
    pub revoked_at: Option<String>,
}

/// Conditions on an invocation (see [`Client::invoke_with`]).
#[derive(Debug, Clone, Default)]
pub struct InvokeOptions<'a> {
    /// Run nothing unless the function's bundle hash is this (`sha256:…`).
    pub expect_hash: Option<&'a str>,
    /// A nonce the node echoes in the receipt (at most 64 bytes).
    pub nonce: Option<&'a [u8]>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// For `https://` nodes: the RA-TLS verifier every connection goes through.
    ratls: Option<Arc<RaTlsVerifier>>,
    /// The highest registry version any response carried (shared by clones).
    registry_version: Arc<AtomicU64>,
    /// Signs the bundles [`Client::deploy`] builds.
    signer: Option<Arc<cella_bundle::SigningKey>>,
}

/// The response header naming the registry version a response was served from.
const REGISTRY_VERSION_HEADER: &str = "cella-registry-version";

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    log: Option<String>,
}

/// Whether sending failed because the peer stopped reading the body (a broken pipe or a reset
/// while writing it), as a node does with a body over its limit.
fn body_cut_off(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        {
            return e.is_request() || e.is_body();
        }
        source = cause.source();
    }
    false
}

fn segment(s: &str) -> String {
    // Names are validated server-side; encode anyway so no input can change the route.
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn ensure_crypto_provider() {
    // reqwest is built without a default TLS provider; cella uses ring everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Client {
    /// A client for a plain-HTTP node (local debugging: `cella up --insecure-http`), or for
    /// reaching an `https://` node without checking it — use [`Client::with_policy`] for those.
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        ensure_crypto_provider();
        Client {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').to_owned(),
            token,
            ratls: None,
            registry_version: Arc::new(AtomicU64::new(0)),
            signer: None,
        }
    }

    /// Signs the bundles that [`Client::deploy`] builds with `key` (its public half must be
    /// registered for the tenant: [`Client::add_key`]).
    pub fn with_signing_key(mut self, key: cella_bundle::SigningKey) -> Self {
        self.signer = Some(Arc::new(key));
        self
    }

    /// The highest registry version the node has answered from so far.
    pub fn registry_version(&self) -> u64 {
        self.registry_version.load(Ordering::SeqCst)
    }

    /// Refuse answers from a registry older than `version` (one seen in an earlier session,
    /// say): such a node's state was rolled back.
    pub fn expect_registry_version(&self, version: u64) {
        self.registry_version.fetch_max(version, Ordering::SeqCst);
    }

    /// A client that trusts the node only as far as `policy` allows: for `https://` URLs every
    /// TLS connection is accepted only if the certificate's evidence passes the policy and
    /// binds the certificate's key (RA-TLS). Over plain HTTP nothing binds the evidence to the
    /// connection, so a client with a token is refused ([`ClientError::Unbound`]) unless the
    /// policy says `allow_unbound`; one without a token may still fetch evidence, whose
    /// verdict then fails the `TLS key` check.
    pub fn with_policy(
        base_url: &str,
        token: Option<String>,
        policy: &Policy,
    ) -> Result<Self, ClientError> {
        let mut client = Client::new(base_url, token);
        if !client.base.starts_with("https://") {
            if client.token.is_some() && !policy.allow_unbound {
                return Err(ClientError::Unbound { url: client.base });
            }
            return Ok(client);
        }
        let verifier = RaTlsVerifier::new(policy.clone());
        let tls = verifier
            .client_config()
            .map_err(|e| ClientError::Protocol {
                url: client.base.clone(),
                detail: e.to_string(),
            })?;
        client.http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| ClientError::Protocol {
                url: client.base.clone(),
                detail: format!("TLS set-up: {e}"),
            })?;
        client.ratls = Some(verifier);
        Ok(client)
    }

    /// The RA-TLS verdict on the node's certificate, after a connection was attempted.
    pub fn tls_verification(&self) -> Option<Verification> {
        self.ratls.as_ref().and_then(|v| v.last_verification())
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(&self, builder: RequestBuilder) -> Result<Response, ClientError> {
        let response = self.send_raw(builder).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.api_error(response).await)
    }

    async fn send_raw(&self, builder: RequestBuilder) -> Result<Response, ClientError> {
        let response = builder.send().await.map_err(|source| {
            if body_cut_off(&source) {
                ClientError::BodyRefused {
                    url: self.base.clone(),
                }
            } else {
                ClientError::Connect {
                    url: self.base.clone(),
                    source,
                }
            }
        })?;
        let version = response
            .headers()
            .get(REGISTRY_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(now) = version {
            let seen = self.registry_version.fetch_max(now, Ordering::SeqCst);
            if now < seen {
                return Err(ClientError::RolledBack {
                    url: self.base.clone(),
                    seen,
                    now,
                });
            }
        }
        Ok(response)
    }

    async fn api_error(&self, response: Response) -> ClientError {
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => ClientError::Api {
                status: status.as_u16(),
                code: error.code,
                message: error.message,
                log: error.log,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "unknown".into(),
                message: String::from_utf8_lossy(&body).chars().take(500).collect(),
                log: None,
            },
        }
    }

    async fn json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(builder).await?;
        response.json().await.map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            detail: e.to_string(),
        })
    }

    /// Fetches evidence about the node bound to `nonce` (unverified).
    pub async fn attestation(&self, nonce: &[u8]) -> Result<AttestationReport, ClientError> {
        Ok(self.attestation_with_plugins(nonce).await?.report)
    }

    /// The evidence and, from nodes that have them, the plug-in list signed for `nonce`.
    async fn attestation_with_plugins(&self, nonce: &[u8]) -> Result<Attestation, ClientError> {
        // Evidence needs no token, and this request comes before the verdict: send none.
        let builder = self
            .http
            .get(format!("{}/v1/attestation", self.base))
            .query(&[("nonce", hex::encode(nonce))]);
        self.json(builder).await
    }

    /// Verifies the node before anything secret is sent to it: fetches evidence for a fresh
    /// random nonce and checks it against `policy` — the evidence's signature, TEE type,
    /// simulated or not, measurement, security version, and that the report data binds the
    /// node's identity key to this nonce.
    pub async fn verify_node(&self, policy: &Policy) -> Result<NodeVerification, ClientError> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).expect("the operating system's random generator");
        let Attestation { report, plugins } = self.attestation_with_plugins(&nonce).await?;
        let identity = hex::decode(&report.identity_key).map_err(|_| ClientError::Protocol {
            url: self.base.clone(),
            detail: "the identity key is not hex".into(),
        })?;
        // Over RA-TLS the evidence must speak of the key this connection was made with.
        let tls_key = self.ratls.as_ref().and_then(|v| v.last_public_key());
        let expected = report_data_for(&identity, &nonce);
        let mut verification = policy
            .verify_with_anchors(
                &report.evidence,
                Some(&expected),
                std::time::SystemTime::now(),
            )
            .map_err(|e| ClientError::Protocol {
                url: self.base.clone(),
                detail: format!("in the policy: {e}"),
            })?;
        verification.checks.push(match tls_key {
            Some(key) => Check {
                name: "TLS key",
                ok: key == identity,
                expected: hex::encode(&key),
                actual: report.identity_key.clone(),
                fix: None,
            },
            None if policy.allow_unbound => Check {
                name: "TLS key",
                ok: true,
                expected: "none (plain HTTP, allowed by allow_unbound)".into(),
                actual: "not bound: the evidence is not tied to this connection".into(),
                fix: None,
            },
            None => Check {
                name: "TLS key",
                ok: false,
                expected: "the key of this connection (https://)".into(),
                actual: "not bound: plain HTTP, so anything relaying it could pass the node's \
                         evidence on and read what is sent next"
                    .into(),
                fix: Some(
                    "use the node's https:// address; only for a local `cella up \
                     --insecure-http` node, set allow_unbound = true in the policy \
                     (or pass --allow-unbound)"
                        .into(),
                ),
            },
        });
        // The plug-ins the node runs functions on, in the node's own words: signed by the key
        // the evidence binds, for this nonce. Listed only when there are some (or the
        // statement does not verify).
        let mut verified_plugins = Vec::new();
        if let Some(statement) = plugins {
            let checked = statement.verify(&report.identity_key, &nonce);
            if checked.is_err() || !statement.list.plugins.is_empty() {
                verification.checks.push(Check {
                    name: "plug-ins",
                    ok: checked.is_ok(),
                    expected: "a list signed by the node key for this nonce".into(),
                    actual: match &checked {
                        Ok(()) => statement
                            .list
                            .plugins
                            .iter()
                            .map(|p| format!("{} (image {})", p.name, p.image))
                            .collect::<Vec<_>>()
                            .join(", "),
                        Err(e) => e.to_string(),
                    },
                    fix: None,
                });
            }
            if checked.is_ok() {
                verified_plugins = statement.list.plugins;
            }
        }
        Ok(NodeVerification {
            report,
            verification,
            plugins: verified_plugins,
        })
    }

    /// The node's Prometheus metrics, as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let response = self.send(self.request(Method::GET, "/metrics")).await?;
        response
            .text()
            .await
            .map_err(|source| ClientError::Connect {
                url: self.base.clone(),
                source,
            })
    }

    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(Method::GET, "/v1/health")).await
    }

    pub async fn create_tenant(&self, name: &str) -> Result<CreatedTenant, ClientError> {
        let body = serde_json::json!({ "name": name });
        self.json(self.request(Method::POST, "/v1/tenants").json(&body))
            .await
    }

    pub async fn rotate_token(&self, tenant: &str) -> Result<CreatedTenant, ClientError> {
        #[derive(Deserialize)]
        struct Rotated {
            name: String,
            token: String,
        }
        let path = format!("/v1/tenants/{}/token", segment(tenant));
        let r: Rotated = self.json(self.request(Method::POST, &path)).await?;
        Ok(CreatedTenant {
            name: r.name,
            created_at: String::new(),
            token: r.token,
        })
    }

    /// Sets (`Some`) or removes (`None`) values of a function's environment variables; each
    /// must be named in its manifest. Returns which are set and granted (never values).
    pub async fn set_env(
        &self,
        name: &str,
        changes: &std::collections::BTreeMap<String, Option<String>>,
    ) -> Result<Vec<EnvSetting>, ClientError> {
        let path = format!("/v1/functions/{}/env", segment(name));
        let env: EnvList = self
            .json(self.request(Method::PATCH, &path).json(changes))
            .await?;
        Ok(env.env)
    }

    /// Which environment variables of a function are set and granted (never values).
    pub async fn env(&self, name: &str) -> Result<Vec<EnvSetting>, ClientError> {
        let path = format!("/v1/functions/{}/env", segment(name));
        let env: EnvList = self.json(self.request(Method::GET, &path)).await?;
        Ok(env.env)
    }

    /// A function's invocations, host calls and denials since the node started.
    pub async fn stats(&self, name: &str) -> Result<FunctionStats, ClientError> {
        let path = format!("/v1/functions/{}/stats", segment(name));
        self.json(self.request(Method::GET, &path)).await
    }

    /// Deploys a signed bundle as function `name`.
    pub async fn deploy_bundle(
        &self,
        name: &str,
        bundle: Vec<u8>,
    ) -> Result<FunctionRecord, ClientError> {
        let path = format!("/v1/functions/{}", segment(name));
        let builder = self
            .request(Method::PUT, &path)
            .header("content-type", "application/vnd.cella.bundle")
            .body(bundle);
        self.json(builder).await
    }

    /// Builds a bundle of `wasm` for function `name` — the next version (`0.1.0` for a new
    /// function, else the current one with its patch number raised), the kind read from the
    /// WebAssembly header, `limits` as `key=value` settings (`timeout=2s`, `memory=64MiB`) —
    /// signs it with this client's key ([`Client::with_signing_key`]) and deploys it.
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Vec<u8>,
        how: impl Into<DeployOptions>,
    ) -> Result<FunctionRecord, ClientError> {
        // Whatever is not a component is sent as a command: the node says what is wrong.
        let kind = cella_bundle::BundleKind::detect(&wasm)
            .unwrap_or(cella_bundle::BundleKind::WasiCommand);
        self.deploy_payload(name, kind, Vec::new(), wasm, how.into())
            .await
    }

    /// Like [`Client::deploy`], for a JavaScript module run by the node's JavaScript plug-in
    /// `engine` (`quickjs`), named in the manifest with the hash the node lists for it.
    pub async fn deploy_js(
        &self,
        name: &str,
        source: Vec<u8>,
        engine: &str,
        how: impl Into<DeployOptions>,
    ) -> Result<FunctionRecord, ClientError> {
        self.deploy_from_plugin(name, cella_bundle::BundleKind::Js, engine, source, how)
            .await
    }

    /// Like [`Client::deploy`], for a function made from the node's plug-in `plugin`: `payload`
    /// (JavaScript for kind `js`, else the plug-in's configuration) goes to the plug-in's
    /// initialiser at deploy. The manifest names the plug-in with the hash the node lists.
    pub async fn deploy_from_plugin(
        &self,
        name: &str,
        kind: cella_bundle::BundleKind,
        plugin: &str,
        payload: Vec<u8>,
        how: impl Into<DeployOptions>,
    ) -> Result<FunctionRecord, ClientError> {
        let found = self
            .plugins()
            .await?
            .into_iter()
            .find(|p| p.name.as_str() == plugin)
            .ok_or_else(|| {
                ClientError::Invalid(format!(
                    "the node has no plug-in `{plugin}`; see `cella plugin list` (its operator \
                     adds one with `cella plugin add {plugin} FILE.wasm`)"
                ))
            })?;
        let plugin = cella_bundle::PluginRef {
            name: found.name.to_string(),
            hash: found.hash,
        };
        self.deploy_payload(name, kind, vec![plugin], payload, how.into())
            .await
    }

    async fn deploy_payload(
        &self,
        name: &str,
        kind: cella_bundle::BundleKind,
        plugins: Vec<cella_bundle::PluginRef>,
        payload: Vec<u8>,
        how: DeployOptions,
    ) -> Result<FunctionRecord, ClientError> {
        let invalid = |detail: String| ClientError::Invalid(detail);
        let key = self.signer.as_ref().ok_or_else(|| {
            invalid(
                "deploying needs a signing key: make one with `cella keygen` and register it \
                 with `cella keys add`"
                    .into(),
            )
        })?;
        let version = match self.function(name).await {
            Ok(current) => {
                let mut next = current.version;
                next.patch += 1;
                next.pre = semver::Prerelease::EMPTY;
                next
            }
            // Not there, or another tenant's (then the node refuses the deploy and says why).
            Err(e) if matches!(e.code(), Some("not_found" | "forbidden")) => {
                semver::Version::new(0, 1, 0)
            }
            Err(e) => return Err(e),
        };
        let mut manifest_limits = cella_core::LimitsOverride::default();
        for setting in &how.limits {
            manifest_limits
                .set(setting)
                .map_err(|e| invalid(e.to_string()))?;
        }
        let manifest = cella_bundle::Manifest {
            name: cella_core::FunctionName::new(name).map_err(|e| invalid(e.to_string()))?,
            version,
            kind,
            plugins,
            permissions: how.permissions,
            limits: manifest_limits,
        };
        let mut bundle = cella_bundle::Bundle::new(manifest, payload);
        bundle.sign(key);
        self.deploy_bundle(name, bundle.encode()).await
    }

    /// Registers `wasm` as plug-in `name` (admin token only).
    pub async fn add_plugin(&self, name: &str, wasm: Vec<u8>) -> Result<Plugin, ClientError> {
        let path = format!("/v1/plugins/{}", segment(name));
        self.json(self.request(Method::PUT, &path).body(wasm)).await
    }

    /// The plug-ins the node has.
    /// Registers a public key (`ed25519:<hex>`) for this client's tenant.
    pub async fn add_key(&self, public_key: &str) -> Result<TenantKey, ClientError> {
        let body = serde_json::json!({ "public_key": public_key });
        self.json(self.request(Method::POST, "/v1/keys").json(&body))
            .await
    }

    /// Revokes a key; returns it and the functions whose current version it signed (they keep
    /// running until replaced or deleted).
    pub async fn revoke_key(&self, id: &str) -> Result<(TenantKey, Vec<String>), ClientError> {
        #[derive(Deserialize)]
        struct Revoked {
            key: TenantKey,
            current_versions_signed_by_it: Vec<String>,
        }
        let path = format!("/v1/keys/{}", segment(id));
        let r: Revoked = self.json(self.request(Method::DELETE, &path)).await?;
        Ok((r.key, r.current_versions_signed_by_it))
    }

    /// Invokes `name` (or `name@version`) with `input` on stdin and `args` as arguments.
    pub async fn invoke(
        &self,
        name: &str,
        input: Vec<u8>,
        args: &[String],
    ) -> Result<Invocation, ClientError> {
        self.invoke_with(name, input, args, &InvokeOptions::default())
            .await
    }

    /// Like [`Client::invoke`], with an expected bundle hash (anything else: HTTP 412
    /// `hash_mismatch`, nothing runs) and a nonce for the receipt.
    pub async fn invoke_with(
        &self,
        name: &str,
        input: Vec<u8>,
        args: &[String],
        options: &InvokeOptions<'_>,
    ) -> Result<Invocation, ClientError> {
        let query: Vec<(&str, &str)> = args.iter().map(|a| ("arg", a.as_str())).collect();
        let path = format!("/v1/functions/{}/invoke", segment(name));
        let mut builder = self.request(Method::POST, &path).query(&query).body(input);
        if let Some(expected) = options.expect_hash {
            builder = builder.header("cella-expect-hash", expected);
        }
        self.invocation(builder, options.nonce).await
    }

    /// Runs `steps` (`name` or `name@version`) as a chain inside the node: each step's output
    /// is the next one's input and never leaves the node; the last output comes back with one
    /// receipt naming every step.
    pub async fn invoke_chain(
        &self,
        steps: &[String],
        input: Vec<u8>,
        nonce: Option<&[u8]>,
    ) -> Result<Invocation, ClientError> {
        let query: Vec<(&str, &str)> = steps.iter().map(|s| ("step", s.as_str())).collect();
        let builder = self
            .request(Method::POST, "/v1/chain")
            .query(&query)
            .body(input);
        self.invocation(builder, nonce).await
    }

    async fn invocation(
        &self,
        mut builder: RequestBuilder,
        nonce: Option<&[u8]>,
    ) -> Result<Invocation, ClientError> {
        if let Some(nonce) = nonce {
            builder = builder.header("cella-nonce", hex::encode(nonce));
        }
        let response = self.send(builder).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let invocation_id = header("cella-invocation-id");
        let function_hash = header("cella-function-hash");
        let duration_ms = header("cella-duration-ms").and_then(|d| d.parse().ok());
        let receipt = match header("cella-receipt") {
            None => None,
            Some(encoded) => {
                use base64::Engine as _;
                let bad = |detail: String| ClientError::Protocol {
                    url: self.base.clone(),
                    detail: format!("the receipt header: {detail}"),
                };
                let json = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| bad(e.to_string()))?;
                Some(serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?)
            }
        };
        let output = response.bytes().await.map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            detail: format!("reading the function's output: {e}"),
        })?;
        Ok(Invocation {
            output,
            receipt,
            invocation_id,
            function_hash,
            duration_ms,
        })
    }

    /// Submits an asynchronous invocation of `name`: returns once the node stored it
    /// durably, with its id and status. The same `idempotency_key` again returns the same
    /// invocation instead of running another.
    pub async fn invoke_async(
        &self,
        name: &str,
        input: Vec<u8>,
        args: &[String],
        idempotency_key: Option<&str>,
    ) -> Result<AsyncInvocation, ClientError> {
        let mut query: Vec<(&str, &str)> = args.iter().map(|a| ("arg", a.as_str())).collect();
        query.push(("async", "1"));
        let path = format!("/v1/functions/{}/invoke", segment(name));
        let mut builder = self.request(Method::POST, &path).query(&query).body(input);
        if let Some(key) = idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        self.json(builder).await
    }

    /// An asynchronous invocation you submitted: its status, and its result once finished.
    pub async fn async_invocation(&self, id: &str) -> Result<AsyncInvocation, ClientError> {
        let path = format!("/v1/invocations/{}", segment(id));
        self.json(self.request(Method::GET, &path)).await
    }

    /// Makes an event trigger for `name`; returns it and, when its results are sealed, the
    /// key that opens them (shown this once).
    pub async fn add_trigger(
        &self,
        name: &str,
        subject: &str,
        reply_subject: Option<&str>,
        public_output: bool,
    ) -> Result<(serde_json::Value, Option<String>), ClientError> {
        #[derive(Deserialize)]
        struct Added {
            trigger: serde_json::Value,
            result_key: Option<String>,
        }
        let path = format!("/v1/functions/{}/triggers", segment(name));
        let body = serde_json::json!({
            "subject": subject,
            "reply_subject": reply_subject,
            "public_output": public_output,
        });
        let added: Added = self
            .json(self.request(Method::POST, &path).json(&body))
            .await?;
        Ok((added.trigger, added.result_key))
    }

    pub async fn remove_trigger(
        &self,
        name: &str,
        id: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let path = format!("/v1/functions/{}/triggers/{}", segment(name), segment(id));
        self.json(self.request(Method::DELETE, &path)).await
    }

    /// Rotates the cluster key (admin token); returns the new epoch.
    pub async fn rotate_cluster(&self) -> Result<u32, ClientError> {
        #[derive(Deserialize)]
        struct Rotated {
            epoch: u32,
        }
        let rotated: Rotated = self
            .json(self.request(Method::POST, "/v1/cluster/rotate"))
            .await?;
        Ok(rotated.epoch)
    }

    pub async fn function(&self, name: &str) -> Result<FunctionRecord, ClientError> {
        let path = format!("/v1/functions/{}", segment(name));
        self.json(self.request(Method::GET, &path)).await
    }

    pub async fn delete(&self, name: &str) -> Result<FunctionRecord, ClientError> {
        let path = format!("/v1/functions/{}", segment(name));
        self.json(self.request(Method::DELETE, &path)).await
    }

    pub async fn grant(&self, name: &str, tenant: &str) -> Result<FunctionRecord, ClientError> {
        let path = format!("/v1/functions/{}/grants/{}", segment(name), segment(tenant));
        self.json(self.request(Method::PUT, &path)).await
    }

    pub async fn revoke(&self, name: &str, tenant: &str) -> Result<FunctionRecord, ClientError> {
        let path = format!("/v1/functions/{}/grants/{}", segment(name), segment(tenant));
        self.json(self.request(Method::DELETE, &path)).await
    }

    pub async fn set_public(
        &self,
        name: &str,
        public: bool,
    ) -> Result<FunctionRecord, ClientError> {
        let path = format!("/v1/functions/{}/public", segment(name));
        let method = if public { Method::PUT } else { Method::DELETE };
        self.json(self.request(method, &path)).await
    }

    pub async fn logs(&self, name: &str) -> Result<Vec<InvocationLog>, ClientError> {
        #[derive(Deserialize)]
        struct Logs {
            invocations: Vec<InvocationLog>,
        }
        let path = format!("/v1/functions/{}/logs", segment(name));
        let logs: Logs = self.json(self.request(Method::GET, &path)).await?;
        Ok(logs.invocations)
    }

    /// Sends an arbitrary request to a `wasi:http` function's pass-through, at `path`. The
    /// function's response comes back whatever its status; only errors of the platform itself
    /// (marked with a `cella-error` header) are `Err`.
    pub async fn http(
        &self,
        method: Method,
        name: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Bytes), ClientError> {
        let url = format!(
            "/v1/functions/{}/http/{}",
            segment(name),
            path.trim_start_matches('/')
        );
        let response = self.send_raw(self.request(method, &url).body(body)).await?;
        if response.headers().contains_key("cella-error") {
            return Err(self.api_error(response).await);
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            detail: e.to_string(),
        })?;
        Ok((status, headers, body))
    }
}

/// How a payload is deployed with [`Client::deploy`]: limits as `key=value` settings
/// (`timeout=2s`, `memory=64MiB`) and the permissions its manifest grants.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub limits: Vec<String>,
    pub permissions: cella_core::Permissions,
}

impl DeployOptions {
    /// Adds a limit (`timeout=2s`, `memory=64MiB`).
    pub fn limit(mut self, setting: &str) -> Self {
        self.limits.push(setting.to_owned());
        self
    }

    /// Grants `permission` (`clocks`, `random`, `kv`, `env=NAME`, `http=HOST`, `scratch=MIB`).
    pub fn allow(mut self, permission: &str) -> Self {
        let permission = permission
            .parse()
            .unwrap_or_else(|e| panic!("`{permission}`: {e}"));
        self.permissions.grant(permission);
        self
    }
}

impl From<&[String]> for DeployOptions {
    fn from(limits: &[String]) -> Self {
        DeployOptions {
            limits: limits.to_vec(),
            ..DeployOptions::default()
        }
    }
}

impl From<&Vec<String>> for DeployOptions {
    fn from(limits: &Vec<String>) -> Self {
        DeployOptions::from(limits.as_slice())
    }
}

impl<const N: usize> From<&[String; N]> for DeployOptions {
    fn from(limits: &[String; N]) -> Self {
        DeployOptions::from(limits.as_slice())
    }
}

/// One environment variable of a function, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EnvSetting {
    pub name: String,
    pub set: bool,
    pub granted: bool,
}

#[derive(Deserialize)]
struct EnvList {
    env: Vec<EnvSetting>,
}

/// A function's totals since the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FunctionStats {
    pub invocations: u64,
    pub host_calls: u64,
    pub denials: std::collections::BTreeMap<String, u64>,
}

/// An asynchronous invocation as the API shows it to its caller.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct AsyncInvocation {
    pub id: String,
    pub function: String,
    pub version: String,
    /// `queued`, `succeeded`, `failed` or `dead_letter`.
    pub status: String,
    pub attempts: u32,
    pub submitted_at: String,
    pub finished_at: Option<String>,
    /// The output, when it is text.
    pub output: Option<String>,
    pub output_base64: Option<String>,
    pub error: Option<AsyncFailure>,
    pub log: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct AsyncFailure {
    pub code: String,
    pub message: String,
}

impl AsyncInvocation {
    /// Whether it will change no more.
    pub fn is_final(&self) -> bool {
        self.status != "queued"
    }
}
