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
            | RunError::NoResponse { log, .. } => log,
        }
    }
}
