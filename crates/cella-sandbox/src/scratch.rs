//! A private scratch file system for each invocation of a `wasi:http` component: an in-memory
//! directory at [`MOUNT`], empty at the start, capped at the manifest's `scratch_mib`, and gone
//! with the invocation's store.
//!
//! wasmtime-wasi can only map the host's directories into a guest. On an untrusted host that
//! would put tenant files on the operator's disk in plaintext, and a host directory cannot be
//! capped per invocation; so cella implements `wasi:filesystem` itself, over a tree that lives
//! in the node's memory, inside the TEE. A component without the permission sees no
//! directory at all: the interfaces are linked (every Rust program imports them), but there is
//! nothing to open. wasmtime-wasi's file system is never linked, so no guest call reaches the
//! host's files.
//!
//! Timestamps are not kept: a file's times would tell a function without the `clocks`
//! permission what time it is.

mod tree;
mod wasi;

pub(crate) use wasi::{Scratch, ScratchView, add_to_linker};

/// Where the scratch directory appears in the guest.
pub const MOUNT: &str = "/tmp";
