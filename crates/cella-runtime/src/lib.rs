//! The invocation pipeline: the part of cella that decides who may do what and runs it.
//!
//! A [`Platform`] owns the sandbox, the registry, the blob store and the compiled-code cache.
//! Every operation takes the authenticated [`Principal`](cella_store::Principal) that asked
//! for it and authorizes it here, so the HTTP gateway (or any other front end) cannot forget a
//! check: authenticate → authorize → load and verify → instantiate → run under limits →
//! account.
#![forbid(unsafe_code)]

mod artifacts;
mod asynchronous;
mod attestation;
mod chain;
mod code_cache;
mod compile_budget;
mod concurrency;
mod deploy;
mod error;
mod generated;
mod grants;
mod logs;
mod metrics;
mod paging;
mod platform;
mod plugins;
mod remote;
mod triggers;

pub use asynchronous::{
    ASYNC_RETENTION, AsyncRequest, JobQueue, MAX_IDEMPOTENCY_KEY, is_final_failure,
};
pub use attestation::{MAX_NONCE_BYTES, TeeMode};
pub use chain::MAX_CHAIN_STEPS;
pub use error::{ErrorCode, RuntimeError};
pub use grants::EnvSetting;
pub use logs::{FunctionStats, InvocationLog};
pub use metrics::Metrics;
pub use paging::{DEFAULT_PAGE, MAX_PAGE, Page, PageRequest};
pub use platform::{
    AccessChange, HttpOutput, InvokeOptions, InvokeOutput, Platform, PlatformConfig,
};
pub use remote::{Dispatcher, Job, Outcome, RemoteFailure, Work};
pub use triggers::{EventSink, NewTrigger, RESULT_HEADER, TriggerResult};
