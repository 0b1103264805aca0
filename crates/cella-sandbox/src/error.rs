//! What can go wrong when compiling or running a guest, phrased for the function's owner.

use std::fmt;

use crate::pipes::LogTail;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the upload is not WebAssembly (it does not start with `\\0asm`); upload a .wasm file")]
    NotWasm,
    #[error(
        "this WebAssembly binary uses encoding version {0:#x}, which cella does not run; \
         upload a core module or a WASI 0.2 component"
    )]
    UnknownEncoding(u32),
    #[error("the WebAssembly is invalid: {0}")]
    Invalid(String),
    #[error(
        "the module does not export `_start`, so it is not a WASI command; build a binary \
         (`cargo build --target wasm32-wasip1` of a crate with `fn main`), not a library"
    )]
    NotACommand,
    #[error(
        "the component does not export `wasi:http/incoming-handler`; cella runs components of \
         the `wasi:http/proxy` world (for example built with `wstd::http_server`): {0}"
    )]
    NotAnHttpComponent(String),
    #[error(
        "the function imports something cella does not provide: {0}; a function may use WASI \
         preview 1 (modules) or the `wasi:http/proxy` world (components)"
    )]
    UnsupportedImport(String),
    #[error("the sandbox engine could not be set up: {0}")]
    Engine(String),
    #[error(
        "the binary {verb} {found} {what}, more than this platform compiles ({limit}); split \
         the function, strip what it does not use (e.g. `wasm-opt -Oz`, `--gc-sections`), or \
         ask the operator to raise the limit in cella.toml under [sandbox]"
    )]
    TooLargeToCompile {
        verb: &'static str,
        what: &'static str,
        found: u64,
        limit: u64,
    },
    #[error(
        "the module's memory starts at {minimum} bytes, above the platform's memory limit of \
         {limit} bytes (the most any function may have); lower its initial memory (for Rust: \
         `-C link-arg=--initial-memory=BYTES`)"
    )]
    MemoryMinimum { minimum: u64, limit: u64 },
    #[error(
        "the node is compiling as many functions as it queues ({queued}); deploy again shortly"
    )]
    CompilerBusy { queued: usize },
}

impl CompileError {
    pub(crate) fn engine(e: impl fmt::Display) -> Self {
        CompileError::Engine(format!("{e:#}"))
    }
}

/// Why an invocation did not produce a response. Every variant carries what the guest wrote
/// to stderr (its tail), so the owner can see why it failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the function ran past its time limit of {limit_ms} ms and was stopped")]
    Timeout { limit_ms: u64, log: LogTail },
    #[error(
        "the function tried to use more than its memory limit of {limit_bytes} bytes and was stopped"
    )]
    MemoryLimit { limit_bytes: u64, log: LogTail },
    #[error(
        "the function wrote more than its output limit of {limit_bytes} bytes; the output was discarded"
    )]
    OutputLimit { limit_bytes: u64, log: LogTail },
    #[error("the node's instance pool is exhausted; retry shortly")]
    PoolExhausted { log: LogTail },
    #[error("the function exited with status {code}")]
    Exit { code: i32, log: LogTail },
    #[error("the function trapped: {message}")]
    Trap { message: String, log: LogTail },
    #[error("the function did not produce an HTTP response: {message}")]
    NoResponse { message: String, log: LogTail },
    /// The platform could not serve one of the function's host calls (its state was
    /// unreachable, say). Not the function's doing and not a denial: the invocation ends
    /// here rather than hand the guest an error code it might ignore, and may be retried.
    #[error("{0}")]
    Unavailable(HostUnavailable, LogTail),
}

/// A host call the platform itself could not serve. A host function returns it as its
/// error, which ends the guest; [`RunError::Unavailable`] then names it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the platform could not serve the function's {what} call ({reason}); the invocation was \
     stopped, nothing it did took effect through that call, and it may be retried"
)]
pub struct HostUnavailable {
    pub what: &'static str,
    pub reason: String,
}

impl RunError {
    pub fn log(&self) -> &LogTail {
        match self {
            RunError::Timeout { log, .. }
            | RunError::MemoryLimit { log, .. }
            | RunError::OutputLimit { log, .. }
            | RunError::PoolExhausted { log }
            | RunError::Exit { log, .. }
            | RunError::Trap { log, .. }
            | RunError::NoResponse { log, .. }
            | RunError::Unavailable(_, log) => log,
        }
    }
}
