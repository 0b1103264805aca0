//! The HTTP API (`cella_gateway::router`) on arbitrary requests. One platform is set up once
//! per process, on a temporary directory: the admin, two tenants (`fuzz`, which owns the
//! functions, and `other`), a registered signing key, a command function `echo` (the
//! `echo.wasm` test guest when guests/dist has it, else an empty WASI command) and, when
//! guests/dist has it, the `wasi:http` component `hello-http` as `web`. Each input is one request
//! — a method, one of the API's routes with fuzzed names, a query, an `Authorization` header
//! (none, one of the real tokens, or arbitrary), a few headers and a body — sent through the
//! router in process (no socket), like the gateway's own tests do.
//!
//! The request must be answered, and the answer must be one the API documents: a status the
//! error table gives (crates/cella-gateway/src/error.rs), never `internal` or
//! `integrity_error` (500: garbage from a client is never the platform's fault), with the
//! `{"error":{"code","message"}}` body its `cella-error` header names, and the registry
//! version header on every response. Only the HTTP pass-through may answer with another 5xx:
//! the function's own response, which carries no `cella-error`.
//!
//! The platform keeps its state between inputs (tenants created, functions deleted, tokens
//! rotated: the harness follows rotations of the tokens it holds), so a crash found late in a
//! run may need the run's earlier inputs to reproduce.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Arbitrary;
use axum::body::Body;
use cella_bundle::{Bundle, BundleKind, Manifest, SigningKey};
use cella_gateway::{GatewayConfig, REGISTRY_VERSION_HEADER};
use cella_runtime::{Platform, PlatformConfig, TeeMode};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    /// The admin's token and each tenant's, by tenant name.
    admin: String,
    tenants: Mutex<BTreeMap<&'static str, String>>,
    /// Kept for the life of the process (libFuzzer exits without running destructors: the
    /// fuzz script points TMPDIR at a directory it removes afterwards).
    _dir: tempfile::TempDir,
}

/// Where `./scripts/build-guests` puts the guests, unless CELLA_GUESTS_DIR says otherwise.
fn guest(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("CELLA_GUESTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/dist"));
    std::fs::read(dir.join(name)).ok()
}

/// `(module (func (export "_start")))`: a WASI command that does nothing.
const EMPTY_COMMAND: &[u8] =
    b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x07\x0a\x01\x06_start\0\0\x0a\x04\x01\x02\0\x0b";

async fn deploy(
    platform: &Platform,
    owner: &cella_store::Principal,
    key: &SigningKey,
    name: &str,
    kind: BundleKind,
    payload: Vec<u8>,
    clocks_random: bool,
) -> Result<(), String> {
    let mut permissions = cella_core::Permissions::default();
    permissions.clocks = clocks_random;
    permissions.random = clocks_random;
    let manifest = Manifest {
        name: cella_core::FunctionName::new(name).map_err(|e| e.to_string())?,
        version: "1.0.0".parse().expect("a version"),
        kind,
        plugins: Vec::new(),
        permissions,
        limits: cella_core::LimitsOverride {
            timeout_ms: Some(5_000),
            ..Default::default()
        },
    };
    let mut bundle = Bundle::new(manifest, payload);
    bundle.sign(key);
    platform
        .deploy(owner, name, bundle.encode().into())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (router, admin, tenants) = runtime.block_on(set_up(dir.path()));
        Fixture {
            runtime,
            router,
            admin,
            tenants: Mutex::new(tenants),
            _dir: dir,
        }
    })
}

async fn set_up(dir: &Path) -> (axum::Router, String, BTreeMap<&'static str, String>) {
    // The simulated TEE measures a file: a small one, not this (large) executable.
    let build = dir.join("platform-build");
    std::fs::write(&build, b"cella fuzz platform").expect("write the platform build");
    let mut config = PlatformConfig::new(dir.join("data"));
    config.executable = Some(build);
    config.tee = TeeMode::Simulated;
    config.tenant_concurrency = 4;
    config.sandbox.instances = 4;
    config.sandbox.keep_resident_bytes = 1 << 20;
    let platform = Arc::new(Platform::open(config).expect("the platform opens"));
    let admin = platform
        .ensure_admin_token()
        .await
        .expect("the admin token")
        .expect("a fresh data directory has no admin token yet")
        .secret()
        .to_owned();
    let admin_principal = platform
        .authenticate(&admin)
        .expect("authenticate")
        .expect("the admin token is valid");
    let mut tenants = BTreeMap::new();
    for name in ["fuzz", "other"] {
        let (_, token) = platform
            .create_tenant(&admin_principal, name)
            .await
            .expect("create a tenant");
        tenants.insert(name, token.secret().to_owned());
    }
    let owner = platform
        .authenticate(&tenants["fuzz"])
        .expect("authenticate")
        .expect("the tenant's token is valid");
    let key = SigningKey::generate();
    platform
        .add_key(&owner, &key.verifying_key().to_string())
        .await
        .expect("register the signing key");
    let echo = guest("echo.wasm");
    let echo_deployed = match echo {
        Some(wasm) => deploy(
            &platform,
            &owner,
            &key,
            "echo",
            BundleKind::WasiCommand,
            wasm,
            false,
        )
        .await
        .inspect_err(|e| eprintln!("http_api: echo.wasm from the guests was refused: {e}"))
        .is_ok(),
        None => false,
    };
    if !echo_deployed {
        let empty = EMPTY_COMMAND.to_vec();
        deploy(
            &platform,
            &owner,
            &key,
            "echo",
            BundleKind::WasiCommand,
            empty,
            false,
        )
        .await
        .expect("deploy an empty command");
    }
    if let Some(component) = guest("hello-http.wasm") {
        if let Err(e) = deploy(
            &platform,
            &owner,
            &key,
            "web",
            BundleKind::WasiHttp,
            component,
            true,
        )
        .await
        {
            eprintln!("http_api: hello-http.wasm from the guests was refused: {e}");
        }
    } else {
        eprintln!(
            "http_api: no guests/dist/hello-http.wasm: the HTTP pass-through gets no function"
        );
    }
    let gateway = GatewayConfig {
        max_body_bytes: 64 * 1024,
        max_upload_bytes: 1 << 20,
        ..GatewayConfig::default()
    };
    (cella_gateway::router(platform, gateway), admin, tenants)
}

#[derive(Arbitrary, Debug)]
enum Verb {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Head,
    Options,
    Other(String),
}

/// A path segment: a name that exists, or anything (percent-encoded).
#[derive(Arbitrary, Debug)]
enum Name {
    Echo,
    Web,
    Fuzz,
    Other,
    /// `echo@<version>`
    EchoAt(String),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Route {
    Health,
    Metrics,
    Attestation,
    Tenants,
    TenantToken(Name),
    Keys,
    Key(Name),
    Chain,
    Plugins,
    Plugin(Name),
    Functions,
    Function(Name),
    Invoke(Name),
    Logs(Name),
    Stats(Name),
    Env(Name),
    Grant(Name, Name),
    Public(Name),
    Http(Name),
    HttpPath(Name, String),
    /// Any path at all (taken as is when it makes a URI).
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum QueryPair {
    Arg(String),
    Step(Name),
    Nonce(String),
    Any(String, String),
}

#[derive(Arbitrary, Debug)]
enum Query {
    None,
    Pairs(Vec<QueryPair>),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Auth {
    None,
    Admin,
    Tenant,
    OtherTenant,
    Bearer(String),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Header {
    ContentType,
    ExpectHash,
    Nonce,
    Host,
    Accept,
    ContentLength,
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    verb: Verb,
    route: Route,
    query: Query,
    auth: Auth,
    headers: Vec<(Header, Vec<u8>)>,
    body: Vec<u8>,
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn segment(name: &Name) -> String {
    match name {
        Name::Echo => "echo".into(),
        Name::Web => "web".into(),
        Name::Fuzz => "fuzz".into(),
        Name::Other => "other".into(),
        Name::EchoAt(version) => format!("echo@{}", encode(version)),
        Name::Any(text) => encode(text),
    }
}

fn path(route: &Route) -> (String, bool) {
    let f = |name: &Name, rest: &str| format!("/v1/functions/{}{rest}", segment(name));
    let path = match route {
        Route::Health => "/v1/health".into(),
        Route::Metrics => "/metrics".into(),
        Route::Attestation => "/v1/attestation".into(),
        Route::Tenants => "/v1/tenants".into(),
        Route::TenantToken(name) => format!("/v1/tenants/{}/token", segment(name)),
        Route::Keys => "/v1/keys".into(),
        Route::Key(name) => format!("/v1/keys/{}", segment(name)),
        Route::Chain => "/v1/chain".into(),
        Route::Plugins => "/v1/plugins".into(),
        Route::Plugin(name) => format!("/v1/plugins/{}", segment(name)),
        Route::Functions => "/v1/functions".into(),
        Route::Function(name) => f(name, ""),
        Route::Invoke(name) => f(name, "/invoke"),
        Route::Logs(name) => f(name, "/logs"),
        Route::Stats(name) => f(name, "/stats"),
        Route::Env(name) => f(name, "/env"),
        Route::Grant(name, tenant) => f(name, &format!("/grants/{}", segment(tenant))),
        Route::Public(name) => f(name, "/public"),
        Route::Http(name) => f(name, "/http"),
        Route::HttpPath(name, rest) => {
            let rest: Vec<String> = rest.split('/').map(encode).collect();
            f(name, &format!("/http/{}", rest.join("/")))
        }
        Route::Raw(raw) => format!("/{raw}"),
    };
    // The pass-through answers with the function's own response.
    let passthrough = path.starts_with("/v1/functions/") && path.contains("/http");
    (path, passthrough)
}

fn query(query: &Query) -> Option<String> {
    match query {
        Query::None => None,
        Query::Raw(raw) => Some(raw.clone()),
        Query::Pairs(pairs) => {
            let pairs: Vec<String> = pairs
                .iter()
                .map(|pair| match pair {
                    QueryPair::Arg(value) => format!("arg={}", encode(value)),
                    QueryPair::Step(name) => format!("step={}", segment(name)),
                    QueryPair::Nonce(value) => format!("nonce={}", encode(value)),
                    QueryPair::Any(key, value) => format!("{}={}", encode(key), encode(value)),
                })
                .collect();
            Some(pairs.join("&"))
        }
    }
}

fn request(input: &Input, fixture: &Fixture) -> Option<(Request<Body>, bool)> {
    let method = match &input.verb {
        Verb::Get => Method::GET,
        Verb::Post => Method::POST,
        Verb::Put => Method::PUT,
        Verb::Delete => Method::DELETE,
        Verb::Patch => Method::PATCH,
        Verb::Head => Method::HEAD,
        Verb::Options => Method::OPTIONS,
        Verb::Other(other) => Method::from_bytes(other.as_bytes()).ok()?,
    };
    let (path, passthrough) = path(&input.route);
    let uri = match query(&input.query) {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    // A request line that is no URI never reaches the router (hyper refuses it).
    let uri: http::Uri = uri.parse().ok()?;
    let mut builder = Request::builder().method(method).uri(uri);
    let token = |secret: &str| format!("Bearer {secret}").into_bytes();
    let authorization = match &input.auth {
        Auth::None => None,
        Auth::Admin => Some(token(&fixture.admin)),
        Auth::Tenant => Some(token(&fixture.tenants.lock().unwrap()["fuzz"])),
        Auth::OtherTenant => Some(token(&fixture.tenants.lock().unwrap()["other"])),
        Auth::Bearer(secret) => Some(token(secret)),
        Auth::Raw(raw) => Some(raw.clone()),
    };
    if let Some(value) = authorization {
        builder = builder.header(
            http::header::AUTHORIZATION,
            HeaderValue::from_bytes(&value).ok()?,
        );
    }
    for (header, value) in input.headers.iter().take(8) {
        let name = match header {
            Header::ContentType => http::header::CONTENT_TYPE,
            Header::ExpectHash => HeaderName::from_static("cella-expect-hash"),
            Header::Nonce => HeaderName::from_static("cella-nonce"),
            Header::Host => http::header::HOST,
            Header::Accept => http::header::ACCEPT,
            Header::ContentLength => http::header::CONTENT_LENGTH,
            Header::Any(name) => HeaderName::from_bytes(name.as_bytes()).ok()?,
        };
        builder = builder.header(name, HeaderValue::from_bytes(value).ok()?);
    }
    let request = builder.body(Body::from(input.body.clone())).ok()?;
    Some((request, passthrough))
}

/// The statuses `status_of` gives the error codes that may answer a client's request.
fn documented_error(code: &str, status: StatusCode) -> bool {
    let expected: &[u16] = match code {
        "unauthenticated" => &[401],
        "forbidden" | "untrusted_key" | "missing_permission" => &[403],
        "not_found" => &[404],
        // 405 is the router's "method not allowed", with this code.
        "invalid_request" => &[400, 405],
        "invalid_name" | "invalid_limits" | "invalid_wasm" | "invalid_bundle" | "wrong_kind" => {
            &[400]
        }
        "hash_mismatch" => &[412],
        "conflict" => &[409],
        "payload_too_large" => &[413],
        "too_many_requests" => &[429],
        "overloaded" => &[503],
        "timeout" => &[504],
        "memory_limit" | "output_limit" => &[507],
        "function_failed" => &[502],
        // `internal` and `integrity_error` (500) and anything unknown: a finding.
        _ => &[],
    };
    expected.contains(&status.as_u16())
}

fuzz_target!(
    init: {
        // Set up before the first input, so libFuzzer's per-input timeout does not count it.
        fixture();
    },
    |input: Input| {
        let fixture = fixture();
        let Some((request, passthrough)) = request(&input, fixture) else {
            return;
        };
        // A response to HEAD has its headers and no body.
        let head = request.method() == Method::HEAD;
        let (parts, body) = fixture.runtime.block_on(async {
            let response = fixture
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("the response body").to_bytes();
            (parts, body)
        });
        let status = parts.status;
        assert!(
            parts.headers.contains_key(REGISTRY_VERSION_HEADER),
            "{status} without `{REGISTRY_VERSION_HEADER}` for {input:?}"
        );
        let text = String::from_utf8_lossy(&body);
        match parts.headers.get("cella-error") {
            Some(code) => {
                let code = code.to_str().expect("error codes are ASCII");
                assert!(
                    documented_error(code, status),
                    "{status} `{code}` for {input:?}: {text}"
                );
                if !head {
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                        panic!("{status} `{code}` with a body that is not JSON ({e}) for {input:?}: {text}")
                    });
                    assert_eq!(json["error"]["code"], code, "{text}");
                    assert!(json["error"]["message"].is_string(), "{text}");
                }
            }
            None => assert!(
                passthrough || !status.is_server_error(),
                "{status} without a `cella-error` for {input:?}: {text}"
            ),
        }
        // Follow token rotations, so the harness keeps acting as its tenants.
        if status == StatusCode::OK
            && let Route::TenantToken(_) = input.route
            && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body)
            && let (Some(name), Some(token)) = (json["name"].as_str(), json["token"].as_str())
        {
            let mut tenants = fixture.tenants.lock().unwrap();
            if let Some(held) = tenants.get_mut(name) {
                *held = token.to_owned();
            }
        }
    }
);
