//! `cella bench monitor`: what the per-call monitor costs. The same guest makes N host calls
//! (`sched_yield`, the cheapest) in two sandboxes that differ only in whether the monitor
//! counts; runs alternate between them so both see the same machine. The cost of one host
//! call is (time with N calls − time with none) / N, so instantiation cancels out.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cella_core::Limits;
use cella_sandbox::{CommandInput, Compiled, Sandbox, SandboxConfig};
use serde_json::{Value, json};

use super::stats::Latencies;
use super::{read_guest, scaled};

/// Host calls per measured run.
const CALLS: u64 = 200_000;

struct Setup {
    sandbox: Arc<Sandbox>,
    compiled: Compiled,
}

impl Setup {
    fn new(wasm: &[u8], count_host_calls: bool) -> anyhow::Result<Setup> {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            instances: 4,
            max_memory_bytes: 64 << 20,
            count_host_calls,
            ..SandboxConfig::default()
        })?);
        let compiled = sandbox.compile(wasm)?;
        Ok(Setup { sandbox, compiled })
    }

    /// One run making `calls` host calls; the monitor's count when it counts.
    async fn run(&self, calls: u64) -> anyhow::Result<(Duration, u64)> {
        let Compiled::Command(pre) = &self.compiled else {
            anyhow::bail!("host-calls.wasm is a command");
        };
        let input = CommandInput {
            stdin: Bytes::new(),
            args: vec![calls.to_string()],
            ..CommandInput::default()
        };
        let limits = Limits {
            timeout_ms: 60_000,
            ..Limits::default()
        };
        let started = Instant::now();
        let out = self
            .sandbox
            .run_command(pre, "host-calls", input, &limits)
            .await?;
        Ok((started.elapsed(), out.log.monitor.host_calls))
    }
}

/// Nanoseconds per host call: the difference of the medians over `CALLS`.
fn per_call(with_calls: &Latencies, without: &Latencies) -> f64 {
    let diff = with_calls.p50().as_secs_f64() - without.p50().as_secs_f64();
    (diff * 1e9 / CALLS as f64 * 10.0).round() / 10.0
}

pub(crate) async fn monitor(guests: &Path, scale: f64) -> anyhow::Result<Value> {
    let wasm = read_guest(guests, "host-calls.wasm")?;
    let counted = Setup::new(&wasm, true)?;
    let uncounted = Setup::new(&wasm, false)?;
    let rounds = scaled(30, scale, 3);
    let (mut on, mut on_empty, mut off, mut off_empty) = Default::default();
    let sample = |samples: &mut Latencies, (took, _): (Duration, u64)| samples.push(took);
    let mut seen = 0;
    for _ in 0..rounds {
        let run = counted.run(CALLS).await?;
        seen = run.1;
        sample(&mut on, run);
        sample(&mut off, uncounted.run(CALLS).await?);
        sample(&mut on_empty, counted.run(0).await?);
        sample(&mut off_empty, uncounted.run(0).await?);
    }
    anyhow::ensure!(
        seen >= CALLS,
        "the monitor counted {seen} host calls of at least {CALLS}"
    );
    let with_monitor = per_call(&on, &on_empty);
    let without = per_call(&off, &off_empty);
    let cost = with_monitor - without;
    println!();
    println!("| {CALLS} host calls per run, {rounds} runs each | ns per host call (p50) |");
    println!("|---|---|");
    println!("| without counting | {without:.1} |");
    println!("| with the monitor | {with_monitor:.1} |");
    println!(
        "| monitor's cost | {cost:.1} ({:+.1} %) |",
        cost / without.max(f64::EPSILON) * 100.0
    );
    println!("(the monitor counted {seen} host calls in one run)");
    Ok(json!({
        "calls_per_run": CALLS,
        "runs": rounds,
        "ns_per_host_call": { "without_counting": without, "with_monitor": with_monitor },
        "monitor_cost_ns": (cost * 10.0).round() / 10.0,
        "host_calls_counted_per_run": seen,
    }))
}
