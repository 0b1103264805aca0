//! The vocabulary every other cella crate speaks: validated names, content hashes, function
//! kinds and resource limits. Pure data and validation; nothing here performs I/O.
#![forbid(unsafe_code)]

mod function;
mod hash;
mod kind;
mod limits;
mod names;
mod permissions;
mod plugin;

pub use function::{Access, FunctionRecord, FunctionVersion, now_rfc3339, rfc3339};
pub use hash::{ContentHash, HashParseError};
pub use kind::FunctionKind;
pub use limits::{LimitError, Limits, LimitsOverride, parse_size};
pub use names::{FunctionName, NameError, PluginName, TenantName};
pub use permissions::{
    EnvName, HttpHost, MAX_ENV_VALUE_BYTES, MAX_ENV_VARS, MAX_HTTP_HOSTS, MAX_SCRATCH_MIB,
    Permission, PermissionError, Permissions,
};
pub use plugin::{Plugin, PluginUse};
