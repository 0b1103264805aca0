//! Cold start after a restart: the first invocation of a function on a freshly opened node,
//! with its sealed precompiled code on disk against without it (verify the bundle and compile),
//! measured side by side (interleaved rounds, medians).
//!
//! `./scripts/build-guests && cargo bench -p cella-runtime --bench cold_start` prints a table and
//! writes JSON to `target/tmp/cella-bench-cold-start.json` (or `$CELLA_BENCH_OUT`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cella_bundle::{Bundle, BundleKind, Manifest, SigningKey};
use cella_runtime::{InvokeOptions, Platform, PlatformConfig};
use cella_sandbox::CommandInput;
use cella_store::Principal;

const ROUNDS: usize = 5;

fn guests_dir() -> PathBuf {
    std::env::var_os("CELLA_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/dist"))
}

async fn deploy(dir: &Path, name: &str, wasm: Vec<u8>) {
    let platform = Platform::open(PlatformConfig::new(dir)).unwrap();
    platform.ensure_admin_token().await.unwrap();
    platform
        .create_tenant(&Principal::Admin, "bench")
        .await
        .unwrap();
    let tenant = Principal::Tenant("bench".parse().unwrap());
    let key = SigningKey::generate();
    platform
        .add_key(&tenant, &key.verifying_key().to_string())
        .await
        .unwrap();
    let mut bundle = Bundle::new(
        Manifest {
            name: name.parse().unwrap(),
            version: "1.0.0".parse().unwrap(),
            kind: BundleKind::detect(&wasm).unwrap(),
            plugins: Vec::new(),
            permissions: Default::default(),
            limits: Default::default(),
        },
        wasm,
    );
    bundle.sign(&key);
    platform
        .deploy(&tenant, name, bundle.encode().into())
        .await
        .unwrap();
}

/// Opens the node afresh and times its first invocation of `name`.
async fn first_invocation(dir: &Path, name: &str) -> Duration {
    let platform = Platform::open(PlatformConfig::new(dir)).unwrap();
    let tenant = Principal::Tenant("bench".parse().unwrap());
    let started = Instant::now();
    platform
        .invoke(
            &tenant,
            name,
            &InvokeOptions::default(),
            CommandInput {
                stdin: bytes::Bytes::from_static(b"cold start"),
                ..CommandInput::default()
            },
        )
        .await
        .unwrap();
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut rows = Vec::new();
    for (name, file) in [("echo", "echo.wasm"), ("brotli", "brotli.wasm")] {
        let Ok(wasm) = std::fs::read(guests_dir().join(file)) else {
            eprintln!("{file} not found: run ./scripts/build-guests first");
            std::process::exit(2);
        };
        let dir = tempfile::tempdir().unwrap();
        deploy(dir.path(), name, wasm).await;
        let (mut warm, mut cold) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            warm.push(first_invocation(dir.path(), name).await);
            // Without the precompiled code: the bundle is verified and compiled (and the code
            // is kept again, so the next warm round has it).
            std::fs::remove_dir_all(dir.path().join("compiled")).unwrap();
            cold.push(first_invocation(dir.path(), name).await);
        }
        rows.push((name, median(warm), median(cold)));
    }
    println!(
        "{:<10} {:>22} {:>22} {:>8}",
        "function", "precompiled (ms)", "compile (ms)", "speed-up"
    );
    for (name, warm, cold) in &rows {
        println!(
            "{name:<10} {:>22.1} {:>22.1} {:>7.1}×",
            warm.as_secs_f64() * 1e3,
            cold.as_secs_f64() * 1e3,
            cold.as_secs_f64() / warm.as_secs_f64()
        );
    }
    let json = serde_json::json!({
        "benchmark": "cold-start-after-restart",
        "rounds": ROUNDS,
        "first_invocation_ms": rows.iter().map(|(n, w, c)| (n.to_string(), serde_json::json!({
            "precompiled": w.as_secs_f64() * 1e3,
            "compile": c.as_secs_f64() * 1e3,
            "speed_up": c.as_secs_f64() / w.as_secs_f64(),
        }))).collect::<serde_json::Map<_, _>>(),
    });
    let out = std::env::var_os("CELLA_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cella-bench-cold-start.json")
        });
    std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("\nresults: {}", out.display());
}
