//! Compiling is the most expensive thing a tenant can ask of a node. Binaries whose shape
//! would make the compiler take gigabytes or minutes are refused before any compile work,
//! with errors that name the limit; what passes compiles one at a time, at low priority, within
//! each tenant's share; and other tenants keep being served meanwhile.

use std::time::{Duration, Instant};

use wasm_encoder::{
    CodeSection, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
    MemorySection, MemoryType, Module, TypeSection,
};

use crate::harness::{Node, assert_api_error, guest};

/// A WASI command (it exports `_start`) with `functions` empty functions, a memory of
/// `pages` pages, and optionally an import of `clock_time_get`.
fn command(functions: u32, pages: u64, imports_clock: bool) -> Vec<u8> {
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    types.ty().function(
        [
            wasm_encoder::ValType::I32,
            wasm_encoder::ValType::I64,
            wasm_encoder::ValType::I32,
        ],
        [wasm_encoder::ValType::I32],
    );
    module.section(&types);
    if imports_clock {
        let mut imports = ImportSection::new();
        imports.import(
            "wasi_snapshot_preview1",
            "clock_time_get",
            wasm_encoder::EntityType::Function(1),
        );
        module.section(&imports);
    }
    let mut declared = FunctionSection::new();
    for _ in 0..functions {
        declared.function(0);
    }
    module.section(&declared);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    module.section(&memories);
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, u32::from(imports_clock));
    exports.export("memory", ExportKind::Memory, 0);
    module.section(&exports);
    let mut code = CodeSection::new();
    let mut body = Function::new([]);
    body.instructions().end();
    for _ in 0..functions {
        code.function(&body);
    }
    module.section(&code);
    module.finish()
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_functions_are_refused_before_compiling_while_others_are_served() {
    let node = Node::start().await;
    let bomber = node.tenant("bomber").await;
    let quiet = node.tenant("quiet").await;
    quiet.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    let bomb = command(1_000_000, 1, false);
    assert!(bomb.len() < 8 << 20, "a small upload: {} bytes", bomb.len());

    let before = resident_bytes();
    let started = Instant::now();
    // Eight at once, as an attacker would.
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let bomber = bomber.clone();
            let bomb = bomb.clone();
            tokio::spawn(async move { bomber.deploy(&format!("bomb-{i}"), bomb, &[]).await })
        })
        .collect();
    let echoed = quiet
        .invoke("echo", b"still here".to_vec(), &[])
        .await
        .unwrap();
    assert_eq!(&echoed.output[..], b"still here");
    for attempt in attempts {
        let message = assert_api_error(attempt.await.unwrap(), 413, "payload_too_large");
        assert!(
            message.contains("1000000 functions") && message.contains("100000"),
            "{message}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused without compiling: {:?}",
        started.elapsed()
    );
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 512 << 20, "the node grew by {grown} bytes");
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("cella_compilations_total 1\n"),
        "only echo was compiled: {metrics}"
    );

    // Just under the limit compiles: the limit is where it says it is.
    bomber
        .deploy("many", command(20_000, 1, false), &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_minimum_above_the_limit_and_a_missing_permission_are_refused_before_compiling() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    // 2 GiB, above the platform's 1 GiB.
    let message = assert_api_error(
        acme.deploy("huge", command(1, 32_768, false), &[]).await,
        400,
        "invalid_limits",
    );
    assert!(
        message.contains("2147483648") && message.contains("1073741824"),
        "{message}"
    );
    // 256 MiB, above the function's default limit of 128 MiB: it could never run.
    let message = assert_api_error(
        acme.deploy("big", command(1, 4096, false), &[]).await,
        400,
        "invalid_limits",
    );
    assert!(
        message.contains("268435456") && message.contains("134217728"),
        "{message}"
    );
    acme.deploy("big", command(1, 4096, false), &["memory=512MiB".into()])
        .await
        .unwrap();
    // Importing the clock without `clocks`: refused, and nothing was compiled for it.
    let message = assert_api_error(
        acme.deploy("clock", command(1, 1, true), &[]).await,
        403,
        "missing_permission",
    );
    assert!(message.contains("clocks = true"), "{message}");
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("cella_compilations_total 1\n"),
        "only the deploy that passed was compiled: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_compiles_one_deploy_at_a_time() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    let beta = node.tenant("beta").await;
    // Sent at once, each takes a while to compile: they overlap, and all but the one
    // compiling are refused (the unit tests check the budget itself).
    let big = command(90_000, 1, false);
    let deploys: Vec<_> = (0..4)
        .map(|i| {
            let acme = acme.clone();
            let big = big.clone();
            tokio::spawn(async move { acme.deploy(&format!("big-{i}"), big, &[]).await })
        })
        .collect();
    // Another tenant is not refused for acme's turn (it waits for the compiler, then runs).
    beta.deploy("other", command(1, 1, false), &[])
        .await
        .unwrap();
    let (mut deployed, mut refused) = (0, 0);
    for deploy in deploys {
        match deploy.await.unwrap() {
            Ok(_) => deployed += 1,
            Err(e) => {
                assert_eq!(e.code(), Some("too_many_requests"), "{e}");
                assert!(e.to_string().contains("already compiling"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(
        deployed >= 1 && refused >= 1,
        "{deployed} deployed, {refused} refused"
    );
}
