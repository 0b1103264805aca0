//! `cella up --demo`: deploy the example functions under tenant `demo`, invoke each once
//! through the real HTTP API, and print commands to try.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use cella_bundle::{Bundle, BundleKind, Manifest, PluginRef, SigningKey};
use cella_client::{Client, Method};
use cella_core::{Permission, Permissions, Plugin};
use cella_runtime::Platform;
use cella_store::Principal;

const TENANT: &str = "demo";

/// The JavaScript plug-in the demo registers (as the operator) and its module.
const JS_ENGINE: &str = "quickjs";
const JS_ENGINE_FILE: &str = "quickjs.wasm";

struct Example {
    name: &'static str,
    file: &'static str,
    /// What its manifest grants (nothing is granted otherwise).
    allow: &'static [Permission],
}

/// The JavaScript engine reads the clock (`Date`) and random numbers (`Math.random`); Rust's
/// standard library for components imports both too.
const CLOCKS_AND_RANDOM: &[Permission] = &[Permission::Clocks, Permission::Random];

const EXAMPLES: [Example; 5] = [
    Example {
        name: "brotli",
        file: "brotli.wasm",
        allow: &[],
    },
    Example {
        name: "thumbnail",
        file: "thumbnail.wasm",
        allow: &[],
    },
    Example {
        name: "hello-http",
        file: "hello-http.wasm",
        allow: CLOCKS_AND_RANDOM,
    },
    Example {
        name: "hello-js",
        file: "hello.js",
        allow: CLOCKS_AND_RANDOM,
    },
    Example {
        name: "visits",
        file: "state.wasm",
        allow: &[Permission::Kv],
    },
];

fn read_example(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "example {} not found; build the examples with ./scripts/build-guests \
             (./scripts/up does) or point --guests at them",
            path.display()
        )
    })
}

/// Registers the JavaScript engine as the operator would. A name always means one module:
/// if an earlier run registered another build of it, this one gets a name of its own.
async fn register_js_engine(platform: &Platform, guests: &Path) -> anyhow::Result<Plugin> {
    let wasm = read_example(&guests.join(JS_ENGINE_FILE))?;
    let started = Instant::now();
    let plugin = match platform
        .add_plugin(&Principal::Admin, JS_ENGINE, wasm.clone().into())
        .await
    {
        Err(e) if e.code() == cella_runtime::ErrorCode::Conflict => {
            let hash = cella_core::ContentHash::of(&wasm).to_string();
            let name = format!("{JS_ENGINE}-{}", &hash["sha256:".len()..][..12]);
            platform
                .add_plugin(&Principal::Admin, &name, wasm.into())
                .await?
        }
        other => other?,
    };
    println!(
        "plug-in  {:<10} {} image {} ({} bytes, {} ms)",
        plugin.name,
        plugin.hash,
        plugin.image,
        plugin.image_size,
        started.elapsed().as_millis()
    );
    Ok(plugin)
}

pub(crate) async fn run(platform: &Platform, guests: &Path, url: &str) -> anyhow::Result<()> {
    let token = match platform.create_tenant(&Principal::Admin, TENANT).await {
        Ok((_, token)) => token,
        // A demo tenant from an earlier run: its token was shown then; issue a new one.
        Err(e) if e.code() == cella_runtime::ErrorCode::Conflict => {
            platform
                .rotate_tenant_token(&Principal::Admin, TENANT)
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    let tenant = Principal::Tenant(TENANT.parse()?);
    let key = demo_signing_key(platform, &tenant).await?;
    let js_engine = register_js_engine(platform, guests).await?;
    let mut shown_refusal = false;
    for example in &EXAMPLES {
        let payload = read_example(&guests.join(example.file))?;
        // Each start deploys the next version: versions only move forward.
        let version = match platform.function(&tenant, example.name) {
            Ok(current) => semver::Version::new(
                current.version.major,
                current.version.minor,
                current.version.patch + 1,
            ),
            Err(_) => semver::Version::new(1, 0, 0),
        };
        let (kind, plugins) = match BundleKind::detect(&payload) {
            Some(kind) => (kind, Vec::new()),
            None => (
                BundleKind::Js,
                vec![PluginRef {
                    name: js_engine.name.to_string(),
                    hash: js_engine.hash,
                }],
            ),
        };
        let bundle = |permissions: Permissions| {
            let mut bundle = Bundle::new(
                Manifest {
                    name: example.name.parse()?,
                    version: version.clone(),
                    kind,
                    plugins: plugins.clone(),
                    permissions,
                    limits: Default::default(),
                },
                payload.clone(),
            );
            bundle.sign(&key);
            anyhow::Ok(bundle.encode())
        };
        // Permissions are default deny: show once what a deploy without them is told.
        if !example.allow.is_empty() && !shown_refusal {
            match platform
                .deploy(
                    &tenant,
                    example.name,
                    bundle(Permissions::default())?.into(),
                )
                .await
            {
                Err(e) if e.code() == cella_runtime::ErrorCode::MissingPermission => {
                    println!("refused  {:<10} without permissions: {e}", example.name);
                    shown_refusal = true;
                }
                other => bail!("deploying without permissions should be refused: {other:?}"),
            }
        }
        let mut granted = Permissions::default();
        for permission in example.allow {
            granted.grant(permission.clone());
        }
        let record = platform
            .deploy(&tenant, example.name, bundle(granted)?.into())
            .await?;
        println!(
            "deployed {:<10} {} {} ({}, {} bytes, signed by {})",
            record.name, record.version, record.hash, record.kind, record.size, record.signer
        );
    }

    // A demo the user started with --insecure-http is a local node they chose not to bind.
    let policy = cella_tee::Policy {
        allow_unbound: url.starts_with("http://"),
        ..demo_policy(platform)?
    };
    let client = Client::with_policy(url, Some(token.secret().to_owned()), &policy)?;
    let attestation = verify_first(&client, &policy).await?;
    let policy_file = platform.config().data_dir.join("demo-policy.toml");
    std::fs::write(&policy_file, toml::to_string_pretty(&policy)?)
        .with_context(|| format!("cannot write {}", policy_file.display()))?;
    smoke_test(&client, guests).await?;
    receipt_check(&client, &policy, attestation).await?;

    let png = guests.join("sample.png");
    println!();
    println!("Try it (tenant `demo`; this token replaces any earlier demo token):");
    if let Ok(exe) = std::env::current_exe() {
        println!("  alias cella={}", exe.display());
    }
    println!(
        "  export CELLA_URL={url} CELLA_TOKEN={} CELLA_POLICY={}",
        token.secret(),
        policy_file.display()
    );
    println!("  cella verify   # every command checks the node against CELLA_POLICY first");
    println!("  echo 'hello hello hello hello' | cella invoke brotli --data - -o /tmp/hello.br");
    println!("  cella invoke brotli --data @/tmp/hello.br --arg decompress");
    println!(
        "  cella invoke thumbnail --data @{} --arg 64 --arg grayscale -o /tmp/thumb.png",
        png.display()
    );
    println!("  cella invoke hello-js --data '{{\"name\":\"ada\"}}'");
    println!("  cella invoke visits --arg incr --arg visits && cella stats visits");
    println!("  cella invoke brotli --data 'prove it' -o /tmp/out.br --receipt /tmp/receipt.json");
    println!("  cella verify-receipt /tmp/receipt.json --input 'prove it' --output /tmp/out.br");
    println!("  cella functions");
    println!(
        "  # curl cannot check RA-TLS evidence (hence -k); the cella CLI checks it on every connection"
    );
    println!(
        "  curl -sSk -H \"Authorization: Bearer $CELLA_TOKEN\" {url}/v1/functions/hello-http/http/hello"
    );
    println!(
        "  curl -sSk -H \"Authorization: Bearer $CELLA_TOKEN\" --data-binary @{} '{url}/v1/functions/thumbnail/invoke?arg=96' -o /tmp/thumb96.png",
        png.display()
    );
    println!("Press Ctrl-C to stop.");
    Ok(())
}

/// The policy the demo's users verify the node with: this build's measurement pinned and, on
/// the simulated TEE, its platform key trusted and simulated evidence allowed (it is a demo).
pub(crate) fn demo_policy(platform: &Platform) -> anyhow::Result<cella_tee::Policy> {
    let (tee, measurement) = platform.tee();
    let anchor = match platform.sim_anchor_file() {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    Ok(cella_tee::Policy {
        measurements: vec![measurement],
        allow_simulated: tee == cella_tee::TeeType::Sim,
        sim_anchors: vec![anchor.trim().to_owned()],
        ..cella_tee::Policy::default()
    })
}

/// Checks the node's evidence the way a client should before it sends anything.
async fn verify_first(
    client: &Client,
    policy: &cella_tee::Policy,
) -> anyhow::Result<cella_tee::AttestationReport> {
    let result = client.verify_node(policy).await?;
    let claims = result
        .verification
        .claims
        .as_ref()
        .context("no claims in verified evidence")?;
    let (tee, measurement) = (claims.tee, claims.measurement);
    if !result.passed() {
        bail!(
            "the node's own evidence did not verify: {:?}",
            result.verification.checks
        );
    }
    println!(
        "✔ attestation {} evidence for measurement {}… bound to a fresh nonce{}",
        tee,
        &measurement.to_hex()[..16],
        if tee == cella_tee::TeeType::Sim {
            " (SIMULATED)"
        } else {
            ""
        }
    );
    for plugin in &result.plugins {
        println!(
            "✔ plug-in     {} image {}… stated under the attested key",
            plugin.name,
            &plugin.image[..20]
        );
    }
    Ok(result.report)
}

/// Invokes every example once through the HTTP API and checks what comes back.
/// Invokes once with a nonce and checks the node's receipt as `cella verify-receipt` would.
async fn receipt_check(
    client: &Client,
    policy: &cella_tee::Policy,
    attestation: cella_tee::AttestationReport,
) -> anyhow::Result<()> {
    let input = b"receipts say what ran on what".to_vec();
    let nonce = *b"demo receipt nonce, 32 bytes....";
    let result = client
        .invoke_with(
            "brotli",
            input.clone(),
            &[],
            &cella_client::InvokeOptions {
                expect_hash: None,
                nonce: Some(&nonce),
            },
        )
        .await?;
    let signed = result.receipt.context("the node sent no receipt")?;
    let file = cella_receipt::ReceiptFile {
        signed,
        attestation,
    };
    let checks = file.checks(policy, Some(&input), Some(&result.output));
    if let Some(failed) = checks.iter().find(|c| !c.ok) {
        bail!("the demo's receipt did not verify: {failed:?}");
    }
    let receipt = &file.signed.receipt;
    println!(
        "✔ receipt     brotli {} {}… signed by the attested key; {} checks pass (input, output, evidence)",
        receipt.function.version,
        &receipt.function.hash[..20],
        checks.len()
    );
    Ok(())
}

async fn smoke_test(client: &Client, guests: &Path) -> anyhow::Result<()> {
    let text = "cella runs functions in a sandbox inside a TEE. ".repeat(2000);
    let started = Instant::now();
    let compressed = client
        .invoke("brotli", text.clone().into_bytes(), &[])
        .await?;
    let restored = client
        .invoke("brotli", compressed.output.to_vec(), &["decompress".into()])
        .await?;
    if restored.output != text.as_bytes() {
        bail!("the brotli round trip did not give back the input");
    }
    println!(
        "✔ brotli      {} → {} bytes and back ({} ms)",
        text.len(),
        compressed.output.len(),
        started.elapsed().as_millis()
    );

    let png = std::fs::read(guests.join("sample.png"))
        .with_context(|| format!("sample image missing in {}", guests.display()))?;
    let started = Instant::now();
    let thumb = client
        .invoke("thumbnail", png.clone(), &["64".into()])
        .await?;
    if !thumb.output.starts_with(b"\x89PNG\r\n\x1a\n") {
        bail!("thumbnail did not return a PNG");
    }
    println!(
        "✔ thumbnail   {} byte PNG → {} byte 64-px-wide PNG ({} ms)",
        png.len(),
        thumb.output.len(),
        started.elapsed().as_millis()
    );

    let started = Instant::now();
    let (status, _, body) = client
        .http(Method::GET, "hello-http", "/hello", Vec::new())
        .await?;
    println!(
        "✔ hello-http  GET /hello → {} {:?} ({} ms)",
        status.as_u16(),
        String::from_utf8_lossy(&body).trim(),
        started.elapsed().as_millis()
    );

    let started = Instant::now();
    let greeted = client
        .invoke("hello-js", br#"{"name":"ada"}"#.to_vec(), &[])
        .await?;
    let reply: serde_json::Value =
        serde_json::from_slice(&greeted.output).context("hello-js did not answer with JSON")?;
    if reply["message"] != "Hello, ada!" || reply["invocations"] != 1 {
        bail!("hello-js answered {reply}");
    }
    println!(
        "✔ hello-js    {{\"name\":\"ada\"}} → {reply} ({} ms, JavaScript from its snapshot)",
        started.elapsed().as_millis()
    );

    // Sealed state survives invocations (and restarts); the count goes on from run to run.
    let started = Instant::now();
    let visits = client
        .invoke("visits", Vec::new(), &["incr".into(), "visits".into()])
        .await?;
    let count = String::from_utf8_lossy(&visits.output).trim().to_owned();
    if count.parse::<u64>().is_err() {
        bail!("visits answered {count:?}");
    }
    println!(
        "✔ visits      counter in sealed key-value state → {count} ({} ms)",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// The demo tenant's signing key: kept in the node's data directory (a real tenant keeps its
/// key on its own machine, `cella keygen`) and registered for tenant `demo`.
async fn demo_signing_key(platform: &Platform, tenant: &Principal) -> anyhow::Result<SigningKey> {
    let dir = &platform.config().data_dir;
    let path = dir.join("demo-signing.key");
    let key = if path.exists() {
        SigningKey::load(&path)?
    } else {
        let key = SigningKey::generate();
        key.save(dir, "demo-signing")?;
        key
    };
    let public = key.verifying_key().to_string();
    match platform.add_key(tenant, &public).await {
        Ok(_) => {}
        Err(e) if e.code() == cella_runtime::ErrorCode::Conflict => {}
        Err(e) => return Err(e.into()),
    }
    Ok(key)
}
