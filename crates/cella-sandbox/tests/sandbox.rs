//! The sandbox against real guests (built by `scripts/build-guests`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use cella_core::Limits;
use cella_sandbox::{
    CommandInput, Compiled, Initializer, PreinitError, Preinitializer, RunError, Sandbox,
};

fn guest(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("CELLA_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guests/dist"));
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the guests first (scripts/build-guests)",
            path.display()
        )
    })
}

fn limits() -> Limits {
    Limits {
        timeout_ms: 2_000,
        ..Limits::default()
    }
}

/// One sandbox for all tests, as in a node.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(Default::default()).unwrap())
}

/// The JavaScript plug-in's image (engine started), ready for functions' code: made once.
async fn quickjs() -> &'static Preinitializer {
    static QUICKJS: tokio::sync::OnceCell<Preinitializer> = tokio::sync::OnceCell::const_new();
    QUICKJS
        .get_or_init(async || {
            let sandbox = sandbox();
            let plugin = sandbox.preinitializer(&guest("quickjs.wasm")).unwrap();
            let image = sandbox
                .preinitialize(&plugin, Bytes::new(), &limits(), Initializer::Keep)
                .await
                .expect("the JavaScript plug-in pre-initialises");
            sandbox.preinitializer(&image.wasm).unwrap()
        })
        .await
}

/// A function's image: the plug-in's with `source` evaluated.
async fn js_function(sandbox: &Sandbox, source: &str) -> Result<Compiled, PreinitError> {
    let function = sandbox
        .preinitialize(
            quickjs().await,
            Bytes::copy_from_slice(source.as_bytes()),
            &limits(),
            Initializer::Drop,
        )
        .await?;
    Ok(sandbox.compile(&function.wasm)?)
}

async fn run(sandbox: &Sandbox, compiled: &Compiled, input: &str) -> Result<String, RunError> {
    let Compiled::Command(pre) = compiled else {
        panic!("a JavaScript function is a command")
    };
    let input = CommandInput {
        stdin: Bytes::copy_from_slice(input.as_bytes()),
        args: Vec::new(),
        grants: Default::default(),
    };
    let out = sandbox.run_command(pre, "js", input, &limits()).await?;
    Ok(String::from_utf8(out.stdout.to_vec()).unwrap())
}

#[tokio::test]
async fn javascript_functions_run_from_their_snapshot_with_fresh_state() {
    let sandbox = sandbox();
    let source = r#"
        let calls = 0;
        globalThis.loadedAt = "deploy";
        export default function handler(request) {
            calls += 1;
            globalThis.seen = (globalThis.seen || 0) + 1;
            console.log("got", request.text());
            const { name } = request.json();
            return { hello: name, calls, seen: globalThis.seen, loadedAt };
        }
    "#;
    let compiled = js_function(sandbox, source).await.unwrap();
    for _ in 0..3 {
        let out = run(sandbox, &compiled, r#"{"name":"ada"}"#).await.unwrap();
        assert_eq!(
            out,
            r#"{"hello":"ada","calls":1,"seen":1,"loadedAt":"deploy"}"#
        );
    }
}

#[tokio::test]
async fn javascript_results_map_to_bytes_and_random_is_fresh() {
    let sandbox = sandbox();
    let text = js_function(sandbox, "export default (r) => r.text().toUpperCase();")
        .await
        .unwrap();
    assert_eq!(run(sandbox, &text, "abc").await.unwrap(), "ABC");
    let nothing = js_function(sandbox, "export default () => undefined;")
        .await
        .unwrap();
    assert_eq!(run(sandbox, &nothing, "").await.unwrap(), "");
    let bytes = js_function(sandbox, "export default (r) => r.bytes().reverse();")
        .await
        .unwrap();
    assert_eq!(run(sandbox, &bytes, "abc").await.unwrap(), "cba");
    let promised = js_function(
        sandbox,
        "export default async (r) => await Promise.resolve(r.body + '!');",
    )
    .await
    .unwrap();
    assert_eq!(run(sandbox, &promised, "hi").await.unwrap(), "hi!");
    let random = js_function(sandbox, "export default () => String(Math.random());")
        .await
        .unwrap();
    let a = run(sandbox, &random, "").await.unwrap();
    let b = run(sandbox, &random, "").await.unwrap();
    assert_ne!(a, b, "each invocation must draw its own random numbers");
}

#[tokio::test]
async fn javascript_errors_are_clear() {
    let sandbox = sandbox();
    // A syntax error stops the deploy, with the engine's message.
    let err = js_function(sandbox, "export default function (")
        .await
        .unwrap_err();
    let log = err.log().expect("the initialiser ran").to_text();
    assert!(log.contains("SyntaxError"), "{err}: {log}");
    let err = js_function(sandbox, "  \n").await.unwrap_err();
    assert!(err.log().unwrap().to_text().contains("empty"), "{err}");
    let err = js_function(sandbox, "export const x = 1;")
        .await
        .unwrap_err();
    assert!(
        err.log().unwrap().to_text().contains("no default export"),
        "{err}"
    );

    // An exception fails the invocation, with its message and stack in the log.
    let throws = js_function(
        sandbox,
        "export default () => { throw new TypeError('nope'); };",
    )
    .await
    .unwrap();
    let err = run(sandbox, &throws, "").await.unwrap_err();
    assert!(matches!(err, RunError::Exit { code: 1, .. }), "{err}");
    assert!(
        err.log().to_text().contains("TypeError: nope"),
        "{}",
        err.log().to_text()
    );

    // An endless loop is stopped at the time limit.
    let spins = js_function(sandbox, "export default () => { for (;;) {} };")
        .await
        .unwrap();
    let err = run(sandbox, &spins, "").await.unwrap_err();
    assert!(matches!(err, RunError::Timeout { .. }), "{err}");

    // Unbounded recursion traps at the sandbox's stack limit (QuickJS does not count its
    // stack on WASI), an error like any other.
    let recurses = js_function(
        sandbox,
        "const f = (n) => f(n + 1) + 1; export default () => f(0);",
    )
    .await
    .unwrap();
    let err = run(sandbox, &recurses, "").await.unwrap_err();
    assert!(
        matches!(&err, RunError::Trap { message, .. } if message.contains("call stack exhausted")),
        "{err}"
    );

    // An endless loop while loading stops the deploy at the time limit.
    let err = js_function(sandbox, "for (;;) {} export default () => 1;")
        .await
        .unwrap_err();
    assert!(
        matches!(err, PreinitError::Run(RunError::Timeout { .. })),
        "{err}"
    );
}

/// PIE's three modes as the benchmark runs them: cold (compile per request), warm (instances
/// created ahead, each used once) and plug-in cold (fresh instance from the shared image).
/// In each, a guest that changes globals, heap and fresh memory sees initial values next time.
#[tokio::test]
async fn every_start_up_mode_begins_from_fresh_state() {
    let sandbox = sandbox();
    let counter = guest("counter.wasm");
    let fresh = "count=1 heap=1 dirty=0\n";
    let input = || CommandInput::default();

    for _ in 0..3 {
        let cold = sandbox.compile(&counter).unwrap();
        let Compiled::Command(pre) = &cold else {
            panic!("a command")
        };
        let out = sandbox
            .run_command(pre, "counter", input(), &limits())
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), fresh, "cold");
    }

    let image = sandbox.compile(&counter).unwrap();
    let Compiled::Command(pre) = &image else {
        panic!("a command")
    };
    let mut warm = Vec::new();
    for _ in 0..3 {
        warm.push(
            sandbox
                .prepare_command(pre, "counter", input(), &limits())
                .await
                .unwrap(),
        );
    }
    for instance in warm {
        let out = instance.run().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), fresh, "warm");
    }
    for _ in 0..5 {
        let out = sandbox
            .run_command(pre, "counter", input(), &limits())
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), fresh, "plug-in cold");
    }
}

/// The engine module as built, never pre-initialised, evaluates its first argument on every
/// request (the naive port the benchmark compares against); nothing else runs JavaScript
/// from arguments.
#[tokio::test]
async fn the_raw_engine_evaluates_its_argument() {
    let sandbox = sandbox();
    let raw = sandbox.compile(&guest("quickjs.wasm")).unwrap();
    let Compiled::Command(pre) = &raw else {
        panic!("a command")
    };
    let input = CommandInput {
        stdin: Bytes::from_static(b"ada"),
        args: vec!["export default (r) => 'hi ' + r.text();".into()],
        grants: Default::default(),
    };
    let out = sandbox
        .run_command(pre, "quickjs", input, &limits())
        .await
        .unwrap();
    assert_eq!(&out.stdout[..], b"hi ada");
}

/// A host whose wall clock says what the test tells it to; its monotonic clock is honest.
struct LyingHost {
    wall_secs: Arc<AtomicU64>,
    start: std::time::Instant,
}

impl cella_sandbox::TimeSource for LyingHost {
    fn wall(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.wall_secs.load(Ordering::SeqCst))
    }
    fn monotonic(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Guests read the guarded clocks: a host clock turned back or jumped ahead does not reach
/// them as such.
#[tokio::test]
async fn guests_see_a_host_clock_that_lies_clamped() {
    let wall_secs = Arc::new(AtomicU64::new(2_000_000_000));
    let host = LyingHost {
        wall_secs: wall_secs.clone(),
        start: std::time::Instant::now(),
    };
    let sandbox = Sandbox::with_time_source(Default::default(), Box::new(host)).unwrap();
    let plugin = sandbox.preinitializer(&guest("quickjs.wasm")).unwrap();
    let engine = sandbox
        .preinitialize(&plugin, Bytes::new(), &limits(), Initializer::Keep)
        .await
        .unwrap();
    let image = sandbox
        .preinitialize(
            &sandbox.preinitializer(&engine.wasm).unwrap(),
            Bytes::from_static(b"export default () => String(Math.floor(Date.now() / 1000));"),
            &limits(),
            Initializer::Drop,
        )
        .await
        .unwrap();
    let clock = sandbox.compile(&image.wasm).unwrap();
    let seconds = async || {
        run(&sandbox, &clock, "")
            .await
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };

    let first = seconds().await;
    assert!((2_000_000_000..2_000_000_005).contains(&first), "{first}");
    wall_secs.store(1_000_000_000, Ordering::SeqCst); // back by 31 years
    let back = seconds().await;
    assert!(
        back >= first,
        "the guest saw time go back: {first} → {back}"
    );
    wall_secs.store(3_000_000_000, Ordering::SeqCst); // ahead by 31 years
    let ahead = seconds().await;
    assert!(
        ahead < first + 60,
        "the guest saw the jump: {first} → {ahead}"
    );
    assert!(sandbox.clock_corrections() >= 2);
}

#[tokio::test]
async fn imports_name_the_permissions_they_need_and_every_host_call_is_counted() {
    use cella_core::Permission;
    let sandbox = sandbox();
    let needs = |file: &str| sandbox.compile(&guest(file)).unwrap().needed_permissions();
    assert_eq!(
        needs("quickjs.wasm"),
        [Permission::Clocks, Permission::Random, Permission::Kv].into()
    );
    assert_eq!(needs("state.wasm"), [Permission::Kv].into());
    // environ_get, fd_write and the file functions reach only what was handed over.
    assert!(needs("echo.wasm").is_empty());
    assert!(needs("capabilities.wasm").is_empty());

    // The monitor sees every call into the host: echo reads stdin and writes stdout.
    let Compiled::Command(pre) = sandbox.compile(&guest("echo.wasm")).unwrap() else {
        panic!("echo is a command")
    };
    let input = CommandInput {
        stdin: Bytes::from_static(b"counted"),
        ..CommandInput::default()
    };
    let out = sandbox
        .run_command(&pre, "echo", input, &limits())
        .await
        .unwrap();
    assert_eq!(&out.stdout[..], b"counted");
    assert!(out.log.monitor.host_calls >= 3, "{:?}", out.log.monitor);
    assert!(out.log.monitor.denials.is_empty());
}

#[tokio::test]
async fn a_state_call_without_state_is_an_error_for_the_guest_and_a_logged_denial() {
    let sandbox = sandbox();
    let Compiled::Command(pre) = sandbox.compile(&guest("state.wasm")).unwrap() else {
        panic!("state is a command")
    };
    let input = CommandInput {
        args: vec!["get".into(), "k".into()],
        ..CommandInput::default()
    };
    let out = sandbox
        .run_command(&pre, "state", input, &limits())
        .await
        .unwrap();
    assert_eq!(&out.stdout[..], b"error -4\n");
    assert_eq!(out.log.monitor.denials.len(), 1);
    assert!(
        out.log.to_text().contains("[cella] denied (kv)"),
        "{:?}",
        out.log
    );
}

/// A store the platform cannot reach (the cluster's bus is down, the disk failed).
struct Unreachable;

impl cella_sandbox::StateStore for Unreachable {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, cella_sandbox::StateError> {
        Err(cella_sandbox::StateError::Unavailable(
            "the bus is down".into(),
        ))
    }
    fn set(&self, _: &[u8], _: &[u8]) -> Result<(), cella_sandbox::StateError> {
        Err(cella_sandbox::StateError::Unavailable(
            "the bus is down".into(),
        ))
    }
    fn delete(&self, _: &[u8]) -> Result<bool, cella_sandbox::StateError> {
        Err(cella_sandbox::StateError::Unavailable(
            "the bus is down".into(),
        ))
    }
}

/// When the platform cannot serve a state call, the guest never sees an error code it could
/// ignore (and then report success): the invocation ends as `Unavailable`, which is retried.
#[tokio::test]
async fn a_state_store_the_platform_cannot_reach_ends_the_invocation_retryably() {
    let sandbox = sandbox();
    let Compiled::Command(pre) = sandbox.compile(&guest("state.wasm")).unwrap() else {
        panic!("state is a command")
    };
    for args in [["incr", "k"], ["get", "k"], ["delete", "k"]] {
        let input = CommandInput {
            args: args.iter().map(|a| a.to_string()).collect(),
            grants: cella_sandbox::Grants {
                state: Some(Arc::new(Unreachable)),
                ..Default::default()
            },
            ..CommandInput::default()
        };
        match sandbox.run_command(&pre, "state", input, &limits()).await {
            Err(RunError::Unavailable(unavailable, log)) => {
                assert!(
                    unavailable.reason.contains("the bus is down"),
                    "{unavailable}"
                );
                assert!(unavailable.to_string().contains("may be retried"));
                assert!(log.monitor.denials.is_empty(), "not a denial: {log:?}");
            }
            other => panic!("{args:?}: expected Unavailable, got {other:?}"),
        }
    }
}
