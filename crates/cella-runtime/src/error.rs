//! Errors of the pipeline, each with a stable machine-readable [`ErrorCode`] that front ends
//! map to their protocol (the gateway maps them to HTTP statuses).

use cella_core::{FunctionKind, FunctionName, LimitError, NameError, Permission, PluginName};
use cella_sandbox::{CompileError, PreinitError, RunError};
use cella_store::{BlobError, RegistryError, SharedError};

/// Stable error codes: part of the API, documented in the README. Never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    NotFound,
    InvalidName,
    InvalidLimits,
    InvalidRequest,
    InvalidWasm,
    WrongKind,
    Conflict,
    PayloadTooLarge,
    Overloaded,
    /// The platform could not serve something it needed (its storage, the cluster's bus):
    /// the request was not carried out and may be retried.
    Unavailable,
    TooManyRequests,
    Timeout,
    MemoryLimit,
    OutputLimit,
    FunctionFailed,
    IntegrityError,
    InvalidBundle,
    UntrustedKey,
    HashMismatch,
    MissingPermission,
    Internal,
}

impl ErrorCode {
    /// Every code, for parsing one back (a worker's answer names its error by code).
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::InvalidName,
        ErrorCode::InvalidLimits,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidWasm,
        ErrorCode::WrongKind,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::TooManyRequests,
        ErrorCode::Timeout,
        ErrorCode::MemoryLimit,
        ErrorCode::OutputLimit,
        ErrorCode::FunctionFailed,
        ErrorCode::IntegrityError,
        ErrorCode::InvalidBundle,
        ErrorCode::UntrustedKey,
        ErrorCode::HashMismatch,
        ErrorCode::MissingPermission,
        ErrorCode::Internal,
    ];

    /// The code named `text`, if any.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|code| code.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidLimits => "invalid_limits",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidWasm => "invalid_wasm",
            ErrorCode::WrongKind => "wrong_kind",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Timeout => "timeout",
            ErrorCode::MemoryLimit => "memory_limit",
            ErrorCode::OutputLimit => "output_limit",
            ErrorCode::FunctionFailed => "function_failed",
            ErrorCode::IntegrityError => "integrity_error",
            ErrorCode::InvalidBundle => "invalid_bundle",
            ErrorCode::UntrustedKey => "untrusted_key",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::MissingPermission => "missing_permission",
            ErrorCode::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Forbidden(String),
    #[error("function `{0}` does not exist; list yours with `cella functions`")]
    NoSuchFunction(FunctionName),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error("cannot deploy: {0}")]
    Compile(#[from] CompileError),
    #[error("function `{name}` is a {kind} function; {hint}")]
    WrongKind {
        name: FunctionName,
        kind: FunctionKind,
        hint: &'static str,
    },
    #[error(
        "{who} already runs {limit} invocations at once, the most allowed; retry when one \
         finishes (the operator sets `tenant_concurrency` in cella.toml)"
    )]
    Busy { who: String, limit: usize },
    #[error("{0}")]
    Overloaded(String),
    #[error("function `{name}`: {source}")]
    Run {
        name: FunctionName,
        source: RunError,
    },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Invalid(String),
    /// The tenant's stored code would pass its quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The tenant's share of the compiler is in use or used up for now.
    #[error("{0}")]
    CompileRefused(String),
    /// A function's own limits leave it no room to run (its memory starts above its limit).
    #[error("{0}")]
    LimitTooLow(String),
    #[error("cannot deploy this bundle: {0}")]
    Bundle(#[from] cella_bundle::BundleError),
    #[error("{0}")]
    UntrustedKey(String),
    #[error("{0}")]
    OldVersion(String),
    #[error(
        "function `{name}` is {actual}, not the expected {expected}; nothing ran (deploy the \
         expected bundle, or expect what runs: `cella functions {name}`)"
    )]
    HashMismatch {
        name: FunctionName,
        expected: String,
        actual: String,
    },
    #[error("function `{name}` has no version {version}; its versions: {known}")]
    NoSuchVersion {
        name: FunctionName,
        version: String,
        known: String,
    },
    /// A function's image could not be made from its plug-in (its payload is at fault).
    #[error("{what} failed to load: {source}")]
    Preinit { what: String, source: PreinitError },
    /// A plug-in could not be pre-initialised (the module is at fault).
    #[error("plug-in `{name}` could not be pre-initialised: {source}")]
    PluginPreinit {
        name: PluginName,
        source: PreinitError,
    },
    #[error("{0}")]
    NoSuchPlugin(String),
    #[error("{}", missing_permissions(name, missing))]
    MissingPermissions {
        name: FunctionName,
        missing: Vec<Permission>,
    },
    #[error(
        "no invocation `{0}` of yours exists; ids are what `POST \
         /v1/functions/NAME/invoke?async=1` answered"
    )]
    NoSuchInvocation(String),
    #[error("{0}")]
    IdempotencyConflict(String),
    /// A worker of the cluster refused or failed the invocation (its code and message).
    #[error("{}", .0.message)]
    Remote(Box<crate::RemoteFailure>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RuntimeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RuntimeError::Remote(failure) => failure.code,
            RuntimeError::Forbidden(_) => ErrorCode::Forbidden,
            RuntimeError::NoSuchFunction(_)
            | RuntimeError::NoSuchInvocation(_)
            | RuntimeError::NoSuchVersion { .. }
            | RuntimeError::NoSuchPlugin(_) => ErrorCode::NotFound,
            RuntimeError::Preinit {
                source: PreinitError::Run(RunError::PoolExhausted { .. }),
                ..
            }
            | RuntimeError::PluginPreinit {
                source: PreinitError::Run(RunError::PoolExhausted { .. }),
                ..
            } => ErrorCode::Overloaded,
            RuntimeError::PluginPreinit { source, .. } => match source {
                PreinitError::Compile(CompileError::Engine(_)) => ErrorCode::Internal,
                _ => ErrorCode::InvalidWasm,
            },
            RuntimeError::Preinit { source, .. } => match source {
                PreinitError::Compile(CompileError::Engine(_)) => ErrorCode::Internal,
                PreinitError::Unsupported(_) | PreinitError::Compile(_) => ErrorCode::InvalidWasm,
                // The code itself failed (a syntax error, an exception, a limit).
                PreinitError::Run(_) | PreinitError::Exited { .. } => ErrorCode::InvalidBundle,
            },
            RuntimeError::Bundle(_) => ErrorCode::InvalidBundle,
            RuntimeError::MissingPermissions { .. } => ErrorCode::MissingPermission,
            RuntimeError::UntrustedKey(_) => ErrorCode::UntrustedKey,
            RuntimeError::OldVersion(_) | RuntimeError::IdempotencyConflict(_) => {
                ErrorCode::Conflict
            }
            RuntimeError::HashMismatch { .. } => ErrorCode::HashMismatch,
            RuntimeError::Name(_) => ErrorCode::InvalidName,
            RuntimeError::Limits(_) => ErrorCode::InvalidLimits,
            RuntimeError::Invalid(_) => ErrorCode::InvalidRequest,
            RuntimeError::LimitTooLow(_) => ErrorCode::InvalidLimits,
            RuntimeError::CompileRefused(_) => ErrorCode::TooManyRequests,
            RuntimeError::QuotaExceeded(_) => ErrorCode::PayloadTooLarge,
            RuntimeError::Compile(CompileError::Engine(_)) => ErrorCode::Internal,
            RuntimeError::Compile(CompileError::TooLargeToCompile { .. }) => {
                ErrorCode::PayloadTooLarge
            }
            RuntimeError::Compile(CompileError::MemoryMinimum { .. }) => ErrorCode::InvalidLimits,
            RuntimeError::Compile(CompileError::CompilerBusy { .. }) => ErrorCode::Overloaded,
            RuntimeError::Compile(_) => ErrorCode::InvalidWasm,
            RuntimeError::WrongKind { .. } => ErrorCode::WrongKind,
            RuntimeError::Busy { .. } => ErrorCode::TooManyRequests,
            RuntimeError::Overloaded(_) => ErrorCode::Overloaded,
            RuntimeError::Run { source, .. } => match source {
                RunError::Timeout { .. } => ErrorCode::Timeout,
                RunError::MemoryLimit { .. } => ErrorCode::MemoryLimit,
                RunError::OutputLimit { .. } => ErrorCode::OutputLimit,
                RunError::PoolExhausted { .. } => ErrorCode::Overloaded,
                RunError::Unavailable(..) => ErrorCode::Unavailable,
                RunError::Exit { .. } | RunError::Trap { .. } | RunError::NoResponse { .. } => {
                    ErrorCode::FunctionFailed
                }
            },
            RuntimeError::Blob(BlobError::Tampered { .. } | BlobError::Missing(_)) => {
                ErrorCode::IntegrityError
            }
            RuntimeError::Registry(
                RegistryError::Tampered { .. } | RegistryError::RolledBack { .. },
            ) => ErrorCode::IntegrityError,
            RuntimeError::Registry(RegistryError::Shared(shared)) => match shared {
                SharedError::Unavailable(_) | SharedError::Stalled { .. } => ErrorCode::Overloaded,
                SharedError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
                SharedError::OtherCluster | SharedError::Forked { .. } => ErrorCode::IntegrityError,
            },
            RuntimeError::Registry(RegistryError::BadCursor) => ErrorCode::InvalidRequest,
            RuntimeError::Registry(RegistryError::OlderFormat) => ErrorCode::IntegrityError,
            RuntimeError::Registry(RegistryError::TenantExists(_)) => ErrorCode::Conflict,
            RuntimeError::Registry(RegistryError::NoSuchTenant(_)) => ErrorCode::NotFound,
            RuntimeError::Registry(
                RegistryError::NoSuchFunction(_) | RegistryError::NoSuchKey(_),
            ) => ErrorCode::NotFound,
            RuntimeError::Registry(
                RegistryError::KeyExists { .. } | RegistryError::PluginExists { .. },
            ) => ErrorCode::Conflict,
            // The node's storage failed (a full disk, an I/O error): nothing was changed, and
            // the same request may succeed once the operator has fixed it.
            RuntimeError::Registry(
                RegistryError::Database(_)
                | RegistryError::Storage { .. }
                | RegistryError::VersionFile { .. },
            )
            | RuntimeError::Blob(BlobError::Backend(_) | BlobError::Directory { .. }) => {
                ErrorCode::Unavailable
            }
            RuntimeError::Blob(_) | RuntimeError::Registry(_) | RuntimeError::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// Whether the message speaks of the node's own insides (paths, operating-system
    /// messages, database errors) rather than of the caller's request: such details are for
    /// the operator's log; the caller gets the code and an id to quote.
    pub fn is_operator_detail(&self) -> bool {
        match self {
            RuntimeError::Run { .. } | RuntimeError::Remote(_) => false,
            _ => matches!(self.code(), ErrorCode::Internal | ErrorCode::Unavailable),
        }
    }

    /// The invocation's log (the tail of the guest's stderr and the monitor's denials), when
    /// the error came from running a guest.
    pub fn log(&self) -> Option<String> {
        match self {
            RuntimeError::Remote(failure) => failure.log.as_ref().map(|log| log.to_text()),
            RuntimeError::Run { source, .. }
                if !source.log().bytes.is_empty() || !source.log().monitor.denials.is_empty() =>
            {
                Some(source.log().to_text())
            }
            RuntimeError::Preinit { source, .. } | RuntimeError::PluginPreinit { source, .. } => {
                source
                    .log()
                    .filter(|log| !log.bytes.is_empty())
                    .map(|log| log.to_text())
            }
            _ => None,
        }
    }

    /// What the monitor saw, when the error came from running a guest.
    pub fn monitor(&self) -> Option<&cella_sandbox::MonitorReport> {
        match self {
            RuntimeError::Run { source, .. } => Some(&source.log().monitor),
            RuntimeError::Remote(failure) => failure.log.as_ref().map(|log| &*log.monitor),
            _ => None,
        }
    }
}

/// Names each missing permission, what it gives, and the manifest line that grants it.
fn missing_permissions(name: &FunctionName, missing: &[Permission]) -> String {
    let listed: Vec<String> = missing
        .iter()
        .map(|p| format!("`{p}` ({})", p.describe()))
        .collect();
    let lines: Vec<String> = missing
        .iter()
        .map(|p| format!("    {}", p.manifest_line()))
        .collect();
    let flags: Vec<String> = missing.iter().map(|p| format!("--allow {p}")).collect();
    format!(
        "function `{name}` uses what its manifest does not grant: {}. Add under \
         [permissions] in its manifest:\n{}\n(or pass `{}` to `cella deploy`)",
        listed.join(", "),
        lines.join("\n"),
        flags.join(" ")
    )
}
