//! A 3-step chain run inside the node (`POST /v1/chain`) against the same three steps called
//! one by one by a client through the gateway, which is how a platform without in-enclave
//! chaining composes functions. Both go through a real node on loopback over RA-TLS, as
//! clients reach a node (connections kept alive, so handshakes are rare).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use cella_client::Client;
use cella_runtime::{Platform, PlatformConfig};
use cella_store::Principal;
use serde_json::{Value, json};

use super::stats::{Latencies, shown};
use super::{read_guest, scaled};

const STEPS: [&str; 3] = ["step-a", "step-b", "step-c"];

pub(super) async fn chain(guests: &Path, scale: f64) -> anyhow::Result<Value> {
    let dir = tempfile_dir()?;
    let mut config = PlatformConfig::new(&dir);
    config.max_limits.output_bytes = 64 << 20;
    let platform = Arc::new(Platform::open(config)?);
    platform.ensure_admin_token().await?;
    let (_, token) = platform.create_tenant(&Principal::Admin, "bench").await?;
    let gateway = cella_gateway::GatewayConfig {
        max_body_bytes: 64 << 20,
        ..Default::default()
    };
    let served = super::Served::start(&platform, gateway).await?;
    let url = served.url.clone();
    let policy = crate::demo::demo_policy(&platform)?;

    let key = cella_bundle::SigningKey::generate();
    let public = key.verifying_key().to_string();
    let client =
        Client::with_policy(&url, Some(token.secret().to_owned()), &policy)?.with_signing_key(key);
    client.add_key(&public).await?;
    let echo = read_guest(guests, "echo.wasm")?;
    let limits = ["memory=256MiB".to_owned(), "output=32MiB".to_owned()];
    for step in STEPS {
        client.deploy(step, echo.clone(), &limits).await?;
    }
    let steps: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();

    println!(
        "\n{:<8} {:>14} {:>14} {:>14} {:>14} {:>10}",
        "payload", "in-node p50", "in-node p99", "gateway p50", "gateway p99", "speed-up"
    );
    let mut out = Vec::new();
    for (label, size, rounds) in [
        ("1 KiB", 1 << 10, scaled(100, scale, 5)),
        ("1 MiB", 1 << 20, scaled(30, scale, 3)),
        ("16 MiB", 16 << 20, scaled(8, scale, 2)),
    ] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let (mut inside, mut outside) = (Latencies::default(), Latencies::default());
        for _ in 0..rounds {
            let started = Instant::now();
            let result = client.invoke_chain(&steps, payload.clone(), None).await?;
            inside.push(started.elapsed());
            if result.output != payload {
                bail!("the chain changed the payload");
            }
            let started = Instant::now();
            let mut data = payload.clone();
            for step in STEPS {
                data = client.invoke(step, data, &[]).await?.output.to_vec();
            }
            outside.push(started.elapsed());
            if data != payload {
                bail!("the steps changed the payload");
            }
        }
        let speedup = outside.p50().as_secs_f64() / inside.p50().as_secs_f64();
        println!(
            "{:<8} {:>14} {:>14} {:>14} {:>14} {:>9.2}×",
            label,
            shown(inside.p50()),
            shown(inside.p99()),
            shown(outside.p50()),
            shown(outside.p99()),
            speedup
        );
        out.push(json!({
            "payload_bytes": size,
            "in_node": inside.to_json(),
            "through_gateway": outside.to_json(),
            "speedup_p50": (speedup * 100.0).round() / 100.0,
        }));
    }
    served.stop().await;
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(
        json!({ "steps": STEPS.len(), "transport": "RA-TLS on loopback, connections kept alive", "payloads": out }),
    )
}

/// A private scratch directory for the bench's node.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cella-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
