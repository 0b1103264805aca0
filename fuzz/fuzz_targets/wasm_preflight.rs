//! `Sandbox::preflight` on arbitrary bytes: what every deploy reads before anything is
//! compiled (a module's or component's functions, code, memories and imports, under the
//! compile limits). It must refuse garbage without panicking, and say the same of the same
//! bytes every time.
#![no_main]

use std::sync::OnceLock;

use cella_sandbox::{CompileLimits, Sandbox, SandboxConfig};
use libfuzzer_sys::fuzz_target;

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            instances: 1,
            // Small limits, so the fuzzer reaches them with small inputs.
            compile: CompileLimits {
                max_functions: 64,
                max_code_bytes: 4096,
                max_function_bytes: 512,
            },
            max_memory_bytes: 1 << 20,
            ..SandboxConfig::default()
        })
        .expect("a sandbox")
    })
}

fuzz_target!(|data: &[u8]| {
    let first = sandbox().preflight(data);
    let second = sandbox().preflight(data);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert!(a.functions <= 64 && a.code_bytes <= 4096);
            assert!(a.memory_minimum_bytes <= 1 << 20);
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("preflight changed its mind: {first:?} / {second:?}"),
    }
});
