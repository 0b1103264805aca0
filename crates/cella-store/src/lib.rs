//! Where cella keeps things: function bytes in a blob store (object_store; a local directory by
//! default) and metadata — tenants, token hashes, functions, grants — in an embedded registry
//! (redb). Both live outside the trust boundary: blobs are re-hashed on every read, and the
//! registry holds only hashes of tokens.
#![forbid(unsafe_code)]

mod blobs;
mod registry;
mod token;

pub use blobs::{BlobError, BlobStore};
pub use registry::{Registry, RegistryError, Tenant};
pub use token::{Principal, Token};
