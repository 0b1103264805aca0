//! The WebAssembly sandbox: the half of cella's two-way sandbox that protects the platform and
//! other tenants from tenant code.
//!
//! The vocabulary follows wasmtime's: one [`Sandbox`] per process holds the shared `Engine`
//! (configuration and compiled code, like T-FaaS's shared interpreter) and the linkers that say
//! what a guest may import; [`Sandbox::compile`] turns bytes into a [`Compiled`] function whose
//! imports are already resolved; every invocation then gets a fresh `Store` (an isolated world
//! that is dropped afterwards) armed with the function's [`Limits`](cella_core::Limits).
//!
//! Nothing is granted by default: no files, no sockets, no environment variables, and outgoing
//! HTTP requests from `wasi:http` components are refused. What a function's permissions grant
//! comes with each invocation ([`Grants`]); the imports that need a permission are checked at
//! deploy ([`Compiled::needed_permissions`]), and every host call passes the monitor.
#![deny(unsafe_code)] // one justified exception: `Sandbox::load_precompiled`

mod clock;
mod command;
mod compile;
mod compiler;
mod cpu;
mod engine;
mod error;
mod executor;
mod http;
mod limits;
mod monitor;
mod outgoing;
mod permissions;
mod pipes;
mod preflight;
mod preinit;
mod scratch;
mod state;
mod state_component;

pub use command::{
    CommandInput, CommandOutput, CommandState, FinishedCommand, Grants, PreparedCommand,
};

/// A compiled WASI command with its imports resolved.
pub type CommandPre = wasmtime::InstancePre<CommandState>;
pub use clock::{SystemTimeSource, TimeSource, WALL_SLACK};
pub use compile::Compiled;
pub use cpu::CpuShare;
pub use engine::{Sandbox, SandboxConfig};
pub use error::{CompileError, HostUnavailable, RunError};
pub use http::HttpResponse;
pub use monitor::{Denial, MonitorReport};
pub use outgoing::OutgoingConfig;
pub use pipes::LogTail;
pub use preflight::{CompileLimits, Preflight};
pub use preinit::{INITIALIZER, Initializer, PreinitError, Preinitialized, Preinitializer};
pub use scratch::MOUNT as SCRATCH_MOUNT;
pub use state::{MAX_KEY_BYTES, STATE_MODULE, StateCode, StateError, StateStore};
pub use state_component::STATE_INTERFACE;
