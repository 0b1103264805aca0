//! PIE's three start-up modes for the same functions, in one process and one run:
//!
//! - **cold**: every request verifies the signed bundle, compiles it, instantiates and runs
//!   (for JavaScript: compiles the engine and evaluates the module too) — the naive port;
//! - **warm**: instances created before their requests, each used once (PIE's warm enclaves;
//!   cella never does this, it is the bound to compare with);
//! - **plug-in cold**: what cella does — a fresh instance per request from the shared,
//!   pre-initialised, precompiled image.
//!
//! The functions: a small Rust guest (`echo`), the JavaScript hello, and the lookup-table
//! plug-in (`primes`, an 8 MiB sieve that the naive port builds on every request).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use cella_bundle::{Bundle, BundleKind, Manifest, SigningKey};
use cella_core::Limits;
use cella_sandbox::{CommandInput, CommandPre, Compiled, Initializer, Sandbox, SandboxConfig};
use serde_json::{Value, json};

use super::stats::{Latencies, micros, shown};
use super::{read_guest, scaled};

/// Instances the bench's pool holds: the largest burst plus room.
const POOL: u32 = 1100;

fn limits() -> Limits {
    Limits {
        timeout_ms: 60_000,
        memory_bytes: 128 << 20,
        output_bytes: 16 << 20,
    }
}

fn sandbox() -> anyhow::Result<Arc<Sandbox>> {
    Ok(Arc::new(Sandbox::new(SandboxConfig {
        instances: POOL,
        max_memory_bytes: 128 << 20,
        ..SandboxConfig::default()
    })?))
}

/// One function measured in every mode.
struct Subject {
    name: &'static str,
    /// The signed bundle a cold request starts from.
    bundle: Bytes,
    /// Arguments of a cold request (the JavaScript source, for the engine run without a
    /// snapshot).
    cold_args: Vec<String>,
    /// The function's image, as a deployed function has it.
    image: Compiled,
    input: Bytes,
    expected: &'static [u8],
}

fn signed_bundle(name: &str, payload: Vec<u8>) -> anyhow::Result<Bytes> {
    let mut bundle = Bundle::new(
        Manifest {
            name: name.parse()?,
            version: "1.0.0".parse()?,
            kind: BundleKind::detect(&payload).context("not WebAssembly")?,
            plugins: Vec::new(),
            permissions: Default::default(),
            limits: Default::default(),
        },
        payload,
    );
    bundle.sign(&SigningKey::generate());
    Ok(Bytes::from(bundle.encode()))
}

async fn subjects(sandbox: &Sandbox, guests: &Path) -> anyhow::Result<Vec<Subject>> {
    let echo = read_guest(guests, "echo.wasm")?;
    let rust = Subject {
        name: "rust echo",
        bundle: signed_bundle("echo", echo.clone())?,
        cold_args: Vec::new(),
        image: sandbox.compile(&echo)?,
        input: Bytes::from_static(b"hello"),
        expected: b"hello",
    };

    let engine = read_guest(guests, "quickjs.wasm")?;
    let source = String::from_utf8(read_guest(guests, "hello.js")?)?;
    let plugin = sandbox.preinitializer(&engine)?;
    let engine_image = sandbox
        .preinitialize(&plugin, Bytes::new(), &limits(), Initializer::Keep)
        .await?;
    let function = sandbox
        .preinitialize(
            &sandbox.preinitializer(&engine_image.wasm)?,
            Bytes::from(source.clone()),
            &limits(),
            Initializer::Drop,
        )
        .await?;
    let js = Subject {
        name: "js hello",
        bundle: signed_bundle("hello-js", engine)?,
        cold_args: vec![source],
        image: sandbox.compile(&function.wasm)?,
        input: Bytes::from_static(br#"{"name":"ada"}"#),
        expected: br#"{"message":"Hello, ada!","invocations":1}"#,
    };

    let primes = read_guest(guests, "primes.wasm")?;
    let model = Subject {
        name: "model",
        bundle: signed_bundle("primes", primes.clone())?,
        cold_args: Vec::new(),
        image: sandbox.compile(&model_image(sandbox, &primes, "").await?)?,
        input: Bytes::from_static(b"1000003"),
        expected: b"{\"n\":1000003,\"prime\":true,\"next\":1000033}\n",
    };
    Ok(vec![rust, js, model])
}

/// The lookup-table plug-in's image, configured as a function would configure it.
async fn model_image(sandbox: &Sandbox, plugin: &[u8], config: &str) -> anyhow::Result<Vec<u8>> {
    let image = sandbox
        .preinitialize(
            &sandbox.preinitializer(plugin)?,
            Bytes::copy_from_slice(config.as_bytes()),
            &limits(),
            Initializer::Drop,
        )
        .await?;
    Ok(image.wasm)
}

/// Plug-in cold latency of the lookup-table function with tables of different sizes: what a
/// request costs must not grow with the state the image holds.
async fn model_sizes(sandbox: &Arc<Sandbox>, guests: &Path, scale: f64) -> anyhow::Result<Value> {
    let plugin = read_guest(guests, "primes.wasm")?;
    println!("\nmodel: plug-in cold latency by table size");
    println!(
        "{:<10} {:>12} {:>10} {:>10}",
        "table", "image", "p50", "p99"
    );
    let mut out = Vec::new();
    for (label, limit) in [("1 MiB", 1u64 << 24), ("16 MiB", 1 << 28)] {
        let image = model_image(sandbox, &plugin, &format!("limit={limit}")).await?;
        let subject = Subject {
            name: "model",
            bundle: Bytes::new(),
            cold_args: Vec::new(),
            image: sandbox.compile(&image)?,
            input: Bytes::from_static(b"1000003"),
            expected: b"{\"n\":1000003,\"prime\":true,\"next\":1000033}\n",
        };
        let mut latencies = Latencies::default();
        for _ in 0..scaled(300, scale, 10) {
            latencies.push(timed_request(sandbox, &subject, Mode::PluginCold).await?);
        }
        println!(
            "{:<10} {:>8} KiB {:>10} {:>10}",
            label,
            image.len() / 1024,
            shown(latencies.p50()),
            shown(latencies.p99())
        );
        let mut entry = latencies.to_json();
        entry["table"] = json!(label);
        entry["image_bytes"] = json!(image.len());
        out.push(entry);
    }
    Ok(Value::Array(out))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cold,
    Warm,
    PluginCold,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Cold, Mode::Warm, Mode::PluginCold];

    fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
            Mode::PluginCold => "plug-in cold",
        }
    }
}

fn command(compiled: &Compiled) -> anyhow::Result<&CommandPre> {
    match compiled {
        Compiled::Command(pre) => Ok(pre),
        Compiled::Http(_) => bail!("the bench runs command functions"),
    }
}

/// A cold request: verify the bundle, compile it, instantiate, run.
async fn cold_request(sandbox: &Arc<Sandbox>, subject: &Subject) -> anyhow::Result<Bytes> {
    let bundle = Bundle::decode(&subject.bundle, u64::MAX)?;
    bundle.verify_signature()?;
    let compiler = sandbox.clone();
    let compiled = tokio::task::spawn_blocking(move || compiler.compile(&bundle.payload)).await??;
    let input = CommandInput {
        stdin: subject.input.clone(),
        args: subject.cold_args.clone(),
        grants: Default::default(),
    };
    let out = sandbox
        .run_command(command(&compiled)?, subject.name, input, &limits())
        .await?;
    Ok(out.stdout)
}

/// Times one request in `mode`. For warm, the instance is made before the clock starts.
async fn timed_request(
    sandbox: &Arc<Sandbox>,
    subject: &Subject,
    mode: Mode,
) -> anyhow::Result<Duration> {
    let input = CommandInput {
        stdin: subject.input.clone(),
        args: Vec::new(),
        grants: Default::default(),
    };
    let (took, output) = match mode {
        Mode::Cold => {
            let started = Instant::now();
            let output = cold_request(sandbox, subject).await?;
            (started.elapsed(), output)
        }
        Mode::Warm => {
            let prepared = sandbox
                .prepare_command(command(&subject.image)?, subject.name, input, &limits())
                .await?;
            let started = Instant::now();
            let output = prepared.run().await?.stdout;
            (started.elapsed(), output)
        }
        Mode::PluginCold => {
            let started = Instant::now();
            let output = sandbox
                .run_command(command(&subject.image)?, subject.name, input, &limits())
                .await?
                .stdout;
            (started.elapsed(), output)
        }
    };
    if output != subject.expected {
        bail!(
            "{} ({}) answered {:?}",
            subject.name,
            mode.name(),
            String::from_utf8_lossy(&output)
        );
    }
    Ok(took)
}

pub(super) async fn startup(guests: &Path, scale: f64) -> anyhow::Result<Value> {
    let sandbox = sandbox()?;
    let subjects = subjects(&sandbox, guests).await?;
    const ROUNDS: usize = 5;
    let mut results = Vec::new();
    println!(
        "\n{:<10} {:<13} {:>10} {:>10} {:>18} {:>12}",
        "function", "mode", "p50", "p99", "p50 lower by", "p50 / warm"
    );
    for subject in &subjects {
        let mut samples = [
            Latencies::default(),
            Latencies::default(),
            Latencies::default(),
        ];
        // Rounds interleave the modes so that a noisy moment hits them all alike.
        for _ in 0..ROUNDS {
            for (i, mode) in Mode::ALL.into_iter().enumerate() {
                let per_round = match mode {
                    Mode::Cold => scaled(4, scale, 1),
                    _ => scaled(100, scale, 5),
                };
                for _ in 0..per_round {
                    samples[i].push(timed_request(&sandbox, subject, mode).await?);
                }
            }
        }
        let [cold, warm, _] = &samples;
        let mut modes = serde_json::Map::new();
        for (mode, latencies) in Mode::ALL.iter().zip(&samples) {
            let reduction = 100.0 * (1.0 - ratio(latencies.p50(), cold.p50()));
            let vs_warm = ratio(latencies.p50(), warm.p50());
            let lower = match mode {
                Mode::Cold => "(baseline)".to_owned(),
                _ => format!("{reduction:.2}%"),
            };
            println!(
                "{:<10} {:<13} {:>10} {:>10} {:>18} {:>11.2}×",
                subject.name,
                mode.name(),
                shown(latencies.p50()),
                shown(latencies.p99()),
                lower,
                vs_warm
            );
            let mut entry = latencies.to_json();
            entry["reduction_vs_cold_pct"] = json!(round2(reduction));
            entry["ratio_to_warm"] = json!(round2(vs_warm));
            modes.insert(mode.name().to_owned(), entry);
        }
        results.push(json!({ "function": subject.name, "modes": modes }));
    }
    let sizes = model_sizes(&sandbox, guests, scale).await?;
    let memory = memory_per_instance(&sandbox, &subjects).await?;
    Ok(json!({
        "latency": results,
        "model_by_table_size": sizes,
        "memory_per_live_instance": memory,
    }))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Resident and private dirty memory of this process, in bytes.
fn memory_now() -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Private_Dirty:"))
}

/// RSS and private dirty memory added per live instance (one that has served a request): for
/// cold, each instance with its own freshly compiled code; for warm and plug-in cold,
/// instances of the shared image.
async fn memory_per_instance(
    sandbox: &Arc<Sandbox>,
    subjects: &[Subject],
) -> anyhow::Result<Value> {
    // Measured with every instance kept alive after it ran: a plug-in instance maps the
    // shared image copy-on-write into a pre-reserved pool slot, so it owns only the pages its
    // guest wrote.
    println!("\nmemory per live instance (kept alive after one request)");
    println!(
        "{:<10} {:<13} {:>12} {:>14}",
        "function", "mode", "RSS", "private dirty"
    );
    let mut out = Vec::new();
    for subject in subjects {
        for mode in [Mode::Cold, Mode::PluginCold] {
            let count = if mode == Mode::Cold { 8 } else { 200 };
            let (rss_before, dirty_before) = memory_now();
            let mut live = Vec::with_capacity(count);
            let mut code = Vec::new();
            for _ in 0..count {
                let compiled = match mode {
                    Mode::Cold => {
                        let bundle = Bundle::decode(&subject.bundle, u64::MAX)?;
                        code.push(sandbox.compile(&bundle.payload)?);
                        code.last().expect("just pushed")
                    }
                    _ => &subject.image,
                };
                let input = CommandInput {
                    stdin: subject.input.clone(),
                    args: subject.cold_args.clone(),
                    grants: Default::default(),
                };
                let prepared = sandbox
                    .prepare_command(command(compiled)?, subject.name, input, &limits())
                    .await?;
                live.push(prepared.run_and_keep().await?.1);
            }
            let (rss_after, dirty_after) = memory_now();
            drop(live);
            drop(code);
            let rss = rss_after.saturating_sub(rss_before) / count as u64;
            let dirty = dirty_after.saturating_sub(dirty_before) / count as u64;
            let label = if mode == Mode::Cold {
                "cold"
            } else {
                "warm/plug-in"
            };
            println!(
                "{:<10} {:<13} {:>9} KiB {:>11} KiB",
                subject.name,
                label,
                rss / 1024,
                dirty / 1024
            );
            out.push(json!({
                "function": subject.name, "mode": label, "instances": count,
                "rss_bytes": rss, "private_dirty_bytes": dirty,
            }));
        }
    }
    Ok(Value::Array(out))
}

/// Bursts of concurrent first requests: fresh isolated instances per second, and the time
/// until every request of the burst was answered, per mode.
pub(super) async fn autoscale(guests: &Path, scale: f64) -> anyhow::Result<Value> {
    let sandbox = sandbox()?;
    let subjects = subjects(&sandbox, guests).await?;
    let subject = Arc::new(subjects.into_iter().next().context("the Rust guest")?);
    let bursts = [1usize, 10, 100, 1000];
    let cold_cap = scaled(100, scale, 10);
    println!(
        "\n{} (cold bursts above {cold_cap} are skipped: each request compiles)",
        subject.name
    );
    println!(
        "{:<13} {:>6} {:>12} {:>16}",
        "mode", "N", "all answered", "instances/s"
    );
    let mut out = Vec::new();
    for n in bursts {
        for mode in Mode::ALL {
            if mode == Mode::Cold && n > cold_cap {
                out.push(json!({ "mode": mode.name(), "n": n, "skipped": true }));
                continue;
            }
            let took = burst(&sandbox, &subject, mode, n).await?;
            let rate = n as f64 / took.as_secs_f64();
            println!(
                "{:<13} {:>6} {:>12} {:>16.0}",
                mode.name(),
                n,
                shown(took),
                rate
            );
            out.push(json!({
                "mode": mode.name(), "n": n,
                "all_answered_us": micros(took), "instances_per_s": rate.round(),
            }));
        }
    }
    Ok(json!({ "function": subject.name, "bursts": out }))
}

async fn burst(
    sandbox: &Arc<Sandbox>,
    subject: &Arc<Subject>,
    mode: Mode,
    n: usize,
) -> anyhow::Result<Duration> {
    let mut prepared = Vec::new();
    if mode == Mode::Warm {
        for _ in 0..n {
            let input = CommandInput {
                stdin: subject.input.clone(),
                args: Vec::new(),
                grants: Default::default(),
            };
            prepared.push(
                sandbox
                    .prepare_command(command(&subject.image)?, subject.name, input, &limits())
                    .await?,
            );
        }
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    match mode {
        Mode::Warm => {
            for instance in prepared {
                tasks.spawn(
                    async move { instance.run().await.map(|o| o.stdout).map_err(Into::into) },
                );
            }
        }
        Mode::Cold | Mode::PluginCold => {
            for _ in 0..n {
                let (sandbox, subject) = (sandbox.clone(), subject.clone());
                tasks.spawn(async move {
                    if mode == Mode::Cold {
                        return cold_request(&sandbox, &subject).await;
                    }
                    let input = CommandInput {
                        stdin: subject.input.clone(),
                        args: Vec::new(),
                        grants: Default::default(),
                    };
                    Ok(sandbox
                        .run_command(command(&subject.image)?, subject.name, input, &limits())
                        .await?
                        .stdout)
                });
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        let output: Bytes = done??;
        if output != subject.expected {
            bail!(
                "{} answered {:?}",
                subject.name,
                String::from_utf8_lossy(&output)
            );
        }
    }
    Ok(started.elapsed())
}
